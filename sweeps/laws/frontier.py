"""Prescriptive-scaling frontier (Zhang et al. 2026): a high conditional quantile of the
metric as a monotone, saturating sigmoid in z = log10(C), by smoothed quantile regression.

The metric here is loss, where lower is better, so the capability boundary is the low
quantile q = 1 - tau of loss: f(z) = floor + span * sigmoid(-k (z - z0)) with span, k > 0
(decreasing, saturating at `floor`). A fraction tau of runs should lie on or above it; the
extrapolation check reports that coverage on the held-out largest-compute runs.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from sweeps import lbfgs
from sweeps.laws import base

NAME = "frontier"
SMOOTHING = 1e-3  # pinball smoothing width, relative to the mean loss


def objective(theta_P, data, weights_N):
  z, loss, q, h = data
  floor, log_span, z0, log_k = theta_P
  f = floor + jnp.exp(log_span) * jax.nn.sigmoid(-jnp.exp(log_k) * (z - z0))
  r = loss - f
  # Smoothed pinball (check) loss: h softplus(r / h) - (1 - q) r -> q r (r > 0), (q - 1) r.
  pinball = h * jax.nn.softplus(r / h) - (1 - q) * r
  return jnp.sum(weights_N * pinball)


def curve(params: dict, c):
  z = np.log10(np.asarray(c, np.float64))
  return params["floor"] + params["span"] / (1 + np.exp(params["k"] * (z - params["z0"])))


def _data(points, tau):
  n_pad = lbfgs.pad_length(len(points))
  pad = lambda v: np.concatenate([v, np.full(n_pad - len(v), v[0])])
  h = SMOOTHING * float(np.mean(points.loss))
  full = lambda v: np.full(n_pad, v)
  return (pad(np.log10(points.C)), pad(points.loss), full(1 - tau), full(h)), n_pad


def _solve(points, tau, weights_RN, starts_RSP):
  data, n_pad = _data(points, tau)
  padded_RN = np.zeros((weights_RN.shape[0], n_pad))
  padded_RN[:, :len(points)] = weights_RN
  theta_RSP, value_RS, _ = lbfgs.minimize(objective, starts_RSP, data, padded_RN)
  best_R = np.argmin(value_RS, axis=1)
  rows = np.arange(len(best_R))
  theta_RP = theta_RSP[rows, best_R]
  theta_RP[~np.isfinite(value_RS[rows, best_R])] = np.nan
  return theta_RP


def _named(theta_RP) -> dict:
  floor, log_span, z0, log_k = np.moveaxis(theta_RP, -1, 0)
  return {"floor": floor, "span": np.exp(log_span), "z0": z0, "k": np.exp(log_k)}


def fit(points, options=None) -> dict:
  tau = getattr(options, "tau", 0.98)
  if not 0.5 < tau < 1:
    raise ValueError(f"--tau={tau} must lie in (0.5, 1): the frontier is a high quantile")
  z, loss = np.log10(points.C), points.loss
  spread = max(float(loss.max() - loss.min()), 1e-3)
  starts = np.array(list(itertools.product(
      [loss.min() - spread, loss.min() - 0.1 * spread], np.log([spread, 3 * spread]),
      np.quantile(z, [0.1, 0.5, 0.9]), np.log([0.5, 2.0]))), np.float64)
  theta_RP = _solve(points, tau, np.ones((1, len(points))), starts[None])
  params = {k: float(v[0]) for k, v in _named(theta_RP).items()}
  f = curve(params, points.C)
  return {"params": params, "derived": {}, "tau": tau,
          "coverage_in_sample": float(np.mean(loss >= f)),
          "residuals": (loss - f).tolist(),
          "method": (f"Zhang et al. 2026 capability boundary: quantile {1 - tau:.3g} of loss "
                     "(tau of runs at or above it) as floor + span * sigmoid(-k (log10 C - "
                     "z0)), smoothed pinball loss, optax L-BFGS from 24 starts"),
          "_theta": theta_RP[0]}


def bootstrap(points, options, result, weights_RN) -> dict:
  starts_RSP = np.broadcast_to(result["_theta"], (len(weights_RN), 1, 4))
  return _named(_solve(points, result["tau"], weights_RN, starts_RSP))


def extrapolate(result, heldout) -> dict:
  """Coverage: the fraction of held-out runs on or above the frontier (target: tau)."""
  covered = heldout.loss >= curve(result["params"], heldout.C)
  return {"target": "coverage", "tau": result["tau"], "coverage": float(np.mean(covered)),
          "coverage_error": float(np.mean(covered) - result["tau"]),
          "n_heldout_points": len(heldout)}


def loss_curve(fit_obj: dict, c):
  """The frontier curve on the loss-vs-compute figure."""
  nan = np.full(np.shape(c), np.nan)
  return curve(fit_obj["params"], c), nan, nan, f"frontier, τ = {fit_obj.get('tau')}"


LAW = base.Law(
    name=NAME, fit=fit, bootstrap=bootstrap, extrapolate=extrapolate, options=("tau",),
    form=(r"$L_q(C) = floor + span\,\sigma(-k(\log_{10}C - z_0))$",),
    loss_curve=loss_curve, asymptote=("floor", "asymptote"),
    residuals="sweeps.plot_residuals:loss_per_point")
