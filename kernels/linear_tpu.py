"""The tpu (Mosaic) variant of kernels.linear_kernels.forward_call: one chunk walk per
[BK, BV] state tile.

grid (B, H, F / BK, V / BV, N), the chunk axis sequential ("arbitrary"), the others
parallel. Program (fi, vj) holds one float32 [BK, BV] tile of the state in VMEM
(and the extra state row it carries, z_F [BK] or z_V [BV]) and walks the chunks;
per chunk it writes its F tile's share of the output,
  o^fi_c = (q^fi_c * exp(B)) S^fi_c  [+ A_c v_c + qa exp(B) z_V where fi == 0],
  A_c = (sq_c sk_c^T [+ qa ka^T]) * exp(B_i - B_j) * (i > j),
then updates its tile: S_{c+1} = exp(B_last) S_c + (k_c * exp(B_last - B))^T v_c.
The F / BK shares come back float32 ([B, H, F / BK, L, V]) and are summed in jnp;
so does the normaliser's r (q^fi exp(B) . z_F, plus A_c 1 where fi == 0).

Why shares rather than summing over F tiles inside the kernel: a program walks
every chunk of one tile, so an in-kernel sum over F tiles needs either every
chunk's output resident in VMEM ([L, BV] float32, 16 MiB at L = 32k) or the chunk
states h in HBM for a second pass (the cuda form: (L / C) F V values, 129 x the
output at F = 8256, C = 64). The shares cost F / BK x the output (5 x at F = 8256,
BK = 1664) and keep VMEM per program at one state tile plus the chunk's blocks,
whatever F, V and L. The scores use the whole width of sq, sk (for the squared map
its K-wide inputs), only where fi == 0: elsewhere their block index stays put, so
they are not fetched again.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.linear_chunk import (decay_matrix, dot, from_start, poisoned_call, square_if,
                                  tile_size, to_end)


def _kernel(*refs, square, extra):
  """extra: None, "normaliser" (r and z_F) or "rank1" (qa ka^T in the scores, z_V)."""
  q_ref, k_ref, v_ref, bcol_ref, brow_ref, locol_ref, lorow_ref, sq_ref, sk_ref = refs[:9]
  qa_ref, kacol_ref, karow_ref = refs[9:12] if extra == "rank1" else (None,) * 3
  state_ref, z_ref = (refs[-2], refs[-1]) if extra else (refs[-1], None)
  o_ref = refs[-4] if extra == "normaliser" else refs[-3] if extra else refs[-2]
  r_ref = refs[-3] if extra == "normaliser" else None
  tile, chunk = pl.program_id(2), pl.program_id(4)

  @pl.when(chunk == 0)
  def _():
    state_ref[...] = jnp.zeros_like(state_ref)
    if extra:
      z_ref[...] = jnp.zeros_like(z_ref)

  dtype = v_ref.dtype
  b_C1, b_1C, lo_C1, lo_1C = bcol_ref[...], brow_ref[...], locol_ref[...], lorow_ref[...]
  from_start_C1 = from_start(b_C1, lo_C1)
  state_KV = state_ref[...]
  qs_CK = q_ref[...] * from_start_C1
  o_ref[...] = dot(qs_CK.astype(dtype), state_KV.astype(dtype))
  if extra == "normaliser":
    r_ref[...] = jnp.sum(qs_CK * z_ref[...], axis=1, keepdims=True)

  @pl.when(tile == 0)
  def _():
    scores_CC = square_if(dot(sq_ref[...], sk_ref[...].T), square)
    if extra == "rank1":
      scores_CC += qa_ref[...] * karow_ref[...]
    a_CC = scores_CC * decay_matrix(b_C1, b_1C, lo_C1, lo_1C)
    o_CV = dot(a_CC.astype(dtype), v_ref[...])
    if extra == "rank1":
      o_CV += (qa_ref[...] * from_start_C1) * z_ref[...]
    o_ref[...] += o_CV
    if extra == "normaliser":
      r_ref[...] += jnp.sum(a_CC, axis=1, keepdims=True)

  to_end_C1, decay_11 = to_end(b_C1, b_1C, lo_C1, lo_1C)
  v_CV = v_ref[...]
  k_CK = k_ref[...] * to_end_C1
  state_ref[...] = decay_11 * state_KV + dot(k_CK.astype(dtype).T, v_CV)
  if extra == "normaliser":
    z_ref[...] = decay_11 * z_ref[...] + jnp.sum(k_CK, axis=0, keepdims=True)
  elif extra == "rank1":
    weighted_CV = (kacol_ref[...] * to_end_C1) * v_CV.astype(jnp.float32)
    z_ref[...] = decay_11 * z_ref[...] + jnp.sum(weighted_CV, axis=0, keepdims=True)


def tpu_forward(q, k, v, b, lo, sq, sk, square, rank1, normaliser, out_dtype, chunk,
                interpret, poison):
  """-> (o [B, H, L, V], r [B, H, L] or None); see kernels.linear_kernels.forward_call."""
  (batch, heads, length), features, values = b.shape, q.shape[-1], v.shape[-1]
  bk, bv, chunks = tile_size(features, "tpu"), tile_size(values, "tpu"), length // chunk
  tiles = (features // bk, values // bv)
  extra = "rank1" if rank1 is not None else "normaliser" if normaliser else None

  def block(x, width, last):  # [C, width] blocks of a [B, heads', L, X] operand
    per_head = heads // x.shape[1]
    return pl.BlockSpec((None, None, chunk, width), lambda i, h, fi, vj, n: (
        i, lax.div(h, per_head), n, last(fi, vj)))

  def at_first_tile(x, width):  # read only where fi == 0; elsewhere the block stays put
    per_head = heads // x.shape[1]
    return pl.BlockSpec((None, None, chunk, width), lambda i, h, fi, vj, n: (
        i, lax.div(h, per_head), jnp.where(fi == 0, n, 0), 0))

  def row(x, first_tile_only=False):  # [1, C] per chunk of x [B, heads', L]
    per_head = heads // x.shape[1]
    return pl.BlockSpec((None, None, None, 1, chunk), lambda i, h, fi, vj, n: (
        i, lax.div(h, per_head), jnp.where(fi == 0, n, 0) if first_tile_only else n, 0, 0))

  # Decays (and ka) enter as columns [C, 1] (scaling rows) and rows [1, C] (the
  # columns of the C x C matrices), so the kernel needs no in-register transpose.
  as_col = lambda x: x[..., None]
  as_row = lambda x: x.reshape(x.shape[0], x.shape[1], chunks, 1, chunk)
  operands = [q, k, v, as_col(b), as_row(b), as_col(lo), as_row(lo), sq, sk]
  in_specs = [block(q, bk, lambda fi, vj: fi), block(k, bk, lambda fi, vj: fi),
              block(v, bv, lambda fi, vj: vj), block(as_col(b), 1, lambda fi, vj: 0),
              row(b), block(as_col(lo), 1, lambda fi, vj: 0), row(lo),
              at_first_tile(sq, sq.shape[-1]), at_first_tile(sk, sk.shape[-1])]
  scratch = [pltpu.VMEM((bk, bv), jnp.float32)]
  if extra == "rank1":
    qa, ka = rank1
    operands += [as_col(qa), as_col(ka), as_row(ka)]
    in_specs += [at_first_tile(as_col(qa), 1), block(as_col(ka), 1, lambda fi, vj: 0),
                 row(ka, first_tile_only=True)]
    scratch.append(pltpu.VMEM((1, bv), jnp.float32))
  outs = [jax.ShapeDtypeStruct((batch, heads, tiles[0], length, values), jnp.float32)]
  out_specs = [pl.BlockSpec((None, None, None, chunk, bv),
                            lambda i, h, fi, vj, n: (i, h, fi, n, vj))]
  if extra == "normaliser":
    outs.append(jax.ShapeDtypeStruct((batch, heads, *tiles, length, 1), jnp.float32))
    out_specs.append(pl.BlockSpec((None, None, None, None, chunk, 1),
                                  lambda i, h, fi, vj, n: (i, h, fi, vj, n, 0)))
    scratch.append(pltpu.VMEM((1, bk), jnp.float32))
  o_parts, *r_parts = poisoned_call(
      functools.partial(_kernel, square=square, extra=extra), operands, outs, poison,
      grid=(batch, heads, *tiles, chunks), in_specs=in_specs, out_specs=out_specs,
      scratch_shapes=scratch,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel",) * 4 + ("arbitrary",)),
      interpret=interpret)
  o = jnp.sum(o_parts, axis=2).astype(out_dtype)
  return o, (jnp.sum(r_parts[0], axis=2)[:, :, 0, :, 0] if r_parts else None)
