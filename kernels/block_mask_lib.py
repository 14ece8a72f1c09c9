"""The block mask every block-sparse kernel consumes.

A boolean mask over (query block, key block) pairs plus the per-row lists the
kernels iterate: for query block i, `kv_index[..., i, :kv_count[..., i]]` are
its active key blocks in ascending order; the tail is padded with the last
active index so a kernel that walks the padded list re-fetches a block it
already holds (no extra DMA) and skips it by comparing against the count.
The transposed lists (`q_index`, `q_count`) drive the dk/dv backward pass.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockMask:
  mask_BHQK: jax.Array      # bool [B, H, nQ, nK]
  kv_index_BHQN: jax.Array  # int32 [B, H, nQ, nK]: active key blocks per query block
  kv_count_BHQ: jax.Array   # int32 [B, H, nQ]
  q_index_BHKN: jax.Array   # int32 [B, H, nK, nQ]: active query blocks per key block
  q_count_BHK: jax.Array    # int32 [B, H, nK]
  density: jax.Array        # float32 []: kept / causal-reachable blocks
  block_q: int = dataclasses.field(metadata=dict(static=True), default=128)
  block_k: int = dataclasses.field(metadata=dict(static=True), default=128)


def causal_blocks(num_q_blocks, num_k_blocks, block_q, block_k):
  """bool [nQ, nK]: key block j holds a key visible to some query of block i.

  numpy, so masks built from it stay trace-time constants under jit.
  """
  first_key_K = np.arange(num_k_blocks) * block_k
  last_query_Q = (np.arange(num_q_blocks) + 1) * block_q - 1
  return first_key_K[None, :] <= last_query_Q[:, None]


def active_lists(mask_BHRC):
  """Per row: ascending active column indices padded with the last one, and counts."""
  num_cols = mask_BHRC.shape[-1]
  order = jnp.argsort(~mask_BHRC, axis=-1, stable=True).astype(jnp.int32)
  count_BHR = jnp.sum(mask_BHRC, axis=-1, dtype=jnp.int32)
  last_BHR = jnp.take_along_axis(
      order, jnp.maximum(count_BHR - 1, 0)[..., None], axis=-1)
  slot_C = jnp.arange(num_cols, dtype=jnp.int32)
  index_BHRC = jnp.where(slot_C < count_BHR[..., None], order, last_BHR)
  return index_BHRC, count_BHR


def from_mask(mask_BHQK, *, block_q, block_k, causal=True):
  """Builds the kernel lists (under stop_gradient) from a boolean block mask."""
  mask_BHQK = jax.lax.stop_gradient(mask_BHQK).astype(bool)
  num_q, num_k = mask_BHQK.shape[-2:]
  reachable_QK = (causal_blocks(num_q, num_k, block_q, block_k) if causal
                  else jnp.ones((num_q, num_k), bool))
  mask_BHQK = mask_BHQK & reachable_QK
  kv_index, kv_count = active_lists(mask_BHQK)
  q_index, q_count = active_lists(jnp.swapaxes(mask_BHQK, -1, -2))
  kept = jnp.sum(mask_BHQK, dtype=jnp.float32)
  total = jnp.sum(reachable_QK, dtype=jnp.float32) * mask_BHQK.shape[0] * mask_BHQK.shape[1]
  return BlockMask(mask_BHQK, kv_index, kv_count, q_index, q_count,
                   kept / total, block_q, block_k)


def expand_to_tokens(mask_BHQK, block_q, block_k, length=None):
  """bool [B, H, nQ*block_q, nK*block_k]: the block mask at token resolution, cut
  to [.., length, length] when given (a ragged length's partial last blocks)."""
  tokens = jnp.repeat(jnp.repeat(mask_BHQK, block_q, axis=-2), block_k, axis=-1)
  return tokens if length is None else tokens[..., :length, :length]


def segment_ranges(segment_ids_BL, block):
  """(min, max) segment id per block: [B, ceil(L/block)] each (a partial last block:
  over its real tokens; the last id is repeated, which changes neither)."""
  batch, length = segment_ids_BL.shape
  padded = -(-length // block) * block
  if padded != length:
    segment_ids_BL = jnp.pad(segment_ids_BL, [(0, 0), (0, padded - length)], mode="edge")
  blocks_BNb = segment_ids_BL.reshape(batch, -1, block)
  return jnp.min(blocks_BNb, axis=-1), jnp.max(blocks_BNb, axis=-1)


def segment_block_mask(segment_ids_BL, block_q, block_k):
  """bool [B, 1, nQ, nK]: query block i and key block j may share a document.

  From each block's (min, max) segment id: exact when ids are non-decreasing along the
  sequence (packed documents, as experiments.data makes them); otherwise a superset,
  which stays correct because every kernel also masks the tile elementwise
  (segment_q == segment_k), it only skips fewer blocks. Under stop_gradient (ints).
  """
  seg = jax.lax.stop_gradient(segment_ids_BL).astype(jnp.int32)
  q_lo, q_hi = segment_ranges(seg, block_q)
  k_lo, k_hi = segment_ranges(seg, block_k)
  overlap = (q_lo[:, :, None] <= k_hi[:, None, :]) & (k_lo[:, None, :] <= q_hi[:, :, None])
  return overlap[:, None]


def segment_mask_tokens(segment_ids_BL):
  """bool [B, 1, L, L]: query and key tokens belong to the same segment."""
  return (segment_ids_BL[:, None, :, None] == segment_ids_BL[:, None, None, :])
