"""Block-sparse flash attention for GPU (Triton): forward, dq and dk/dv kernels.

One program per (batch, head, query block) loops over that block's active key
blocks; the lists are ordinary int32 inputs read with scalar loads, so only
active k/v tiles are loaded. Lists are ascending, so causal tiles that need the
elementwise mask form a contiguous run: two loops, one without the mask and
one with it. The dk/dv program of a key block loops over the query heads of
its kv head and each head's own list of active query blocks.

Tensors keep the [B, L, H, K] layout; Triton handles the strided tiles.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels import flash_tiles as tiles


def _compiler_params(head_dim):
  return plgpu.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2)


def _kv_loop(q_block, row, kv_index_ref, kv_count_ref, kv_full_ref, lists, tile_fn,
             carry):
  """Runs carry = tile_fn(k_block, allowed, carry) over the active key blocks."""
  base = row * lists.num_k_blocks
  full_count, count = kv_full_ref[row], kv_count_ref[row]

  def body(masked):
    def run(n, c):
      k_block = kv_index_ref[base + n]
      allowed = (tiles.causal_allowed(q_block, k_block, lists.block_q, lists.block_k)
                 if masked else None)
      return tile_fn(k_block, allowed, c)
    return run

  carry = lax.fori_loop(0, full_count, body(False), carry)
  return lax.fori_loop(full_count, count, body(True), carry)


def _fwd_kernel(kv_index_ref, kv_count_ref, kv_full_ref, q_ref, k_ref, v_ref,
                o_ref, lse_ref, *, lists, scale):
  b, h, i = (pl.program_id(axis) for axis in range(3))
  bq, bk = lists.block_q, lists.block_k
  q = q_ref[...]

  def tile(k_block, allowed, carry):
    keys = pl.ds(k_block * bk, bk)
    return tiles.forward_step(q, k_ref[keys, :], v_ref[keys, :], *carry, scale,
                              allowed)

  carry = (jnp.full((bq, 1), tiles.MASK_VALUE, jnp.float32),
           jnp.zeros((bq, 1), jnp.float32),
           jnp.zeros((bq, q.shape[-1]), jnp.float32))
  carry = _kv_loop(i, lists.kv_row(b, h, i), kv_index_ref, kv_count_ref,
                   kv_full_ref, lists, tile, carry)
  o, lse = tiles.finalize(*carry)
  o_ref[...] = o.astype(o_ref.dtype)
  lse_ref[...] = lse[:, 0]


def _row_specs(lists, num_groups, seq_len, head_dim):
  """BlockSpecs for grids (b, h, i): this query block's tiles, all of k/v."""
  bq = lists.block_q
  q_spec = pl.BlockSpec((None, bq, None, head_dim), lambda b, h, i: (b, i, h, 0))
  kv_spec = pl.BlockSpec((None, seq_len, None, head_dim),
                         lambda b, h, i: (b, 0, lax.div(h, num_groups), 0))
  stat_spec = pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))
  return q_spec, kv_spec, stat_spec


def forward(q_BLHK, k_BLGK, v_BLGK, lists, *, interpret):
  """Returns o_BLHK and the residual lse [B, H, L] (float32)."""
  batch, seq_len, num_heads, head_dim = q_BLHK.shape
  num_groups = num_heads // k_BLGK.shape[2]
  q_spec, kv_spec, stat_spec = _row_specs(lists, num_groups, seq_len, head_dim)
  whole = pl.no_block_spec
  kernel = functools.partial(_fwd_kernel, lists=lists, scale=1.0 / math.sqrt(head_dim))
  return pl.pallas_call(
      kernel,
      out_shape=[jax.ShapeDtypeStruct(q_BLHK.shape, q_BLHK.dtype),
                 jax.ShapeDtypeStruct((batch, num_heads, seq_len), jnp.float32)],
      grid=(batch, num_heads, lists.num_q_blocks),
      in_specs=[whole, whole, whole, q_spec, kv_spec, kv_spec],
      out_specs=[q_spec, stat_spec],
      compiler_params=_compiler_params(head_dim),
      interpret=interpret,
      name="block_sparse_flash_fwd",
  )(lists.kv_index, lists.kv_count, lists.kv_full, q_BLHK, k_BLGK, v_BLGK)


def _dq_kernel(kv_index_ref, kv_count_ref, kv_full_ref, q_ref, k_ref, v_ref, do_ref,
               lse_ref, delta_ref, dq_ref, *, lists, scale):
  b, h, i = (pl.program_id(axis) for axis in range(3))
  bk = lists.block_k
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]

  def tile(k_block, allowed, dq):
    keys = pl.ds(k_block * bk, bk)
    return tiles.dq_step(q, k_ref[keys, :], v_ref[keys, :], do, lse, delta, dq,
                         scale, allowed)

  dq = _kv_loop(i, lists.kv_row(b, h, i), kv_index_ref, kv_count_ref, kv_full_ref,
                lists, tile, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_index_ref, q_count_ref, q_partial_ref, q_ref, do_ref, lse_ref,
                delta_ref, k_ref, v_ref, dk_ref, dv_ref, *, lists, scale, num_groups):
  b, g, j = (pl.program_id(axis) for axis in range(3))
  bq = lists.block_q
  k, v = k_ref[...], v_ref[...]

  def over_heads(r, carry):
    row = lists.q_row(b, g * num_groups + r, j)
    base = row * lists.num_q_blocks

    def body(masked):
      def run(n, c):
        q_block = q_index_ref[base + n]
        queries = pl.ds(q_block * bq, bq)
        allowed_T = (tiles.causal_allowed(q_block, j, bq, lists.block_k, keys_major=True)
                     if masked else None)
        return tiles.dkv_step(
            q_ref[queries, r, :], k, v, do_ref[queries, r, :],
            lse_ref[r, queries][None, :], delta_ref[r, queries][None, :],
            *c, scale, allowed_T)
      return run

    # Partial (masked) tiles are the lowest query blocks: a leading run.
    partial_count, count = q_partial_ref[row], q_count_ref[row]
    carry = lax.fori_loop(0, partial_count, body(True), carry)
    return lax.fori_loop(partial_count, count, body(False), carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, num_groups, over_heads, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def backward(q_BLHK, k_BLGK, v_BLGK, o_BLHK, lse_BHL, do_BLHK, lists, *, interpret):
  """Returns dq_BLHK, dk_BLGK, dv_BLGK."""
  batch, seq_len, num_heads, head_dim = q_BLHK.shape
  num_kv_heads = k_BLGK.shape[2]
  num_groups = num_heads // num_kv_heads
  scale = 1.0 / math.sqrt(head_dim)
  delta_BHL = tiles.block_delta(do_BLHK, o_BLHK)
  whole = pl.no_block_spec

  q_spec, kv_spec, stat_spec = _row_specs(lists, num_groups, seq_len, head_dim)
  dq_BLHK = pl.pallas_call(
      functools.partial(_dq_kernel, lists=lists, scale=scale),
      out_shape=jax.ShapeDtypeStruct(q_BLHK.shape, q_BLHK.dtype),
      grid=(batch, num_heads, lists.num_q_blocks),
      in_specs=[whole, whole, whole, q_spec, kv_spec, kv_spec, q_spec, stat_spec,
                stat_spec],
      out_specs=q_spec,
      compiler_params=_compiler_params(head_dim),
      interpret=interpret,
      name="block_sparse_flash_dq",
  )(lists.kv_index, lists.kv_count, lists.kv_full, q_BLHK, k_BLGK, v_BLGK, do_BLHK,
    lse_BHL, delta_BHL)

  bk = lists.block_k
  group_spec = pl.BlockSpec((None, seq_len, num_groups, head_dim),
                            lambda b, g, j: (b, 0, g, 0))
  group_stat_spec = pl.BlockSpec((None, num_groups, seq_len), lambda b, g, j: (b, g, 0))
  kv_spec = pl.BlockSpec((None, bk, None, head_dim), lambda b, g, j: (b, j, g, 0))
  dk_BLGK, dv_BLGK = pl.pallas_call(
      functools.partial(_dkv_kernel, lists=lists, scale=scale, num_groups=num_groups),
      out_shape=[jax.ShapeDtypeStruct(k_BLGK.shape, k_BLGK.dtype),
                 jax.ShapeDtypeStruct(v_BLGK.shape, v_BLGK.dtype)],
      grid=(batch, num_kv_heads, lists.num_k_blocks),
      in_specs=[whole, whole, whole, group_spec, group_spec, group_stat_spec,
                group_stat_spec, kv_spec, kv_spec],
      out_specs=[kv_spec, kv_spec],
      compiler_params=_compiler_params(head_dim),
      interpret=interpret,
      name="block_sparse_flash_dkv",
  )(lists.q_index, lists.q_count, lists.q_partial, q_BLHK, do_BLHK, lse_BHL,
    delta_BHL, k_BLGK, v_BLGK)
  return dq_BLHK, dk_BLGK, dv_BLGK
