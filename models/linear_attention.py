"""Linear-attention mixer: the 2Mamba2Furious ("Mamba-2S") block option.

Per head and token a decay a_t = -softplus(W_a x_t + b) <= 0 (Mamba-2's scalar
decay without the D residual, z gate or value discretisation), an optional
causal depthwise convolution of size 2 on q, k and v, and the chunked
`kernels.attention(kind="linear")` with the configured feature map (the paper's
"2Mamba" is feature_map="squared", normalize=True). No RoPE: the decay carries
position. q is scaled by 1/sqrt(K) so the squared map scores (q.k/sqrt(K))^2.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import parallel
from kernels.linear import document_starts
from models import parametrization
from models import unit_scaling as U
from models.layers import param
from models.layout import head_dim


def _decay_bias_np(num_heads):
  """softplus^-1 of per-head decay rates log-spaced in [1e-3, 1e-1]: memory spans
  of ~10 to ~1000 tokens at initialisation (Mamba's dt initialisation)."""
  rate_H = np.exp(np.linspace(np.log(1e-3), np.log(1e-1), num_heads))
  return rate_H + np.log(-np.expm1(-rate_H))


def _decay_bias(num_heads):
  return jnp.asarray(_decay_bias_np(num_heads), jnp.float32)


def causal_conv2(x_BLCK, w_2CK, starts_BL=None):
  """y_t = w_0 * x_t + w_1 * x_{t-1} per channel (x_{-1} = 0; also 0 at a document
  start, starts_BL, so the conv never reads the previous document)."""
  shifted_BLCK = jnp.pad(x_BLCK, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]
  if starts_BL is not None:
    shifted_BLCK = jnp.where(starts_BL[:, :, None, None], 0, shifted_BLCK)
  return w_2CK[0] * x_BLCK + w_2CK[1] * shifted_BLCK


def _conv_weights(channels, dim, tap):
  # Identity at initialisation (w_0 = tap = 1, w_1 = 0); learning moves it. Its own
  # parameter group ("conv"): the fan-in is the 2 taps at any width.
  value = jnp.stack([jnp.ones((channels, dim)) * tap, jnp.zeros((channels, dim))])
  names = ("conv", "heads", "head_dim")
  return nnx.Param(value.astype(jnp.float32), out_sharding=names, eager_sharding=False)


class LinearAttention(nnx.Module):
  def __init__(self, cfg, kind="linear", *, rngs, std, out_std):
    m, a = cfg.model, cfg.attention
    D, H, G, K = m.width, m.heads, m.kv_heads, head_dim(m)
    self.kind, self.impl, self.head_dim = kind, a.impl, K
    self.options = {"feature_map": a.feature_map, "normalize": a.normalize,
                    "chunk_size": a.chunk_size}
    self.wq_DHK = param(rngs, (D, H, K), ("embed", "heads", "head_dim"), std)
    self.wk_DGK = param(rngs, (D, G, K), ("embed", "kv_heads", "head_dim"), std)
    self.wv_DGK = param(rngs, (D, G, K), ("embed", "kv_heads", "head_dim"), std)
    self.wo_HKD = param(rngs, (H, K, D), ("heads", "head_dim", "embed"), out_std)
    self.decay = a.decay
    if a.decay:
      self.wa_DH = param(rngs, (D, H), ("embed", "heads"), std)
      bias_H = parametrization.init_scale(m, "vector", _decay_bias(H))
      self.decay_bias_H = nnx.Param(bias_H, out_sharding=("heads",), eager_sharding=False)
    self.conv = a.conv
    if a.conv:
      tap = parametrization.init_scale(m, "conv", 1.0)
      self.conv_q_2HK = _conv_weights(H, K, tap)
      self.conv_k_2GK = _conv_weights(G, K, tap)
      self.conv_v_2GK = _conv_weights(G, K, tap)
    # u-muP: the same unit-scaled projections as Attention (1 / off) and the output
    # divided by its modelled RMS at init (unit_scaling.linear_out_scale, per head).
    self.unit = parametrization.is_unit(m)
    self.in_mult = parametrization.forward_multiplier(m, "hidden", D)
    self.out_mult = parametrization.forward_multiplier(m, "hidden", H * K)
    # The bias from numpy: the init may run under jit.
    self.bias_H = tuple(_decay_bias_np(H).tolist()) if a.decay and self.unit else None

  def _out_scale(self, seq_len):
    return U.linear_out_scale(self.options["feature_map"], self.options["normalize"],
                              self.bias_H, self.head_dim, seq_len)

  def __call__(self, x_BLD, cos_LF=None, sin_LF=None, segment_ids_BL=None):
    del cos_LF, sin_LF  # position comes from the decay
    dtype, unit = x_BLD.dtype, self.unit
    q_BLHK = U.project("bld,dhk->blhk", x_BLD, self.wq_DHK, self.in_mult, unit)
    k_BLGK = U.project("bld,dgk->blgk", x_BLD, self.wk_DGK, self.in_mult, unit)
    v_BLGK = U.project("bld,dgk->blgk", x_BLD, self.wv_DGK, self.in_mult, unit)
    starts_BL = None if segment_ids_BL is None else document_starts(segment_ids_BL)
    if self.conv:
      # u-muP: a unit-scaled conv's weight gradient is divided by sqrt(tokens).
      taps = (lambda p: U.scaled(p[...], 1.0, U.tokens(x_BLD) ** -0.5)) if unit else (
          lambda p: p[...])
      q_BLHK = causal_conv2(q_BLHK, taps(self.conv_q_2HK).astype(dtype), starts_BL)
      k_BLGK = causal_conv2(k_BLGK, taps(self.conv_k_2GK).astype(dtype), starts_BL)
      v_BLGK = causal_conv2(v_BLGK, taps(self.conv_v_2GK).astype(dtype), starts_BL)
    q_BLHK = q_BLHK * jnp.asarray(self.head_dim ** -0.5, dtype)
    log_decay_BLH = None
    if self.decay:
      pre_BLH = U.project("bld,dh->blh", x_BLD.astype(jnp.float32), self.wa_DH,
                          self.in_mult, unit) + self.decay_bias_H[...]
      log_decay_BLH = -jax.nn.softplus(pre_BLH)
    q_BLHK = parallel.constrain(q_BLHK, ("batch", "length", "heads", "head_dim"))
    # Under a mesh the kernel runs in shard_map (log_decay [B, L, H] split like q).
    seg = {} if segment_ids_BL is None else {"segment_ids_BL": segment_ids_BL}
    o_BLHK = parallel.attention(q_BLHK, k_BLGK, v_BLGK, kind=self.kind, impl=self.impl,
                                causal=True, log_decay=log_decay_BLH, **self.options, **seg)
    o_BLHK = parallel.constrain(o_BLHK.astype(dtype), ("batch", "length", "heads", "head_dim"))
    if unit:
      scale_H = jnp.asarray(self._out_scale(x_BLD.shape[1]), dtype)
      o_BLHK = o_BLHK * scale_H[:, None]
    return U.project("blhk,hkd->bld", o_BLHK, self.wo_HKD, self.out_mult, unit)
