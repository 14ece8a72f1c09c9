"""The Pallas kernels of chunkwise causal linear attention: strictly-past outputs.

forward_call computes, per query head and token t (within-chunk decay cumsum b),
  o_t = sum_{s < t} exp(G_t - G_s) (q_t . k_s) v_s
chunk by chunk, on kernel layout [B, heads, L, X] with L a multiple of the chunk,
the feature dim F and value dim V multiples of their tiles (tile_size). The s = t
terms and every gradient are built from this one kernel in kernels/linear_pallas.py.

cuda (fla's chunked form, three kernels):
  state pass   grid (F / BK, V / BV, B * H): each program owns one [BK, BV] tile of
               the float32 state and walks the chunks in order, writing the state
               entering each chunk, h [B, H, N, F, V] (in the input dtype);
  scores pass  grid (N, B * H): A_c = (q_c k_c^T) * exp(b_i - b_j) * (i > j), summed
               over K tiles, once per chunk (not once per V tile);
  output pass  grid (N, V / BV, B * H), all chunks at once:
               o_c = (q_c * exp(b)) h_c + A_c v_c, the first summed over K tiles.
  Per chunk S_{c+1} = exp(b_last) S_c + (k_c * exp(b_last - b))^T v_c; every
  exponent is <= 0, so nothing overflows however strong the decay.
tpu: grid (B, H, N), the chunk axis sequential ("arbitrary") with the whole [F, V]
  state in a float32 VMEM scratch; VMEM holds it at F = 8256 (K = 128, squared).
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

MAX_TILE = 64


def tile_size(dim):
  """K / V tile for a dim: a power of two (Triton blocks), >= 16 (the smallest
  Triton dot), <= MAX_TILE."""
  return min(MAX_TILE, max(16, 1 << (dim - 1).bit_length()))


def pad_to_tiles(x):
  """Zero-pads the last axis to a multiple of its tile (zero features or value
  columns change nothing and are sliced off by the caller)."""
  pad = -x.shape[-1] % tile_size(x.shape[-1])
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])


def _dot(a, b):
  return lax.dot(a, b, preferred_element_type=jnp.float32)


def _decay_matrix(b_C1, b_1C):
  """exp(b_i - b_j) for j < i (rows i, columns j), else 0: strictly past tokens."""
  chunk = b_C1.shape[0]
  rows = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
  cols = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)
  return jnp.exp(jnp.where(rows > cols, b_C1 - b_1C, -jnp.inf))


def _chunk_total(b_1C):
  """b_last as [1, 1], via a masked reduction (Triton cannot slice a value)."""
  cols = lax.broadcasted_iota(jnp.int32, b_1C.shape, 1)
  return jnp.sum(jnp.where(cols == b_1C.shape[1] - 1, b_1C, 0.0), axis=1, keepdims=True)


def _next_state(k_CF, v_CV, b_C1, b_1C, state_FV):
  b_last = _chunk_total(b_1C)
  k_to_end_CF = (k_CF * jnp.exp(b_last - b_C1)).astype(v_CV.dtype)
  return jnp.exp(b_last) * state_FV + _dot(k_to_end_CF.T, v_CV)


def _ignoring_aliased(kernel, num_inputs, num_aliased):
  """Drops the refs of NaN-filled buffers aliased to the outputs (poison tests)."""
  def run(*refs):
    return kernel(*refs[:num_inputs], *refs[num_inputs + num_aliased:])
  return run


def _poisoned_call(kernel, operands, out_shape, poison, **call):
  """pallas_call whose output starts as NaN when `poison`, so an unwritten block shows."""
  aliases = [jnp.full(out_shape.shape, jnp.nan, out_shape.dtype)] if poison else []
  in_specs, out_spec = call.pop("in_specs"), call.pop("out_specs")
  return pl.pallas_call(
      _ignoring_aliased(kernel, len(operands), len(aliases)),
      in_specs=in_specs + [out_spec] * len(aliases), out_specs=out_spec,
      out_shape=out_shape, input_output_aliases={len(operands): 0} if poison else {},
      **call)(*operands, *aliases)


def _scores(sq_CX, sk_CX, square):
  scores_CC = _dot(sq_CX, sk_CX.T)
  return scores_CC * scores_CC if square else scores_CC


# ---- cuda: state pass, scores pass, then the parallel output pass ----

def _gpu_state_kernel(k_ref, v_ref, b_ref, h_ref, *, chunk):
  def body(n, state_KV):
    h_ref[n] = state_KV.astype(h_ref.dtype)
    rows = pl.ds(n * chunk, chunk)
    b_C = b_ref[rows]
    return _next_state(k_ref[rows, :], v_ref[rows, :], b_C[:, None], b_C[None, :], state_KV)

  lax.fori_loop(0, h_ref.shape[0], body, jnp.zeros(h_ref.shape[1:], jnp.float32))


def _gpu_scores_kernel(sq_ref, sk_ref, b_ref, a_ref, *, tile, square):
  chunk = sq_ref.shape[0]

  def body(i, scores_CC):
    cols = pl.ds(i * tile, tile)
    return scores_CC + _dot(sq_ref[:, cols], sk_ref[:, cols].T)

  scores_CC = lax.fori_loop(0, sq_ref.shape[1] // tile, body,
                            jnp.zeros((chunk, chunk), jnp.float32))
  scores_CC = scores_CC * scores_CC if square else scores_CC
  b_C = b_ref[...]
  a_ref[...] = (scores_CC * _decay_matrix(b_C[:, None], b_C[None, :])).astype(a_ref.dtype)


def _gpu_output_kernel(q_ref, v_ref, b_ref, h_ref, a_ref, o_ref, *, tile):
  dtype = v_ref.dtype
  from_start_C1 = jnp.exp(b_ref[...][:, None])

  def body(i, o_CV):
    cols = pl.ds(i * tile, tile)
    return o_CV + _dot((q_ref[:, cols] * from_start_C1).astype(dtype), h_ref[cols, :])

  o_CV = lax.fori_loop(0, q_ref.shape[1] // tile, body, jnp.zeros(o_ref.shape, jnp.float32))
  o_ref[...] = (o_CV + _dot(a_ref[...], v_ref[...])).astype(o_ref.dtype)


def _gpu_forward(q, k, v, b, sq, sk, square, out_dtype, chunk, interpret, poison):
  (batch, heads, length), features, values = b.shape, q.shape[-1], v.shape[-1]
  bk, bv, chunks = tile_size(features), tile_size(values), length // chunk
  params = pltriton.CompilerParams(num_warps=4, num_stages=2)
  sub = lambda bh: lax.div(bh, heads)

  def head(x):  # grid's batch*head index -> (batch, this operand's head)
    per_head = heads // x.shape[1]
    return lambda bh: (sub(bh), lax.div(lax.rem(bh, heads), per_head))

  qh, kh, vh, bh_ = head(q), head(k), head(v), head(b)
  h_shape = jax.ShapeDtypeStruct((batch, heads, chunks, features, values), v.dtype)
  h = _poisoned_call(
      functools.partial(_gpu_state_kernel, chunk=chunk), (k, v, b), h_shape, poison,
      grid=(features // bk, values // bv, batch * heads),
      in_specs=[pl.BlockSpec((None, None, length, bk), lambda i, j, bh: (*kh(bh), 0, i)),
                pl.BlockSpec((None, None, length, bv), lambda i, j, bh: (*vh(bh), 0, j)),
                pl.BlockSpec((None, None, length), lambda i, j, bh: (*bh_(bh), 0))],
      out_specs=pl.BlockSpec((None, None, chunks, bk, bv),
                             lambda i, j, bh: (*bh_(bh), 0, i, j)),
      compiler_params=params, interpret=interpret)
  # The chunk's decayed scores once, not once per V tile of the output pass.
  a_shape = jax.ShapeDtypeStruct((batch, heads, length, chunk), v.dtype)
  score_spec = lambda x: pl.BlockSpec((None, None, chunk, x.shape[-1]),
                                      lambda n, bh: (*head(x)(bh), n, 0))
  a = _poisoned_call(
      functools.partial(_gpu_scores_kernel, tile=tile_size(sq.shape[-1]), square=square),
      (sq, sk, b), a_shape, poison, grid=(chunks, batch * heads),
      in_specs=[score_spec(sq), score_spec(sk),
                pl.BlockSpec((None, None, chunk), lambda n, bh: (*bh_(bh), n))],
      out_specs=pl.BlockSpec((None, None, chunk, chunk), lambda n, bh: (*bh_(bh), n, 0)),
      compiler_params=params, interpret=interpret)
  o_shape = jax.ShapeDtypeStruct((batch, heads, length, values), out_dtype)
  return _poisoned_call(
      functools.partial(_gpu_output_kernel, tile=bk), (q, v, b, h, a), o_shape, poison,
      grid=(chunks, values // bv, batch * heads),
      in_specs=[pl.BlockSpec((None, None, chunk, features), lambda n, j, bh: (*qh(bh), n, 0)),
                pl.BlockSpec((None, None, chunk, bv), lambda n, j, bh: (*vh(bh), n, j)),
                pl.BlockSpec((None, None, chunk), lambda n, j, bh: (*bh_(bh), n)),
                pl.BlockSpec((None, None, None, features, bv),
                             lambda n, j, bh: (*bh_(bh), n, 0, j)),
                pl.BlockSpec((None, None, chunk, chunk), lambda n, j, bh: (*bh_(bh), n, 0))],
      out_specs=pl.BlockSpec((None, None, chunk, bv), lambda n, j, bh: (*bh_(bh), n, j)),
      compiler_params=params, interpret=interpret)


# ---- tpu: one sequential walk over the chunks per (batch, head) ----

def _tpu_kernel(*refs, square):
  q_ref, k_ref, v_ref, bcol_ref, brow_ref = refs[:5]
  sq_ref, sk_ref = refs[5:7] if square else (q_ref, k_ref)
  o_ref, state_ref = refs[-2:]

  @pl.when(pl.program_id(2) == 0)
  def _():
    state_ref[...] = jnp.zeros_like(state_ref)

  q_CF, k_CF, v_CV = q_ref[...], k_ref[...], v_ref[...]
  b_C1, b_1C, state_FV = bcol_ref[...], brow_ref[...], state_ref[...]
  weights_CC = _scores(sq_ref[...], sk_ref[...], square) * _decay_matrix(b_C1, b_1C)
  o_CV = _dot(weights_CC.astype(v_CV.dtype), v_CV)
  o_CV += _dot((q_CF * jnp.exp(b_C1)).astype(v_CV.dtype), state_FV.astype(v_CV.dtype))
  o_ref[...] = o_CV.astype(o_ref.dtype)
  state_ref[...] = _next_state(k_CF, v_CV, b_C1, b_1C, state_FV)


def _tpu_forward(q, k, v, b, sq, sk, square, out_dtype, chunk, interpret, poison):
  (batch, heads, length), features = b.shape, q.shape[-1]
  chunks = length // chunk

  def block(x):
    per_head = heads // x.shape[1]
    return pl.BlockSpec((None, None, chunk, x.shape[-1]),
                        lambda i, h, n: (i, lax.div(h, per_head), n, 0))

  # The decay enters as a column [C, 1] (scaling rows) and as a row [1, C] (the
  # columns of exp(b_i - b_j)), so the kernel needs no in-register transpose.
  brow = b.reshape(batch, heads, chunks, 1, chunk)
  operands = (q, k, v, b[..., None], brow) + ((sq, sk) if square else ())
  o_shape = jax.ShapeDtypeStruct((batch, heads, length, v.shape[-1]), out_dtype)
  return _poisoned_call(
      functools.partial(_tpu_kernel, square=square), operands, o_shape, poison,
      grid=(batch, heads, chunks),
      in_specs=[block(q), block(k), block(v), block(b[..., None]),
                pl.BlockSpec((None, None, None, 1, chunk), lambda i, h, n: (i, h, n, 0, 0)),
                *([block(sq), block(sk)] if square else [])],
      out_specs=block(o_shape),
      scratch_shapes=[pltpu.VMEM((features, v.shape[-1]), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret)


def within_chunk_cumsum(g_BHL, chunk):
  batch, heads, length = g_BHL.shape
  b = jnp.cumsum(g_BHL.astype(jnp.float32).reshape(batch, heads, length // chunk, chunk), -1)
  return b.reshape(batch, heads, length)


def forward_call(q_BXLF, k_BXLF, v_BXLV, g_BHL, *, chunk_size, platform, interpret,
                 squared_from=None, out_dtype=None, poison=False):
  """Strictly-past o_BHLV. Each operand has the query heads H or a divisor of them
  (kv heads; query head h reads head h // (H / heads)). squared_from: (sq, sk) whose
  (sq . sk)^2 are the scores q . k (the squared map at K wide, not K(K+1)/2);
  `poison` starts outputs as NaN."""
  b_BHL = within_chunk_cumsum(g_BHL, chunk_size)
  square = squared_from is not None
  sq, sk = squared_from if square else (q_BXLF, k_BXLF)
  call = _tpu_forward if platform == "tpu" else _gpu_forward
  return call(q_BXLF, k_BXLF, v_BXLV, b_BHL, sq, sk, square, out_dtype or v_BXLV.dtype,
              chunk_size, interpret, poison)
