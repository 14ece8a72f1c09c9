"""The fused flash backward (fused_bwd=True: kernels.fused_bwd_gpu / fused_bwd_tpu)
in interpret mode against the float32 reference and the two-kernel backward, and
its lowering for TPU and GPU."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import block_mask_lib as bm
from kernels import flash_lists, fused_bwd_gpu, fused_bwd_tpu
from kernels.block_sparse import block_sparse_attention
from kernels.dense import reference_attention
from kernels.flash import flash_attention
from kernels.sparse_flash_gpu import forward as gpu_forward
from kernels.sparse_flash_tpu import forward as tpu_forward
from tests.kernels.flash_checks import (TOLERANCE, compile_fast, fresh_seed, pallas_calls,
                                        random_qkvo, rel_err)
from tests.kernels.test_block_sparse_pallas import make_mask
from tests.kernels.test_export import CUSTOM_CALL, export_text
from tests.kernels.test_segments_pallas import random_segments, segment_reference

FUSED = {"tpu": (tpu_forward, fused_bwd_tpu.backward),
         "cuda": (gpu_forward, fused_bwd_gpu.backward)}


def _vjp(fn, q, k, v, do):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out, *vjp(do))


def assert_fused_matches(attn, reference, q, k, v, do, seed):
  """attn(q, k, v, fused_bwd=...)'s fused gradients within the dtype's tolerance
  of the float32 reference and of the two-kernel backward; every block written
  (interpret mode leaves unwritten output blocks NaN)."""
  def run(q, k, v, do):
    f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
    return (_vjp(functools.partial(attn, fused_bwd=True), q, k, v, do)[1:],
            _vjp(functools.partial(attn, fused_bwd=False), q, k, v, do)[1:],
            _vjp(reference, *f32)[1:])

  fused, unfused, ref = compile_fast(run, q, k, v, do)
  tol = TOLERANCE[q.dtype.type]
  for name, x, two_kernel, r in zip(("dq", "dk", "dv"), fused, unfused, ref):
    assert x.dtype == q.dtype, (name, x.dtype)
    assert bool(jnp.all(jnp.isfinite(x))), f"{name} has unwritten (NaN) blocks; seed {seed}"
    err, diff = rel_err(x, r), rel_err(x, two_kernel)
    assert err < tol, f"{name} rel err {err:.2e} >= {tol}; seed {seed}"
    assert diff < tol, f"{name} differs from the two-kernel backward by {diff:.2e}; {seed}"


# (platform, dtype, causal, batch, seq_len, heads, kv_heads, head_dim, block_q, block_k)
DENSE_CASES = [
    ("cuda", jnp.float32, True, 1, 64, 4, 2, 16, 16, 32),
    ("tpu", jnp.float32, True, 1, 64, 4, 2, 16, 32, 16),
    ("cuda", jnp.bfloat16, False, 2, 64, 2, 1, 32, 32, 32),
    ("tpu", jnp.bfloat16, False, 1, 64, 2, 2, 32, 16, 16),
]


@pytest.mark.parametrize(
    "platform,dtype,causal,batch,seq_len,heads,kv_heads,head_dim,block_q,block_k",
    DENSE_CASES)
def test_fused_flash_matches_reference(platform, dtype, causal, batch, seq_len, heads,
                                       kv_heads, head_dim, block_q, block_k):
  seed = fresh_seed()
  q, k, v, do = random_qkvo(seed, batch, seq_len, heads, kv_heads, head_dim, dtype)
  attn = functools.partial(flash_attention, causal=causal, block_q=block_q,
                           block_k=block_k, interpret=True, platform=platform)
  assert_fused_matches(attn, functools.partial(reference_attention, causal=causal),
                       q, k, v, do, seed)


@pytest.mark.parametrize("platform,causal,bwd_block", [
    ("cuda", True, None), ("tpu", False, None), ("tpu", True, 32), ("cuda", False, 32)])
def test_fused_block_sparse_matches_reference(platform, causal, bwd_block):
  """A random mask with an empty query row, per-head rows and GQA; bwd_block 32:
  backward tiles of 2 x 2 mask blocks, masked inside by their sub-block bits."""
  seed, block = fresh_seed(), 16
  q, k, v, do = random_qkvo(seed, 2, 64, 4, 2, 16, jnp.float32)
  shape = (2, 4, 64 // block, 64 // block)
  mask = bm.from_mask(jnp.asarray(make_mask(seed, shape, block, block, "random")),
                      block_q=block, block_k=block, causal=causal)
  attn = functools.partial(block_sparse_attention, block_mask=mask, causal=causal,
                           bwd_block_q=bwd_block, bwd_block_k=bwd_block, interpret=True,
                           platform=platform)
  reference = functools.partial(
      reference_attention, causal=causal,
      mask_BHQK=bm.expand_to_tokens(mask.mask_BHQK, block, block))
  assert_fused_matches(attn, reference, q, k, v, do, seed)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_fused_with_segments_matches_reference(platform):
  seed = fresh_seed()
  q, k, v, do = random_qkvo(seed, 2, 64, 4, 2, 16, jnp.float32)
  seg = random_segments(seed, 2, 64)
  attn = functools.partial(flash_attention, segment_ids_BL=seg, block_q=16, block_k=32,
                           interpret=True, platform=platform)
  assert_fused_matches(attn, segment_reference(seg, True), q, k, v, do, seed)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_fused_ragged_length_and_backward_tiles(platform):
  """50 tokens padded to 64 inside flash_attention; backward tiles of 16 in
  blocks of 32 (the fused kernel walks the refined lists)."""
  seed = fresh_seed()
  q, k, v, do = random_qkvo(seed, 1, 50, 2, 1, 16, jnp.float32)
  attn = functools.partial(flash_attention, block_q=32, block_k=32, bwd_block_q=16,
                           bwd_block_k=16, interpret=True, platform=platform)
  assert_fused_matches(attn, reference_attention, q, k, v, do, seed)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_key_block_no_query_sees_gets_zero_gradients(platform):
  """A key block whose query lists are empty in every head: its dk, dv are
  written as zeros (not left poisoned), as are the dq rows of an empty query row."""
  seed, block, num_blocks = fresh_seed(), 16, 4
  q, k, v, do = random_qkvo(seed, 1, block * num_blocks, 2, 1, 16, jnp.float32)
  keep = np.ones((1, 1, num_blocks, num_blocks), bool)
  keep[..., 2] = False     # key block 2: no query
  keep[..., 3, :] = False  # query block 3: no key
  mask = bm.from_mask(jnp.asarray(keep), block_q=block, block_k=block, causal=False)
  lists = flash_lists.from_block_mask(mask, causal=False)
  forward, backward = FUSED[platform]

  def grads(q, k, v, do):
    o, lse = forward(q, k, v, lists, interpret=True)
    return backward(q, k, v, o, lse, do, lists, interpret=True)

  dq, dk, dv = compile_fast(grads, q, k, v, do)
  for name, x in (("dq", dq), ("dk", dk), ("dv", dv)):
    assert bool(jnp.all(jnp.isfinite(x))), f"{name} has unwritten (NaN) blocks; {seed}"
  keys = slice(2 * block, 3 * block)
  assert not np.any(np.asarray(dk[:, keys])) and not np.any(np.asarray(dv[:, keys]))
  assert not np.any(np.asarray(dq[:, 3 * block:]))
  assert np.all(np.any(np.asarray(dq[:, :3 * block]) != 0, axis=-1))


# Lowering: forward + one fused backward kernel (the two-kernel path has 3 calls).
BATCH, SEQ_LEN, HEADS, KV_HEADS, HEAD_DIM, BLOCK = 2, 512, 8, 2, 128, 128


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_fused_gradexport_text(platform):
  q = jax.ShapeDtypeStruct((BATCH, SEQ_LEN, HEADS, HEAD_DIM), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((BATCH, SEQ_LEN, KV_HEADS, HEAD_DIM), jnp.bfloat16)
  seg = jax.ShapeDtypeStruct((BATCH, SEQ_LEN), jnp.int32)
  keep = np.random.default_rng(0).random((BATCH, HEADS, 4, 4)) < 0.5
  mask = bm.from_mask(jnp.asarray(keep | np.eye(4, dtype=bool)), block_q=BLOCK,
                      block_k=BLOCK)
  compiled = dict(interpret=False, platform=platform, fused_bwd=True)
  kernels = {
      "flash": lambda q, k, v, s: flash_attention(q, k, v, **compiled),
      "flash_noncausal": lambda q, k, v, s: flash_attention(q, k, v, causal=False,
                                                            **compiled),
      "flash_segments": lambda q, k, v, s: flash_attention(q, k, v, segment_ids_BL=s,
                                                           **compiled),
      "block_sparse": lambda q, k, v, s: block_sparse_attention(q, k, v, mask,
                                                                **compiled),
  }
  for name, attn in kernels.items():
    loss = lambda q, k, v, s: jnp.sum(attn(q, k, v, s).astype(jnp.float32))
    text = export_text(jax.grad(loss, argnums=(0, 1, 2)), platform, q, kv, kv, seg)
    assert text.count(CUSTOM_CALL[platform]) == 2, (name, platform)
    if platform == "cuda":  # the float32 dq buffer goes in and out of the kernel
      assert "output_operand_aliases" in text, name


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_stage2_keeps_the_two_kernel_backward(platform):
  """fused_bwd with pv_threshold falls back to stage 2's passes (documented)."""
  q = jax.ShapeDtypeStruct((1, SEQ_LEN, 2, HEAD_DIM), jnp.bfloat16)
  mask = bm.from_mask(jnp.ones((1, 1, 4, 4), bool), block_q=BLOCK, block_k=BLOCK)

  def grad(fused):
    attn = lambda q: block_sparse_attention(q, q, q, mask, pv_threshold=-5.0,
                                            interpret=False, platform=platform,
                                            fused_bwd=fused)
    return jax.grad(lambda q: jnp.sum(attn(q).astype(jnp.float32)))

  counts = [export_text(grad(f), platform, q).count(CUSTOM_CALL[platform]) for f in (0, 1)]
  assert counts[0] == counts[1] == 5, counts  # forward, 2 x (dq, dk/dv)


def pallas_names(fn, *args):
  """The names of the pallas_calls in fn's jaxpr (forward and backward)."""
  return [str(eqn.params["name"]).split()[0] for eqn in pallas_calls(fn, *args)]


@pytest.mark.parametrize("kind,params", [
    ("dense", {}), ("block_sparse", dict(window_blocks=2, block_q=16, block_k=16))])
def test_the_dispatch_and_the_config_reach_the_fused_kernel(kind, params):
  """kernels.attention's fused_bwd (the config's attention.fused_bwd, passed by
  models.attention.kind_params) swaps the dq and dk/dv kernels for the fused one."""
  from experiments.configs import lm
  from kernels.dispatch import attention
  from models.attention import kind_params
  attn_cfg = lm.get_config().attention
  assert kind_params(attn_cfg, kind)["fused_bwd"] is False
  attn_cfg.fused_bwd = True
  fused = kind_params(attn_cfg, kind)["fused_bwd"]
  q = jnp.ones((1, 64, 2, 16))
  names = {
      flag: pallas_names(jax.grad(lambda q: jnp.sum(attention(
          q, q[:, :, :1], q[:, :, :1], kind=kind, impl="pallas", fused_bwd=flag,
          **params))), q)
      for flag in (False, fused)}
  assert names[False] == ["block_sparse_flash_fwd", "block_sparse_flash_dq",
                          "block_sparse_flash_dkv"]
  assert names[True] == ["block_sparse_flash_fwd", "block_sparse_flash_fused_bwd"]
