"""Compute tiles apart from the mask's blocks (kernels.flash_lists.retile): tiles
larger than the blocks list a tile when a block inside is kept and mask the rest
through a per-tile sub-block bitmask; the attention must not change."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import block_mask_lib as bm
from kernels import flash_lists, sparse
from kernels.block_sparse import block_sparse_attention
from kernels.dense import reference_attention
from tests.kernels.flash_checks import assert_matches_reference, fresh_seed, random_qkvo
from tests.kernels.test_block_sparse_grid import pallas_grids
from tests.kernels.test_export import CUSTOM_CALL, export_text

SEQ_LEN, BLOCK = 128, 16


def random_mask(seed, num_blocks, heads=2):
  mask = np.random.default_rng(seed).random((1, heads, num_blocks, num_blocks)) < 0.4
  return mask | np.eye(num_blocks, dtype=bool)


def test_retile_lists_the_tiles_holding_a_block_with_their_bits():
  keep = np.zeros((1, 1, 4, 4), bool)
  keep[0, 0, 0, 0] = keep[0, 0, 2, 1] = keep[0, 0, 3, 0] = keep[0, 0, 3, 3] = True
  keep[0, 0, 1, :2] = True
  lists = flash_lists.from_block_mask(bm.from_mask(jnp.asarray(keep), block_q=16,
                                                   block_k=16), causal=True)
  tiles = flash_lists.retile(lists, 32, 32, segmented=False)
  assert (tiles.block_q, tiles.block_k, tiles.sub_q, tiles.sub_k) == (32, 32, 16, 16)
  assert tiles.all_bits == 0b1111
  # Tile (0, 0): blocks (0,0), (1,0), (1,1) -> bits 0, 2, 3; tile (1, 0): (2,1), (3,0)
  # -> bits 1, 2; tile (1, 1): (3,3) -> bit 3. Bit a * 2 + c for sub-block (a, c).
  np.testing.assert_array_equal(tiles.kv_count, [1, 2])
  np.testing.assert_array_equal(tiles.kv_index.reshape(2, 2), [[0, 0], [0, 1]])
  np.testing.assert_array_equal(tiles.kv_bits.reshape(2, 2), [[0b1101, 0b1101],
                                                              [0b0110, 0b1000]])
  # Tile (1, 0) is causally full but misses blocks: masked, so no unmasked lead.
  np.testing.assert_array_equal(tiles.kv_full, [0, 0])
  np.testing.assert_array_equal(tiles.q_count, [2, 1])
  np.testing.assert_array_equal(tiles.q_bits.reshape(2, 2), [[0b1101, 0b0110],
                                                             [0b1000, 0b1000]])
  np.testing.assert_array_equal(tiles.q_partial, [2, 1])


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("causal", [True, False])
def test_larger_tiles_equal_the_reference(platform, causal):
  """Forward tiles of 2 x 4 blocks, backward tiles of 4 x 1: GQA, fwd and grads."""
  seed = fresh_seed()
  q, k, v, do = random_qkvo(seed, 1, SEQ_LEN, 4, 2, 16, jnp.float32)
  mask = bm.from_mask(jnp.asarray(random_mask(seed, SEQ_LEN // BLOCK, heads=4)),
                      block_q=BLOCK, block_k=BLOCK, causal=causal)
  kernel = functools.partial(block_sparse_attention, block_mask=mask, causal=causal,
                             fwd_block_q=32, fwd_block_k=64, bwd_block_q=64,
                             bwd_block_k=16, interpret=True, platform=platform)
  reference = functools.partial(reference_attention, causal=causal,
                                mask_BHQK=bm.expand_to_tokens(mask.mask_BHQK, BLOCK, BLOCK))
  assert_matches_reference(kernel, reference, q, k, v, do, seed)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_larger_tiles_with_segment_ids(platform):
  seed = fresh_seed()
  q, k, v, do = random_qkvo(seed, 2, SEQ_LEN, 2, 1, 16, jnp.float32)
  starts = np.sort(np.random.default_rng(seed).choice(np.arange(1, SEQ_LEN), 3, False))
  seg = jnp.asarray(np.stack([np.searchsorted(starts, np.arange(SEQ_LEN), "right")] * 2))
  mask = bm.from_mask(jnp.asarray(random_mask(seed, SEQ_LEN // BLOCK)), block_q=BLOCK,
                      block_k=BLOCK)
  kernel = functools.partial(block_sparse_attention, block_mask=mask, segment_ids_BL=seg,
                             fwd_block_q=32, fwd_block_k=32, interpret=True,
                             platform=platform)
  tokens = (bm.expand_to_tokens(mask.mask_BHQK, BLOCK, BLOCK)
            & bm.segment_mask_tokens(seg))
  reference = functools.partial(reference_attention, mask_BHQK=tokens)
  assert_matches_reference(kernel, reference, q, k, v, do, seed)


def test_the_model_path_pads_a_ragged_length_to_the_tiles():
  """kernels.sparse with tile params at L = 77 (pads to the 32-tile multiple), the
  static estimator's window, against the XLA path on the same blocks."""
  seed = fresh_seed()
  q, k, v, do = random_qkvo(seed, 1, 77, 2, 1, 16, jnp.float32)
  params = dict(impl="pallas", causal=True, estimator="static", block_q=16, block_k=16,
                window_blocks=2, sink_blocks=1)
  kernel = functools.partial(sparse.block_sparse, **params, fwd_block_q=32,
                             fwd_block_k=32, bwd_block_q=16, bwd_block_k=32)
  reference = functools.partial(sparse.block_sparse, **dict(params, impl="reference"))
  assert_matches_reference(kernel, reference, q, k, v, do, seed)


def test_larger_tiles_shrink_the_grid():
  """16 x 16 blocks in 32 x 32 tiles: the forward grid has half the rows and at
  most as many list steps as tiles per row."""
  q, k, v, _ = random_qkvo(0, 1, SEQ_LEN, 2, 1, 16, jnp.float32)
  mask = bm.from_mask(jnp.asarray(random_mask(0, SEQ_LEN // BLOCK)), block_q=BLOCK,
                      block_k=BLOCK)
  attn = lambda q, k, v, tile: block_sparse_attention(
      q, k, v, mask, fwd_block_q=tile, fwd_block_k=tile, interpret=True, platform="tpu")
  (blocks,) = pallas_grids(functools.partial(attn, tile=None), q, k, v)
  (tiles,) = pallas_grids(functools.partial(attn, tile=32), q, k, v)
  assert blocks[2] == SEQ_LEN // BLOCK and tiles[2] == SEQ_LEN // 32
  assert tiles[3] <= SEQ_LEN // 32


def test_bad_tiles_are_refused_with_the_fix():
  q = jnp.zeros((1, 64, 1, 16))
  mask = bm.from_mask(jnp.ones((1, 1, 4, 4), bool), block_q=16, block_k=16)
  with pytest.raises(ValueError, match=r"fwd_block_q 24 must be a multiple or a divisor"):
    block_sparse_attention(q, q, q, mask, fwd_block_q=24, interpret=True)
  with pytest.raises(ValueError, match=r"stage 2 \(pv_threshold\) decides per mask block"):
    block_sparse_attention(q, q, q, mask, fwd_block_q=32, pv_threshold=-5.0,
                           interpret=True)
  mask8 = bm.from_mask(jnp.ones((1, 1, 8, 8), bool), block_q=8, block_k=8)
  with pytest.raises(ValueError, match=r"at most 31"):
    block_sparse_attention(q, q, q, mask8, fwd_block_q=64, fwd_block_k=64, interpret=True)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_64_blocks_in_128_tiles_export(platform):
  """The TPU case: a 64-block mask, which the compiled TPU kernel cannot tile,
  runs in 128-tiles; forward and gradient lower for both platforms."""
  batch, seq_len, heads, kv_heads, head_dim = 1, 1024, 4, 2, 128
  keep = np.random.default_rng(0).random((batch, heads, 16, 16)) < 0.3
  mask = bm.from_mask(jnp.asarray(keep | np.eye(16, dtype=bool)), block_q=64, block_k=64)
  q = jax.ShapeDtypeStruct((batch, seq_len, heads, head_dim), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((batch, seq_len, kv_heads, head_dim), jnp.bfloat16)
  attn = functools.partial(block_sparse_attention, block_mask=mask, fwd_block_q=128,
                           fwd_block_k=128, interpret=False, platform=platform)
  grad = jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32)),
                  argnums=(0, 1, 2))
  assert export_text(grad, platform, q, kv, kv).count(CUSTOM_CALL[platform]) == 3
  with pytest.raises(ValueError, match="does not fit the 'tpu' kernel tiling"):
    block_sparse_attention(jnp.zeros(q.shape, q.dtype), jnp.zeros(kv.shape, kv.dtype),
                           jnp.zeros(kv.shape, kv.dtype), mask, interpret=False,
                           platform="tpu")


def test_config_tiles_reach_the_block_kinds_only():
  from experiments.configs import lm
  from models.attention import kind_params
  attn = lm.get_config().attention
  attn.block_q, attn.fwd_block_q, attn.bwd_block_k = 64, 128, 32
  for kind in ("block_sparse", "spectral"):
    params = kind_params(attn, kind)
    assert (params["fwd_block_q"], params["bwd_block_k"]) == (128, 32), kind
    assert "fwd_block_k" not in params  # None: the block
  assert "fwd_block_q" not in kind_params(attn, "dense")
