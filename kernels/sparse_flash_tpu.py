"""Block-sparse flash attention for TPU (Mosaic): the forward kernel and the
layout, list and segment helpers it shares with the dq and dk/dv kernels
(kernels.sparse_flash_tpu_bwd).

The last grid axis walks a row's list of active blocks; its length is the
lists' static bound on a row's count (kv_steps / q_steps, splash attention's
shrunk grid), not nK / nQ. The lists live in
scalar memory (PrefetchScalarGridSpec), so the k/v (or q) index maps read the
next active block before the body runs: empty blocks are never fetched, and
the padded tail of a list repeats its last block, which Pallas does not
re-fetch; the body skips it by comparing the step with the row's count.

Tensors are laid out [B, H, L, K] inside the kernels so every block's last two
dims are (block, head_dim). `heads_major=True` takes q, k, v already so:
kernels.block_sparse transposes them once in the forward and keeps those copies
as the backward's residuals, so the backward transposes only dO in and the
gradients out (models still project to [B, L, H, K]; MaxText does the same).
The forward keeps m and l replicated over 128 lanes
(Mosaic's native layout for row statistics) and its lse output is sliced to
[B, H, L] outside; the backward reads lse and delta as [1, bq] rows, which is
why compiled TPU blocks are multiples of 128.

Segment ids (document masking) enter as two blocked int32 inputs in the same
two layouts: lane-replicated columns [B, L, 128] for the tile's row side and
rows [B, 1, L] for its column side (queries and keys swap sides in dk/dv).
With them every active tile is masked: a causally full tile may still cross a
document start.

Compute tiles larger than the mask's blocks (kernels.flash_lists.retile) add
their per-tile sub-block bitmasks as a third scalar-prefetch list; a tile that
is not whole takes the masked branch, which ANDs the sub-block mask in.

Stage 2 (pv_threshold, kernels.pv_skip): the skip decision is a scalar per
tile (float reductions of the row statistics); pl.when guards the P.V matmul,
so a skipped tile's v block is fetched but never multiplied. Skipped tiles are
marked in an int32 row [1, W] (W = nK rounded up to a power of two) that stays
resident in VMEM while the last grid axis walks the list: an output block of
[B, H, nQ, 1, W] whose block is the full last two dims. Without pv_threshold
the kernel is traced exactly as before.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels import flash_tiles as tiles

LANES = 128


def _to_heads_major(x_BLHK):
  return jnp.transpose(x_BLHK, (0, 2, 1, 3))


def heads_major_inputs(q, k, v, heads_major):
  """q [B, H, L, K], k and v [B, G, L, K]: transposed unless already so."""
  if heads_major:
    return q, k, v
  return _to_heads_major(q), _to_heads_major(k), _to_heads_major(v)


def _column(ref):
  """[bq, 1] from a lane-replicated [bq, 128] block."""
  return jnp.max(ref[...], axis=-1, keepdims=True)


def _lanes(col):
  return jnp.broadcast_to(col, (col.shape[0], LANES))


def _split_segments(refs, segmented):
  """(segment id refs or None, other refs): segment ids lead the inputs."""
  return (refs[:2], refs[2:]) if segmented else (None, refs)


def _segment_layouts(segment_ids_BL):
  """The ids as lane-replicated columns [B, L, 128] and as rows [B, 1, L]."""
  seg_BL = segment_ids_BL.astype(jnp.int32)
  return (jnp.broadcast_to(seg_BL[:, :, None], (*seg_BL.shape, LANES)),
          seg_BL[:, None, :])


def _same_segment(seg_refs):
  """None, or fn() -> bool [rows, cols] tile of same-segment pairs.

  seg_refs: a lane-replicated [rows, 128] column block and a [1, cols] row block.
  """
  if seg_refs is None:
    return None
  col_ref, row_ref = seg_refs

  def same():
    cols = row_ref.shape[-1]
    col = col_ref[...]
    if cols > LANES:  # widen the replicated lanes to the tile width
      col = jnp.tile(col, (1, -(-cols // LANES)))
    if col.shape[-1] != cols:
      col = col[:, :cols]
    return col == row_ref[...]
  return same


def _scalar_lists(index, count, bits):
  """The scalar-prefetch lists of a walk: index and count, then the retiled
  lists' bitmasks when they have them."""
  return (index, count) if bits is None else (index, count, bits)


def _split_bits(refs, bits):
  """(bits ref or None, other refs): the third scalar-prefetch list, if any."""
  return (refs[0], refs[1:]) if bits is not None else (None, refs)


def _run_tile(active, q_block, k_block, lists, step, keys_major=False,
              same_segment=None, bits=None):
  """Calls step(allowed) for an active tile; only partial tiles get a mask.

  With same_segment (see _same_segment) every tile is masked. bits: the tile's
  sub-block bitmask (a scalar; None: a whole tile), ANDed into the mask.
  """
  sub_blocks = lambda: tiles.sub_block_allowed(bits, lists, keys_major)
  causal = lambda: (tiles.causal_allowed(q_block, k_block, lists.block_q, lists.block_k,
                                         keys_major) if lists.causal else None)
  if same_segment is not None:
    def masked():
      step(tiles.and_masks(tiles.and_masks(causal(), same_segment()), sub_blocks()))
    pl.when(active)(masked)
    return
  whole = None if bits is None else bits == lists.all_bits
  if lists.causal:
    full = tiles.is_full_tile(q_block, k_block, lists.block_q, lists.block_k)
    whole = full if whole is None else jnp.logical_and(full, whole)
  if whole is None:  # non-causal whole tiles: never masked
    pl.when(active)(lambda: step(None))
    return
  pl.when(jnp.logical_and(active, whole))(lambda: step(None))
  pl.when(jnp.logical_and(active, jnp.logical_not(whole)))(
      lambda: step(tiles.and_masks(causal(), sub_blocks())))


def _fwd_kernel(kv_index_ref, kv_count_ref, *refs, lists, scale, segmented,
                pv_threshold=None):
  kv_bits_ref, refs = _split_bits(refs, lists.kv_bits)
  seg_refs, refs = _split_segments(refs, segmented)
  if pv_threshold is None:
    q_ref, k_ref, v_ref, o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
  else:
    q_ref, k_ref, v_ref, o_ref, lse_ref, skip_ref, m_scr, l_scr, acc_scr = refs
  b, h, i, n = (pl.program_id(axis) for axis in range(4))
  stride = lists.num_k_blocks

  @pl.when(n == 0)
  def _init():
    m_scr[...] = jnp.full(m_scr.shape, tiles.MASK_VALUE, jnp.float32)
    l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)
    if pv_threshold is not None:
      skip_ref[...] = jnp.zeros(skip_ref.shape, jnp.int32)

  row = lists.kv_row(b, h, i)
  k_block = kv_index_ref[row * stride + n]

  def step(allowed):
    m, l, acc = tiles.forward_step(
        q_ref[...], k_ref[...], v_ref[...], _column(m_scr), _column(l_scr),
        acc_scr[...], scale, allowed)
    m_scr[...] = _lanes(m)
    l_scr[...] = _lanes(l)
    acc_scr[...] = acc

  def step_pv(allowed):
    m, l, alpha, p, skip = tiles.softmax_step_pv(
        q_ref[...], k_ref[...], _column(m_scr), _column(l_scr), scale, allowed,
        pv_threshold)
    m_scr[...] = _lanes(m)
    l_scr[...] = _lanes(l)
    acc_scr[...] = alpha * acc_scr[...]

    # Scalar branches without results: v is loaded only for a computed tile.
    @pl.when(jnp.logical_not(skip))
    def _product():
      acc_scr[...] = acc_scr[...] + tiles.pv_product(p, v_ref[...])

    @pl.when(skip)
    def _mark():  # the skip map row stays resident while n walks the list
      skip_ref[...] = tiles.mark_skipped(skip_ref[...], k_block)

  _run_tile(n < kv_count_ref[row], i, k_block, lists,
            step if pv_threshold is None else step_pv,
            same_segment=_same_segment(seg_refs),
            bits=None if kv_bits_ref is None else kv_bits_ref[row * stride + n])

  @pl.when(n == lists.kv_steps - 1)
  def _finalize():
    o, lse = tiles.finalize(_column(m_scr), _column(l_scr), acc_scr[...])
    o_ref[...] = o.astype(o_ref.dtype)
    lse_ref[...] = _lanes(lse)


def _q_major_specs(lists, num_groups, head_dim):
  """Index maps for grids (b, h, i, n) that walk the kv list of query block i."""
  bq, bk, stride = lists.block_q, lists.block_k, lists.num_k_blocks

  def q_map(b, h, i, n, kv_index_ref, *_):
    return (b, h, i, 0)

  def kv_map(b, h, i, n, kv_index_ref, *_):
    return (b, lax.div(h, num_groups), kv_index_ref[lists.kv_row(b, h, i) * stride + n], 0)

  def stat_map(b, h, i, n, kv_index_ref, *_):
    return (b, h, 0, i)

  q_spec = pl.BlockSpec((None, None, bq, head_dim), q_map)
  kv_spec = pl.BlockSpec((None, None, bk, head_dim), kv_map)
  lanes_spec = pl.BlockSpec((None, None, bq, LANES), q_map)
  stat_spec = pl.BlockSpec((None, None, 1, bq), stat_map)
  return q_spec, kv_spec, lanes_spec, stat_spec


def _q_major_segment_inputs(lists, segment_ids_BL):
  """(specs, arrays) of the segment ids for the (b, h, i, n) grids: query
  block i as columns, the n-th listed key block as a row."""
  if segment_ids_BL is None:
    return [], []
  bq, bk, stride = lists.block_q, lists.block_k, lists.num_k_blocks

  def col_map(b, h, i, n, kv_index_ref, *_):
    return (b, i, 0)

  def row_map(b, h, i, n, kv_index_ref, *_):
    return (b, 0, kv_index_ref[lists.kv_row(b, h, i) * stride + n])

  specs = [pl.BlockSpec((None, bq, LANES), col_map),
           pl.BlockSpec((None, 1, bk), row_map)]
  return specs, list(_segment_layouts(segment_ids_BL))


def forward(q_BLHK, k_BLGK, v_BLGK, lists, *, interpret, segment_ids_BL=None,
            pv_threshold=None, heads_major=False):
  """Returns o_BLHK and the residual lse [B, H, L] (float32); with pv_threshold
  (stage 2) also the skip map, bool [B, H, nQ, nK]. heads_major: q, k, v come
  as [B, H, L, K] / [B, G, L, K] (o is still [B, L, H, K])."""
  q_BHLK, k_BGLK, v_BGLK = heads_major_inputs(q_BLHK, k_BLGK, v_BLGK, heads_major)
  batch, num_heads, seq_len, head_dim = q_BHLK.shape
  num_groups = num_heads // k_BGLK.shape[1]
  q_spec, kv_spec, lanes_spec, _ = _q_major_specs(lists, num_groups, head_dim)
  seg_specs, seg_args = _q_major_segment_inputs(lists, segment_ids_BL)
  bq = lists.block_q
  out_shape = [jax.ShapeDtypeStruct((batch, num_heads, seq_len, head_dim), q_BHLK.dtype),
               jax.ShapeDtypeStruct((batch, num_heads, seq_len, LANES), jnp.float32)]
  out_specs = [q_spec, lanes_spec]
  if pv_threshold is not None:
    # One int32 row per (b, h, i); its block is the full last two dims.
    width = tiles.skip_map_width(lists.num_k_blocks)
    out_shape.append(jax.ShapeDtypeStruct(
        (batch, num_heads, lists.num_q_blocks, 1, width), jnp.int32))
    out_specs.append(pl.BlockSpec(
        (None, None, None, 1, width), lambda b, h, i, n, *_: (b, h, i, 0, 0)))
  scalars = _scalar_lists(lists.kv_index, lists.kv_count, lists.kv_bits)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=len(scalars),
      grid=(batch, num_heads, lists.num_q_blocks, lists.kv_steps),
      in_specs=[*seg_specs, q_spec, kv_spec, kv_spec],
      out_specs=out_specs,
      scratch_shapes=[pltpu.VMEM((bq, LANES), jnp.float32),
                      pltpu.VMEM((bq, LANES), jnp.float32),
                      pltpu.VMEM((bq, head_dim), jnp.float32)])
  kernel = functools.partial(_fwd_kernel, lists=lists, scale=1.0 / math.sqrt(head_dim),
                             segmented=segment_ids_BL is not None,
                             pv_threshold=pv_threshold)
  o_BHLK, lse_BHLC, *skip = pl.pallas_call(
      kernel,
      out_shape=out_shape,
      grid_spec=grid_spec,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret,
      name="block_sparse_flash_fwd",
  )(*scalars, *seg_args, q_BHLK, k_BGLK, v_BGLK)
  outs = (_to_heads_major(o_BHLK), lse_BHLC[..., 0])
  return outs if pv_threshold is None else (*outs, tiles.cut_skip_map(skip[0], lists))
