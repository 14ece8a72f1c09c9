"""The integer lists that drive the block-sparse flash kernels.

A `SparseLists` is a BlockMask flattened for kernels: 1-D int32 arrays (scalar
memory on TPU prefers flat arrays) plus the counts that split each list into
tiles that need the elementwise causal mask and tiles that do not. Rows are
indexed by (mask batch, mask head, block); a mask batch or head dimension of 1
broadcasts over the data's batch or query heads.

Dense flash attention is the same kernel over the full (causal) block pattern,
built here with numpy at trace time so it costs nothing at run time.

Compute tiles need not be the mask's blocks (`retile`): smaller tiles list
every sub-tile of a listed block; larger ones (a 128-wide compute tile over
64-blocks, the TPU case) list a tile when any block inside is listed and carry
a bitmask of its listed sub-blocks (`kv_bits` / `q_bits`, aligned with the
index lists) that the kernels AND into a tile's elementwise mask.

`kv_steps` / `q_steps` are static bounds on a row's count: the TPU kernels'
list axis has that many grid steps instead of nK / nQ (splash attention's
shrunk grid). They come from a mask known at trace time, or from the caller
(block_sparse_attention's max_blocks); otherwise they are nK / nQ.
"""
import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from kernels import block_mask_lib
from kernels.block_mask_lib import BlockMask


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseLists:
  kv_index: jax.Array   # [Bm*Hm*nQ*nK] active key blocks per query block, ascending
  kv_count: jax.Array   # [Bm*Hm*nQ]
  kv_full: jax.Array    # [Bm*Hm*nQ] leading entries that need no causal mask
  q_index: jax.Array    # [Bm*Hm*nK*nQ] active query blocks per key block, ascending
  q_count: jax.Array    # [Bm*Hm*nK]
  q_partial: jax.Array  # [Bm*Hm*nK] leading entries that need the causal mask
  mask_batch: int = dataclasses.field(metadata=dict(static=True))
  mask_heads: int = dataclasses.field(metadata=dict(static=True))
  num_q_blocks: int = dataclasses.field(metadata=dict(static=True))
  num_k_blocks: int = dataclasses.field(metadata=dict(static=True))
  block_q: int = dataclasses.field(metadata=dict(static=True))
  block_k: int = dataclasses.field(metadata=dict(static=True))
  causal: bool = dataclasses.field(metadata=dict(static=True))
  kv_steps: int = dataclasses.field(metadata=dict(static=True))  # >= every kv_count
  q_steps: int = dataclasses.field(metadata=dict(static=True))   # >= every q_count
  # Tiles larger than the mask's blocks (retile): per listed tile, bit
  # a * (block_k // sub_k) + c is set iff its sub-block (a, c) of size
  # (sub_q, sub_k) is listed. None: every pair of a listed tile is listed.
  kv_bits: Optional[jax.Array] = None  # aligned with kv_index
  q_bits: Optional[jax.Array] = None   # aligned with q_index
  sub_q: int = dataclasses.field(default=0, metadata=dict(static=True))
  sub_k: int = dataclasses.field(default=0, metadata=dict(static=True))

  @property
  def all_bits(self):
    """The bitmask of a tile whose every sub-block is listed."""
    return (1 << ((self.block_q // self.sub_q) * (self.block_k // self.sub_k))) - 1

  def _mask_bh(self, b, h):
    return (b if self.mask_batch > 1 else 0), (h if self.mask_heads > 1 else 0)

  def kv_row(self, b, h, i):
    """Flat row of query block i of (batch b, query head h) in kv_count / kv_full."""
    mb, mh = self._mask_bh(b, h)
    return (mb * self.mask_heads + mh) * self.num_q_blocks + i

  def q_row(self, b, h, j):
    """Flat row of key block j of (batch b, query head h) in q_count / q_partial."""
    mb, mh = self._mask_bh(b, h)
    return (mb * self.mask_heads + mh) * self.num_k_blocks + j


def full_tiles(num_q_blocks, num_k_blocks, block_q, block_k, causal, xp=jnp):
  """bool [nQ, nK]: tiles whose every (query, key) pair is visible."""
  if not causal:
    return xp.ones((num_q_blocks, num_k_blocks), bool)
  last_key_K = (xp.arange(num_k_blocks) + 1) * block_k - 1
  first_query_Q = xp.arange(num_q_blocks) * block_q
  return last_key_K[None, :] <= first_query_Q[:, None]


def max_count(count, bound, ceiling):
  """Static grid length of a list axis: the largest count when it is known at
  trace time, else `bound` (None: ceiling); at least 1 (finalize must run)."""
  known = ceiling if bound is None else min(bound, ceiling)
  if not isinstance(count, jax.core.Tracer):
    known = min(known, int(np.max(np.asarray(count), initial=0)))
  return max(1, known)


def from_block_mask(block_mask: BlockMask, *, causal, segmented=False, kv_steps=None,
                    q_steps=None):
  """Kernel lists for a BlockMask (lists from it, split counts derived here).

  segmented: the kernels also mask by segment id, so no tile is known to be
  full (a causally full tile may still cross a document boundary): every
  active tile goes to the masked path (kv_full = 0, q_partial = q_count).
  kv_steps / q_steps: static bounds the caller guarantees on the counts.
  """
  mask_BHQK = block_mask.mask_BHQK
  mask_batch, mask_heads, num_q, num_k = mask_BHQK.shape
  full_QK = full_tiles(num_q, num_k, block_mask.block_q, block_mask.block_k, causal)
  if segmented:
    full_QK = jnp.zeros_like(full_QK)
  kv_full = jnp.sum(mask_BHQK & full_QK, axis=-1, dtype=jnp.int32)
  q_partial = jnp.sum(mask_BHQK & ~full_QK, axis=-2, dtype=jnp.int32)
  as_flat = lambda x: jax.lax.stop_gradient(x).astype(jnp.int32).reshape(-1)
  return SparseLists(
      as_flat(block_mask.kv_index_BHQN), as_flat(block_mask.kv_count_BHQ),
      as_flat(kv_full), as_flat(block_mask.q_index_BHKN),
      as_flat(block_mask.q_count_BHK), as_flat(q_partial),
      mask_batch, mask_heads, num_q, num_k, block_mask.block_q,
      block_mask.block_k, causal,
      max_count(block_mask.kv_count_BHQ, kv_steps, num_k),
      max_count(block_mask.q_count_BHK, q_steps, num_q))


def listed_mask(lists):
  """bool [Bm, Hm, nQ, nK]: the tiles the kv lists visit."""
  rows = lists.mask_batch * lists.mask_heads * lists.num_q_blocks
  num_k = lists.num_k_blocks
  index_RN = lists.kv_index.reshape(rows, num_k)
  live_RN = jnp.arange(num_k) < lists.kv_count[:, None]
  # Scatter-max: the padded tail repeats an active index with live = 0.
  listed_RK = jnp.zeros((rows, num_k), jnp.int32).at[
      jnp.arange(rows)[:, None], index_RN].max(live_RN.astype(jnp.int32))
  return listed_RK.reshape(lists.mask_batch, lists.mask_heads, lists.num_q_blocks,
                           num_k) > 0


# A tile's sub-blocks are bits of one int32 (sign bit unused).
MAX_SUB_BLOCKS = 31


def check_tile(name, tile, block):
  """Raises ValueError unless a compute tile and a mask block divide one another
  (retile checks the bitmask's capacity)."""
  if tile % block and block % tile:
    raise ValueError(f"{name} {tile} must be a multiple or a divisor of the mask block "
                     f"{block}.")


def retile(lists, tile_q, tile_k, *, segmented):
  """The same attention as lists over compute tiles (tile_q, tile_k), each a
  divisor or a multiple of its block (kernels use the lists' block_q/block_k as
  tiles). Smaller: a sub-tile is listed iff its block is (FlashAttention-2's
  backward tiles). Larger: a tile is listed iff a block inside is, and its
  kv_bits / q_bits say which. Bounds scale with the split; lists come at their
  mask's blocks (no bits)."""
  if (tile_q, tile_k) == (lists.block_q, lists.block_k):
    return lists
  assert lists.kv_bits is None, "retile takes lists at their mask's blocks"
  check_tile("tile_q", tile_q, lists.block_q)
  check_tile("tile_k", tile_k, lists.block_k)
  sub_q, sub_k = min(tile_q, lists.block_q), min(tile_k, lists.block_k)
  split_q, split_k = lists.block_q // sub_q, lists.block_k // sub_k
  group_q, group_k = tile_q // sub_q, tile_k // sub_k
  if group_q * group_k > MAX_SUB_BLOCKS:
    raise ValueError(f"compute tiles ({tile_q}, {tile_k}) hold {group_q * group_k} mask "
                     f"blocks ({sub_q}, {sub_k}); at most {MAX_SUB_BLOCKS}: use larger "
                     "mask blocks or smaller tiles.")
  mask = listed_mask(lists)
  fine = jnp.repeat(jnp.repeat(mask, split_q, axis=-2), split_k, axis=-1)
  # Sub-block bounds, then coarse rows: each listed sub-block lands in one tile.
  kv_steps, q_steps = lists.kv_steps * split_k, lists.q_steps * split_q
  if (group_q, group_k) == (1, 1):
    block_mask = block_mask_lib.from_mask(fine, block_q=tile_q, block_k=tile_k,
                                          causal=lists.causal)
    return from_block_mask(block_mask, causal=lists.causal, segmented=segmented,
                           kv_steps=kv_steps, q_steps=q_steps)
  return _coarsen(fine, sub_q, sub_k, group_q, group_k, lists.causal, segmented,
                  kv_steps * group_q, q_steps * group_k)


def _coarsen(fine_BHQK, sub_q, sub_k, group_q, group_k, causal, segmented, kv_steps,
             q_steps):
  """Lists of (group_q x group_k)-block tiles of a sub-block mask, with bits."""
  mask_batch, mask_heads, num_q, num_k = fine_BHQK.shape
  num_q, num_k = num_q // group_q, num_k // group_k
  tile_q, tile_k = sub_q * group_q, sub_k * group_k
  sub_BHQKS = jnp.transpose(
      fine_BHQK.reshape(mask_batch, mask_heads, num_q, group_q, num_k, group_k),
      (0, 1, 2, 4, 3, 5)).reshape(mask_batch, mask_heads, num_q, num_k, -1)
  weights_S = jnp.left_shift(1, jnp.arange(group_q * group_k, dtype=jnp.int32))
  bits_BHQK = jnp.sum(jnp.where(sub_BHQKS, weights_S, 0), axis=-1, dtype=jnp.int32)
  block_mask = block_mask_lib.from_mask(bits_BHQK != 0, block_q=tile_q, block_k=tile_k,
                                        causal=causal)
  # A tile needs the elementwise mask unless causally full with every sub-block listed.
  no_mask_QK = full_tiles(num_q, num_k, tile_q, tile_k, causal)
  no_mask_BHQK = no_mask_QK & (bits_BHQK == (1 << (group_q * group_k)) - 1)
  if segmented:
    no_mask_BHQK = jnp.zeros_like(no_mask_BHQK)

  def along(x_BHRC, index_BHRN):
    return jnp.take_along_axis(x_BHRC, index_BHRN, axis=-1)

  kv_live = jnp.arange(num_k) < block_mask.kv_count_BHQ[..., None]
  kv_plain = along(no_mask_BHQK, block_mask.kv_index_BHQN) & kv_live
  # Kernels run a leading run unmasked: the entries before the first masked one.
  kv_full = jnp.sum(jnp.cumprod(kv_plain, axis=-1), axis=-1, dtype=jnp.int32)
  q_live = jnp.arange(num_q) < block_mask.q_count_BHK[..., None]
  q_masked = ~along(jnp.swapaxes(no_mask_BHQK, -1, -2), block_mask.q_index_BHKN) & q_live
  # ... and a leading run masked: up to the last entry that needs it.
  q_partial = jnp.max(jnp.where(q_masked, jnp.arange(1, num_q + 1), 0), axis=-1)
  as_flat = lambda x: jax.lax.stop_gradient(x).astype(jnp.int32).reshape(-1)
  return SparseLists(
      as_flat(block_mask.kv_index_BHQN), as_flat(block_mask.kv_count_BHQ),
      as_flat(kv_full), as_flat(block_mask.q_index_BHKN),
      as_flat(block_mask.q_count_BHK), as_flat(q_partial),
      mask_batch, mask_heads, num_q, num_k, tile_q, tile_k, causal,
      max_count(block_mask.kv_count_BHQ, kv_steps, num_k),
      max_count(block_mask.q_count_BHK, q_steps, num_q),
      kv_bits=as_flat(along(bits_BHQK, block_mask.kv_index_BHQN)),
      q_bits=as_flat(along(jnp.swapaxes(bits_BHQK, -1, -2), block_mask.q_index_BHKN)),
      sub_q=sub_q, sub_k=sub_k)


def _ascending_lists(mask_RC):
  """numpy: per row the active columns ascending, padded with the last one."""
  rows, cols = mask_RC.shape
  index_RC = np.zeros((rows, cols), np.int32)
  count_R = mask_RC.sum(axis=-1).astype(np.int32)
  for r in range(rows):
    active = np.flatnonzero(mask_RC[r])
    if active.size:
      index_RC[r, :active.size] = active
      index_RC[r, active.size:] = active[-1]
  return index_RC.reshape(-1), count_R


def dense_lists(seq_len, block_q, block_k, causal):
  """Lists for full attention (every causally reachable tile), as constants."""
  num_q, num_k = seq_len // block_q, seq_len // block_k
  full_QK = full_tiles(num_q, num_k, block_q, block_k, causal, xp=np)
  if causal:
    first_key_K = np.arange(num_k) * block_k
    last_query_Q = (np.arange(num_q) + 1) * block_q - 1
    active_QK = first_key_K[None, :] <= last_query_Q[:, None]
  else:
    active_QK = np.ones((num_q, num_k), bool)
  kv_index, kv_count = _ascending_lists(active_QK)
  q_index, q_count = _ascending_lists(active_QK.T)
  kv_full = (active_QK & full_QK).sum(axis=-1).astype(np.int32)
  q_partial = (active_QK & ~full_QK).sum(axis=0).astype(np.int32)
  arrays = [jnp.asarray(x) for x in (kv_index, kv_count, kv_full, q_index,
                                     q_count, q_partial)]
  return SparseLists(*arrays, 1, 1, num_q, num_k, block_q, block_k, causal,
                     max_count(kv_count, None, num_k), max_count(q_count, None, num_q))
