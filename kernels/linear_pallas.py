"""Pallas chunkwise causal linear attention with decay, forward and backward kernels.

Math per chunk (see kernels/linear.py): with b the within-chunk cumsum of the log
decay, the output is (Q * exp(b)) S + [(Q K^T) * exp(b_i - b_j) * causal] V and the
float32 state moves on as S <- exp(b_last) S + (K * exp(b_last - b))^T V.

Two variants of the same chunk math:
  tpu:  grid (batch, head, chunk), the chunk axis "arbitrary" (sequential), the
        state in a float32 VMEM scratch that persists across chunk steps;
  cuda: grid (batch, head) and a loop over chunks inside the kernel (Triton grid
        programs run concurrently, so a sequential grid axis cannot carry state).

Backward (custom_vjp): linear attention is its own adjoint. dq_i = sum_{j<=i}
exp(G_i - G_j) (dO_i . v_j) k_j is the forward kernel run with (q, k, v) := (dO, v, k),
which recomputes the states (of v k^T) chunk by chunk instead of storing them.
dk and dv come from a second kernel that walks the chunks in reverse carrying
dS = sum_{later i} exp(G_i - G_end) q_i dO_i^T.

Gradient of the log decay. The output depends on G = cumsum(g) only through
exp(G_t - G_s) = exp(G_t) * exp(-G_s), i.e. through q_t exp(G_t) and k_s exp(-G_s).
So dL/dG_t = q_t . dq_t - k_t . dk_t (dq, dk the gradients of the kernel's q, k),
and since G_u = sum_{t<=u} g_t, dL/dg_t = sum_{u>=t} dL/dG_u: a reverse cumulative
sum over the whole sequence. The s = t terms (q_t . k_t)(dO_t . v_t) appear in both
products and cancel, so the kernels cover strictly earlier/later tokens only and
the current-token terms are added in jnp: under strong decay those terms dominate
and would otherwise swamp dg with rounding error. What remains is the rounding
of b_i - b_j in the chunk, ~eps * |b| (|b| <= C * max|g|).

Feature maps, padding and head-major transposes happen outside the kernels in jnp
(their gradients come from autodiff). The row normaliser is the same kernel with
v replaced by ones: its output row t is sum_{s<=t} exp(G_t - G_s) phi(q_t).phi(k_s).
The ones block is 16 wide (the smallest Triton dot) rather than 1.

The squared ("2Mamba") map reaches the kernels as explicit K*K features, so the
state is [K*K, V] and the intra-chunk q k^T costs C*C*K*K, where the XLA path
uses (q.k)^2 at C*C*K. Keeping the kernels feature-map agnostic keeps one kernel
and autodiff for every map; a fused squared kernel would need its own backward.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from kernels.linear_reference import apply_feature_map, pad_to_chunks, safe_divide
from kernels.platform import resolve_platform
NORMALISER_WIDTH = 16


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


def _forward_chunk(q_CF, k_CF, v_CV, b_C1, b_1C, state_FV):
  """One chunk's output from strictly earlier tokens, and the state after it."""
  dtype = v_CV.dtype
  b_last = _chunk_total(b_1C)
  weights_CC = _dot(q_CF, k_CF.T) * _decay_matrix(b_C1, b_1C)
  o_CV = _dot(weights_CC.astype(dtype), v_CV)
  o_CV += _dot((q_CF * jnp.exp(b_C1)).astype(dtype), state_FV.astype(dtype))
  k_to_end_CF = (k_CF * jnp.exp(b_last - b_C1)).astype(dtype)
  state_FV = jnp.exp(b_last) * state_FV + _dot(k_to_end_CF.T, v_CV)
  return o_CV, state_FV


def _dkv_chunk(q_CF, k_CF, v_CV, do_CV, b_C1, b_1C, dstate_FV):
  """One chunk's dk, dv (per query head, strictly later tokens) and the state
  gradient before it."""
  dtype = v_CV.dtype
  b_last = _chunk_total(b_1C)
  decay_CC = _decay_matrix(b_C1, b_1C)
  to_end_C1 = jnp.exp(b_last - b_C1)
  dstate_lo = dstate_FV.astype(dtype)
  weights_CC = (_dot(q_CF, k_CF.T) * decay_CC).astype(dtype)
  dweights_CC = (_dot(do_CV, v_CV.T) * decay_CC).astype(dtype)
  dk_CF = _dot(dweights_CC.T, q_CF) + to_end_C1 * _dot(v_CV, dstate_lo.T)
  dv_CV = _dot(weights_CC.T, do_CV) + to_end_C1 * _dot(k_CF, dstate_lo)
  q_from_start_CF = (q_CF * jnp.exp(b_C1)).astype(dtype)
  dstate_FV = jnp.exp(b_last) * dstate_FV + _dot(q_from_start_CF.T, do_CV)
  return dk_CF, dv_CV, dstate_FV


# ---- TPU variant: the chunk axis is a sequential grid axis. ----

def _tpu_forward_kernel(q_ref, k_ref, v_ref, bcol_ref, brow_ref, o_ref, state_ref):
  @pl.when(pl.program_id(2) == 0)
  def _():
    state_ref[...] = jnp.zeros_like(state_ref)

  o, state_ref[...] = _forward_chunk(q_ref[...], k_ref[...], v_ref[...], bcol_ref[...],
                                     brow_ref[...], state_ref[...])
  o_ref[...] = o.astype(o_ref.dtype)


def _tpu_dkv_kernel(q_ref, k_ref, v_ref, do_ref, bcol_ref, brow_ref, dk_ref, dv_ref,
                    dstate_ref):
  @pl.when(pl.program_id(2) == 0)
  def _():
    dstate_ref[...] = jnp.zeros_like(dstate_ref)

  dk, dv, dstate_ref[...] = _dkv_chunk(q_ref[...], k_ref[...], v_ref[...], do_ref[...],
                                       bcol_ref[...], brow_ref[...], dstate_ref[...])
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _tpu_call(kernel, operands, head_kinds, b_BHL, out_shapes, state_shape, chunk, groups,
              reverse, interpret, aliases):
  batch, heads, length = b_BHL.shape
  chunks = length // chunk
  pick = (lambda n: chunks - 1 - n) if reverse else (lambda n: n)

  def block(width, per_query_head):
    head = (lambda h: h) if per_query_head else (lambda h: lax.div(h, groups))
    return pl.BlockSpec((None, None, chunk, width), lambda b, h, n: (b, head(h), pick(n), 0))

  # The decay enters twice: as a column [C, 1] (scaling rows) and as a row [1, C]
  # (the columns of exp(b_i - b_j)), so the kernel needs no in-register transpose.
  in_specs = [block(x.shape[-1], per_query_head)
              for per_query_head, x in zip(head_kinds, operands)]
  in_specs += [block(1, True),
               pl.BlockSpec((None, None, None, 1, chunk), lambda b, h, n: (b, h, pick(n), 0, 0))]
  out_specs = [block(s.shape[-1], True) for s in out_shapes]
  num_inputs = len(in_specs)
  return pl.pallas_call(
      _ignoring_aliased(kernel, num_inputs, len(aliases)),
      grid=(batch, heads, chunks),
      in_specs=in_specs + out_specs[:len(aliases)],
      out_specs=out_specs,
      out_shape=out_shapes,
      scratch_shapes=[pltpu.VMEM(state_shape, jnp.float32)],
      input_output_aliases={num_inputs + i: i for i in range(len(aliases))},
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret,
  )(*operands, b_BHL[..., None], b_BHL.reshape(batch, heads, chunks, 1, chunk), *aliases)


# ---- CUDA variant: one program per (batch, head) loops over the chunks. ----

def _cuda_forward_kernel(q_ref, k_ref, v_ref, b_ref, o_ref, *, chunk):
  chunks = q_ref.shape[0] // chunk

  def body(n, state_FV):
    rows = pl.ds(n * chunk, chunk)
    b_C = b_ref[rows]
    o, state_FV = _forward_chunk(q_ref[rows, :], k_ref[rows, :], v_ref[rows, :],
                                 b_C[:, None], b_C[None, :], state_FV)
    o_ref[rows, :] = o.astype(o_ref.dtype)
    return state_FV

  state0 = jnp.zeros((q_ref.shape[1], v_ref.shape[1]), jnp.float32)
  lax.fori_loop(0, chunks, body, state0)


def _cuda_dkv_kernel(q_ref, k_ref, v_ref, do_ref, b_ref, dk_ref, dv_ref, *, chunk):
  chunks = q_ref.shape[0] // chunk

  def body(i, dstate_FV):
    rows = pl.ds((chunks - 1 - i) * chunk, chunk)
    b_C = b_ref[rows]
    dk, dv, dstate_FV = _dkv_chunk(q_ref[rows, :], k_ref[rows, :], v_ref[rows, :],
                                   do_ref[rows, :], b_C[:, None], b_C[None, :], dstate_FV)
    dk_ref[rows, :] = dk.astype(dk_ref.dtype)
    dv_ref[rows, :] = dv.astype(dv_ref.dtype)
    return dstate_FV

  dstate0 = jnp.zeros((q_ref.shape[1], v_ref.shape[1]), jnp.float32)
  lax.fori_loop(0, chunks, body, dstate0)


def _cuda_call(kernel, operands, head_kinds, b_BHL, out_shapes, chunk, groups, interpret,
               aliases):
  batch, heads, length = b_BHL.shape
  in_specs = []
  for per_query_head, x in zip(head_kinds, operands):
    head = (lambda h: h) if per_query_head else (lambda h: lax.div(h, groups))
    in_specs.append(pl.BlockSpec((None, None, length, x.shape[-1]),
                                 lambda b, h, head=head: (b, head(h), 0, 0)))
  in_specs.append(pl.BlockSpec((None, None, length), lambda b, h: (b, h, 0)))
  out_specs = [pl.BlockSpec((None, None, length, s.shape[-1]), lambda b, h: (b, h, 0, 0))
               for s in out_shapes]
  num_inputs = len(operands) + 1
  return pl.pallas_call(
      _ignoring_aliased(functools.partial(kernel, chunk=chunk), num_inputs, len(aliases)),
      grid=(batch, heads),
      in_specs=in_specs + out_specs[:len(aliases)],
      out_specs=out_specs,
      out_shape=out_shapes,
      input_output_aliases={num_inputs + i: i for i in range(len(aliases))},
      compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1),
      interpret=interpret,
  )(*operands, b_BHL, *aliases)


def _ignoring_aliased(kernel, num_inputs, num_aliased):
  """Drops the refs of NaN-filled buffers aliased to the outputs (poison tests)."""
  def run(*refs):
    return kernel(*refs[:num_inputs], *refs[num_inputs + num_aliased:])
  return run


# ---- pallas_call wrappers on kernel layout: [B, H|G, L, X], L a multiple of chunk. ----

def _within_chunk_cumsum(g_BHL, chunk):
  batch, heads, length = g_BHL.shape
  b = jnp.cumsum(g_BHL.astype(jnp.float32).reshape(batch, heads, length // chunk, chunk), -1)
  return b.reshape(batch, heads, length)


def _poison_like(shapes, poison):
  return [jnp.full(s.shape, jnp.nan, s.dtype) for s in shapes] if poison else []


def forward_call(q_BHLF, k_BGLF, v_BGLV, g_BHL, *, chunk_size, platform, interpret,
                 out_dtype=None, poison=False):
  """o_BHLV; `poison` starts the output as NaN so unwritten blocks would show."""
  batch, heads, length, features = q_BHLF.shape
  groups = heads // k_BGLF.shape[1]
  b_BHL = _within_chunk_cumsum(g_BHL, chunk_size)
  out_dtype = out_dtype or v_BGLV.dtype
  out_shapes = [jax.ShapeDtypeStruct((batch, heads, length, v_BGLV.shape[-1]), out_dtype)]
  operands, head_kinds = (q_BHLF, k_BGLF, v_BGLV), (True, False, False)
  aliases = _poison_like(out_shapes, poison)
  if platform == "tpu":
    (o,) = _tpu_call(_tpu_forward_kernel, operands, head_kinds, b_BHL, out_shapes,
                     (features, v_BGLV.shape[-1]), chunk_size, groups, False, interpret,
                     aliases)
  else:
    (o,) = _cuda_call(_cuda_forward_kernel, operands, head_kinds, b_BHL, out_shapes,
                      chunk_size, groups, interpret, aliases)
  return o


def dkv_call(q_BHLF, k_BGLF, v_BGLV, g_BHL, do_BHLV, *, chunk_size, platform, interpret,
             poison=False):
  """Float32 (dk_BHLF, dv_BHLV) per query head; the caller sums each kv head's group."""
  batch, heads, length, features = q_BHLF.shape
  groups = heads // k_BGLF.shape[1]
  b_BHL = _within_chunk_cumsum(g_BHL, chunk_size)
  out_shapes = [jax.ShapeDtypeStruct((batch, heads, length, features), jnp.float32),
                jax.ShapeDtypeStruct((batch, heads, length, v_BGLV.shape[-1]), jnp.float32)]
  operands, head_kinds = (q_BHLF, k_BGLF, v_BGLV, do_BHLV), (True, False, False, True)
  aliases = _poison_like(out_shapes, poison)
  if platform == "tpu":
    dk, dv = _tpu_call(_tpu_dkv_kernel, operands, head_kinds, b_BHL, out_shapes,
                       (features, v_BGLV.shape[-1]), chunk_size, groups, True, interpret,
                       aliases)
  else:
    dk, dv = _cuda_call(_cuda_dkv_kernel, operands, head_kinds, b_BHL, out_shapes,
                        chunk_size, groups, interpret, aliases)
  return dk, dv


# ---- differentiable core and the public function ----

def _current_token(q_BHLF, k_BGLF, v_BGLV):
  """The s = t terms (weight exp(0) = 1) that the kernels leave out, in float32:
  q_t . k_t per query head, and k, v expanded to query heads."""
  groups = q_BHLF.shape[1] // k_BGLF.shape[1]
  k_BHLF = jnp.repeat(k_BGLF, groups, axis=1).astype(jnp.float32)
  v_BHLV = jnp.repeat(v_BGLV, groups, axis=1).astype(jnp.float32)
  q_BHLF = q_BHLF.astype(jnp.float32)
  return q_BHLF, k_BHLF, v_BHLV, jnp.sum(q_BHLF * k_BHLF, -1, keepdims=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _linear_core(q_BHLF, k_BGLF, v_BGLV, g_BHL, chunk_size, platform, interpret):
  past_BHLV = forward_call(q_BHLF, k_BGLF, v_BGLV, g_BHL, chunk_size=chunk_size,
                           platform=platform, interpret=interpret, out_dtype=jnp.float32)
  _, _, v_BHLV, qk_BHL1 = _current_token(q_BHLF, k_BGLF, v_BGLV)
  return past_BHLV + qk_BHL1 * v_BHLV  # float32: normalisation divides it first


def _core_forward(q_BHLF, k_BGLF, v_BGLV, g_BHL, chunk_size, platform, interpret):
  o = _linear_core(q_BHLF, k_BGLF, v_BGLV, g_BHL, chunk_size, platform, interpret)
  return o, (q_BHLF, k_BGLF, v_BGLV, g_BHL)


def _core_backward(chunk_size, platform, interpret, residuals, do_BHLV):
  q_BHLF, k_BGLF, v_BGLV, g_BHL = residuals
  batch, heads, length, _ = q_BHLF.shape
  kv_heads = k_BGLF.shape[1]
  options = dict(chunk_size=chunk_size, platform=platform, interpret=interpret)
  do_BHLV = do_BHLV.astype(v_BGLV.dtype)
  dq_BHLF = forward_call(do_BHLV, v_BGLV, k_BGLF, g_BHL, out_dtype=jnp.float32, **options)
  dk_BHLF, dv_BHLV = dkv_call(q_BHLF, k_BGLF, v_BGLV, g_BHL, do_BHLV, **options)
  q32, k32_BHLF, v32_BHLV, qk_BHL1 = _current_token(q_BHLF, k_BGLF, v_BGLV)
  # Strictly-past parts only: the current-token terms would enter both products
  # and cancel, costing digits exactly where strong decay leaves little else.
  dG_BHL = jnp.sum(q32 * dq_BHLF, -1) - jnp.sum(k32_BHLF * dk_BHLF, -1)
  dg_BHL = lax.cumsum(dG_BHL, axis=2, reverse=True)
  do32 = do_BHLV.astype(jnp.float32)
  dov_BHL1 = jnp.sum(do32 * v32_BHLV, -1, keepdims=True)
  dq_BHLF += dov_BHL1 * k32_BHLF
  dk_BHLF += dov_BHL1 * q32
  dv_BHLV += qk_BHL1 * do32
  by_group = lambda x: x.reshape(batch, kv_heads, heads // kv_heads, length, -1).sum(2)
  return (dq_BHLF.astype(q_BHLF.dtype), by_group(dk_BHLF).astype(k_BGLF.dtype),
          by_group(dv_BHLV).astype(v_BGLV.dtype), dg_BHL.astype(g_BHL.dtype))


_linear_core.defvjp(_core_forward, _core_backward)


def kernel_layout(q_BLHK, k_BLGK, v_BLGK, log_decay_BLH, *, feature_map, chunk_size):
  """Feature-mapped, chunk-padded, head-major operands: q_BHLF, k_BGLF, v_BGLV, g_BHL.

  Padding comes after the feature map so padded keys have zero features (elu1
  maps 0 to 1); padded tokens follow every real one and cannot reach it anyway.
  """
  if log_decay_BLH is None:
    log_decay_BLH = jnp.zeros(q_BLHK.shape[:3], jnp.float32)
  q = apply_feature_map(q_BLHK, feature_map)
  k = apply_feature_map(k_BLGK, feature_map)
  head_major = lambda x: jnp.moveaxis(pad_to_chunks(x, chunk_size), 2, 1)
  return head_major(q), head_major(k), head_major(v_BLGK), head_major(log_decay_BLH)


def pallas_linear_attention(q_BLHK, k_BLGK, v_BLGK, log_decay_BLH=None, *,
                            feature_map="identity", normalize=False, chunk_size=64,
                            platform=None, interpret=None):
  """Chunked linear attention in Pallas; returns o_BLHK.

  platform / interpret: see kernels.platform ("tpu" | "cuda"; None = from the backend).
  """
  platform, interpret = resolve_platform(platform, interpret)
  length = q_BLHK.shape[1]
  q, k, v, g = kernel_layout(q_BLHK, k_BLGK, v_BLGK, log_decay_BLH,
                             feature_map=feature_map, chunk_size=chunk_size)
  o_BHLV = _linear_core(q, k, v, g, chunk_size, platform, interpret)
  if normalize:
    ones_BGLW = jnp.ones(v.shape[:3] + (NORMALISER_WIDTH,), v.dtype)
    den_BHL1 = _linear_core(q, k, ones_BGLW, g, chunk_size, platform, interpret)[..., :1]
    o_BHLV = safe_divide(o_BHLV, den_BHL1)
  return jnp.moveaxis(o_BHLV, 1, 2)[:, :length].astype(q_BLHK.dtype)
