"""Pallas chunkwise causal linear attention with decay: layout, gradients, entry point.

The kernels (kernels/linear_kernels.py) compute one thing, the strictly-past sum
o_t = sum_{s<t} exp(G_t - G_s) w(t, s) v_s, w(t, s) = q_t . k_s [+ qa_t ka_s], with
its row sums r_t on request; every other piece is built from it.

Forward: o = kernel(q, k, v) + (q_t . k_t) v_t, the current-token term in jnp; with
normalize, the normaliser n_t = r_t + q_t . k_t comes out of the same call (the
kernels carry it in accumulators of its own, so V is not widened) and o / n is
taken in jnp.

Backward (custom_vjp): linear attention is its own adjoint, so each gradient is the
same kernel with the roles swapped, the anti-causal ones run on time-reversed inputs:
  dq_t = sum_{s<t} e(t, s) (dO_t . v_s + dn_t) k_s    kernel(dO, v, k; dn 1^T)
  dk_s = sum_{t>s} e(t, s) (dO_t . v_s + dn_t) q_t    reversed kernel(v, dO, q; 1 dn^T)
  dv_s = sum_{t>s} e(t, s) (q_t . k_s) dO_t           reversed kernel(k, q, dO)
with e(t, s) = exp(G_t - G_s) and dn the normaliser's cotangent (0 without it),
entering the scores as the kernels' rank-one term: exactly what the ones column
that used to be appended to v gave, without its extra tile. Reversed in time,
the decay of step u' is the forward decay of the step after it (sum_{s<u<=t} g_u =
sum over reversed steps (s', t']): reversed_log_decay. No state is stored between
forward and backward: each of the four calls recomputes its own (the flips are
XLA reverses of q, k, v and dO).

Gradient of the log decay. The output depends on G = cumsum(g) only through
exp(G_t - G_s) = exp(G_t) * exp(-G_s), i.e. through q_t exp(G_t) and k_s exp(-G_s).
So dL/dG_t = q_t . dq_t - k_t . dk_t (dq, dk the gradients of the kernel's q, k),
and since G_u = sum_{t<=u} g_t, dL/dg_t = sum_{u>=t} dL/dG_u: a reverse cumulative
sum over the whole sequence. The s = t terms (q_t . k_t)(dO_t . v_t + dn_t) appear
in both products and cancel, so the kernels cover strictly earlier/later tokens
only and the current-token terms are added in jnp: under strong decay those terms
dominate and would otherwise swamp dg with rounding error. The kernels' decays
B_i - B_j are accurate to ~eps |B_i - B_j| (linear_chunk's compensated cumsum; a
plain one made dg ~50x worse than the XLA path's). What remains, ~4x the XLA
path's error (float32, g ~ -5: median 5e-7 against 1e-7), is this form itself:
dq and dk each carry float32 rounding, and q . dq - k . dk and its reverse cumsum
cancel a part of their size (relative errors of 6e-8 in dq, dk give ~3e-7 in dg).

Layout, outside the kernels in jnp (gradients by autodiff): the feature map (the
squared map as its symmetric K(K+1)/2 features, 8256 at K = 128), zero padding of
L to the chunk and of F and V to the platform's tiles, head-major transposes. The
squared map's chunk scores are (q . k)^2 from q and k themselves (K wide, as in
the XLA path); its features serve the state only.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from kernels.linear_chunk import pad_to_tiles
from kernels.linear_kernels import forward_call
from kernels.linear_reference import apply_feature_map, pad_to_chunks, safe_divide
from kernels.platform import resolve_platform


# ---- differentiable core and the public function ----

def _current_token(q_BHLF, k_BGLF, v_BGLV):
  """The s = t terms (weight exp(0) = 1) that the kernels leave out, in float32:
  q_t . k_t per query head, and k, v expanded to query heads."""
  groups = q_BHLF.shape[1] // k_BGLF.shape[1]
  k_BHLF = jnp.repeat(k_BGLF, groups, axis=1).astype(jnp.float32)
  v_BHLV = jnp.repeat(v_BGLV, groups, axis=1).astype(jnp.float32)
  q_BHLF = q_BHLF.astype(jnp.float32)
  return q_BHLF, k_BHLF, v_BHLV, jnp.sum(q_BHLF * k_BHLF, -1, keepdims=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _linear_core(q_BHLF, k_BGLF, v_BGLV, g_BHL, raw, normalize, chunk_size, platform,
                 interpret):
  """(o_BHLV, n_BHL or None), float32 (normalisation divides them first). raw: None,
  or the squared map's inputs (q_BHLK, k_BGLK) for its scores; the outputs are a
  function of the features alone (raw gets a zero cotangent)."""
  out = forward_call(q_BHLF, k_BGLF, v_BGLV, g_BHL, chunk_size=chunk_size,
                     platform=platform, interpret=interpret, squared_from=raw,
                     normaliser=normalize, out_dtype=jnp.float32)
  past_BHLV, past_BHL = out if normalize else (out, None)
  _, _, v_BHLV, qk_BHL1 = _current_token(q_BHLF, k_BGLF, v_BGLV)
  o_BHLV = past_BHLV + qk_BHL1 * v_BHLV
  return o_BHLV, (past_BHL + qk_BHL1[..., 0] if normalize else None)


def _core_forward(q_BHLF, k_BGLF, v_BGLV, g_BHL, raw, normalize, chunk_size, platform,
                  interpret):
  out = _linear_core(q_BHLF, k_BGLF, v_BGLV, g_BHL, raw, normalize, chunk_size, platform,
                     interpret)
  return out, (q_BHLF, k_BGLF, v_BGLV, g_BHL, raw)


def reversed_log_decay(g_BHL):
  """The log decay of the time-reversed sequence: step u' carries forward step
  L - u' (the one after it), step 0 none."""
  return jnp.pad(g_BHL[..., :0:-1], ((0, 0), (0, 0), (1, 0)))


def _core_backward(normalize, chunk_size, platform, interpret, residuals, cotangents):
  q_BHLF, k_BGLF, v_BGLV, g_BHL, raw = residuals
  do_BHLV, dn_BHL = cotangents
  batch, heads, length, _ = q_BHLF.shape
  kv_heads = k_BGLF.shape[1]
  run = functools.partial(forward_call, chunk_size=chunk_size, platform=platform,
                          interpret=interpret, out_dtype=jnp.float32)
  do_BHLV = do_BHLV.astype(v_BGLV.dtype)
  flip = lambda x: x[:, :, ::-1]
  g_rev_BHL = reversed_log_decay(g_BHL)
  # The normaliser's cotangent scores dn_t with every key: the rank-one term of dq's
  # scores (query side) and of dk's (key side, in reversed time).
  rank1_dq = rank1_dk = None
  if normalize:
    ones_B1L = jnp.ones((batch, 1, length), jnp.float32)
    rank1_dq, rank1_dk = (dn_BHL, ones_B1L), (ones_B1L, flip(dn_BHL))
  dq_BHLF = run(do_BHLV, v_BGLV, k_BGLF, g_BHL, rank1=rank1_dq)
  dk_BHLF = flip(run(flip(v_BGLV), flip(do_BHLV), flip(q_BHLF), g_rev_BHL, rank1=rank1_dk))
  # Only dv's scores are q . k (the others are dO . v): there the squared map's.
  raw_rev = None if raw is None else (flip(raw[1]), flip(raw[0]))
  dv_BHLV = flip(run(flip(k_BGLF), flip(q_BHLF), flip(do_BHLV), g_rev_BHL,
                     squared_from=raw_rev))
  q32, k32_BHLF, v32_BHLV, qk_BHL1 = _current_token(q_BHLF, k_BGLF, v_BGLV)
  # Strictly-past parts only: the current-token terms would enter both products
  # and cancel, costing digits exactly where strong decay leaves little else.
  dG_BHL = jnp.sum(q32 * dq_BHLF, -1) - jnp.sum(k32_BHLF * dk_BHLF, -1)
  dg_BHL = lax.cumsum(dG_BHL, axis=2, reverse=True)
  do32 = do_BHLV.astype(jnp.float32)
  dov_BHL1 = jnp.sum(do32 * v32_BHLV, -1, keepdims=True)
  if normalize:
    dov_BHL1 += dn_BHL[..., None]
  dq_BHLF += dov_BHL1 * k32_BHLF
  dk_BHLF += dov_BHL1 * q32
  dv_BHLV += qk_BHL1 * do32
  by_group = lambda x: x.reshape(batch, kv_heads, heads // kv_heads, length, -1).sum(2)
  return (dq_BHLF.astype(q_BHLF.dtype), by_group(dk_BHLF).astype(k_BGLF.dtype),
          by_group(dv_BHLV).astype(v_BGLV.dtype), dg_BHL.astype(g_BHL.dtype),
          jax.tree.map(jnp.zeros_like, raw))


_linear_core.defvjp(_core_forward, _core_backward)


def kernel_layout(q_BLHK, k_BLGK, v_BLGK, log_decay_BLH, *, feature_map, chunk_size,
                  platform):
  """Kernel operands q_BHLF, k_BGLF, v_BGLV, g_BHL: feature-mapped, head-major, L
  zero-padded to the chunk, F and V to the platform's tiles.

  Padding comes after the feature map so padded keys have zero features (elu1
  maps 0 to 1); padded tokens follow every real one and cannot reach it anyway.
  """
  if log_decay_BLH is None:
    log_decay_BLH = jnp.zeros(q_BLHK.shape[:3], jnp.float32)
  pad = functools.partial(pad_to_tiles, platform=platform)
  q = pad(apply_feature_map(q_BLHK, feature_map))
  k = pad(apply_feature_map(k_BLGK, feature_map))
  head_major = lambda x: jnp.moveaxis(pad_to_chunks(x, chunk_size), 2, 1)
  return (head_major(q), head_major(k), head_major(pad(v_BLGK)), head_major(log_decay_BLH))


def pallas_linear_attention(q_BLHK, k_BLGK, v_BLGK, log_decay_BLH=None, *,
                            feature_map="identity", normalize=False, chunk_size=64,
                            platform=None, interpret=None):
  """Chunked linear attention in Pallas, any length L; returns o_BLHK.

  platform / interpret: see kernels.platform ("tpu" | "cuda"; None = from the backend).
  """
  platform, interpret = resolve_platform(platform, interpret)
  length, values = q_BLHK.shape[1], v_BLGK.shape[-1]
  layout = functools.partial(kernel_layout, chunk_size=chunk_size, platform=platform)
  q, k, v, g = layout(q_BLHK, k_BLGK, v_BLGK, log_decay_BLH, feature_map=feature_map)
  raw = None
  if feature_map == "squared":
    raw = layout(q_BLHK, k_BLGK, v_BLGK, None, feature_map="identity")[:2]
  o_BHLV, n_BHL = _linear_core(q, k, v, g, raw, normalize, chunk_size, platform, interpret)
  if normalize:
    o_BHLV = safe_divide(o_BHLV, n_BHL[..., None])
  o_BLHV = jnp.moveaxis(o_BHLV[..., :values], 1, 2)
  return o_BLHV[:, :length].astype(q_BLHK.dtype)
