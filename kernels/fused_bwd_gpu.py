"""Fused flash-attention backward for GPU (Triton): dq, dk and dv in one kernel.

FlashAttention-2's backward. One program per (batch, kv head, key block) walks
the query blocks listed for its key block, for each query head of its kv head
(the grid and walk of kernels.sparse_flash_gpu's dk/dv kernel). Each tile
computes P and dS once (flash_tiles.fused_step: 5 matmuls, where the dq and
dk/dv kernels take 3 + 4), accumulates dk and dv in registers and atomically
adds its dS K into a float32 dq buffer: zeros, aliased in and out of the
kernel; dq is scaled and cast outside.

Float atomics sum dq in an order that varies from run to run, so its rounding
does too: the two-kernel backward (kernels.sparse_flash_gpu) stays the default.
Masking (causal, segment ids, the sub-block bitmasks of tiles larger than the
mask's blocks) goes through sparse_flash_gpu's helpers.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels import flash_tiles as tiles
from kernels import sparse_flash_gpu as gpu


def _fused_kernel(q_index_ref, q_count_ref, q_partial_ref, *refs, lists, scale,
                  num_groups, segmented):
  q_bits_ref, refs = gpu._split_bits(refs, lists.q_bits)
  seg_refs, refs = gpu._split_segments(refs, segmented)
  # dq_in_ref is dq_ref's buffer (aliased): only dq_ref is used.
  q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, _, dk_ref, dv_ref, dq_ref = refs
  b, g, j = (pl.program_id(axis) for axis in range(3))
  bq = lists.block_q
  k, v = k_ref[...], v_ref[...]
  same_segment = gpu._same_segment(seg_refs, bq)  # [bk, bq] tiles

  def tile(r, q_block, allowed_T, carry):
    queries = pl.ds(q_block * bq, bq)
    dk, dv, dq = tiles.fused_step(
        q_ref[queries, r, :], k, v, do_ref[queries, r, :],
        lse_ref[r, queries][None, :], delta_ref[r, queries][None, :], *carry, scale,
        allowed_T)
    plgpu.atomic_add(dq_ref, (queries, r, slice(None)), dq)
    return dk, dv

  def over_heads(r, carry):
    row = lists.q_row(b, g * num_groups + r, j)
    return gpu._q_loop(j, row, q_index_ref, q_count_ref, q_partial_ref, lists,
                       functools.partial(tile, r), carry, same_segment, q_bits_ref)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, num_groups, over_heads, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def backward(q_BLHK, k_BLGK, v_BLGK, o_BLHK, lse_BHL, do_BLHK, lists, *, interpret,
             segment_ids_BL=None):
  """Returns dq_BLHK, dk_BLGK, dv_BLGK (the backends' `backward`, one kernel)."""
  batch, seq_len, num_heads, head_dim = q_BLHK.shape
  num_kv_heads = k_BLGK.shape[2]
  num_groups = num_heads // num_kv_heads
  scale = 1.0 / math.sqrt(head_dim)
  whole, bk, bits = pl.no_block_spec, lists.block_k, gpu._bits_args(lists.q_bits)
  group_spec = pl.BlockSpec((None, seq_len, num_groups, head_dim),
                            lambda b, g, j: (b, 0, g, 0))
  group_stat_spec = pl.BlockSpec((None, num_groups, seq_len), lambda b, g, j: (b, g, 0))
  kv_spec = pl.BlockSpec((None, bk, None, head_dim), lambda b, g, j: (b, j, g, 0))
  seg_specs, seg_args = gpu._segment_inputs(segment_ids_BL, bk, lambda b, g, j: (b, j))
  inputs = [lists.q_index, lists.q_count, lists.q_partial, *bits, *seg_args, q_BLHK,
            do_BLHK, lse_BHL, tiles.block_delta(do_BLHK, o_BLHK), k_BLGK, v_BLGK,
            jnp.zeros(q_BLHK.shape, jnp.float32)]
  kernel = functools.partial(_fused_kernel, lists=lists, scale=scale,
                             num_groups=num_groups, segmented=segment_ids_BL is not None)
  dk_BLGK, dv_BLGK, dq_BLHK = pl.pallas_call(
      kernel,
      out_shape=[jax.ShapeDtypeStruct(k_BLGK.shape, k_BLGK.dtype),
                 jax.ShapeDtypeStruct(v_BLGK.shape, v_BLGK.dtype),
                 jax.ShapeDtypeStruct(q_BLHK.shape, jnp.float32)],
      grid=(batch, num_kv_heads, lists.num_k_blocks),
      in_specs=[whole] * (3 + len(bits)) + [*seg_specs, group_spec, group_spec,
                                            group_stat_spec, group_stat_spec, kv_spec,
                                            kv_spec, group_spec],
      out_specs=[kv_spec, kv_spec, group_spec],
      input_output_aliases={len(inputs) - 1: 2},
      compiler_params=gpu._compiler_params(head_dim),
      interpret=interpret,
      name="block_sparse_flash_fused_bwd",
  )(*inputs)
  return (dq_BLHK * scale).astype(q_BLHK.dtype), dk_BLGK, dv_BLGK
