"""Block-sparse flash attention (Pallas): public entry point and custom_vjp.

`block_sparse_attention(q, k, v, block_mask)` computes softmax attention over
the (query block, key block) tiles a BlockMask keeps, optionally intersected
with the causal mask at token resolution. Forward, dq and dk/dv are Pallas
kernels for TPU (Mosaic, sparse_flash_tpu) and GPU (Triton, sparse_flash_gpu);
dense flash attention (kernels.flash) is the same kernel over all tiles.

Mask broadcasting: `block_mask.mask_BHQK` may have batch B or 1 and heads H
(query heads) or 1.

Compute tiles: the kernels' tiles default to the mask's blocks; `fwd_block_q`
/ `fwd_block_k` and `bwd_block_q` / `bwd_block_k` set them apart, each a
multiple or a divisor of its block (kernels.flash_lists.retile): a 64-block
mask runs in 128-wide tiles (the compiled TPU minimum) with the 64-blocks
masked inside, and the backward may use smaller tiles than the forward
(FlashAttention-2). Only the compute tiles must fit the platform's tiling.

Document masking: `segment_ids_BL` (int32 [B, L]) lets query i see key j only
when their ids are equal. The block mask is intersected with the blocks that
may share a segment (cross-document tiles are skipped, never loaded), and the
kernels mask every computed tile elementwise, so ids need not be sorted.

SpargeAttn's stage 2: `pv_threshold` (lambda <= 0) also skips the P.V product
of kept tiles whose scores are negligible (the rule and oracle: kernels.pv_skip);
`return_skipped=True` returns which tiles were skipped. None: kernels unchanged.
"""
import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np

from kernels import (block_mask_lib, flash_lists, fused_bwd_gpu, fused_bwd_tpu, pv_skip,
                     sparse_flash_gpu, sparse_flash_tpu, sparse_flash_tpu_bwd)
from kernels.block_mask_lib import BlockMask
from kernels.platform import resolve_platform

_BACKENDS = {
    "tpu": types.SimpleNamespace(forward=sparse_flash_tpu.forward,
                                 backward=sparse_flash_tpu_bwd.backward),
    "cuda": sparse_flash_gpu,
}
# fused_bwd=True: one backward kernel per key block (FlashAttention-2's 5 matmuls a tile).
_FUSED_BACKWARD = {"tpu": fused_bwd_tpu.backward, "cuda": fused_bwd_gpu.backward}


def valid_blocks(seq_len, platform, interpret):
  """Block sizes that divide seq_len and satisfy the compiled platform's tiling."""
  sizes = [d for d in range(8, seq_len + 1, 8) if seq_len % d == 0]
  if interpret:
    return sizes
  if platform == "tpu":
    return [d for d in sizes if d % 128 == 0 or d == seq_len]
  return [d for d in sizes if d >= 16 and d & (d - 1) == 0]


def check_inputs(q_BLHK, k_BLGK, v_BLGK, block_q, block_k, platform, interpret,
                 tiled=False):
  """Raises ValueError (with the fix) for shapes the kernels do not support.

  tiled: compute tiles other than the blocks are set (check_tiles checks them),
  so the blocks need only divide seq_len.
  """
  if q_BLHK.ndim != 4 or k_BLGK.shape != v_BLGK.shape or k_BLGK.ndim != 4:
    raise ValueError("expected q [B, L, H, K] and k, v [B, L, G, K] of equal shape; "
                     f"got {q_BLHK.shape}, {k_BLGK.shape}, {v_BLGK.shape}.")
  batch, seq_len, num_heads, head_dim = q_BLHK.shape
  if k_BLGK.shape[0] != batch or k_BLGK.shape[1] != seq_len or k_BLGK.shape[3] != head_dim:
    raise ValueError(f"q {q_BLHK.shape} and k {k_BLGK.shape} must agree on batch, "
                     "seq_len and head_dim (self-attention).")
  if num_heads % k_BLGK.shape[2]:
    raise ValueError(f"query heads {num_heads} must be a multiple of kv heads "
                     f"{k_BLGK.shape[2]}.")
  valid = valid_blocks(seq_len, platform, interpret or tiled)
  for name, block in (("block_q", block_q), ("block_k", block_k)):
    if block not in valid:
      if seq_len % block:  # a BlockMask fixes the geometry; kernels.attention pads for you
        raise ValueError(
            f"seq_len {seq_len} is not a multiple of {name} {block}; pad the sequence to "
            f"a multiple of {block} (kernels.attention and flash_attention do, for any length).")
      raise ValueError(
          f"{name} {block} does not fit the {platform!r} kernel tiling; choose {name} in "
          f"{valid or 'a padded seq_len (multiple of 128)'}.")
  if platform == "cuda" and not interpret and (head_dim < 16 or head_dim & (head_dim - 1)):
    raise ValueError(f"head_dim {head_dim} must be a power of two >= 16 for the GPU "
                     "kernel; pad head_dim.")


def check_segment_ids(segment_ids_BL, q_BLHK):
  """Raises ValueError unless segment ids are an integer [B, L] array."""
  if segment_ids_BL is None:
    return
  if (segment_ids_BL.shape != q_BLHK.shape[:2]
      or not jnp.issubdtype(segment_ids_BL.dtype, jnp.integer)):
    raise ValueError(f"segment_ids_BL must be an integer array of shape {q_BLHK.shape[:2]} "
                     f"([batch, seq_len] of q); got {segment_ids_BL.dtype} "
                     f"{segment_ids_BL.shape}.")


# Segment ids (an int array or None) are a non-differentiable input like the lists.
# fwd_tiles / bwd_tiles: static (tile_q, tile_k) of the forward and backward
# kernels; the lists are retiled to them (kernels.flash_lists.retile).
# fused_bwd: static bool, the backward is the fused kernel (_FUSED_BACKWARD).
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _sparse_flash(q_BLHK, k_BLGK, v_BLGK, lists, segment_ids_BL, platform, interpret,
                  bwd_tiles, fwd_tiles, fused_bwd):
  return _sparse_flash_fwd(q_BLHK, k_BLGK, v_BLGK, lists, segment_ids_BL, platform,
                           interpret, bwd_tiles, fwd_tiles, fused_bwd)[0]


def _segment_kwargs(segment_ids_BL):
  # Without ids the backends are called exactly as before (kernels unchanged).
  return {} if segment_ids_BL is None else {"segment_ids_BL": segment_ids_BL}


def _layout_kwargs(platform):
  return {"heads_major": True} if platform == "tpu" else {}


def _kernel_layout(q_BLHK, k_BLGK, v_BLGK, platform):
  """q, k, v as the backend's kernels read them: [B, H, L, K] on TPU (Mosaic blocks
  end in (block, head_dim)), transposed once here; the forward keeps these copies as
  the backward's residuals, so the backward does not transpose them again."""
  if platform != "tpu":
    return q_BLHK, k_BLGK, v_BLGK
  return sparse_flash_tpu.heads_major_inputs(q_BLHK, k_BLGK, v_BLGK, False)


def _sparse_flash_fwd(q_BLHK, k_BLGK, v_BLGK, lists, segment_ids_BL, platform,
                      interpret, bwd_tiles, fwd_tiles, fused_bwd):
  tile_lists = flash_lists.retile(lists, *fwd_tiles, segmented=segment_ids_BL is not None)
  q, k, v = _kernel_layout(q_BLHK, k_BLGK, v_BLGK, platform)
  o_BLHK, lse = _BACKENDS[platform].forward(q, k, v, tile_lists,
                                            **_segment_kwargs(segment_ids_BL),
                                            **_layout_kwargs(platform), interpret=interpret)
  return o_BLHK, (q, k, v, o_BLHK, lse, lists, segment_ids_BL)


def _sparse_flash_bwd(platform, interpret, bwd_tiles, fwd_tiles, fused_bwd, residuals,
                      do_BLHK):
  del fwd_tiles  # the lse residual does not depend on the forward's tiles
  q, k, v, o_BLHK, lse, lists, segment_ids_BL = residuals  # q, k, v: _kernel_layout
  tile_lists = flash_lists.retile(lists, *bwd_tiles, segmented=segment_ids_BL is not None)
  backward = _FUSED_BACKWARD[platform] if fused_bwd else _BACKENDS[platform].backward
  dq, dk, dv = backward(q, k, v, o_BLHK, lse, do_BLHK, tile_lists, interpret=interpret,
                        **_segment_kwargs(segment_ids_BL), **_layout_kwargs(platform))
  no_grad = jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0),
                         (lists, segment_ids_BL))
  return dq, dk, dv, *no_grad


_sparse_flash.defvjp(_sparse_flash_fwd, _sparse_flash_bwd)


# Stage 2 (pv_threshold): the forward also returns which tiles' P.V it skipped.
# The backward treats those decisions as constants and walks two list sets: the
# computed tiles with the usual kernels, the skipped ones with their "skipped"
# variant (dS = -P * delta, nothing to dv); the partial gradients are summed.
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _sparse_flash_pv(q_BLHK, k_BLGK, v_BLGK, lists, segment_ids_BL, platform, interpret,
                     bwd_tiles, pv_threshold):
  (o_BLHK, skipped_BHQK), _ = _sparse_flash_pv_fwd(
      q_BLHK, k_BLGK, v_BLGK, lists, segment_ids_BL, platform, interpret, bwd_tiles,
      pv_threshold)
  return o_BLHK, skipped_BHQK


def _sparse_flash_pv_fwd(q_BLHK, k_BLGK, v_BLGK, lists, segment_ids_BL, platform,
                         interpret, bwd_tiles, pv_threshold):
  q, k, v = _kernel_layout(q_BLHK, k_BLGK, v_BLGK, platform)
  o_BLHK, lse, skipped_BHQK = _BACKENDS[platform].forward(
      q, k, v, lists, **_segment_kwargs(segment_ids_BL), **_layout_kwargs(platform),
      interpret=interpret, pv_threshold=pv_threshold)
  residuals = (q, k, v, o_BLHK, lse, lists, segment_ids_BL, skipped_BHQK)
  return (o_BLHK, skipped_BHQK), residuals


def _sparse_flash_pv_bwd(platform, interpret, bwd_tiles, pv_threshold, residuals,
                         cotangents):
  del pv_threshold  # the decisions are in the residual skip map
  q, k, v, o_BLHK, lse, lists, segment_ids_BL, skipped_BHQK = residuals
  do_BLHK, _ = cotangents  # the skip map has no gradient
  segmented = segment_ids_BL is not None
  computed, skipped = (flash_lists.retile(x, *bwd_tiles, segmented=segmented)
                       for x in split_lists(lists, skipped_BHQK, segmented))
  dq, dk, dv = _BACKENDS[platform].backward(
      q, k, v, o_BLHK, lse, do_BLHK, computed, interpret=interpret,
      skipped_lists=skipped, **_segment_kwargs(segment_ids_BL), **_layout_kwargs(platform))
  no_grad = jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0),
                         (lists, segment_ids_BL))
  return dq, dk, dv, *no_grad


_sparse_flash_pv.defvjp(_sparse_flash_pv_fwd, _sparse_flash_pv_bwd)


def listed_tiles(lists, batch, num_heads):
  """bool [B, H, nQ, nK]: the tiles the kv lists visit (broadcast mask rows)."""
  listed = flash_lists.listed_mask(lists)
  return jnp.broadcast_to(listed, (batch, num_heads, *listed.shape[2:]))


def split_lists(lists, skipped_BHQK, segmented):
  """(computed, skipped) SparseLists with a row per (batch, query head): the
  listed tiles whose P.V the forward computed, and those it skipped."""
  listed = listed_tiles(lists, *skipped_BHQK.shape[:2])

  def to_lists(mask_BHQK):  # subsets of the listed tiles: the same bounds hold
    block_mask = block_mask_lib.from_mask(mask_BHQK, block_q=lists.block_q,
                                          block_k=lists.block_k, causal=lists.causal)
    return flash_lists.from_block_mask(block_mask, causal=lists.causal,
                                       segmented=segmented, kv_steps=lists.kv_steps,
                                       q_steps=lists.q_steps)
  return to_lists(listed & ~skipped_BHQK), to_lists(listed & skipped_BHQK)


# TPU scalar memory is 1 MiB (v4 to v6e); the kernels prefetch one list set.
_TPU_LIST_BYTES = 512 * 1024


def _check_tpu_list_bytes(rows, seq_len, tiles, bits, platform, interpret, what):
  """rows: mask rows; tiles: the kernels' (tile_q, tile_k); bits: the lists carry
  sub-block bitmasks (tiles larger than the blocks), as large as the index lists."""
  list_bytes = (4 * rows * (seq_len // tiles[0] + 1) * (seq_len // tiles[1] + 1)
                * (2 if bits else 1))
  if platform == "tpu" and not interpret and list_bytes > _TPU_LIST_BYTES:
    raise ValueError(
        f"{what} need {list_bytes} bytes of TPU scalar memory (limit "
        f"{_TPU_LIST_BYTES}); use larger blocks, or shard batch/heads (shard_map) "
        "so each device holds fewer mask rows.")


def run_lists(q_BLHK, k_BLGK, v_BLGK, lists, *, platform, interpret,
              segment_ids_BL=None, pv_threshold=None, return_skipped=False,
              fwd_block_q=None, fwd_block_k=None, bwd_block_q=None, bwd_block_k=None,
              fused_bwd=False):
  """Differentiable block-sparse flash attention over prepared SparseLists.

  segment_ids_BL (int [B, L] or None): mask every computed tile by segment id.
  The lists should already skip the cross-segment tiles (kernels.flash and
  block_sparse_attention build them so); correctness does not depend on it.
  pv_threshold (SpargeAttn's lambda, <= 0; None: off): skip a tile's P.V by
  the rule of kernels.pv_skip (see _sparse_flash_pv); -inf runs the stage-1
  kernels. return_skipped: return (o_BLHK, skipped_BHQK), bool [B, H, nQ, nK]
  without gradient. fwd_block_q / fwd_block_k (None: the blocks): the forward
  kernel's compute tiles; bwd_block_q / bwd_block_k (None: the forward's): the
  dq and dk/dv kernels' (FlashAttention-2 sizes its backward tiles apart from
  the forward's). Each is a multiple or a divisor of its block (larger tiles
  mask the blocks inside). Stage 2's skip rule is per mask block, so with
  pv_threshold the forward's tiles are the blocks.
  fused_bwd: one backward kernel that computes P and dS once per tile
  (kernels.fused_bwd_gpu / fused_bwd_tpu) instead of the dq and dk/dv kernels;
  opt-in, as its GPU dq sums by atomics in a varying order and its TPU dq
  partials take up to nK x dq in float32. Stage 2 (pv_threshold) keeps the
  two-kernel backward.
  """
  pv_threshold = pv_skip.check_pv_threshold(pv_threshold)
  if pv_threshold == -math.inf:
    # Never skips: the stage-1 kernels are exact on every backend (a compiled
    # branch around P.V may round differently); a finite lambda runs stage 2.
    pv_threshold = None
  seq_len, blocks = q_BLHK.shape[1], (lists.block_q, lists.block_k)
  if pv_threshold is not None and (fwd_block_q or lists.block_q,
                                   fwd_block_k or lists.block_k) != blocks:
    raise ValueError(
        f"stage 2 (pv_threshold) decides per mask block: leave fwd_block_q / fwd_block_k "
        f"unset or equal to the blocks {blocks} (got {fwd_block_q}, {fwd_block_k}).")
  fwd_tiles = check_tiles(seq_len, lists, ("fwd_block_q", fwd_block_q),
                          ("fwd_block_k", fwd_block_k), platform, interpret)
  bwd_tiles = check_tiles(seq_len, lists, ("bwd_block_q", bwd_block_q or fwd_tiles[0]),
                          ("bwd_block_k", bwd_block_k or fwd_tiles[1]), platform,
                          interpret)
  rows = lists.mask_batch * lists.mask_heads
  for tiles, what in ((fwd_tiles, "the forward's block lists"),
                      (bwd_tiles, "the backward tiles' lists")):
    bits = tiles[0] > blocks[0] or tiles[1] > blocks[1]
    _check_tpu_list_bytes(rows, seq_len, tiles, bits, platform, interpret, what)
  if pv_threshold is not None:  # the backward's lists have a row per (batch, head)
    _check_tpu_list_bytes(q_BLHK.shape[0] * q_BLHK.shape[2], seq_len, bwd_tiles,
                          bwd_tiles[0] > blocks[0] or bwd_tiles[1] > blocks[1],
                          platform, interpret, "the stage-2 backward's per-head lists")
  check_segment_ids(segment_ids_BL, q_BLHK)
  if segment_ids_BL is not None:
    segment_ids_BL = jax.lax.stop_gradient(segment_ids_BL).astype(jnp.int32)
  if pv_threshold is None:
    o_BLHK = _sparse_flash(q_BLHK, k_BLGK, v_BLGK, lists, segment_ids_BL, platform,
                           interpret, bwd_tiles, fwd_tiles, bool(fused_bwd))
    if not return_skipped:
      return o_BLHK
    batch, _, num_heads, _ = q_BLHK.shape
    return o_BLHK, jnp.zeros((batch, num_heads, lists.num_q_blocks,
                              lists.num_k_blocks), bool)
  o_BLHK, skipped_BHQK = _sparse_flash_pv(q_BLHK, k_BLGK, v_BLGK, lists, segment_ids_BL,
                                          platform, interpret, bwd_tiles, pv_threshold)
  return (o_BLHK, jax.lax.stop_gradient(skipped_BHQK)) if return_skipped else o_BLHK


def check_tiles(seq_len, lists, tile_q, tile_k, platform, interpret):
  """(tile_q, tile_k) of a kernel from (name, value or None: the block) pairs;
  raises ValueError for a tile that is neither a multiple nor a divisor of its
  block, does not divide seq_len, or does not fit the platform's tiling."""
  valid = valid_blocks(seq_len, platform, interpret)
  tiles = []
  for (name, tile), block in zip((tile_q, tile_k), (lists.block_q, lists.block_k)):
    tile = tile or block
    if (tile % block and block % tile) or tile not in valid:
      raise ValueError(f"{name} {tile} must be a multiple or a divisor of the block "
                       f"{block} and fit the {platform!r} kernel tiling (one of {valid}); "
                       "pad seq_len to a multiple of the tile.")
    tiles.append(tile)
  return tuple(tiles)


def block_sparse_attention(q_BLHK, k_BLGK, v_BLGK, block_mask: BlockMask, *,
                           causal=True, segment_ids_BL=None, pv_threshold=None,
                           return_skipped=False, max_blocks=None, fwd_block_q=None,
                           fwd_block_k=None, bwd_block_q=None, bwd_block_k=None,
                           fused_bwd=False, interpret=None, platform=None):
  """Attention restricted to the tiles block_mask keeps (and causal); o_BLHK.

  Query rows that see no key (an empty mask row) return zeros. Block sizes come
  from block_mask.block_q / block_k; mask_BHQK is [B or 1, H or 1, L/bq, L/bk].
  segment_ids_BL (int [B, L]): also require equal ids (document masking); the
  block mask is ANDed with block_mask_lib.segment_block_mask (idempotent).
  pv_threshold (SpargeAttn's lambda, a float <= 0; None: off): also skip the P.V
  product of kept tiles whose scores sit below exp(lambda) of the running max
  (kernels.pv_skip's rule; -inf skips nothing and runs the stage-1 kernels, a
  very negative finite lambda runs stage 2's). return_skipped: return
  (o_BLHK, skipped_BHQK), skipped_BHQK bool [B, H, nQ, nK] (query heads, no
  gradient; all False without pv_threshold).
  max_blocks (static int; None: from the mask when it is known at trace time, else
  nK): a bound on kept key blocks per query block; the TPU grid walks that many
  steps per row (splash's shrunk grid). Rows keep only their first max_blocks
  blocks, as the XLA path (kernels.gathered) does; the estimators' max_blocks cap
  makes that a no-op.
  fwd_block_q / fwd_block_k, bwd_block_q / bwd_block_k: the kernels' compute
  tiles (see run_lists); the blocks then need only divide seq_len.
  fused_bwd: the fused backward kernel (see run_lists).
  platform / interpret: see kernels.platform ("tpu" | "cuda"; None = from the backend).
  """
  platform, interpret = resolve_platform(platform, interpret)
  bq, bk = block_mask.block_q, block_mask.block_k
  tiled = any((fwd_block_q, fwd_block_k, bwd_block_q, bwd_block_k))
  check_inputs(q_BLHK, k_BLGK, v_BLGK, bq, bk, platform, interpret, tiled=tiled)
  batch, seq_len, num_heads, _ = q_BLHK.shape
  mask_shape = block_mask.mask_BHQK.shape
  if (len(mask_shape) != 4 or mask_shape[0] not in (1, batch)
      or mask_shape[1] not in (1, num_heads)
      or mask_shape[2:] != (seq_len // bq, seq_len // bk)):
    raise ValueError(
        f"block mask shape {mask_shape} does not match q {q_BLHK.shape} with blocks "
        f"({bq}, {bk}); expected [{batch} or 1, {num_heads} or 1, {seq_len // bq}, "
        f"{seq_len // bk}] (heads are query heads).")
  check_segment_ids(segment_ids_BL, q_BLHK)
  if segment_ids_BL is not None:
    block_mask = segmented_block_mask(block_mask.mask_BHQK, segment_ids_BL, bq, bk,
                                      causal=causal)
  if max_blocks is not None and max_blocks < block_mask.mask_BHQK.shape[-1]:
    block_mask = first_blocks(block_mask, max_blocks, causal)
  lists = flash_lists.from_block_mask(block_mask, causal=causal,
                                      segmented=segment_ids_BL is not None,
                                      kv_steps=max_blocks)
  return run_lists(q_BLHK, k_BLGK, v_BLGK, lists, platform=platform,
                   interpret=interpret, segment_ids_BL=segment_ids_BL,
                   pv_threshold=pv_threshold, return_skipped=return_skipped,
                   fwd_block_q=fwd_block_q, fwd_block_k=fwd_block_k,
                   bwd_block_q=bwd_block_q, bwd_block_k=bwd_block_k, fused_bwd=fused_bwd)


def first_blocks(block_mask, max_blocks, causal):
  """The BlockMask keeping each row's first max_blocks kept key blocks."""
  mask_BHQK = block_mask.mask_BHQK
  rank_BHQK = jnp.cumsum(mask_BHQK, axis=-1, dtype=jnp.int32)
  return block_mask_lib.from_mask(mask_BHQK & (rank_BHQK <= max_blocks),
                                  block_q=block_mask.block_q, block_k=block_mask.block_k,
                                  causal=causal)


def segmented_block_mask(mask_BHQK, segment_ids_BL, block_q, block_k, *, causal):
  """BlockMask of mask_BHQK (None: every tile) AND the blocks that may share a
  segment, AND causal reachability: its lists skip cross-document tiles."""
  same_B1QK = block_mask_lib.segment_block_mask(segment_ids_BL, block_q, block_k)
  mask_BHQK = same_B1QK if mask_BHQK is None else mask_BHQK & same_B1QK
  return block_mask_lib.from_mask(mask_BHQK, block_q=block_q, block_k=block_k,
                                  causal=causal)
