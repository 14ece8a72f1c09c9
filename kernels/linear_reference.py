"""Causal linear attention with per-head, per-token decay: references and shared checks.

    o_t = sum_{s<=t} exp(G_t - G_s) * (phi(q_t) . phi(k_s)) * v_s,   G = cumsum(log_decay)

optionally divided by its normaliser sum_{s<=t} exp(G_t - G_s) * phi(q_t) . phi(k_s).
Two references, both float32 and written for clarity rather than speed: the
token-by-token recurrence (what a decoder would run) and the quadratic masked
form (what softmax attention looks like with the softmax removed). The chunked
XLA path and the Pallas kernel are tested against both. The argument checks,
feature maps, padding and guarded division live here too, shared by all paths.
"""
import jax
import jax.numpy as jnp
import numpy as np

from kernels.dense import repeat_kv

FEATURE_MAPS = ("identity", "elu1", "relu", "squared")


def check_linear_args(q_BLHK, k_BLGK, log_decay_BLH, feature_map, causal, chunk_size=64):
  """Rejects arguments a user can get wrong, with a message that says how to fix them."""
  if not causal:
    raise ValueError(
        "linear attention here is causal only (decay and the recurrent state run "
        "forward in time); call it with causal=True.")
  if feature_map not in FEATURE_MAPS:
    raise ValueError(f"unknown feature_map {feature_map!r}; choose one of {FEATURE_MAPS}.")
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}.")
  if q_BLHK.ndim != 4 or k_BLGK.ndim != 4 or q_BLHK.shape[1] != k_BLGK.shape[1]:
    raise ValueError(
        f"linear attention needs q [B, L, H, K] and k, v [B, L, G, K] of the same "
        f"length; got q {q_BLHK.shape} and k {k_BLGK.shape}.")
  if log_decay_BLH is None:
    return
  expected = q_BLHK.shape[:3]
  if tuple(log_decay_BLH.shape) != tuple(expected):
    raise ValueError(
        f"log_decay must have shape [B, L, H] = {tuple(expected)} (one value per "
        f"query head and token); got {tuple(log_decay_BLH.shape)}.")
  if isinstance(log_decay_BLH, jax.core.Tracer):
    return  # values unknown while tracing; numpy below would not trace
  largest = float(np.max(np.asarray(log_decay_BLH, np.float32)))
  if largest > 0:
    raise ValueError(
        "log_decay must be <= 0 (it is the log of a decay factor in (0, 1]); got a "
        f"maximum of {largest}. Use e.g. -softplus(x).")


def squared_features(x_BLHK):
  """The degree-2 map with phi(q) . phi(k) = (q . k)^2 in its symmetric form: the
  upper triangle of x (x) x, off-diagonal terms times sqrt(2) (they stand for both
  x_i x_j and x_j x_i), so K(K+1)/2 features instead of K*K."""
  rows, cols = np.triu_indices(x_BLHK.shape[-1])
  scale = np.where(rows == cols, 1.0, np.sqrt(2.0)).astype(np.float32)
  return x_BLHK[..., rows] * x_BLHK[..., cols] * jnp.asarray(scale, x_BLHK.dtype)


def apply_feature_map(x_BLHK, feature_map):
  """phi applied per token; `squared` returns its explicit K(K+1)/2 expansion."""
  if feature_map == "identity":
    return x_BLHK
  if feature_map == "elu1":
    return jax.nn.elu(x_BLHK) + 1.0
  if feature_map == "relu":
    return jax.nn.relu(x_BLHK)
  if feature_map == "squared":
    return squared_features(x_BLHK)
  raise ValueError(f"unknown feature_map {feature_map!r}; choose one of {FEATURE_MAPS}.")


def safe_divide(numerator_BLHK, denominator_BLH1):
  """Row normalisation; rows whose normaliser is exactly zero (e.g. relu features
  with no overlap) have a zero numerator too and return zeros instead of NaN."""
  safe = jnp.where(denominator_BLH1 == 0, 1.0, denominator_BLH1)
  return numerator_BLHK / safe


def pad_to_chunks(x_BL, chunk_size):
  """Zero-pads axis 1 to a multiple of chunk_size. Zero q/k/v and zero log decay in
  the padding contribute nothing to the real tokens, which all come before it."""
  pad = -x_BL.shape[1] % chunk_size
  widths = [(0, 0)] * x_BL.ndim
  widths[1] = (0, pad)
  return jnp.pad(x_BL, widths)


def as_float32_heads(q_BLHK, k_BLGK, v_BLGK, log_decay_BLH):
  num_heads = q_BLHK.shape[2]
  q = q_BLHK.astype(jnp.float32)
  k = repeat_kv(k_BLGK, num_heads).astype(jnp.float32)
  v = repeat_kv(v_BLGK, num_heads).astype(jnp.float32)
  if log_decay_BLH is None:
    log_decay_BLH = jnp.zeros(q.shape[:3], jnp.float32)
  return q, k, v, log_decay_BLH.astype(jnp.float32)


def recurrent_linear_attention(q_BLHK, k_BLGK, v_BLGK, log_decay_BLH=None, *,
                               feature_map="identity", normalize=False):
  """Token-by-token recurrence: S_t = exp(g_t) S_{t-1} + phi(k_t) v_t^T, o_t = phi(q_t) S_t."""
  out_dtype = q_BLHK.dtype
  q, k, v, g = as_float32_heads(q_BLHK, k_BLGK, v_BLGK, log_decay_BLH)
  fq, fk = apply_feature_map(q, feature_map), apply_feature_map(k, feature_map)
  batch, _, heads, features = fq.shape
  state_BHFK = jnp.zeros((batch, heads, features, v.shape[-1]), jnp.float32)
  normaliser_BHF = jnp.zeros((batch, heads, features), jnp.float32)

  def step(carry, token):
    state, normaliser = carry
    fq_BHF, fk_BHF, v_BHK, g_BH = token
    decay = jnp.exp(g_BH)
    state = decay[..., None, None] * state + fk_BHF[..., :, None] * v_BHK[..., None, :]
    normaliser = decay[..., None] * normaliser + fk_BHF
    o_BHK = jnp.einsum("bhf,bhfk->bhk", fq_BHF, state)
    den_BH = jnp.einsum("bhf,bhf->bh", fq_BHF, normaliser)
    return (state, normaliser), (o_BHK, den_BH)

  tokens = tuple(jnp.moveaxis(x, 1, 0) for x in (fq, fk, v, g))
  _, (o_LBHK, den_LBH) = jax.lax.scan(step, (state_BHFK, normaliser_BHF), tokens)
  o_BLHK, den_BLH = jnp.moveaxis(o_LBHK, 0, 1), jnp.moveaxis(den_LBH, 0, 1)
  if normalize:
    o_BLHK = safe_divide(o_BLHK, den_BLH[..., None])
  return o_BLHK.astype(out_dtype)


def segment_sums(g_BLH):
  """[B, H, T, S] = sum_{s < u <= t} g_u for s <= t, -inf above the diagonal.

  Summing the segment directly (rather than G_t - G_s of a global cumsum) keeps
  the near-diagonal decays exact when G grows large in magnitude.
  """
  length = g_BLH.shape[1]
  g_BHL = jnp.moveaxis(g_BLH, 1, 2)
  strictly_after_US = jnp.tril(jnp.ones((length, length), bool), k=-1)
  per_step_BHUS = jnp.where(strictly_after_US, g_BHL[..., :, None], 0.0)
  sums_BHTS = jnp.cumsum(per_step_BHUS, axis=2)
  causal_TS = jnp.tril(jnp.ones((length, length), bool))
  return jnp.where(causal_TS, sums_BHTS, -jnp.inf)


def quadratic_linear_attention(q_BLHK, k_BLGK, v_BLGK, log_decay_BLH=None, *,
                               feature_map="identity", normalize=False):
  """The masked L x L form: scores_ts = phi(q_t).phi(k_s) exp(G_t - G_s) [s <= t]."""
  out_dtype = q_BLHK.dtype
  q, k, v, g = as_float32_heads(q_BLHK, k_BLGK, v_BLGK, log_decay_BLH)
  if feature_map == "squared":  # (q.k)^2 without the K*K expansion
    scores_BHTS = jnp.einsum("bthk,bshk->bhts", q, k) ** 2
  else:
    fq, fk = apply_feature_map(q, feature_map), apply_feature_map(k, feature_map)
    scores_BHTS = jnp.einsum("bthk,bshk->bhts", fq, fk)
  scores_BHTS = scores_BHTS * jnp.exp(segment_sums(g))
  o_BLHK = jnp.einsum("bhts,bshk->bthk", scores_BHTS, v)
  if normalize:
    den_BLH = jnp.moveaxis(jnp.sum(scores_BHTS, axis=-1), 1, 2)
    o_BLHK = safe_divide(o_BLHK, den_BLH[..., None])
  return o_BLHK.astype(out_dtype)
