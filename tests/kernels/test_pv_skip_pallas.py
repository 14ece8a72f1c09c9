"""SpargeAttn's stage 2 (pv_threshold) in the block-sparse Pallas kernels,
interpret mode, TPU and GPU variants: lambda = -inf is stage 1 bit for bit;
finite lambda matches the kernels.pv_skip oracle (output, gradients and the
exact skip map); stage 2 lowers for both targets."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import block_mask_lib as bm
from kernels import flash_lists, pv_skip
from kernels.block_sparse import block_sparse_attention, run_lists
from tests.kernels.flash_checks import (TOLERANCE, compile_fast, fresh_seed, random_qkvo,
                                        rel_err)
from tests.kernels.test_export import CUSTOM_CALL
from tests.kernels.test_segments_pallas import random_segments

SINK_BLOCK = 1  # key block every query is pulled towards (peaked attention)
LAMBDA = -4.0


def peaked_qkvo(seed, batch, seq_len, heads, kv_heads, head_dim, block_k, dtype):
  """random_qkvo plus a shared direction in every query and in the keys of
  SINK_BLOCK (a logit boost of ~12): later tiles sit far below the running max."""
  q, k, v, do = random_qkvo(seed, batch, seq_len, heads, kv_heads, head_dim, jnp.float32)
  u_K = jax.random.normal(jax.random.PRNGKey(seed + 1), (head_dim,))
  u_K = u_K * (12 * head_dim**0.5)**0.5 / jnp.linalg.norm(u_K)
  keys = slice(SINK_BLOCK * block_k, (SINK_BLOCK + 1) * block_k)
  k = k.at[:, keys].add(u_K)
  return [x.astype(dtype) for x in (q + u_K, k, v, do)]


def sink_mask(seed, shape):
  """bool [Bm, Hm, nQ, nK]: 60% of tiles and the sink column; one empty row."""
  mask = np.random.default_rng(seed).random(shape) < 0.6
  mask[..., SINK_BLOCK] = True
  mask[-1, -1, 1, :] = False
  return mask


def make_inputs(seed, dtype, causal, batch, seq_len, heads, kv_heads, head_dim, block_q,
                block_k, mask_batch, mask_heads, segmented):
  qkvo = peaked_qkvo(seed, batch, seq_len, heads, kv_heads, head_dim, block_k, dtype)
  shape = (mask_batch, mask_heads, seq_len // block_q, seq_len // block_k)
  mask = bm.from_mask(jnp.asarray(sink_mask(seed, shape)), block_q=block_q,
                      block_k=block_k, causal=causal)
  seg = random_segments(seed, batch, seq_len) if segmented else None
  return qkvo, mask, seg


def outputs_and_grads(fn, q, k, v, do):
  """(o, dq, dk, dv) and the skip map of fn(q, k, v) -> (o, skipped)."""
  o, vjp, skipped = jax.vjp(fn, q, k, v, has_aux=True)
  return (o, *vjp(do)), skipped


def kernel_fn(mask, causal, seg, platform, pv_threshold):
  return functools.partial(block_sparse_attention, block_mask=mask, causal=causal,
                           segment_ids_BL=seg, pv_threshold=pv_threshold,
                           return_skipped=True, interpret=True, platform=platform)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_minus_inf_is_stage_one_exactly(platform):
  """-inf (the stage-1 kernels) and -1e30 (the stage-2 kernels, which then skip
  nothing) give stage 1's output and gradients bit for bit."""
  seed = fresh_seed()
  (q, k, v, do), mask, seg = make_inputs(seed, jnp.float32, True, 1, 64, 4, 2, 16,
                                         16, 32, 1, 4, platform == "cuda")

  def variants(q, k, v, do):
    return [outputs_and_grads(kernel_fn(mask, True, seg, platform, lam), q, k, v, do)
            for lam in (None, -float("inf"), -1e30)]

  (stage1, _), *others = compile_fast(variants, q, k, v, do)
  for lam, (outs, skipped) in zip(("-inf", "-1e30"), others):
    assert not np.any(skipped), (lam, seed)
    for name, x, ref in zip(("o", "dq", "dk", "dv"), outs, stage1):
      assert bool(jnp.all(jnp.isfinite(x))), f"{name} has NaN blocks; {lam}, seed {seed}"
      assert np.array_equal(x, ref), f"{name} differs from stage 1; {lam}, seed {seed}"


def _seed_with_mixed_skips(case):
  """A fresh seed whose oracle skip map has both skipped and computed tiles."""
  dtype, causal, *shape, block_q, block_k, _, _, _ = case
  seed = fresh_seed()
  for seed in range(seed, seed + 50):
    (q, k, v, _), mask, seg = make_inputs(seed, *case)
    _, skipped = pv_skip.reference_attention(
        q, k, v, mask.mask_BHQK, block_q=block_q, block_k=block_k, causal=causal,
        segment_ids_BL=seg, pv_threshold=LAMBDA)
    live = np.broadcast_to(np.asarray(mask.mask_BHQK), skipped.shape)
    if np.any(skipped) and np.any(live & ~np.asarray(skipped)):
      return seed
  raise AssertionError(f"no seed with mixed skips near {seed}")


# platform, (dtype, causal, batch, seq_len, heads, kv_heads, head_dim, block_q,
#  block_k, mask_batch, mask_heads, segmented)
CASES = [
    ("cuda", (jnp.float32, True, 2, 64, 4, 2, 16, 32, 16, 2, 4, True)),
    ("tpu", (jnp.float32, False, 1, 64, 2, 1, 16, 32, 16, 1, 1, False)),
    ("tpu", (jnp.bfloat16, True, 2, 64, 2, 1, 32, 16, 16, 1, 2, True)),
    ("cuda", (jnp.bfloat16, False, 1, 64, 2, 2, 16, 32, 16, 1, 1, False)),
]


@pytest.mark.parametrize("platform,case", CASES,
                         ids=["cuda-f32-causal-gqa-segments", "tpu-f32-noncausal",
                              "tpu-bf16-causal-segments", "cuda-bf16-noncausal"])
def test_stage_two_matches_oracle(platform, case):
  dtype, causal, _, _, _, _, _, block_q, block_k, _, _, _ = case
  seed = _seed_with_mixed_skips(case)
  (q, k, v, do), mask, seg = make_inputs(seed, *case)
  oracle = functools.partial(pv_skip.reference_attention, mask_BHQK=mask.mask_BHQK,
                             block_q=block_q, block_k=block_k, causal=causal,
                             segment_ids_BL=seg, pv_threshold=LAMBDA)

  def both(q, k, v, do):
    f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
    return (outputs_and_grads(kernel_fn(mask, causal, seg, platform, LAMBDA), q, k, v, do),
            outputs_and_grads(oracle, *f32))

  (outs, skipped), (ref_outs, ref_skipped) = compile_fast(both, q, k, v, do)
  assert skipped.dtype == bool and skipped.shape == ref_skipped.shape, skipped.shape
  np.testing.assert_array_equal(skipped, ref_skipped, err_msg=f"skip map; seed {seed}")
  tol = TOLERANCE[dtype]
  for name, x, ref in zip(("o", "dq", "dk", "dv"), outs, ref_outs):
    assert x.dtype == dtype, (name, x.dtype)
    assert bool(jnp.all(jnp.isfinite(x))), f"{name} has unwritten (NaN) blocks; seed {seed}"
    err = rel_err(x, ref)
    assert err < tol, f"{name} rel err {err:.2e} >= {tol}; seed {seed}"


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_stage_two_lowers(platform):
  """Forward (with the skip map) and gradient lower for the real target: one
  forward kernel; the backward runs dq and dk/dv over computed and skipped tiles."""
  batch, seq_len, heads, kv_heads, head_dim, block = 2, 512, 4, 2, 128, 128
  q = jax.ShapeDtypeStruct((batch, seq_len, heads, head_dim), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((batch, seq_len, kv_heads, head_dim), jnp.bfloat16)
  seg = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
  num_blocks = seq_len // block
  mask = bm.from_mask(jnp.ones((1, 1, num_blocks, num_blocks), bool), block_q=block,
                      block_k=block)
  attn = functools.partial(block_sparse_attention, block_mask=mask, pv_threshold=LAMBDA,
                           return_skipped=True, interpret=False, platform=platform)
  loss = lambda q, k, v, s: jnp.sum(attn(q, k, v, segment_ids_BL=s)[0].astype(jnp.float32))
  checks = [jax.export.DisabledSafetyCheck.custom_call(CUSTOM_CALL["cuda"])]
  for fn, count in ((lambda q, k, v, s: attn(q, k, v, segment_ids_BL=s), 1),
                    (jax.grad(loss, argnums=(0, 1, 2)), 5)):
    exported = jax.export.export(jax.jit(fn), platforms=[platform],
                                 disabled_checks=checks)(q, kv, kv, seg)
    assert exported.mlir_module().count(CUSTOM_CALL[platform]) == count, platform
  out_shapes = [o.shape for o in jax.export.export(
      jax.jit(lambda q, k, v: attn(q, k, v)), platforms=[platform],
      disabled_checks=checks)(q, kv, kv).out_avals]
  assert out_shapes == [q.shape, (batch, heads, num_blocks, num_blocks)], out_shapes


def test_run_lists_over_dense_lists():
  """run_lists (kernels.flash's entry) takes stage 2 too: dense causal lists."""
  batch, seq_len, heads, block = 1, 64, 2, 16
  num_blocks = seq_len // block
  lists = flash_lists.dense_lists(seq_len, block, block, True)
  all_tiles = jnp.ones((1, 1, num_blocks, num_blocks), bool)
  oracle = functools.partial(pv_skip.reference_attention, mask_BHQK=all_tiles,
                             block_q=block, block_k=block, pv_threshold=LAMBDA)
  start = fresh_seed()
  for seed in range(start, start + 50):
    q, k, v, _ = peaked_qkvo(seed, batch, seq_len, heads, 1, 16, block, jnp.float32)
    ref_o, ref_skipped = oracle(q, k, v)
    if np.any(ref_skipped):
      break
  o, skipped = compile_fast(functools.partial(
      run_lists, lists=lists, platform="cuda", interpret=True, pv_threshold=LAMBDA,
      return_skipped=True), q, k, v)
  np.testing.assert_array_equal(skipped, ref_skipped, err_msg=f"seed {seed}")
  assert rel_err(o, ref_o) < TOLERANCE[jnp.float32], seed


def test_positive_threshold_is_rejected():
  q = jnp.zeros((1, 64, 2, 16))
  mask = bm.from_mask(jnp.ones((1, 1, 2, 2), bool), block_q=32, block_k=32)
  with pytest.raises(ValueError, match=r"pv_threshold .* <= 0"):
    block_sparse_attention(q, q, q, mask, pv_threshold=0.5, interpret=True)
