"""Document masking (segment ids) in the Pallas flash kernels, interpret mode:
dense flash and block-sparse against the jnp reference with the token segment
mask, the packed-batch property, and the tile lists skipping cross-document
tiles."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import block_mask_lib as bm
from kernels import flash_lists
from kernels.block_sparse import block_sparse_attention, segmented_block_mask
from kernels.dense import reference_attention
from kernels.flash import flash_attention
from tests.kernels.flash_checks import assert_matches_reference, fresh_seed, random_qkvo
from tests.kernels.test_block_sparse_pallas import make_mask


def random_segments(seed, batch, seq_len):
  """int32 [B, L]: row 0 packed documents of random lengths (one starts mid-block
  at L/2 + 5 and runs over several blocks to the end); the other rows chunks of
  8 tokens with ids drawn from {0, 1, 2}, so ids repeat out of order."""
  rng = np.random.default_rng(seed)
  seg = np.zeros((batch, seq_len), np.int32)
  cuts = set(rng.choice(np.arange(1, seq_len // 2), 3, replace=False)) | {seq_len // 2 + 5}
  seg[0] = np.searchsorted(np.sort(list(cuts)), np.arange(seq_len), side="right")
  for b in range(1, batch):
    seg[b] = np.repeat(rng.integers(0, 3, seq_len // 8), 8)
  return jnp.asarray(seg)


def segment_reference(segment_ids_BL, causal, block_mask_BHQK=None, blocks=None):
  """reference_attention with the token segment mask (and an expanded block mask)."""
  mask = bm.segment_mask_tokens(segment_ids_BL)
  if block_mask_BHQK is not None:
    mask = mask & bm.expand_to_tokens(block_mask_BHQK, *blocks)
  return functools.partial(reference_attention, causal=causal, mask_BHQK=mask)


# (platform, dtype, causal, batch, seq_len, heads, kv_heads, head_dim, block_q, block_k)
FLASH_CASES = [
    ("cuda", jnp.float32, True, 2, 64, 4, 2, 16, 16, 32),
    ("tpu", jnp.float32, True, 2, 64, 2, 1, 32, 32, 16),
    ("cuda", jnp.bfloat16, False, 2, 64, 2, 2, 32, 32, 32),
    ("tpu", jnp.bfloat16, True, 2, 64, 4, 2, 16, 32, 32),
]


@pytest.mark.parametrize(
    "platform,dtype,causal,batch,seq_len,heads,kv_heads,head_dim,block_q,block_k",
    FLASH_CASES)
def test_flash_with_segments_matches_reference(platform, dtype, causal, batch, seq_len,
                                               heads, kv_heads, head_dim, block_q,
                                               block_k):
  seed = fresh_seed()
  q, k, v, do = random_qkvo(seed, batch, seq_len, heads, kv_heads, head_dim, dtype)
  seg = random_segments(seed, batch, seq_len)
  kernel = functools.partial(flash_attention, causal=causal, segment_ids_BL=seg,
                             block_q=block_q, block_k=block_k, interpret=True,
                             platform=platform)
  assert_matches_reference(kernel, segment_reference(seg, causal), q, k, v, do, seed)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_packed_row_equals_documents_run_separately(platform):
  """Documents of block-multiple length packed in a row attend as if alone."""
  seed, block = fresh_seed(), 16
  q, k, v, do = random_qkvo(seed, 2, 64, 2, 1, 16, jnp.float32)
  bounds = [0, 16, 64]
  seg = jnp.asarray(np.repeat([0, 1], np.diff(bounds))[None] + np.array([[0], [7]]),
                    jnp.int32)
  flash = functools.partial(flash_attention, block_q=block, block_k=block,
                            interpret=True, platform=platform)

  def separately(q, k, v):
    docs = [flash(q[:, s:e], k[:, s:e], v[:, s:e]) for s, e in zip(bounds, bounds[1:])]
    return jnp.concatenate(docs, axis=1)

  assert_matches_reference(functools.partial(flash, segment_ids_BL=seg), separately,
                           q, k, v, do, seed)


# (platform, dtype, causal, heads, kv_heads, block_q, block_k, mask_batch, mask_heads)
SPARSE_CASES = [
    ("cuda", jnp.float32, True, 4, 2, 16, 32, 2, 4),
    ("tpu", jnp.bfloat16, False, 2, 1, 32, 16, 1, 2),
]


@pytest.mark.parametrize("platform,dtype,causal,heads,kv_heads,block_q,block_k,"
                         "mask_batch,mask_heads", SPARSE_CASES)
def test_block_sparse_with_segments_matches_reference(platform, dtype, causal, heads,
                                                      kv_heads, block_q, block_k,
                                                      mask_batch, mask_heads):
  seed, batch, seq_len = fresh_seed(), 2, 64
  q, k, v, do = random_qkvo(seed, batch, seq_len, heads, kv_heads, 32, dtype)
  seg = random_segments(seed, batch, seq_len)
  shape = (mask_batch, mask_heads, seq_len // block_q, seq_len // block_k)
  mask = bm.from_mask(jnp.asarray(make_mask(seed, shape, block_q, block_k, "random")),
                      block_q=block_q, block_k=block_k, causal=causal)
  kernel = functools.partial(block_sparse_attention, block_mask=mask, causal=causal,
                             segment_ids_BL=seg, interpret=True, platform=platform)
  reference = segment_reference(seg, causal, mask.mask_BHQK, (block_q, block_k))
  assert_matches_reference(kernel, reference, q, k, v, do, seed)


def _needed_tiles(seg_BL, block_q, block_k, causal):
  """numpy bool [B, nQ, nK]: tiles holding a visible same-document pair."""
  seg_BL = np.asarray(seg_BL)
  batch, seq_len = seg_BL.shape
  visible = seg_BL[:, :, None] == seg_BL[:, None, :]
  if causal:
    visible &= np.tril(np.ones((seq_len, seq_len), bool))
  tiles = visible.reshape(batch, seq_len // block_q, block_q, seq_len // block_k, block_k)
  return tiles.any(axis=(2, 4))


def _segmented_lists(seg_BL, *, block_q, block_k, causal):
  block_mask = segmented_block_mask(None, seg_BL, block_q, block_k, causal=causal)
  return block_mask, flash_lists.from_block_mask(block_mask, causal=causal,
                                                 segmented=True)


def _listed_tiles(lists, batch):
  """numpy bool [B, nQ, nK] of the tiles the kv lists (and the q lists) visit."""
  nq, nk = lists.num_q_blocks, lists.num_k_blocks
  kv_index = np.asarray(lists.kv_index).reshape(batch, nq, nk)
  kv_count = np.asarray(lists.kv_count).reshape(batch, nq)
  q_index = np.asarray(lists.q_index).reshape(batch, nk, nq)
  q_count = np.asarray(lists.q_count).reshape(batch, nk)
  by_rows, by_cols = np.zeros((2, batch, nq, nk), bool)
  for b in range(batch):
    for i in range(nq):
      by_rows[b, i, kv_index[b, i, :kv_count[b, i]]] = True
    for j in range(nk):
      by_cols[b, q_index[b, j, :q_count[b, j]], j] = True
  np.testing.assert_array_equal(by_rows, by_cols)
  return by_rows


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("block_q,block_k", [(16, 16), (16, 32), (32, 16)])
def test_lists_skip_cross_document_tiles(causal, block_q, block_k):
  seg = random_segments(fresh_seed(), 3, 128)
  block_mask, lists = jax.jit(functools.partial(
      _segmented_lists, block_q=block_q, block_k=block_k, causal=causal))(seg)
  listed, needed = _listed_tiles(lists, 3), _needed_tiles(seg, block_q, block_k, causal)
  # Packed documents: exactly the tiles with a visible pair. Ids out of order:
  # min/max ranges over-approximate, but no needed tile may be missing.
  np.testing.assert_array_equal(listed[0], needed[0])
  assert not np.any(needed & ~listed)
  # Segmented lists send every tile down the masked path.
  assert not np.any(np.asarray(lists.kv_full))
  np.testing.assert_array_equal(lists.q_partial, lists.q_count)
  # ANDing the segment blocks again changes nothing (idempotent).
  again = segmented_block_mask(block_mask.mask_BHQK, seg, block_q, block_k, causal=causal)
  np.testing.assert_array_equal(again.kv_index_BHQN, block_mask.kv_index_BHQN)


def test_block_multiple_documents_count_within_document_blocks():
  """Documents of 2, 1 and 3 blocks: each query block lists its own document's
  causal blocks (2 + 1 + 3 rows with counts 1 2 | 1 | 1 2 3), nothing else."""
  seg = jnp.asarray(np.repeat([4, 5, 6], [32, 16, 48])[None], jnp.int32)
  _, lists = _segmented_lists(seg, block_q=16, block_k=16, causal=True)
  np.testing.assert_array_equal(lists.kv_count, [1, 2, 1, 1, 2, 3])
  first = np.asarray(lists.kv_index).reshape(6, 6)[:, 0]
  np.testing.assert_array_equal(first, [0, 0, 2, 3, 3, 3])
  np.testing.assert_array_equal(lists.q_count, [2, 1, 1, 3, 2, 1])


def test_segment_ids_of_wrong_shape_are_rejected():
  q = jnp.zeros((2, 64, 2, 16))
  with pytest.raises(ValueError, match=r"segment_ids_BL must be an integer array"):
    flash_attention(q, q, q, segment_ids_BL=jnp.zeros((2, 32), jnp.int32),
                    interpret=True)
  with pytest.raises(ValueError, match=r"segment_ids_BL must be an integer array"):
    flash_attention(q, q, q, segment_ids_BL=jnp.zeros((2, 64)), interpret=True)
