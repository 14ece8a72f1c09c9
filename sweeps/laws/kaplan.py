"""Kaplan et al. 2020 single-variable laws L(X) = E_X + (X_c / X)^alpha_X for X in N, D, C.

Each law is fitted to the frontier (lower envelope) in its variable: Kaplan's laws describe the
best loss reachable at X when the other resources are not the bottleneck. Runs at the same X
count once, by their lowest loss: for C the runs of one FLOP budget (points.buckets; an
isoFLOP budget's runs differ in C by < 0.1%, so ordering them by exact C would let a budget's
worse runs onto the frontier), for N and D equal values. The frontier keeps each X whose best
loss is below the best of every smaller X.
E_X is fitted when `irreducible` (FitOptions.irreducible, default) and fixed at 0 otherwise.
Least squares on log L, optax L-BFGS from a small grid of starts (bootstrap: warm starts).
"""
import itertools

import jax.numpy as jnp
import numpy as np

from sweeps import lbfgs
from sweeps import points as points_lib
from sweeps.laws import base

NAME = "kaplan"
VARIABLES = ("N", "D", "C")


def objective_irreducible(theta_P, data, weights_N):
  log_x, log_loss = data
  log_xc, alpha, e = theta_P
  pred = jnp.log(jnp.exp(e) + jnp.exp(alpha * (log_xc - log_x)))
  return jnp.sum(weights_N * (pred - log_loss) ** 2)


def objective_pure(theta_P, data, weights_N):
  log_x, log_loss = data
  log_xc, alpha, _ = theta_P
  return jnp.sum(weights_N * (alpha * (log_xc - log_x) - log_loss) ** 2)


def _groups(variable, x):
  """Per point, the index (ascending in x) of the points counting as the same X."""
  if variable == "C":
    return points_lib.buckets(x)
  return np.unique(x, return_inverse=True)[1]


def _frontier(group, loss, weights_RN):
  """Weights selecting, per resample, each group's lowest-loss point among those drawn, where
  that loss is below every group with a smaller index: one point per X on the envelope. A
  selected point weighs 1 however often its run was drawn, so each X counts once."""
  order = np.lexsort((loss, group))
  starts = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0])
  ends = np.r_[starts[1:], len(order)]
  masked_RN = np.where(weights_RN[:, order] > 0, loss[order], np.inf)
  best_RG = np.stack([masked_RN[:, a:b].min(axis=1) for a, b in zip(starts, ends)], axis=1)
  previous_RG = np.concatenate([np.full((len(best_RG), 1), np.inf),
                                np.minimum.accumulate(best_RG, axis=1)[:, :-1]], axis=1)
  keep_RG = (best_RG < previous_RG) & np.isfinite(best_RG)
  rows = np.arange(len(masked_RN))
  select_RN = np.zeros_like(weights_RN)
  for g, (a, b) in enumerate(zip(starts, ends)):
    first_R = a + np.argmin(masked_RN[:, a:b], axis=1)  # the first of equal losses
    select_RN[rows[keep_RG[:, g]], order[first_R[keep_RG[:, g]]]] = 1.0
  return select_RN


def _selections(points, weights_RN):
  out = {}
  for variable in VARIABLES:
    x = getattr(points, variable)
    out[variable] = (x, _frontier(_groups(variable, x), points.loss, weights_RN))
  return out


def _starts(x, loss, irreducible):
  lx = np.log(x)
  e = [np.log(0.5 * loss.min()), np.log(0.9 * loss.min())] if irreducible else [0.0]
  grid = itertools.product(np.median(lx) + np.array([0.0, 5.0, 15.0, 30.0]),
                           [0.05, 0.1, 0.3, 0.6], e)
  return np.array(list(grid), np.float64)


def _solve(x, loss, select_RN, starts_RSP, irreducible):
  n_pad = lbfgs.pad_length(len(x))
  pad = lambda v: np.concatenate([v, np.full(n_pad - len(v), v[0])])
  weights_RN = np.zeros((select_RN.shape[0], n_pad))
  weights_RN[:, :len(x)] = select_RN
  objective = objective_irreducible if irreducible else objective_pure
  theta_RSP, value_RS, _ = lbfgs.minimize(objective, starts_RSP, (pad(np.log(x)),
                                          pad(np.log(loss))), weights_RN)
  best_R = np.argmin(value_RS, axis=1)
  rows = np.arange(len(best_R))
  theta_RP = theta_RSP[rows, best_R]
  enough = select_RN.sum(1) >= (3 if irreducible else 2)
  theta_RP[~(np.isfinite(value_RS[rows, best_R]) & enough)] = np.nan
  return theta_RP


def _named(variable, theta_RP, irreducible) -> dict:
  log_xc, alpha, e = np.moveaxis(theta_RP, -1, 0)
  with np.errstate(over="ignore"):
    return {f"alpha_{variable}": alpha, f"{variable}_c": np.exp(log_xc),
            f"E_{variable}": np.exp(e) if irreducible else np.zeros_like(alpha)}


def predict(params: dict, variable: str, x):
  return params[f"E_{variable}"] + (params[f"{variable}_c"] / np.asarray(x)) ** \
      params[f"alpha_{variable}"]


def fit(points, options=None) -> dict:
  irreducible = getattr(options, "irreducible", True)
  params, residuals, starts = {}, [], {}
  for variable, (x, select_RN) in _selections(points, np.ones((1, len(points)))).items():
    if select_RN.sum() < (3 if irreducible else 2):
      raise ValueError(f"L({variable}) needs >= {3 if irreducible else 2} distinct {variable} "
                       "values on its loss frontier (C: FLOP budgets)")
    theta_RP = _solve(x, points.loss, select_RN, _starts(x, points.loss, irreducible)[None],
                      irreducible)
    starts[variable] = theta_RP[0]
    params.update({k: float(v[0]) for k, v in _named(variable, theta_RP, irreducible).items()})
    sel = select_RN[0] > 0
    residuals += (np.log(predict(params, variable, x[sel])) - np.log(points.loss[sel])).tolist()
  return {"params": params, "derived": {}, "irreducible": irreducible, "residuals": residuals,
          "method": ("Kaplan et al. 2020 single-variable power laws on log L (least squares, "
                     "optax L-BFGS), each on the loss frontier in its variable: per X the lowest "
                     f"loss (C: per FLOP budget, the runs within {points_lib.BUCKET_DECADES} "
                     "decades below its largest), kept where below every smaller X"
                     + (", with an irreducible term E_X" if irreducible else "")),
          "_starts": starts}


def bootstrap(points, options, result, weights_RN) -> dict:
  out = {}
  for variable, (x, select_RN) in _selections(points, weights_RN).items():
    starts_RSP = np.broadcast_to(result["_starts"][variable], (len(select_RN), 1, 3))
    theta_RP = _solve(x, points.loss, select_RN, starts_RSP, result["irreducible"])
    out.update(_named(variable, theta_RP, result["irreducible"]))
  return out


def extrapolate(result, heldout) -> dict:
  """Each law's relative error on the held-out points it would have been fitted to."""
  out, errors = {"target": "loss"}, []
  for variable, (x, select_RN) in _selections(heldout, np.ones((1, len(heldout)))).items():
    sel = select_RN[0] > 0
    rel = predict(result["params"], variable, x[sel]) / heldout.loss[sel] - 1
    out[f"relative_error_{variable}"] = rel.tolist()
    errors.append(rel)
  rel = np.concatenate(errors)
  out["mean_abs_relative_error"] = float(np.mean(np.abs(rel)))
  out["max_abs_relative_error"] = float(np.max(np.abs(rel)))
  return out


def loss_curve(fit_obj: dict, c):
  """Kaplan L(C) on the loss-vs-compute figure (no band: intervals are per parameter)."""
  params = {**fit_obj.get("params", {}), **(fit_obj.get("derived") or {})}
  nan = np.full(np.shape(c), np.nan)
  return predict(params, "C", c), nan, nan, "Kaplan L(C)"


LAW = base.Law(
    name=NAME, fit=fit, bootstrap=bootstrap, extrapolate=extrapolate, options=("irreducible",),
    form=(r"$L(X) = E_X + (X_c/X)^{\alpha_X},\ X \in \{N, D, C\}$",),
    loss_curve=loss_curve, asymptote=("E_C", "irreducible loss"),
    residuals="sweeps.plot_residuals:kaplan_frontiers")
