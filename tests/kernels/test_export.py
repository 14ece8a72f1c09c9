"""The Pallas flash kernels lower for TPU (Mosaic) and GPU (Triton) at
realistic shapes: jax.export of forward and gradient from a CPU host."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import block_mask_lib as bm
from kernels.block_sparse import block_sparse_attention
from kernels.flash import flash_attention

BATCH, SEQ_LEN, HEADS, KV_HEADS, HEAD_DIM, BLOCK = 2, 1024, 8, 2, 128, 128
CUSTOM_CALL = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}


def export_text(fn, platform, *args):
  """The MLIR module of jit(fn) exported for `platform` from this CPU host."""
  checks = [jax.export.DisabledSafetyCheck.custom_call(CUSTOM_CALL["cuda"])]
  return jax.export.export(jax.jit(fn), platforms=[platform],
                           disabled_checks=checks)(*args).mlir_module()


def _sparse_mask():
  num_blocks = SEQ_LEN // BLOCK
  keep = np.random.default_rng(0).random((BATCH, HEADS, num_blocks, num_blocks)) < 0.5
  keep |= np.eye(num_blocks, dtype=bool)
  return bm.from_mask(jnp.asarray(keep), block_q=BLOCK, block_k=BLOCK)


def _kernels(platform):
  compiled = dict(interpret=False, platform=platform)
  mask = _sparse_mask()
  return {
      "flash": functools.partial(flash_attention, **compiled),
      "flash_noncausal": functools.partial(flash_attention, causal=False, **compiled),
      "block_sparse": lambda q, k, v: block_sparse_attention(q, k, v, mask, **compiled),
  }


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_forward_and_grad_export(platform, dtype):
  q = jax.ShapeDtypeStruct((BATCH, SEQ_LEN, HEADS, HEAD_DIM), dtype)
  kv = jax.ShapeDtypeStruct((BATCH, SEQ_LEN, KV_HEADS, HEAD_DIM), dtype)
  checks = [jax.export.DisabledSafetyCheck.custom_call(CUSTOM_CALL["cuda"])]
  for name, attn in _kernels(platform).items():
    loss = lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32))
    grad = jax.grad(loss, argnums=(0, 1, 2))
    for fn, kernels in ((attn, 1), (grad, 3)):  # forward; forward + dq + dk/dv
      exported = jax.export.export(jax.jit(fn), platforms=[platform],
                                   disabled_checks=checks)(q, kv, kv)
      text = exported.mlir_module()
      assert text.count(CUSTOM_CALL[platform]) == kernels, (name, platform)
      out_shapes = [o.shape for o in exported.out_avals]
      assert out_shapes[0] == q.shape and all(s in (q.shape, kv.shape) for s in out_shapes)


def test_tpu_lists_too_large_for_scalar_memory_are_rejected():
  seq_len, block = 4096, 128
  num_blocks = seq_len // block
  mask = bm.from_mask(jnp.ones((8, 16, num_blocks, num_blocks), bool),
                      block_q=block, block_k=block)
  q = jax.ShapeDtypeStruct((8, seq_len, 16, 64), jnp.bfloat16)
  with pytest.raises(ValueError, match=r"scalar memory.*shard"):
    jax.eval_shape(lambda q: block_sparse_attention(q, q, q, mask, interpret=False,
                                                    platform="tpu"), q)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_forward_and_grad_export_with_segment_ids(platform):
  """Document masking: segment ids are a traced int input; the lists come from them."""
  q = jax.ShapeDtypeStruct((BATCH, SEQ_LEN, HEADS, HEAD_DIM), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((BATCH, SEQ_LEN, KV_HEADS, HEAD_DIM), jnp.bfloat16)
  seg = jax.ShapeDtypeStruct((BATCH, SEQ_LEN), jnp.int32)
  checks = [jax.export.DisabledSafetyCheck.custom_call(CUSTOM_CALL["cuda"])]
  compiled = dict(interpret=False, platform=platform)
  mask = _sparse_mask()
  kernels = {
      "flash": lambda q, k, v, s: flash_attention(q, k, v, segment_ids_BL=s, **compiled),
      "block_sparse": lambda q, k, v, s: block_sparse_attention(
          q, k, v, mask, segment_ids_BL=s, **compiled),
  }
  for name, attn in kernels.items():
    loss = lambda q, k, v, s: jnp.sum(attn(q, k, v, s).astype(jnp.float32))
    grad = jax.grad(loss, argnums=(0, 1, 2))
    for fn, count in ((attn, 1), (grad, 3)):
      exported = jax.export.export(jax.jit(fn), platforms=[platform],
                                   disabled_checks=checks)(q, kv, kv, seg)
      assert exported.mlir_module().count(CUSTOM_CALL[platform]) == count, (name, platform)
      out_shapes = [o.shape for o in exported.out_avals]
      assert out_shapes[0] == q.shape and all(s in (q.shape, kv.shape) for s in out_shapes)


def test_tpu_export_with_the_grid_shrunk_to_max_blocks():
  """A mask known only at run time (built under the trace) with max_blocks: the
  list axis of the forward and dq grids has max_blocks steps."""
  q = jax.ShapeDtypeStruct((BATCH, SEQ_LEN, HEADS, HEAD_DIM), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((BATCH, SEQ_LEN, KV_HEADS, HEAD_DIM), jnp.bfloat16)
  keep = np.asarray(_sparse_mask().mask_BHQK)

  def attn(q, k, v):
    mask = bm.from_mask(jnp.asarray(keep), block_q=BLOCK, block_k=BLOCK)
    return block_sparse_attention(q, k, v, mask, max_blocks=3, interpret=False,
                                  platform="tpu")
  grad = jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32)),
                  argnums=(0, 1, 2))
  exported = jax.export.export(jax.jit(grad), platforms=["tpu"])(q, kv, kv)
  assert exported.mlir_module().count(CUSTOM_CALL["tpu"]) == 3


@pytest.mark.parametrize("platform,block,bwd_block", [("tpu", 256, 128), ("cuda", 128, 64)])
def test_grad_export_with_backward_tiles(platform, block, bwd_block):
  q = jax.ShapeDtypeStruct((BATCH, SEQ_LEN, HEADS, HEAD_DIM), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((BATCH, SEQ_LEN, KV_HEADS, HEAD_DIM), jnp.bfloat16)
  attn = functools.partial(flash_attention, block_q=block, block_k=block,
                           bwd_block_q=bwd_block, bwd_block_k=bwd_block, interpret=False,
                           platform=platform)
  grad = jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32)),
                  argnums=(0, 1, 2))
  assert export_text(grad, platform, q, kv, kv).count(CUSTOM_CALL[platform]) == 3
