"""Block-sparse flash attention for GPU (Triton): forward, dq and dk/dv kernels.

One program per (batch, head, query block) loops over that block's active key
blocks; the lists are ordinary int32 inputs read with scalar loads, so only
active k/v tiles are loaded. Lists are ascending, so causal tiles that need the
elementwise mask form a contiguous run: two loops, one without the mask and
one with it. The dk/dv program of a key block loops over the query heads of
its kv head and each head's own list of active query blocks.

Tensors keep the [B, L, H, K] layout; Triton handles the strided tiles.

Segment ids (document masking) come in as [B, L] int32 blocks: the program's
own block and the whole row, sliced like k/v. With them every active tile is
masked (a causally full tile may still cross a document start), so the
full/partial split of the lists is not used.

Compute tiles larger than the mask's blocks (kernels.flash_lists.retile) come
with a bitmask per listed tile, one more int32 list input; a tile that is not
whole goes to the masked loop, which ANDs the sub-block mask in.

Stage 2 (pv_threshold, kernels.pv_skip): the forward's loop carries an int32
row [1, W] of skipped key blocks (W = nK rounded up to a power of two) and
branches on the scalar skip decision (lax.cond) around loading v and the P.V
matmul. The backward's skipped variants (static `skipped=True`) walk the list
of skipped tiles: dS = -P * delta, no v or dO loads, no dv.
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


def _split_bits(refs, bits):
  """(bits ref or None, other refs): a retiled list's bitmask follows its lists."""
  return (refs[0], refs[1:]) if bits is not None else (None, refs)


def _bits_args(bits):
  """The bitmask list as extra (whole) kernel inputs: [] or [bits]."""
  return [] if bits is None else [bits]


def _split_segments(refs, segmented):
  """(segment id refs or None, other refs): segment ids lead the inputs."""
  return (refs[:2], refs[2:]) if segmented else (None, refs)


def _same_segment(seg_refs, block):
  """fn(other_block) -> bool [own, other] tile of same-segment pairs, or None.

  seg_refs: None, or this program's block of ids and the whole row of ids.
  """
  if seg_refs is None:
    return None
  seg_own_ref, seg_all_ref = seg_refs
  seg_own = seg_own_ref[...]

  def same(other_block):
    seg_other = seg_all_ref[pl.ds(other_block * block, block)]
    return seg_own[:, None] == seg_other[None, :]
  return same


def _tile_mask(q_block, k_block, lists, same_segment, other_block, keys_major=False,
               bits=None):
  """Elementwise mask of a masked-path tile: causal, same segment and/or the
  tile's listed sub-blocks (bits: its scalar bitmask, None without)."""
  causal = (tiles.causal_allowed(q_block, k_block, lists.block_q, lists.block_k,
                                 keys_major) if lists.causal else None)
  segment = None if same_segment is None else same_segment(other_block)
  return tiles.and_masks(tiles.and_masks(causal, segment),
                         tiles.sub_block_allowed(bits, lists, keys_major))


def _kv_loop(q_block, row, kv_index_ref, kv_count_ref, kv_full_ref, lists, tile_fn,
             carry, same_segment=None, kv_bits_ref=None):
  """Runs carry = tile_fn(k_block, allowed, carry) over the active key blocks.

  same_segment (see _same_segment): every tile takes the masked loop.
  kv_bits_ref: the retiled lists' sub-block bitmasks (None: whole tiles).
  """
  base = row * lists.num_k_blocks

  def body(masked):
    def run(n, c):
      k_block = kv_index_ref[base + n]
      bits = None if kv_bits_ref is None else kv_bits_ref[base + n]
      allowed = (_tile_mask(q_block, k_block, lists, same_segment, k_block, bits=bits)
                 if masked else None)
      return tile_fn(k_block, allowed, c)
    return run

  if same_segment is not None:
    return lax.fori_loop(0, kv_count_ref[row], body(True), carry)
  full_count, count = kv_full_ref[row], kv_count_ref[row]
  carry = lax.fori_loop(0, full_count, body(False), carry)
  return lax.fori_loop(full_count, count, body(True), carry)


def _q_loop(k_block, row, q_index_ref, q_count_ref, q_partial_ref, lists, tile_fn, carry,
            same_segment, q_bits_ref):
  """carry = tile_fn(q_block, allowed_T, carry) over the query blocks listed in
  q-list row `row` of key block k_block; allowed_T: None or a [bk, bq] mask.
  q_bits_ref: the retiled lists' sub-block bitmasks (None: whole tiles)."""
  base = row * lists.num_q_blocks

  def body(masked):
    def run(n, c):
      q_block = q_index_ref[base + n]
      bits = None if q_bits_ref is None else q_bits_ref[base + n]
      allowed_T = (_tile_mask(q_block, k_block, lists, same_segment, q_block,
                              keys_major=True, bits=bits) if masked else None)
      return tile_fn(q_block, allowed_T, c)
    return run

  if same_segment is not None:
    return lax.fori_loop(0, q_count_ref[row], body(True), carry)
  # Partial (masked) tiles are the lowest query blocks: a leading run.
  partial_count, count = q_partial_ref[row], q_count_ref[row]
  carry = lax.fori_loop(0, partial_count, body(True), carry)
  return lax.fori_loop(partial_count, count, body(False), carry)


def _fwd_kernel(kv_index_ref, kv_count_ref, kv_full_ref, *refs, lists, scale,
                segmented, pv_threshold=None):
  kv_bits_ref, refs = _split_bits(refs, lists.kv_bits)
  seg_refs, refs = _split_segments(refs, segmented)
  q_ref, k_ref, v_ref, o_ref, lse_ref = refs[:5]
  b, h, i = (pl.program_id(axis) for axis in range(3))
  bq, bk = lists.block_q, lists.block_k
  q = q_ref[...]

  def tile(k_block, allowed, carry):
    keys = pl.ds(k_block * bk, bk)
    return tiles.forward_step(q, k_ref[keys, :], v_ref[keys, :], *carry, scale,
                              allowed)

  def tile_pv(k_block, allowed, carry):
    keys = pl.ds(k_block * bk, bk)
    m, l, acc, skipped = carry
    m, l, alpha, p, skip = tiles.softmax_step_pv(q, k_ref[keys, :], m, l, scale,
                                                 allowed, pv_threshold)
    # A scalar branch: v is loaded and multiplied only for a computed tile.
    pv = lax.cond(skip, lambda: jnp.zeros(acc.shape, jnp.float32),
                  lambda: tiles.pv_product(p, v_ref[keys, :]))
    skipped = jnp.where(skip, tiles.mark_skipped(skipped, k_block), skipped)
    return m, l, alpha * acc + pv, skipped

  carry = (jnp.full((bq, 1), tiles.MASK_VALUE, jnp.float32),
           jnp.zeros((bq, 1), jnp.float32),
           jnp.zeros((bq, q.shape[-1]), jnp.float32))
  if pv_threshold is not None:
    skip_ref = refs[5]
    carry = (*carry, jnp.zeros(skip_ref.shape, jnp.int32))
  carry = _kv_loop(i, lists.kv_row(b, h, i), kv_index_ref, kv_count_ref,
                   kv_full_ref, lists, tile if pv_threshold is None else tile_pv,
                   carry, _same_segment(seg_refs, bk), kv_bits_ref)
  o, lse = tiles.finalize(*carry[:3])
  o_ref[...] = o.astype(o_ref.dtype)
  lse_ref[...] = lse[:, 0]
  if pv_threshold is not None:
    skip_ref[...] = carry[3]


def _row_specs(lists, num_groups, seq_len, head_dim):
  """BlockSpecs for grids (b, h, i): this query block's tiles, all of k/v."""
  bq = lists.block_q
  q_spec = pl.BlockSpec((None, bq, None, head_dim), lambda b, h, i: (b, i, h, 0))
  kv_spec = pl.BlockSpec((None, seq_len, None, head_dim),
                         lambda b, h, i: (b, 0, lax.div(h, num_groups), 0))
  stat_spec = pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))
  return q_spec, kv_spec, stat_spec


def _segment_inputs(segment_ids_BL, own_block, own_map):
  """(specs, arrays) for the segment ids: own block of ids, then the whole row."""
  if segment_ids_BL is None:
    return [], []
  seq_len = segment_ids_BL.shape[1]
  specs = [pl.BlockSpec((None, own_block), own_map),
           pl.BlockSpec((None, seq_len), lambda b, *_: (b, 0))]
  return specs, [segment_ids_BL, segment_ids_BL]


def forward(q_BLHK, k_BLGK, v_BLGK, lists, *, interpret, segment_ids_BL=None,
            pv_threshold=None):
  """Returns o_BLHK and the residual lse [B, H, L] (float32); with pv_threshold
  (stage 2) also the skip map, bool [B, H, nQ, nK]."""
  batch, seq_len, num_heads, head_dim = q_BLHK.shape
  num_groups = num_heads // k_BLGK.shape[2]
  q_spec, kv_spec, stat_spec = _row_specs(lists, num_groups, seq_len, head_dim)
  seg_specs, seg_args = _segment_inputs(segment_ids_BL, lists.block_q,
                                        lambda b, h, i: (b, i))
  out_shape = [jax.ShapeDtypeStruct(q_BLHK.shape, q_BLHK.dtype),
               jax.ShapeDtypeStruct((batch, num_heads, seq_len), jnp.float32)]
  out_specs = [q_spec, stat_spec]
  if pv_threshold is not None:
    width = tiles.skip_map_width(lists.num_k_blocks)
    out_shape.append(jax.ShapeDtypeStruct(
        (batch, num_heads, lists.num_q_blocks, 1, width), jnp.int32))
    out_specs.append(pl.BlockSpec((None, None, None, 1, width),
                                  lambda b, h, i: (b, h, i, 0, 0)))
  whole, bits = pl.no_block_spec, _bits_args(lists.kv_bits)
  kernel = functools.partial(_fwd_kernel, lists=lists, scale=1.0 / math.sqrt(head_dim),
                             segmented=segment_ids_BL is not None,
                             pv_threshold=pv_threshold)
  o_BLHK, lse_BHL, *skip = pl.pallas_call(
      kernel,
      out_shape=out_shape,
      grid=(batch, num_heads, lists.num_q_blocks),
      in_specs=[whole] * (3 + len(bits)) + [*seg_specs, q_spec, kv_spec, kv_spec],
      out_specs=out_specs,
      compiler_params=_compiler_params(head_dim),
      interpret=interpret,
      name="block_sparse_flash_fwd",
  )(lists.kv_index, lists.kv_count, lists.kv_full, *bits, *seg_args, q_BLHK, k_BLGK,
    v_BLGK)
  if pv_threshold is None:
    return o_BLHK, lse_BHL
  return o_BLHK, lse_BHL, tiles.cut_skip_map(skip[0], lists)


def _dq_kernel(kv_index_ref, kv_count_ref, kv_full_ref, *refs, lists, scale, segmented,
               skipped=False):
  kv_bits_ref, refs = _split_bits(refs, lists.kv_bits)
  seg_refs, (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref) = _split_segments(
      refs, segmented)
  b, h, i = (pl.program_id(axis) for axis in range(3))
  bk = lists.block_k
  q, do = q_ref[...], (None if skipped else do_ref[...])
  lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]

  def tile(k_block, allowed, dq):
    keys = pl.ds(k_block * bk, bk)
    if skipped:  # stage 2 dropped this tile's P.V: v and dO are not loaded
      return tiles.dq_step_skipped(q, k_ref[keys, :], lse, delta, dq, scale, allowed)
    return tiles.dq_step(q, k_ref[keys, :], v_ref[keys, :], do, lse, delta, dq,
                         scale, allowed)

  dq = _kv_loop(i, lists.kv_row(b, h, i), kv_index_ref, kv_count_ref, kv_full_ref,
                lists, tile, jnp.zeros(q.shape, jnp.float32),
                _same_segment(seg_refs, bk), kv_bits_ref)
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_index_ref, q_count_ref, q_partial_ref, *refs, lists, scale,
                num_groups, segmented, skipped=False):
  q_bits_ref, refs = _split_bits(refs, lists.q_bits)
  seg_refs, refs = _split_segments(refs, segmented)
  q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, dk_ref = refs[:7]
  b, g, j = (pl.program_id(axis) for axis in range(3))
  bq = lists.block_q
  k, v = k_ref[...], (None if skipped else v_ref[...])
  same_segment = _same_segment(seg_refs, bq)  # [bk, bq] tiles

  def step(r, q_block, allowed_T, c):
    queries = pl.ds(q_block * bq, bq)
    if skipped:  # dv gets nothing; dk needs neither v nor dO
      return (tiles.dk_step_skipped(
          q_ref[queries, r, :], k, lse_ref[r, queries][None, :],
          delta_ref[r, queries][None, :], c[0], scale, allowed_T),)
    return tiles.dkv_step(
        q_ref[queries, r, :], k, v, do_ref[queries, r, :],
        lse_ref[r, queries][None, :], delta_ref[r, queries][None, :],
        *c, scale, allowed_T)

  def over_heads(r, carry):
    row = lists.q_row(b, g * num_groups + r, j)
    return _q_loop(j, row, q_index_ref, q_count_ref, q_partial_ref, lists,
                   functools.partial(step, r), carry, same_segment, q_bits_ref)

  zeros = jnp.zeros(k.shape, jnp.float32)
  grads = lax.fori_loop(0, num_groups, over_heads, (zeros,) * (1 if skipped else 2))
  dk_ref[...] = (grads[0] * scale).astype(dk_ref.dtype)
  if not skipped:
    refs[7][...] = grads[1].astype(refs[7].dtype)


def backward(q_BLHK, k_BLGK, v_BLGK, o_BLHK, lse_BHL, do_BLHK, lists, *, interpret,
             segment_ids_BL=None, skipped_lists=None):
  """Returns dq_BLHK, dk_BLGK, dv_BLGK.

  skipped_lists (stage 2): the tiles whose P.V the forward skipped, walked by
  the kernels' skipped variant (dS = -P * delta, no dv); `lists` then holds
  only the computed tiles. The two passes are summed in float32.
  """
  delta_BHL = tiles.block_delta(do_BLHK, o_BLHK)
  args = (q_BLHK, k_BLGK, v_BLGK, do_BLHK, lse_BHL, delta_BHL)
  kw = dict(interpret=interpret, segment_ids_BL=segment_ids_BL)
  return tiles.backward_passes(_dq_call, _dkv_call, args, lists, skipped_lists, kw,
                               (q_BLHK.dtype, k_BLGK.dtype, v_BLGK.dtype))


def _dq_call(q_BLHK, k_BLGK, v_BLGK, do_BLHK, lse_BHL, delta_BHL, lists, *, interpret,
             segment_ids_BL, skipped=False, out_dtype=None):
  seq_len, num_heads, head_dim = q_BLHK.shape[1:]
  num_groups = num_heads // k_BLGK.shape[2]
  whole, bits = pl.no_block_spec, _bits_args(lists.kv_bits)
  q_spec, kv_spec, stat_spec = _row_specs(lists, num_groups, seq_len, head_dim)
  seg_specs, seg_args = _segment_inputs(segment_ids_BL, lists.block_q,
                                        lambda b, h, i: (b, i))
  kernel = functools.partial(_dq_kernel, lists=lists, scale=1.0 / math.sqrt(head_dim),
                             segmented=segment_ids_BL is not None, skipped=skipped)
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct(q_BLHK.shape, out_dtype or q_BLHK.dtype),
      grid=(q_BLHK.shape[0], num_heads, lists.num_q_blocks),
      in_specs=[whole] * (3 + len(bits)) + [*seg_specs, q_spec, kv_spec, kv_spec,
                                            q_spec, stat_spec, stat_spec],
      out_specs=q_spec,
      compiler_params=_compiler_params(head_dim),
      interpret=interpret,
      name="block_sparse_flash_dq_skipped" if skipped else "block_sparse_flash_dq",
  )(lists.kv_index, lists.kv_count, lists.kv_full, *bits, *seg_args, q_BLHK, k_BLGK,
    v_BLGK, do_BLHK, lse_BHL, delta_BHL)


def _dkv_call(q_BLHK, k_BLGK, v_BLGK, do_BLHK, lse_BHL, delta_BHL, lists, *, interpret,
              segment_ids_BL, skipped=False, out_dtype=None):
  """[dk, dv], or [dk] for the skipped variant."""
  batch, seq_len, num_heads, head_dim = q_BLHK.shape
  num_kv_heads = k_BLGK.shape[2]
  num_groups = num_heads // num_kv_heads
  whole, bk, bits = pl.no_block_spec, lists.block_k, _bits_args(lists.q_bits)
  group_spec = pl.BlockSpec((None, seq_len, num_groups, head_dim),
                            lambda b, g, j: (b, 0, g, 0))
  group_stat_spec = pl.BlockSpec((None, num_groups, seq_len), lambda b, g, j: (b, g, 0))
  kv_spec = pl.BlockSpec((None, bk, None, head_dim), lambda b, g, j: (b, j, g, 0))
  seg_specs, seg_args = _segment_inputs(segment_ids_BL, bk, lambda b, g, j: (b, j))
  outputs = [k_BLGK] if skipped else [k_BLGK, v_BLGK]
  kernel = functools.partial(_dkv_kernel, lists=lists, scale=1.0 / math.sqrt(head_dim),
                             num_groups=num_groups, segmented=segment_ids_BL is not None,
                             skipped=skipped)
  return pl.pallas_call(
      kernel,
      out_shape=[jax.ShapeDtypeStruct(x.shape, out_dtype or x.dtype) for x in outputs],
      grid=(batch, num_kv_heads, lists.num_k_blocks),
      in_specs=[whole] * (3 + len(bits)) + [*seg_specs, group_spec, group_spec,
                                            group_stat_spec, group_stat_spec, kv_spec,
                                            kv_spec],
      out_specs=[kv_spec] * len(outputs),
      compiler_params=_compiler_params(head_dim),
      interpret=interpret,
      name="block_sparse_flash_dk_skipped" if skipped else "block_sparse_flash_dkv",
  )(lists.q_index, lists.q_count, lists.q_partial, *bits, *seg_args, q_BLHK, do_BLHK,
    lse_BHL, delta_BHL, k_BLGK, v_BLGK)
