"""Block-sparse flash attention for TPU (Mosaic): the dq and dk/dv kernels.

Layouts, list walking and segment inputs are those of kernels.sparse_flash_tpu
(the forward); see its docstring. lse and delta enter as [B, H, 1, L] rows so
a (1, bq) block is one lane-dense row of statistics.

SpargeAttn's stage 2 (kernels.pv_skip) adds a second list set, the tiles whose
P.V the forward skipped: the same kernels walk it with `skipped=True`, a static
variant that reads neither v nor dO (dS = -P * delta) and writes no dv. Both
passes accumulate in float32 and are summed outside.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels import flash_tiles as tiles
from kernels.sparse_flash_tpu import (LANES, _q_major_segment_inputs, _q_major_specs,
                                      _run_tile, _same_segment, _scalar_lists,
                                      _segment_layouts, _split_bits, _split_segments,
                                      _to_heads_major, heads_major_inputs)


def _dq_kernel(kv_index_ref, kv_count_ref, *refs, lists, scale, segmented, skipped):
  kv_bits_ref, refs = _split_bits(refs, lists.kv_bits)
  seg_refs, refs = _split_segments(refs, segmented)
  if skipped:
    q_ref, k_ref, lse_ref, delta_ref, dq_ref, dq_scr = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dq_scr = refs
  b, h, i, n = (pl.program_id(axis) for axis in range(4))

  @pl.when(n == 0)
  def _init():
    dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)

  row = lists.kv_row(b, h, i)

  def step(allowed):
    if skipped:
      dq_scr[...] = tiles.dq_step_skipped(
          q_ref[...], k_ref[...], jnp.expand_dims(lse_ref[0], -1),
          jnp.expand_dims(delta_ref[0], -1), dq_scr[...], scale, allowed)
      return
    dq_scr[...] = tiles.dq_step(
        q_ref[...], k_ref[...], v_ref[...], do_ref[...],
        jnp.expand_dims(lse_ref[0], -1), jnp.expand_dims(delta_ref[0], -1),
        dq_scr[...], scale, allowed)

  entry = row * lists.num_k_blocks + n
  _run_tile(n < kv_count_ref[row], i, kv_index_ref[entry], lists, step,
            same_segment=_same_segment(seg_refs),
            bits=None if kv_bits_ref is None else kv_bits_ref[entry])

  @pl.when(n == lists.kv_steps - 1)
  def _finalize():
    dq_ref[...] = (dq_scr[...] * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_index_ref, q_count_ref, *refs, lists, scale, num_groups,
                segmented, skipped):
  q_bits_ref, refs = _split_bits(refs, lists.q_bits)
  seg_refs, refs = _split_segments(refs, segmented)
  if skipped:
    q_ref, lse_ref, delta_ref, k_ref, dk_ref, dk_scr = refs
  else:
    (q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, dk_ref, dv_ref, dk_scr,
     dv_scr) = refs
  b, g, j, r, n = (pl.program_id(axis) for axis in range(5))

  @pl.when(jnp.logical_and(r == 0, n == 0))
  def _init():
    dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
    if not skipped:
      dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

  row = lists.q_row(b, g * num_groups + r, j)

  def step(allowed):
    if skipped:
      dk_scr[...] = tiles.dk_step_skipped(q_ref[...], k_ref[...], lse_ref[...],
                                          delta_ref[...], dk_scr[...], scale, allowed)
      return
    dk_scr[...], dv_scr[...] = tiles.dkv_step(
        q_ref[...], k_ref[...], v_ref[...], do_ref[...], lse_ref[...], delta_ref[...],
        dk_scr[...], dv_scr[...], scale, allowed)

  entry = row * lists.num_q_blocks + n
  _run_tile(n < q_count_ref[row], q_index_ref[entry], j, lists, step, keys_major=True,
            same_segment=_same_segment(seg_refs),
            bits=None if q_bits_ref is None else q_bits_ref[entry])

  @pl.when(jnp.logical_and(r == num_groups - 1, n == lists.q_steps - 1))
  def _finalize():
    dk_ref[...] = (dk_scr[...] * scale).astype(dk_ref.dtype)
    if not skipped:
      dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def backward(q_BLHK, k_BLGK, v_BLGK, o_BLHK, lse_BHL, do_BLHK, lists, *, interpret,
             segment_ids_BL=None, skipped_lists=None, heads_major=False):
  """Returns dq_BLHK, dk_BLGK, dv_BLGK.

  skipped_lists (stage 2): the tiles whose P.V the forward skipped; `lists`
  then holds only the computed ones. heads_major: q, k, v come as the
  forward's [B, H, L, K] / [B, G, L, K] copies (o, dO and the gradients do not).
  """
  # [B, H, 1, L]: rows, so a (1, bq) block is one lane-dense row of stats.
  lse_BH1L = lse_BHL[:, :, None, :]
  delta_BH1L = tiles.block_delta(do_BLHK, o_BLHK)[:, :, None, :]
  q_BHLK, k_BGLK, v_BGLK = heads_major_inputs(q_BLHK, k_BLGK, v_BLGK, heads_major)
  do_BHLK = _to_heads_major(do_BLHK)
  args = (q_BHLK, k_BGLK, v_BGLK, do_BHLK, lse_BH1L, delta_BH1L)
  kw = dict(interpret=interpret, segment_ids_BL=segment_ids_BL)
  dq_BHLK, dk_BGLK, dv_BGLK = tiles.backward_passes(
      _dq_call, _dkv_call, args, lists, skipped_lists, kw,
      (q_BHLK.dtype, k_BGLK.dtype, v_BGLK.dtype))
  return (_to_heads_major(dq_BHLK), _to_heads_major(dk_BGLK),
          _to_heads_major(dv_BGLK))


def _dq_call(q_BHLK, k_BGLK, v_BGLK, do_BHLK, lse_BH1L, delta_BH1L, lists, *,
             interpret, segment_ids_BL, skipped=False, out_dtype=None):
  num_heads, head_dim = q_BHLK.shape[1], q_BHLK.shape[3]
  num_groups = num_heads // k_BGLK.shape[1]
  q_spec, kv_spec, _, stat_spec = _q_major_specs(lists, num_groups, head_dim)
  seg_specs, seg_args = _q_major_segment_inputs(lists, segment_ids_BL)
  kernel = functools.partial(_dq_kernel, lists=lists, scale=1.0 / math.sqrt(head_dim),
                             segmented=segment_ids_BL is not None, skipped=skipped)
  # A skipped tile's dS needs neither v nor dO: they are not even fetched.
  specs = ([q_spec, kv_spec] if skipped else [q_spec, kv_spec, kv_spec, q_spec])
  inputs = ([q_BHLK, k_BGLK] if skipped else [q_BHLK, k_BGLK, v_BGLK, do_BHLK])
  scalars = _scalar_lists(lists.kv_index, lists.kv_count, lists.kv_bits)
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct(q_BHLK.shape, out_dtype or q_BHLK.dtype),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=len(scalars),
          grid=(q_BHLK.shape[0], num_heads, lists.num_q_blocks, lists.kv_steps),
          in_specs=[*seg_specs, *specs, stat_spec, stat_spec],
          out_specs=q_spec,
          scratch_shapes=[pltpu.VMEM((lists.block_q, head_dim), jnp.float32)]),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret,
      name="block_sparse_flash_dq_skipped" if skipped else "block_sparse_flash_dq",
  )(*scalars, *seg_args, *inputs, lse_BH1L, delta_BH1L)


def _k_major_specs(lists, num_groups, head_dim, segmented):
  """Index maps for grids (b, g, j, r, n) that walk the q list of key block j
  for query head g * num_groups + r: q-side, stat, kv and segment specs."""
  bq, bk, stride = lists.block_q, lists.block_k, lists.num_q_blocks

  def q_block(b, g, j, r, n, q_index_ref):
    h = g * num_groups + r
    return h, q_index_ref[lists.q_row(b, h, j) * stride + n]

  def q_map(b, g, j, r, n, q_index_ref, *_):
    h, i = q_block(b, g, j, r, n, q_index_ref)
    return (b, h, i, 0)

  def stat_map(b, g, j, r, n, q_index_ref, *_):
    h, i = q_block(b, g, j, r, n, q_index_ref)
    return (b, h, 0, i)

  def kv_map(b, g, j, r, n, q_index_ref, *_):
    return (b, g, j, 0)

  # Keys are the tile's rows here: key ids as columns, query ids as a row.
  def seg_col_map(b, g, j, r, n, q_index_ref, *_):
    return (b, j, 0)

  def seg_row_map(b, g, j, r, n, q_index_ref, *_):
    return (b, 0, q_block(b, g, j, r, n, q_index_ref)[1])

  seg_specs = ([pl.BlockSpec((None, bk, LANES), seg_col_map),
                pl.BlockSpec((None, 1, bq), seg_row_map)] if segmented else [])
  return (pl.BlockSpec((None, None, bq, head_dim), q_map),
          pl.BlockSpec((None, None, 1, bq), stat_map),
          pl.BlockSpec((None, None, bk, head_dim), kv_map), seg_specs)


def _dkv_call(q_BHLK, k_BGLK, v_BGLK, do_BHLK, lse_BH1L, delta_BH1L, lists, *,
              interpret, segment_ids_BL, skipped=False, out_dtype=None):
  """[dk, dv], or [dk] for the skipped variant (it reads neither v nor dO)."""
  batch, num_heads, _, head_dim = q_BHLK.shape
  num_kv_heads = k_BGLK.shape[1]
  num_groups = num_heads // num_kv_heads
  segmented = segment_ids_BL is not None
  q_spec, stat_spec, kv_spec, seg_specs = _k_major_specs(lists, num_groups, head_dim,
                                                         segmented)
  seg_args = list(_segment_layouts(segment_ids_BL)) if segmented else []
  bk = lists.block_k
  kernel = functools.partial(_dkv_kernel, lists=lists, scale=1.0 / math.sqrt(head_dim),
                             num_groups=num_groups, segmented=segmented,
                             skipped=skipped)
  outputs = [k_BGLK] if skipped else [k_BGLK, v_BGLK]
  if skipped:
    specs, inputs = [q_spec, stat_spec, stat_spec, kv_spec], [q_BHLK, lse_BH1L,
                                                             delta_BH1L, k_BGLK]
  else:
    specs = [q_spec, q_spec, stat_spec, stat_spec, kv_spec, kv_spec]
    inputs = [q_BHLK, do_BHLK, lse_BH1L, delta_BH1L, k_BGLK, v_BGLK]
  scalars = _scalar_lists(lists.q_index, lists.q_count, lists.q_bits)
  return pl.pallas_call(
      kernel,
      out_shape=[jax.ShapeDtypeStruct(x.shape, out_dtype or x.dtype) for x in outputs],
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=len(scalars),
          grid=(batch, num_kv_heads, lists.num_k_blocks, num_groups, lists.q_steps),
          in_specs=[*seg_specs, *specs],
          out_specs=[kv_spec] * len(outputs),
          scratch_shapes=[pltpu.VMEM((bk, head_dim), jnp.float32)] * len(outputs)),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary",
                               "arbitrary")),
      interpret=interpret,
      name="block_sparse_flash_dk_skipped" if skipped else "block_sparse_flash_dkv",
  )(*scalars, *seg_args, *inputs)
