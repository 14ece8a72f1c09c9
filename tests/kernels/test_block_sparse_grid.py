"""The TPU kernels' list axis has a row's largest count of steps, not nK / nQ
(splash attention's shrunk grid): bounds from a trace-time mask or max_blocks."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from kernels import block_mask_lib as bm
from kernels import flash_lists
from kernels.block_sparse import block_sparse_attention
from kernels.dense import reference_attention
from tests.kernels.flash_checks import assert_matches_reference, fresh_seed, random_qkvo

SEQ_LEN, BLOCK, MAX_BLOCKS = 128, 16, 3


def pallas_grids(fn, *args):
  """The grids of every pallas_call in fn's jaxpr (forward and backward)."""
  grids = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "pallas_call":
        grids.append(tuple(eqn.params["grid_mapping"].grid))
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
          if hasattr(sub, "eqns"):
            walk(sub)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return grids


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
