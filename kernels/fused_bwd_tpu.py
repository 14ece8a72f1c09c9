"""Fused flash-attention backward for TPU (Mosaic): dq, dk and dv in one kernel.

The grid and list walk are the dk/dv kernel's (kernels.sparse_flash_tpu_bwd):
(batch, kv head g, key block j, query head r of g, step n of j's query list).
Each tile computes P and dS once (flash_tiles.fused_step: 5 matmuls, where the
dq and dk/dv kernels take 3 + 4); dk and dv accumulate in VMEM as before.
Mosaic has no atomics, so, as in splash attention's fused backward, every step
writes its tile's dS K to its own block of an unreduced float32 buffer (zeros
for the padded tail of a list), and XLA scatter-adds the blocks into dq by the
query block each step visited.

Memory: the buffer is [B, H, nK, q_steps, bq, K] float32, one [bq, K] block per
(key block, list step): nK * q_steps * bq / L times dq in float32. Dense lists
have q_steps = nQ, so that is nK x: at B=1, L=8192, H=16, K=128 and blocks of
128, 64 x 64 MiB = 4 GiB (splash's is nK x dq in q's dtype). A sparse mask's
shrunk grid (q_steps < nQ) divides it by nQ / q_steps. The kernel writes it
once and the scatter reads it once.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels import flash_tiles as tiles
from kernels.sparse_flash_tpu import (_run_tile, _same_segment, _scalar_lists,
                                      _segment_layouts, _split_bits, _split_segments,
                                      _to_heads_major, heads_major_inputs)
from kernels.sparse_flash_tpu_bwd import _k_major_specs


def _fused_kernel(q_index_ref, q_count_ref, *refs, lists, scale, num_groups, segmented):
  q_bits_ref, refs = _split_bits(refs, lists.q_bits)
  seg_refs, refs = _split_segments(refs, segmented)
  (q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, dk_ref, dv_ref, dq_ref, dk_scr,
   dv_scr) = refs
  b, g, j, r, n = (pl.program_id(axis) for axis in range(5))

  @pl.when(jnp.logical_and(r == 0, n == 0))
  def _init():
    dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
    dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

  row = lists.q_row(b, g * num_groups + r, j)
  active = n < q_count_ref[row]

  def step(allowed):
    dk_scr[...], dv_scr[...], dq_ref[...] = tiles.fused_step(
        q_ref[...], k_ref[...], v_ref[...], do_ref[...], lse_ref[...], delta_ref[...],
        dk_scr[...], dv_scr[...], scale, allowed)

  entry = row * lists.num_q_blocks + n
  _run_tile(active, q_index_ref[entry], j, lists, step, keys_major=True,
            same_segment=_same_segment(seg_refs),
            bits=None if q_bits_ref is None else q_bits_ref[entry])

  @pl.when(jnp.logical_not(active))
  def _idle():  # every step owns a dq block: the list's padded tail adds nothing
    dq_ref[...] = jnp.zeros(dq_ref.shape, jnp.float32)

  @pl.when(jnp.logical_and(r == num_groups - 1, n == lists.q_steps - 1))
  def _finalize():
    dk_ref[...] = (dk_scr[...] * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def reduce_dq(dq_BHKNQD, lists):
  """float32 [B, H, L, K]: the unreduced blocks scatter-added to the query block
  their step visited (q_index; padded steps hold zeros)."""
  batch, num_heads, num_k, steps, block_q, head_dim = dq_BHKNQD.shape
  b = jnp.arange(batch)[:, None, None, None]
  h = jnp.arange(num_heads)[None, :, None, None]
  rows_BHK1 = lists.q_row(b, h, jnp.arange(num_k)[None, None, :, None])
  i_BHKN = lists.q_index[rows_BHK1 * lists.num_q_blocks + jnp.arange(steps)]
  dq_BHQQD = jnp.zeros((batch, num_heads, lists.num_q_blocks, block_q, head_dim),
                       jnp.float32).at[b, h, i_BHKN].add(dq_BHKNQD)
  return dq_BHQQD.reshape(batch, num_heads, -1, head_dim)


def backward(q_BLHK, k_BLGK, v_BLGK, o_BLHK, lse_BHL, do_BLHK, lists, *, interpret,
             segment_ids_BL=None, heads_major=False):
  """Returns dq_BLHK, dk_BLGK, dv_BLGK (the backends' `backward`, one kernel);
  heads_major: q, k, v come as [B, H, L, K] / [B, G, L, K] (kernels.sparse_flash_tpu)."""
  q_BHLK, k_BGLK, v_BGLK = heads_major_inputs(q_BLHK, k_BLGK, v_BLGK, heads_major)
  batch, num_heads, _, head_dim = q_BHLK.shape
  num_kv_heads = k_BGLK.shape[1]
  num_groups = num_heads // num_kv_heads
  scale = 1.0 / math.sqrt(head_dim)
  segmented = segment_ids_BL is not None
  # [B, H, 1, L]: rows, so a (1, bq) block is one lane-dense row of stats.
  lse_BH1L = lse_BHL[:, :, None, :]
  delta_BH1L = tiles.block_delta(do_BLHK, o_BLHK)[:, :, None, :]
  do_BHLK = _to_heads_major(do_BLHK)
  q_spec, stat_spec, kv_spec, seg_specs = _k_major_specs(lists, num_groups, head_dim,
                                                         segmented)
  seg_args = list(_segment_layouts(segment_ids_BL)) if segmented else []
  bq, bk = lists.block_q, lists.block_k
  dq_spec = pl.BlockSpec((None, None, None, None, bq, head_dim),
                         lambda b, g, j, r, n, *_: (b, g * num_groups + r, j, n, 0, 0))
  kernel = functools.partial(_fused_kernel, lists=lists, scale=scale,
                             num_groups=num_groups, segmented=segmented)
  scalars = _scalar_lists(lists.q_index, lists.q_count, lists.q_bits)
  dk_BGLK, dv_BGLK, dq_BHKNQD = pl.pallas_call(
      kernel,
      out_shape=[jax.ShapeDtypeStruct(k_BGLK.shape, k_BGLK.dtype),
                 jax.ShapeDtypeStruct(v_BGLK.shape, v_BGLK.dtype),
                 jax.ShapeDtypeStruct((batch, num_heads, lists.num_k_blocks,
                                       lists.q_steps, bq, head_dim), jnp.float32)],
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=len(scalars),
          grid=(batch, num_kv_heads, lists.num_k_blocks, num_groups, lists.q_steps),
          in_specs=[*seg_specs, q_spec, q_spec, stat_spec, stat_spec, kv_spec, kv_spec],
          out_specs=[kv_spec, kv_spec, dq_spec],
          scratch_shapes=[pltpu.VMEM((bk, head_dim), jnp.float32)] * 2),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary",
                               "arbitrary")),
      interpret=interpret,
      name="block_sparse_flash_fused_bwd",
  )(*scalars, *seg_args, q_BHLK, do_BHLK, lse_BH1L, delta_BH1L,
    k_BGLK, v_BGLK)
  dq_BHLK = (reduce_dq(dq_BHKNQD, lists) * scale).astype(q_BHLK.dtype)
  return _to_heads_major(dq_BHLK), _to_heads_major(dk_BGLK), _to_heads_major(dv_BGLK)
