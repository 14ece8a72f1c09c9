"""Chinchilla Approach 3: L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022).

Fitted exactly as the paper: minimise the sum over points of
Huber_delta(LSE(a - alpha log N, b - beta log D, e) - log L), delta = 1e-3, with L-BFGS from
the published grid of 4,500 starts; the best final objective wins. E = e^e, A = e^a, B = e^b.

With a known loss floor E0 (an exact entropy rate), `FitOptions(e_floor=E0)` bounds E >= E0
by writing E = E0 + e^e: the objective is unchanged in form and stays smooth.

The allocation spends C = k N D FLOPs, k = `flops_per_nd` read off the runs (the geometric
mean of C / ND): the paper's 6 when C = 6ND, about 6.6 when C counts every executed FLOP of a
small model (attention, logits), where C/6 would prescribe ~10% more tokens than a budget buys.
"""
import itertools

import jax.numpy as jnp
import numpy as np
import optax

from sweeps import lbfgs
from sweeps.laws import base

NAME = "chinchilla"
DELTA = 1e-3
PARAMS = ("E", "A", "B", "alpha", "beta")
MIN_POINTS_PER_PARAM = 2  # below this the fit is refused: 5 parameters need >= 10 points
DERIVED = ("a", "b", "G", "flops_per_nd")
BOOTSTRAP_STARTS = 4  # distinct local minima of the full fit that seed each bootstrap refit
POLISH = 16  # float32 endpoints polished in float64
REFIT_STARTS = 256  # distinct local minima of the full fit that seed its extrapolation refit
# Published Approach 3 fits, as reported (fitted to the Chinchilla runs, not to yours):
# Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Approach 3);
# Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt" (their refit to the data
# extracted from Hoffmann et al.'s Figure 4, which found the reported fit inconsistent with it).
PUBLISHED = {
    "Hoffmann et al. 2022": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
    "Besiroglu et al. 2024": {"E": 1.82, "A": 482.0, "B": 2085.4, "alpha": 0.35, "beta": 0.37},
}


def start_grid() -> np.ndarray:
  """The published grid: theta = (a, b, e, alpha, beta), 6 * 6 * 5 * 5 * 5 = 4,500 starts."""
  a_b = np.arange(0.0, 25.1, 5.0)
  e = np.arange(-1.0, 1.01, 0.5)
  exps = np.arange(0.0, 2.01, 0.5)
  return np.array(list(itertools.product(a_b, a_b, e, exps, exps)), np.float64)


def objective(theta_P, data, weights_N):
  log_n, log_d, log_loss, floor_N = data
  a, b, e, alpha, beta = theta_P
  # LSE of three terms written out: the exponents stay far below overflow on the grid, and
  # this costs two exps and a log per point (the fit's whole cost). floor_N is E0 (or 0).
  pred = jnp.log(jnp.exp(a - alpha * log_n) + jnp.exp(b - beta * log_d) + jnp.exp(e)
                 + floor_N)
  return jnp.sum(weights_N * optax.losses.huber_loss(pred, log_loss, delta=DELTA))


def e_floor(points, options) -> float:
  """The lower bound on E the fit uses: options.e_floor (a number, or "auto" for the floor
  the runs carry), else 0."""
  value = getattr(options, "e_floor", None)
  if value == "auto":
    return float(points.floor or 0.0)
  return float(value or 0.0)


def _data(points, floor=0.0):
  n_pad = lbfgs.pad_length(len(points))
  pad = lambda x: np.concatenate([x, np.full(n_pad - len(x), x[0])])
  logs = tuple(pad(np.log(x)) for x in (points.N, points.D, points.loss))
  return logs + (np.full(n_pad, floor),), n_pad


def flops_per_nd(points, weights_RN=None):
  """k in C = k N D: the (weighted) geometric mean of the runs' C / ND, per resample."""
  log_k_N = np.log(points.C / (points.N * points.D))
  if weights_RN is None:
    return float(np.exp(np.mean(log_k_N)))
  return np.exp((weights_RN * log_k_N).sum(-1) / weights_RN.sum(-1))


def _named(theta_RP, floor=0.0, k=6.0) -> dict:
  a, b, e, alpha, beta = np.moveaxis(np.asarray(theta_RP, np.float64), -1, 0)
  values = {"E": floor + np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha,
            "beta": beta}
  values.update(derive(values))
  values["flops_per_nd"] = np.broadcast_to(np.asarray(k, np.float64), np.shape(a)).copy()
  return values


def derive(p: dict) -> dict:
  """Compute-optimal allocation: N_opt = G (C/k)^a, D_opt = G^-1 (C/k)^b."""
  alpha, beta = np.asarray(p["alpha"]), np.asarray(p["beta"])
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    total = alpha + beta
    g = (alpha * np.asarray(p["A"]) / (beta * np.asarray(p["B"]))) ** (1 / total)
    return {"a": beta / total, "b": alpha / total, "G": g}


def predict(params: dict, n, d):
  return params["E"] + params["A"] / np.asarray(n) ** params["alpha"] + \
      params["B"] / np.asarray(d) ** params["beta"]


def allocation(params: dict, c):
  """(N_opt, D_opt, predicted loss) at training FLOPs c under C = k N D (k = 6 for a fit
  that does not record it: published laws, older fit.json files)."""
  g, a, b = params["G"], params["a"], params["b"]
  per_token = np.asarray(c) / params.get("flops_per_nd", 6.0)
  n_opt = g * per_token ** a
  d_opt = per_token ** b / g
  return n_opt, d_opt, predict(params, n_opt, d_opt)


def _distinct(theta_SP, value_S, k):
  """The k best endpoints that are distinct local minima (rounded), best first."""
  order = np.argsort(value_S, kind="stable")
  order = order[np.isfinite(value_S[order])]
  _, first = np.unique(np.round(theta_SP[order], 3), axis=0, return_index=True)
  picks = order[np.sort(first)][:k]
  return theta_SP[np.resize(picks, k)]  # repeat the best if fewer than k are distinct


def fit(points, options=None, starts=None) -> dict:
  """starts: [S, 5] start set instead of the 4,500-start grid (the extrapolation refit uses
  the full fit's best distinct local minima, REFIT_STARTS of them)."""
  need = MIN_POINTS_PER_PARAM * len(PARAMS)
  if len(points) < need:
    raise ValueError(f"Approach 3 fits {len(PARAMS)} parameters (E, A, B, alpha, beta) and "
                     f"needs >= {need} points ({MIN_POINTS_PER_PARAM} per parameter); got "
                     f"{len(points)}. Add runs, or fit fewer parameters (--law=isoflop or "
                     "--law=kaplan).")
  floor = e_floor(points, options)
  data, n_pad = _data(points, floor)
  weights_RN = np.zeros((1, n_pad))
  weights_RN[0, :len(points)] = 1.0
  theta_RP, value_R, search_RSP, search_RS = lbfgs.search_then_polish(
      objective, (start_grid() if starts is None else np.asarray(starts))[None], data,
      weights_RN, keep=POLISH)
  if not np.isfinite(value_R[0]):
    raise ValueError("the Chinchilla fit found no finite objective from any of the 4,500 "
                     "starts; check that loss values are on a natural-log scale (nats/token)")
  named = _named(theta_RP[0], floor, flops_per_nd(points))
  params = {k: float(named[k]) for k in PARAMS}
  residuals = np.log(predict(params, points.N, points.D)) - np.log(points.loss)
  return {
      "params": params,
      "derived": {k: float(named[k]) for k in DERIVED},
      "objective": float(value_R[0]),
      "residuals": residuals.tolist(),
      "method": ("Hoffmann et al. 2022 Approach 3: sum of Huber(delta=1e-3) on log L, "
                 "optax L-BFGS from the 4,500-start grid (all starts in float32, best "
                 f"{POLISH} polished in float64), best objective kept"
                 + (f"; E bounded below by the known floor {floor:.4g}" if floor else "")
                 + f"; allocation under C = k N D, k = {named['flops_per_nd']:.4g} from the runs"),
      "e_floor": floor or None,
      "_starts": _distinct(search_RSP[0], search_RS[0], BOOTSTRAP_STARTS),
      "_refit_starts": _distinct(search_RSP[0], search_RS[0], REFIT_STARTS),
  }


def bootstrap(points, options, result, weights_RN) -> dict:
  """Refits each resample from the full fit's best distinct local minima."""
  floor = e_floor(points, options)
  data, n_pad = _data(points, floor)
  r = weights_RN.shape[0]
  padded_RN = np.zeros((r, n_pad))
  padded_RN[:, :weights_RN.shape[1]] = weights_RN
  starts_RSP = np.broadcast_to(result["_starts"], (r,) + result["_starts"].shape)
  theta_RP, value_R, _, _ = lbfgs.search_then_polish(objective, starts_RSP, data, padded_RN,
                                                     keep=BOOTSTRAP_STARTS)
  named = _named(theta_RP, floor, flops_per_nd(points, weights_RN))
  return {k: np.where(np.isfinite(value_R), v, np.nan) for k, v in named.items()}


def extrapolate(result, heldout) -> dict:
  pred = predict(result["params"], heldout.N, heldout.D)
  rel = (pred - heldout.loss) / heldout.loss
  return {"target": "loss", "run_id": heldout.run_id.tolist(),
          "relative_error": rel.tolist(), "mean_abs_relative_error": float(np.mean(np.abs(rel))),
          "max_abs_relative_error": float(np.max(np.abs(rel)))}


def along_budget(fit_obj, params, entry, n_G, d_G, d_of) -> dict:
  """IsoFLOP figure: L(N, D) along one budget's runs (n_G, d_G: None below 2 sizes), its
  minimum, and whether the minimum is inside the sizes run."""
  if n_G is None:
    return {}
  loss_G = predict(params, n_G, d_G)
  if not np.isfinite(loss_G).any():
    return {}
  i = int(np.nanargmin(loss_G))
  return {"vertex": (n_G[i], d_G[i], loss_G[i]), "bracketed": 0 < i < len(loss_G) - 1,
          "curve": (n_G, d_G, loss_G)}


LAW = base.Law(
    name=NAME, fit=fit, bootstrap=bootstrap, extrapolate=extrapolate, allocation=allocation,
    loss_at=predict, options=("e_floor",), n_params=len(PARAMS), isoflop_grid=True,
    checks=("sweeps.diagnostics:loss_exponents", "sweeps.diagnostics:irreducible_floor",
            "sweeps.diagnostics:flops_per_nd_spread"),
    form=(r"$L(N, D) = E + A/N^{\alpha} + B/D^{\beta}$",
          r"$N_{opt} = G\,(C/k)^{a},\ D_{opt} = G^{-1}(C/k)^{b}$,  $C = k N D$"),
    figures=(("isoflop.png", "sweeps.plot_isoflop:isoflop_figure"),),
    asymptote=("E", "irreducible loss"), residuals="sweeps.plot_residuals:log_loss_per_point",
    budget_curve=along_budget,
    budget_curve_label="L(N, D) along each budget's runs")
