"""The cuda (Triton) variant of kernels.linear_kernels.forward_call: fla's chunked form.

  state pass   grid (F / BK, V / BV, B * H): each program owns one [BK, BV] tile of
               the float32 state and walks the chunks in order, writing the state
               entering each chunk, h [B, H, N, F, V] (in the input dtype), and the
               extra state row it carries (z_F [BK] or z_V [BV], float32; every
               program along the other tile axis writes its own copy, no race);
  scores pass  grid (N, B * H): A_c = (q_c k_c^T [+ qa ka^T]) * exp(B_i - B_j) * (i > j),
               summed over K tiles, once per chunk (not once per V tile); with the
               normaliser also r_c = (q_c * exp(B)) z_F + A_c 1;
  output pass  grid (N, V / BV, B * H), all chunks at once:
               o_c = (q_c * exp(B)) h_c + A_c v_c [+ qa exp(B) z_V],
               the first summed over K tiles.
Per chunk S_{c+1} = exp(B_last) S_c + (k_c * exp(B_last - B))^T v_c; every exponent
is <= 0, so nothing overflows however strong the decay.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from kernels.linear_chunk import (decay_matrix, dot, from_start, poisoned_call, square_if,
                                  tile_size, to_end)


def _state_kernel(*refs, chunk, extra):
  """extra: None, "normaliser" (also carries z_F from k) or "rank1" (z_V from ka, v)."""
  k_ref, v_ref, b_ref, lo_ref = refs[:4]
  ka_ref = refs[4] if extra == "rank1" else None
  h_ref, z_ref = (refs[-2], refs[-1]) if extra else (refs[-1], None)

  def body(n, carry):
    state_KV, z_1X = carry
    h_ref[n] = state_KV.astype(h_ref.dtype)
    if extra:
      z_ref[pl.ds(n, 1), :] = z_1X
    rows = pl.ds(n * chunk, chunk)
    b_C, lo_C = b_ref[rows], lo_ref[rows]
    to_end_C1, decay_11 = to_end(b_C[:, None], b_C[None, :], lo_C[:, None], lo_C[None, :])
    v_CV = v_ref[rows, :]
    k_CK = k_ref[rows, :] * to_end_C1
    state_KV = decay_11 * state_KV + dot(k_CK.astype(v_CV.dtype).T, v_CV)
    if extra == "normaliser":
      z_1X = decay_11 * z_1X + jnp.sum(k_CK, axis=0, keepdims=True)
    elif extra == "rank1":
      weighted_CV = (ka_ref[rows][:, None] * to_end_C1) * v_CV.astype(jnp.float32)
      z_1X = decay_11 * z_1X + jnp.sum(weighted_CV, axis=0, keepdims=True)
    return state_KV, z_1X

  z_width = h_ref.shape[1] if extra == "normaliser" else h_ref.shape[2]
  lax.fori_loop(0, h_ref.shape[0], body, (jnp.zeros(h_ref.shape[1:], jnp.float32),
                                          jnp.zeros((1, z_width), jnp.float32)))


def _scores_kernel(*refs, tile, square, extra):
  sq_ref, sk_ref, b_ref, lo_ref = refs[:4]
  chunk = sq_ref.shape[0]

  def body(i, scores_CC):
    cols = pl.ds(i * tile, tile)
    return scores_CC + dot(sq_ref[:, cols], sk_ref[:, cols].T)

  scores_CC = square_if(lax.fori_loop(0, sq_ref.shape[1] // tile, body,
                                      jnp.zeros((chunk, chunk), jnp.float32)), square)
  if extra == "rank1":
    qa_ref, ka_ref = refs[4:6]
    scores_CC += qa_ref[...][:, None] * ka_ref[...][None, :]
  b_C, lo_C = b_ref[...], lo_ref[...]
  a_CC = scores_CC * decay_matrix(b_C[:, None], b_C[None, :], lo_C[:, None], lo_C[None, :])
  a_ref = refs[-2] if extra == "normaliser" else refs[-1]
  a_ref[...] = a_CC.astype(a_ref.dtype)
  if extra == "normaliser":
    q_ref, z_ref, r_ref = refs[4], refs[5], refs[-1]
    from_start_C1 = from_start(b_C[:, None], lo_C[:, None])
    feature_tile = tile_size(q_ref.shape[1], "cuda")

    def past(i, r_C):
      cols = pl.ds(i * feature_tile, feature_tile)
      return r_C + jnp.sum(q_ref[:, cols] * from_start_C1 * z_ref[:, cols], axis=1)

    r_C = lax.fori_loop(0, q_ref.shape[1] // feature_tile, past, jnp.sum(a_CC, axis=1))
    r_ref[...] = r_C


def _output_kernel(*refs, tile, extra):
  q_ref, v_ref, b_ref, lo_ref, h_ref, a_ref = refs[:6]
  o_ref = refs[-1]
  dtype = v_ref.dtype
  b_C, lo_C = b_ref[...], lo_ref[...]
  from_start_C1 = from_start(b_C[:, None], lo_C[:, None])

  def body(i, o_CV):
    cols = pl.ds(i * tile, tile)
    return o_CV + dot((q_ref[:, cols] * from_start_C1).astype(dtype), h_ref[cols, :])

  o_CV = lax.fori_loop(0, q_ref.shape[1] // tile, body, jnp.zeros(o_ref.shape, jnp.float32))
  o_CV += dot(a_ref[...], v_ref[...])
  if extra == "rank1":
    qa_ref, z_ref = refs[6:8]
    o_CV += (qa_ref[...][:, None] * from_start_C1) * z_ref[...]
  o_ref[...] = o_CV.astype(o_ref.dtype)


_PARAMS = pltriton.CompilerParams(num_warps=4, num_stages=2)


def _head(x, heads):
  """grid's batch*head index -> (batch, x's head): x has the query heads or a divisor."""
  per_head = heads // x.shape[1]
  return lambda bh: (lax.div(bh, heads), lax.div(lax.rem(bh, heads), per_head))


def _per_chunk(x, heads, chunk):  # [C] of x [B, heads', L]; the grid starts (n, ..., bh)
  return pl.BlockSpec((None, None, chunk), lambda n, *rest: (*_head(x, heads)(rest[-1]), n))


def _state_pass(k, v, b, lo, ka, extra, chunk, interpret, poison):
  """-> h [B, H, N, F, V] (v's dtype), and z [B, H, N, X] float32 (None without extra).
  The extra row z_F / z_V has one copy per tile of the axis it does not span."""
  (batch, heads, length), features, values = b.shape, k.shape[-1], v.shape[-1]
  bk, bv, chunks = tile_size(features, "cuda"), tile_size(values, "cuda"), length // chunk
  whole = lambda x: pl.BlockSpec((None, None, length),
                                 lambda i, j, bh: (*_head(x, heads)(bh), 0))
  ins = [k, v, b, lo] + ([ka] if extra == "rank1" else [])
  in_specs = [
      pl.BlockSpec((None, None, length, bk), lambda i, j, bh: (*_head(k, heads)(bh), 0, i)),
      pl.BlockSpec((None, None, length, bv), lambda i, j, bh: (*_head(v, heads)(bh), 0, j)),
  ] + [whole(x) for x in ins[2:]]
  out = _head(b, heads)
  outs = [jax.ShapeDtypeStruct((batch, heads, chunks, features, values), v.dtype)]
  out_specs = [pl.BlockSpec((None, None, chunks, bk, bv), lambda i, j, bh: (*out(bh), 0, i, j))]
  if extra == "normaliser":
    outs.append(jax.ShapeDtypeStruct((batch, heads, values // bv, chunks, features),
                                     jnp.float32))
    out_specs.append(pl.BlockSpec((None, None, None, chunks, bk),
                                  lambda i, j, bh: (*out(bh), j, 0, i)))
  elif extra == "rank1":
    outs.append(jax.ShapeDtypeStruct((batch, heads, features // bk, chunks, values),
                                     jnp.float32))
    out_specs.append(pl.BlockSpec((None, None, None, chunks, bv),
                                  lambda i, j, bh: (*out(bh), i, 0, j)))
  h, *z = poisoned_call(
      functools.partial(_state_kernel, chunk=chunk, extra=extra), ins, outs, poison,
      grid=(features // bk, values // bv, batch * heads), in_specs=in_specs,
      out_specs=out_specs, compiler_params=_PARAMS, interpret=interpret)
  return h, (z[0][:, :, 0] if z else None)


def _scores_pass(q, sq, sk, b, lo, z_F, rank1, square, extra, dtype, chunk, interpret,
                 poison):
  """-> A [B, H, L, C] (dtype), and r [B, H, L] float32 with the normaliser (else None)."""
  (batch, heads, length), features = b.shape, q.shape[-1]
  out = _head(b, heads)
  block = lambda x: pl.BlockSpec((None, None, chunk, x.shape[-1]),
                                 lambda n, bh: (*_head(x, heads)(bh), n, 0))
  ins = [sq, sk, b, lo]
  in_specs = [block(sq), block(sk), _per_chunk(b, heads, chunk), _per_chunk(lo, heads, chunk)]
  outs = [jax.ShapeDtypeStruct((batch, heads, length, chunk), dtype)]
  out_specs = [pl.BlockSpec((None, None, chunk, chunk), lambda n, bh: (*out(bh), n, 0))]
  if extra == "rank1":
    ins += list(rank1)
    in_specs += [_per_chunk(x, heads, chunk) for x in rank1]
  elif extra == "normaliser":
    ins += [q, z_F]
    in_specs += [block(q), pl.BlockSpec((None, None, 1, features),
                                        lambda n, bh: (*out(bh), n, 0))]
    outs.append(jax.ShapeDtypeStruct((batch, heads, length), jnp.float32))
    out_specs.append(_per_chunk(b, heads, chunk))
  a, *r = poisoned_call(
      functools.partial(_scores_kernel, tile=tile_size(sq.shape[-1], "cuda"), square=square,
                        extra=extra),
      ins, outs, poison, grid=(length // chunk, batch * heads), in_specs=in_specs,
      out_specs=out_specs, compiler_params=_PARAMS, interpret=interpret)
  return a, (r[0] if r else None)


def _output_pass(q, v, b, lo, h, a, qa, z_V, out_dtype, chunk, interpret, poison):
  (batch, heads, length), features, values = b.shape, q.shape[-1], v.shape[-1]
  bk, bv = tile_size(features, "cuda"), tile_size(values, "cuda")
  out = _head(b, heads)
  ins = [q, v, b, lo, h, a]
  in_specs = [
      pl.BlockSpec((None, None, chunk, features),
                   lambda n, j, bh: (*_head(q, heads)(bh), n, 0)),
      pl.BlockSpec((None, None, chunk, bv), lambda n, j, bh: (*_head(v, heads)(bh), n, j)),
      _per_chunk(b, heads, chunk), _per_chunk(lo, heads, chunk),
      pl.BlockSpec((None, None, None, features, bv), lambda n, j, bh: (*out(bh), n, 0, j)),
      pl.BlockSpec((None, None, chunk, chunk), lambda n, j, bh: (*out(bh), n, 0))]
  if qa is not None:
    ins += [qa, z_V]
    in_specs += [_per_chunk(qa, heads, chunk),
                 pl.BlockSpec((None, None, 1, bv), lambda n, j, bh: (*out(bh), n, j))]
  o_shape = jax.ShapeDtypeStruct((batch, heads, length, values), out_dtype)
  (o,) = poisoned_call(
      functools.partial(_output_kernel, tile=bk, extra="rank1" if qa is not None else None),
      ins, [o_shape], poison, grid=(length // chunk, values // bv, batch * heads),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, None, chunk, bv), lambda n, j, bh: (*out(bh), n, j))],
      compiler_params=_PARAMS, interpret=interpret)
  return o


def gpu_forward(q, k, v, b, lo, sq, sk, square, rank1, normaliser, out_dtype, chunk,
                interpret, poison):
  """-> (o [B, H, L, V], r [B, H, L] or None); see kernels.linear_kernels.forward_call."""
  extra = "rank1" if rank1 is not None else "normaliser" if normaliser else None
  qa, ka = rank1 if rank1 is not None else (None, None)
  h, z = _state_pass(k, v, b, lo, ka, extra, chunk, interpret, poison)
  # The chunk's decayed scores once, not once per V tile of the output pass.
  a, r = _scores_pass(q, sq, sk, b, lo, z, rank1, square, extra, v.dtype, chunk, interpret,
                      poison)
  o = _output_pass(q, v, b, lo, h, a, qa, z, out_dtype, chunk, interpret, poison)
  return o, r
