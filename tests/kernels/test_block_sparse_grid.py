"""Grids and tiles of the flash kernels: the TPU list axis has a row's largest
count of steps, not nK / nQ (splash attention's shrunk grid), bounded by a
trace-time mask or max_blocks; backward tiles may be smaller than the forward's."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import block_mask_lib as bm
from kernels import flash_lists
from kernels.block_sparse import block_sparse_attention
from kernels.dense import reference_attention
from kernels.flash import flash_attention
from tests.kernels.flash_checks import (assert_matches_reference, compile_fast, fresh_seed,
                                        jaxpr_eqns, pallas_calls, random_qkvo, rel_err)
from tests.kernels.test_pv_skip_pallas import LAMBDA, SINK_BLOCK, peaked_qkvo

SEQ_LEN, BLOCK, MAX_BLOCKS = 128, 16, 3


def pallas_grids(fn, *args):
  """The grids of every pallas_call in fn's jaxpr (forward and backward)."""
  return [tuple(eqn.params["grid_mapping"].grid) for eqn in pallas_calls(fn, *args)]


def random_mask(seed, num_blocks):
  mask = np.random.default_rng(seed).random((1, 2, num_blocks, num_blocks)) < 0.6
  return mask | np.eye(num_blocks, dtype=bool)


def test_trace_time_mask_bounds_the_steps():
  reachable = bm.causal_blocks(8, 8, BLOCK, BLOCK)
  first_two = jnp.asarray(reachable & (np.arange(8) < 2))[None, None]
  mask = bm.from_mask(first_two, block_q=BLOCK, block_k=BLOCK)
  lists = flash_lists.from_block_mask(mask, causal=True)
  assert (lists.kv_steps, lists.q_steps) == (2, 8)
  dense = flash_lists.dense_lists(SEQ_LEN, BLOCK, 2 * BLOCK, causal=True)
  assert (dense.kv_steps, dense.q_steps) == (4, 8)


def test_max_blocks_shrinks_the_tpu_grid_and_keeps_the_first_blocks():
  seed = fresh_seed()
  q, k, v, do = random_qkvo(seed, 1, SEQ_LEN, 2, 1, 32, jnp.float32)
  mask_np = random_mask(seed, SEQ_LEN // BLOCK)

  def kernel(q, k, v):  # the mask is built under the trace: only max_blocks bounds it
    mask = bm.from_mask(jnp.asarray(mask_np), block_q=BLOCK, block_k=BLOCK)
    return block_sparse_attention(q, k, v, mask, max_blocks=MAX_BLOCKS, interpret=True,
                                  platform="tpu")

  kept = mask_np & bm.causal_blocks(8, 8, BLOCK, BLOCK)
  first = kept & (np.cumsum(kept, axis=-1) <= MAX_BLOCKS)
  assert kept.sum(-1).max() > MAX_BLOCKS  # some row is truncated
  reference = functools.partial(
      reference_attention, mask_BHQK=bm.expand_to_tokens(jnp.asarray(first), BLOCK, BLOCK))
  assert_matches_reference(kernel, reference, q, k, v, do, seed)
  loss = lambda q, k, v: jnp.sum(kernel(q, k, v))
  grids = pallas_grids(jax.grad(loss, argnums=(0, 1, 2)), q, k, v)
  # forward and dq walk MAX_BLOCKS steps per row; dk/dv all nQ (no column bound)
  assert sorted(g[-1] for g in grids) == [MAX_BLOCKS, MAX_BLOCKS, 8], grids


def test_backward_tiles_apart_from_the_forward_blocks():
  """dq and dk/dv on 16 x 16 tiles of the forward's 32 x 32 blocks (GPU lists)."""
  seed = fresh_seed()
  q, k, v, do = random_qkvo(seed, 1, SEQ_LEN, 2, 1, 32, jnp.float32)
  mask = bm.from_mask(jnp.asarray(random_mask(seed, SEQ_LEN // 32)), block_q=32,
                      block_k=32)
  kernel = functools.partial(block_sparse_attention, block_mask=mask, bwd_block_q=16,
                             bwd_block_k=16, interpret=True, platform="cuda")
  reference = functools.partial(
      reference_attention, mask_BHQK=bm.expand_to_tokens(mask.mask_BHQK, 32, 32))
  assert_matches_reference(kernel, reference, q, k, v, do, seed)


def test_flash_backward_tiles_on_tpu():
  seed = fresh_seed()
  q, k, v, do = random_qkvo(seed, 1, 64, 2, 1, 16, jnp.float32)
  kernel = functools.partial(flash_attention, block_q=32, block_k=32, bwd_block_q=16,
                             bwd_block_k=8, interpret=True, platform="tpu")
  assert_matches_reference(kernel, reference_attention, q, k, v, do, seed)


def test_backward_tiles_must_divide_or_be_multiples_of_the_blocks():
  q = jnp.zeros((1, 64, 1, 16))
  with pytest.raises(ValueError,
                     match=r"bwd_block_q 24 must be a multiple or a divisor of the block 32"):
    flash_attention(q, q, q, block_q=32, block_k=32, bwd_block_q=24, interpret=True)


def test_stage2_backward_tiles_refine_both_list_sets():
  """Stage 2's computed and skipped tiles, each walked on 16 x 16 backward tiles:
  the same gradients as on the forward's 32 x 32 blocks."""
  seed = fresh_seed()
  q, k, v, do = peaked_qkvo(seed, 1, SEQ_LEN, 2, 1, 32, 32, jnp.float32)
  keep = random_mask(seed, SEQ_LEN // 32)
  keep[..., SINK_BLOCK] = True
  mask = bm.from_mask(jnp.asarray(keep), block_q=32, block_k=32)

  def grads(q, k, v, tile):
    attn = lambda q, k, v: block_sparse_attention(
        q, k, v, mask, pv_threshold=LAMBDA, return_skipped=True, bwd_block_q=tile,
        bwd_block_k=tile, interpret=True, platform="tpu")
    _, vjp, skipped = jax.vjp(attn, q, k, v, has_aux=True)
    return vjp(do), skipped

  (fine_grads, skipped), (coarse_grads, _) = compile_fast(
      lambda q, k, v: (grads(q, k, v, 16), grads(q, k, v, 32)), q, k, v)
  assert bool(jnp.any(skipped)), seed  # the skipped list set is walked too
  for name, fine, coarse in zip(("dq", "dk", "dv"), fine_grads, coarse_grads):
    assert rel_err(fine, coarse) < 1e-5, (name, seed)


def count_transposes(fn, *args):
  """XLA transposes in fn's jaxpr outside the kernels."""
  return sum(eqn.primitive.name == "transpose" for eqn in jaxpr_eqns(fn, *args))


def test_tpu_backward_reuses_the_forwards_heads_major_inputs():
  """The TPU kernels read [B, H, L, K]: q, k, v are transposed once in the forward,
  and those copies are the backward's residuals, so the backward transposes only
  dO in, dq, dk, dv out and the delta row term (12 transposes in all before, 9 now)."""
  q, kv = jnp.ones((1, 64, 4, 16)), jnp.ones((1, 64, 2, 16))
  attn = functools.partial(flash_attention, block_q=16, block_k=16, platform="tpu",
                           interpret=True)
  grad = jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v)), argnums=(0, 1, 2))
  assert count_transposes(attn, q, kv, kv) == 4
  assert count_transposes(grad, q, kv, kv) == 4 + 5
