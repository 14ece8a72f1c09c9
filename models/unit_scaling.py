"""u-muP's unit-scaled ops (Blake et al. 2024; Unit Scaling, Blake et al. 2023): `scaled`
(a multiplier with its own backward scale) and the models of each op's output RMS at init
that the ops divide by. The rules (which multiplier where) are models/parametrization.py's.
"""
import functools
import math

import jax
import numpy as np

from models.parametrization import _log_interp


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def scaled(x, forward, backward):
  """x * forward in the forward pass, gradient * backward in the backward pass."""
  return x * jax.numpy.asarray(forward, x.dtype)


def _scaled_fwd(x, forward, backward):
  return scaled(x, forward, backward), None


def _scaled_bwd(forward, backward, _, g):
  del forward
  return (g * jax.numpy.asarray(backward, g.dtype),)


scaled.defvjp(_scaled_fwd, _scaled_bwd)


def attention_out_scale(mult, head_dim, seq_len):
  """1 / the RMS of causal softmax attention's output at init (unit-variance v): from
  sqrt(log L / L) (flat scores: a causal average) to 1 (one-hot scores) as the logit
  scale mult (umup_attn_softmax_mult) grows (u-muP's scaled_dot_product_attention model)."""
  flat = (math.log(seq_len) / seq_len) ** 0.5 if seq_len > 1 else 1.0
  return 1 / _log_interp(1 / (1 + 4 * head_dim / mult ** 2), flat, 1.0)


def glu_scale(mult):
  """1 / the RMS of up * silu(mult gate) for unit-variance inputs (u-muP's gated SiLU;
  mult: umup_ffn_act_mult; 2^0.75 at 1, 2 as it goes to 0, sqrt(2) as it grows)."""
  return _log_interp(1 / (1 + 1 / mult ** 2), 2.0, 2 ** 0.5)


_FEATURES = {"identity": lambda z: z, "relu": lambda z: np.maximum(z, 0.0),
             "elu1": lambda z: np.where(z > 0, z + 1.0, np.exp(np.minimum(z, 0.0)))}


def _gauss_mean(fn, std=1.0, shift=0.0):
  """E[fn(shift + std z)], z ~ N(0, 1), by quadrature."""
  z = np.linspace(-10.0, 10.0, 8001)
  w = np.exp(-0.5 * z * z)
  return float(np.sum(fn(shift + std * z) * w) / np.sum(w))


def _score_moments(feature_map, head_dim):
  """E[s], E[s^2] of a linear-attention score s = phi(q / sqrt(K)) . phi(k) for unit
  Gaussian q, k (models/linear_attention.py scales q before the kernel's feature map)."""
  if feature_map == "squared":  # (q . k)^2 / K: a chi-square-like z^2
    return 1.0, 3.0
  phi, K = _FEATURES[feature_map], head_dim
  mq, vq = _gauss_mean(phi, K ** -0.5), _gauss_mean(lambda z: phi(z) ** 2, K ** -0.5)
  mk, vk = _gauss_mean(phi), _gauss_mean(lambda z: phi(z) ** 2)
  return K * mq * mk, K * (vq * vk - mq * mq * mk * mk) + (K * mq * mk) ** 2


def linear_out_scale(feature_map, normalize, bias_H, head_dim, seq_len):
  """Per-head 1 / the RMS at init of the decayed linear attention's output (unit q, k, v;
  bias_H: the decay bias, None without decay). Output o_i = sum_j s_ij w_ij v_j with
  w_ij = prod of the decays, so E[o_i^2] = E[s^2] sum_j w_ij^2 (normalised: divided by
  (E[s] sum_j w_ij)^2); the decay's unit-variance W_a x noise is averaged in."""
  mean_s, second_s = _score_moments(feature_map, head_dim)
  if bias_H is None:
    rate_H = np.zeros(1)
  else:
    softplus = lambda x: np.logaddexp(0.0, x)  # noqa: E731
    rate_H = np.array([_gauss_mean(softplus, 1.0, b) for b in np.asarray(bias_H)])
  lag_N = np.arange(seq_len)
  w_HN = np.exp(-rate_H[:, None] * lag_N[None, :])
  # Position i sums lags 0..i; average the second moment over positions.
  sq_HI, lin_HI = np.cumsum(w_HN ** 2, axis=1), np.cumsum(w_HN, axis=1)
  var_HI = second_s * sq_HI / ((mean_s * lin_HI) ** 2 if normalize else 1.0)
  return (1 / np.sqrt(np.mean(var_HI, axis=1))).astype(np.float32)


def loss_grad_scale(vocab_size, tokens):
  """The logits' gradient multiplier that undoes the loss's mean over `tokens` and makes
  d(loss)/d(logits) = softmax - onehot unit-scaled (u-muP's cross entropy: V / sqrt(V - 1))."""
  return tokens * vocab_size / (vocab_size - 1) ** 0.5


def weight_grad_scale(forward_mult, tokens):
  """u-muP's weight-gradient multiplier for y = forward_mult (x @ W): the true gradient is
  forward_mult x^T g; unit scaling wants x^T g / sqrt(tokens) (Adam sees only its scale)."""
  return 1 / (forward_mult * tokens ** 0.5)


def tokens(x_BLD):
  """The tokens a batch of activations holds (u-muP's gradient scales are per token)."""
  return math.prod(x_BLD.shape[:2])


def qk_grad_scale(mult, head_dim):
  """The extra weight-gradient scale of W_q and W_k: at init the logits q.k mult / K are
  small and near-uniform softmax hands q and k gradients of RMS ~ mult / sqrt(K); scaling
  only the weights' gradients (not q's or k's, which flow on into the residual stream)
  leaves every other gradient true, and Adam sees only the per-tensor scale."""
  return head_dim ** 0.5 / mult


def project(eq, x, p, mult, unit, grad_mult=1.0):
  """einsum(eq, x, W) * mult (a unit-scaled matmul under u-muP, whose weight gradient is
  x^T g / sqrt(tokens), times grad_mult)."""
  w = p[...].astype(x.dtype)
  if unit:
    w = scaled(w, 1.0, weight_grad_scale(mult, tokens(x)) * grad_mult)
  y = jax.numpy.einsum(eq, x, w)
  return y if mult == 1.0 else y * jax.numpy.asarray(mult, y.dtype)
