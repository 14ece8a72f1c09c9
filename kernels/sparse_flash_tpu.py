"""Block-sparse flash attention for TPU (Mosaic): forward, dq and dk/dv kernels.

The last grid axis walks a row's list of active blocks. The lists live in
scalar memory (PrefetchScalarGridSpec), so the k/v (or q) index maps read the
next active block before the body runs: empty blocks are never fetched, and
the padded tail of a list repeats its last block, which Pallas does not
re-fetch; the body skips it by comparing the step with the row's count.

Tensors are laid out [B, H, L, K] inside the kernels so every block's last two
dims are (block, head_dim). The forward keeps m and l replicated over 128 lanes
(Mosaic's native layout for row statistics) and its lse output is sliced to
[B, H, L] outside; the backward reads lse and delta as [1, bq] rows, which is
why compiled TPU blocks are multiples of 128.

Segment ids (document masking) enter as two blocked int32 inputs in the same
two layouts: lane-replicated columns [B, L, 128] for the tile's row side and
rows [B, 1, L] for its column side (queries and keys swap sides in dk/dv).
With them every active tile is masked: a causally full tile may still cross a
document start.
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


def _run_tile(active, q_block, k_block, lists, step, keys_major=False,
              same_segment=None):
  """Calls step(allowed) for an active tile; only partial tiles get a mask.

  With same_segment (see _same_segment) every tile is masked.
  """
  if same_segment is not None:
    def masked():
      causal = (tiles.causal_allowed(q_block, k_block, lists.block_q, lists.block_k,
                                     keys_major) if lists.causal else None)
      step(tiles.and_masks(causal, same_segment()))
    pl.when(active)(masked)
    return
  if not lists.causal:
    pl.when(active)(lambda: step(None))
    return
  full = tiles.is_full_tile(q_block, k_block, lists.block_q, lists.block_k)
  pl.when(jnp.logical_and(active, full))(lambda: step(None))
  allowed = lambda: tiles.causal_allowed(q_block, k_block, lists.block_q, lists.block_k,
                                         keys_major)
  pl.when(jnp.logical_and(active, jnp.logical_not(full)))(lambda: step(allowed()))


def _fwd_kernel(kv_index_ref, kv_count_ref, *refs, lists, scale, segmented):
  seg_refs, (q_ref, k_ref, v_ref, o_ref, lse_ref, m_scr, l_scr,
             acc_scr) = _split_segments(refs, segmented)
  b, h, i, n = (pl.program_id(axis) for axis in range(4))
  steps = lists.num_k_blocks

  @pl.when(n == 0)
  def _init():
    m_scr[...] = jnp.full(m_scr.shape, tiles.MASK_VALUE, jnp.float32)
    l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

  row = lists.kv_row(b, h, i)
  k_block = kv_index_ref[row * steps + n]

  def step(allowed):
    m, l, acc = tiles.forward_step(
        q_ref[...], k_ref[...], v_ref[...], _column(m_scr), _column(l_scr),
        acc_scr[...], scale, allowed)
    m_scr[...] = _lanes(m)
    l_scr[...] = _lanes(l)
    acc_scr[...] = acc

  _run_tile(n < kv_count_ref[row], i, k_block, lists, step,
            same_segment=_same_segment(seg_refs))

  @pl.when(n == steps - 1)
  def _finalize():
    o, lse = tiles.finalize(_column(m_scr), _column(l_scr), acc_scr[...])
    o_ref[...] = o.astype(o_ref.dtype)
    lse_ref[...] = _lanes(lse)


def _q_major_specs(lists, num_groups, head_dim):
  """Index maps for grids (b, h, i, n) that walk the kv list of query block i."""
  bq, bk, steps = lists.block_q, lists.block_k, lists.num_k_blocks

  def q_map(b, h, i, n, kv_index_ref, kv_count_ref):
    return (b, h, i, 0)

  def kv_map(b, h, i, n, kv_index_ref, kv_count_ref):
    return (b, lax.div(h, num_groups), kv_index_ref[lists.kv_row(b, h, i) * steps + n], 0)

  def stat_map(b, h, i, n, kv_index_ref, kv_count_ref):
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
  bq, bk, steps = lists.block_q, lists.block_k, lists.num_k_blocks

  def col_map(b, h, i, n, kv_index_ref, kv_count_ref):
    return (b, i, 0)

  def row_map(b, h, i, n, kv_index_ref, kv_count_ref):
    return (b, 0, kv_index_ref[lists.kv_row(b, h, i) * steps + n])

  specs = [pl.BlockSpec((None, bq, LANES), col_map),
           pl.BlockSpec((None, 1, bk), row_map)]
  return specs, list(_segment_layouts(segment_ids_BL))


def forward(q_BLHK, k_BLGK, v_BLGK, lists, *, interpret, segment_ids_BL=None):
  """Returns o_BLHK and the residual lse [B, H, L] (float32)."""
  batch, seq_len, num_heads, head_dim = q_BLHK.shape
  num_groups = num_heads // k_BLGK.shape[2]
  q_spec, kv_spec, lanes_spec, _ = _q_major_specs(lists, num_groups, head_dim)
  seg_specs, seg_args = _q_major_segment_inputs(lists, segment_ids_BL)
  bq = lists.block_q
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(batch, num_heads, lists.num_q_blocks, lists.num_k_blocks),
      in_specs=[*seg_specs, q_spec, kv_spec, kv_spec],
      out_specs=[q_spec, lanes_spec],
      scratch_shapes=[pltpu.VMEM((bq, LANES), jnp.float32),
                      pltpu.VMEM((bq, LANES), jnp.float32),
                      pltpu.VMEM((bq, head_dim), jnp.float32)])
  kernel = functools.partial(_fwd_kernel, lists=lists, scale=1.0 / math.sqrt(head_dim),
                             segmented=segment_ids_BL is not None)
  o_BHLK, lse_BHLC = pl.pallas_call(
      kernel,
      out_shape=[jax.ShapeDtypeStruct((batch, num_heads, seq_len, head_dim), q_BLHK.dtype),
                 jax.ShapeDtypeStruct((batch, num_heads, seq_len, LANES), jnp.float32)],
      grid_spec=grid_spec,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret,
      name="block_sparse_flash_fwd",
  )(lists.kv_index, lists.kv_count, *seg_args, _to_heads_major(q_BLHK),
    _to_heads_major(k_BLGK), _to_heads_major(v_BLGK))
  return _to_heads_major(o_BHLK), lse_BHLC[..., 0]


def _dq_kernel(kv_index_ref, kv_count_ref, *refs, lists, scale, segmented):
  seg_refs, (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref,
             dq_scr) = _split_segments(refs, segmented)
  b, h, i, n = (pl.program_id(axis) for axis in range(4))
  steps = lists.num_k_blocks

  @pl.when(n == 0)
  def _init():
    dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)

  row = lists.kv_row(b, h, i)

  def step(allowed):
    dq_scr[...] = tiles.dq_step(
        q_ref[...], k_ref[...], v_ref[...], do_ref[...],
        jnp.expand_dims(lse_ref[0], -1), jnp.expand_dims(delta_ref[0], -1),
        dq_scr[...], scale, allowed)

  _run_tile(n < kv_count_ref[row], i, kv_index_ref[row * steps + n], lists, step,
            same_segment=_same_segment(seg_refs))

  @pl.when(n == steps - 1)
  def _finalize():
    dq_ref[...] = (dq_scr[...] * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_index_ref, q_count_ref, *refs, lists, scale, num_groups,
                segmented):
  seg_refs, (q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, dk_ref, dv_ref, dk_scr,
             dv_scr) = _split_segments(refs, segmented)
  b, g, j, r, n = (pl.program_id(axis) for axis in range(5))
  steps = lists.num_q_blocks

  @pl.when(jnp.logical_and(r == 0, n == 0))
  def _init():
    dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
    dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

  row = lists.q_row(b, g * num_groups + r, j)

  def step(allowed):
    dk_scr[...], dv_scr[...] = tiles.dkv_step(
        q_ref[...], k_ref[...], v_ref[...], do_ref[...], lse_ref[...], delta_ref[...],
        dk_scr[...], dv_scr[...], scale, allowed)

  _run_tile(n < q_count_ref[row], q_index_ref[row * steps + n], j, lists, step,
            keys_major=True, same_segment=_same_segment(seg_refs))

  @pl.when(jnp.logical_and(r == num_groups - 1, n == steps - 1))
  def _finalize():
    dk_ref[...] = (dk_scr[...] * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def backward(q_BLHK, k_BLGK, v_BLGK, o_BLHK, lse_BHL, do_BLHK, lists, *, interpret,
             segment_ids_BL=None):
  """Returns dq_BLHK, dk_BLGK, dv_BLGK."""
  # [B, H, 1, L]: rows, so a (1, bq) block is one lane-dense row of stats.
  lse_BH1L = lse_BHL[:, :, None, :]
  delta_BH1L = tiles.block_delta(do_BLHK, o_BLHK)[:, :, None, :]
  q_BHLK, do_BHLK = _to_heads_major(q_BLHK), _to_heads_major(do_BLHK)
  k_BGLK, v_BGLK = _to_heads_major(k_BLGK), _to_heads_major(v_BLGK)
  args = (q_BHLK, k_BGLK, v_BGLK, do_BHLK, lse_BH1L, delta_BH1L, lists)
  dq_BHLK = _dq_call(*args, interpret=interpret, segment_ids_BL=segment_ids_BL)
  dk_BGLK, dv_BGLK = _dkv_call(*args, interpret=interpret,
                               segment_ids_BL=segment_ids_BL)
  return (_to_heads_major(dq_BHLK), _to_heads_major(dk_BGLK),
          _to_heads_major(dv_BGLK))


def _dq_call(q_BHLK, k_BGLK, v_BGLK, do_BHLK, lse_BH1L, delta_BH1L, lists, *,
             interpret, segment_ids_BL):
  num_heads, head_dim = q_BHLK.shape[1], q_BHLK.shape[3]
  num_groups = num_heads // k_BGLK.shape[1]
  q_spec, kv_spec, _, stat_spec = _q_major_specs(lists, num_groups, head_dim)
  seg_specs, seg_args = _q_major_segment_inputs(lists, segment_ids_BL)
  kernel = functools.partial(_dq_kernel, lists=lists, scale=1.0 / math.sqrt(head_dim),
                             segmented=segment_ids_BL is not None)
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct(q_BHLK.shape, q_BHLK.dtype),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2,
          grid=(q_BHLK.shape[0], num_heads, lists.num_q_blocks, lists.num_k_blocks),
          in_specs=[*seg_specs, q_spec, kv_spec, kv_spec, q_spec, stat_spec, stat_spec],
          out_specs=q_spec,
          scratch_shapes=[pltpu.VMEM((lists.block_q, head_dim), jnp.float32)]),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret,
      name="block_sparse_flash_dq",
  )(lists.kv_index, lists.kv_count, *seg_args, q_BHLK, k_BGLK, v_BGLK, do_BHLK,
    lse_BH1L, delta_BH1L)


def _k_major_specs(lists, num_groups, head_dim, segmented):
  """Index maps for grids (b, g, j, r, n) that walk the q list of key block j
  for query head g * num_groups + r: q-side, stat, kv and segment specs."""
  bq, bk, steps = lists.block_q, lists.block_k, lists.num_q_blocks

  def q_block(b, g, j, r, n, q_index_ref):
    h = g * num_groups + r
    return h, q_index_ref[lists.q_row(b, h, j) * steps + n]

  def q_map(b, g, j, r, n, q_index_ref, q_count_ref):
    h, i = q_block(b, g, j, r, n, q_index_ref)
    return (b, h, i, 0)

  def stat_map(b, g, j, r, n, q_index_ref, q_count_ref):
    h, i = q_block(b, g, j, r, n, q_index_ref)
    return (b, h, 0, i)

  def kv_map(b, g, j, r, n, q_index_ref, q_count_ref):
    return (b, g, j, 0)

  # Keys are the tile's rows here: key ids as columns, query ids as a row.
  def seg_col_map(b, g, j, r, n, q_index_ref, q_count_ref):
    return (b, j, 0)

  def seg_row_map(b, g, j, r, n, q_index_ref, q_count_ref):
    return (b, 0, q_block(b, g, j, r, n, q_index_ref)[1])

  seg_specs = ([pl.BlockSpec((None, bk, LANES), seg_col_map),
                pl.BlockSpec((None, 1, bq), seg_row_map)] if segmented else [])
  return (pl.BlockSpec((None, None, bq, head_dim), q_map),
          pl.BlockSpec((None, None, 1, bq), stat_map),
          pl.BlockSpec((None, None, bk, head_dim), kv_map), seg_specs)


def _dkv_call(q_BHLK, k_BGLK, v_BGLK, do_BHLK, lse_BH1L, delta_BH1L, lists, *,
              interpret, segment_ids_BL):
  batch, num_heads, _, head_dim = q_BHLK.shape
  num_kv_heads = k_BGLK.shape[1]
  num_groups = num_heads // num_kv_heads
  segmented = segment_ids_BL is not None
  q_spec, stat_spec, kv_spec, seg_specs = _k_major_specs(lists, num_groups, head_dim,
                                                         segmented)
  seg_args = list(_segment_layouts(segment_ids_BL)) if segmented else []
  bk = lists.block_k
  kernel = functools.partial(_dkv_kernel, lists=lists, scale=1.0 / math.sqrt(head_dim),
                             num_groups=num_groups, segmented=segmented)
  return pl.pallas_call(
      kernel,
      out_shape=[jax.ShapeDtypeStruct(k_BGLK.shape, k_BGLK.dtype),
                 jax.ShapeDtypeStruct(v_BGLK.shape, v_BGLK.dtype)],
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2,
          grid=(batch, num_kv_heads, lists.num_k_blocks, num_groups,
                lists.num_q_blocks),
          in_specs=[*seg_specs, q_spec, q_spec, stat_spec, stat_spec, kv_spec, kv_spec],
          out_specs=[kv_spec, kv_spec],
          scratch_shapes=[pltpu.VMEM((bk, head_dim), jnp.float32),
                          pltpu.VMEM((bk, head_dim), jnp.float32)]),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary",
                               "arbitrary")),
      interpret=interpret,
      name="block_sparse_flash_dkv",
  )(lists.q_index, lists.q_count, *seg_args, q_BHLK, do_BHLK, lse_BH1L, delta_BH1L,
    k_BGLK, v_BGLK)
