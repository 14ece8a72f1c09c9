"""Chinchilla Approach 1 (envelope): from loss curves, the lowest loss over runs at each of
GRID log-spaced FLOP values; power laws N_opt = N_coef * C^a, D_opt = D_coef * C^b through
the runs (and their token counts) that attain the minimum.

Points are logged steps (many per run, sharing run_id); each run's loss is interpolated
linearly in log C inside the FLOP range it covers.
"""
import numpy as np

from sweeps.laws import base, powerlaw

NAME = "envelope"
GRID = 250
RESAMPLE_CHUNK = 50  # resamples per vectorised block: bounds the [R, runs, grid] array


def _curves(points):
  """Per run (sorted ids): N, and loss and log D interpolated on the shared log C grid."""
  runs, inverse = np.unique(points.run_id, return_inverse=True)
  log_c = np.log(points.C)
  grid = np.linspace(log_c.min(), log_c.max(), GRID)
  loss_UG = np.full((len(runs), GRID), np.inf)
  log_d_UG = np.full((len(runs), GRID), np.nan)
  n_U = np.zeros(len(runs))
  for u in range(len(runs)):
    sel = np.flatnonzero(inverse == u)
    sel = sel[np.argsort(log_c[sel], kind="stable")]
    n_U[u] = points.N[sel[-1]]
    inside = (grid >= log_c[sel[0]]) & (grid <= log_c[sel[-1]])
    loss_UG[u, inside] = np.interp(grid[inside], log_c[sel], points.loss[sel])
    log_d_UG[u, inside] = np.interp(grid[inside], log_c[sel], np.log(points.D[sel]))
  return runs, inverse, np.exp(grid), n_U, loss_UG, log_d_UG


def _envelope(curves, run_weights_RU):
  """Per resample: (N_opt_RG, D_opt_RG, loss_RG) of the best run with positive weight."""
  _, _, _, n_U, loss_UG, log_d_UG = curves
  outs = []
  for start in range(0, run_weights_RU.shape[0], RESAMPLE_CHUNK):
    w_RU = run_weights_RU[start:start + RESAMPLE_CHUNK]
    masked_RUG = np.where(w_RU[:, :, None] > 0, loss_UG[None], np.inf)
    best_RG = np.argmin(masked_RUG, axis=1)
    loss_RG = np.take_along_axis(masked_RUG, best_RG[:, None], 1)[:, 0]
    ok = np.isfinite(loss_RG)
    n_RG = np.where(ok, n_U[best_RG], np.nan)
    d_RG = np.where(ok, np.exp(np.take_along_axis(log_d_UG, best_RG, 0)), np.nan)
    outs.append((n_RG, d_RG, np.where(ok, loss_RG, np.nan)))
  return tuple(np.concatenate(parts) for parts in zip(*outs))


def _laws(c_G, n_RG, d_RG, loss_RG) -> dict:
  return powerlaw.allocation_laws(c_G, n_RG, d_RG, loss_RG)


allocation = powerlaw.allocation


def fit(points, options=None) -> dict:
  curves = _curves(points)
  runs, c_G = curves[0], curves[2]
  if len(runs) < 2:
    raise ValueError("the envelope law needs loss curves of >= 2 runs (points sharing a "
                     "run_id are one run's logged steps)")
  n, d, loss = _envelope(curves, np.ones((1, len(runs))))
  laws = {k: float(v[0]) for k, v in _laws(c_G, n, d, loss).items()}
  if not np.isfinite(laws["a"]):
    raise ValueError("the loss envelope is attained by a single model size everywhere; the "
                     "runs must span several sizes whose curves cross")
  params = {k: laws[k] for k in ("a", "b", "N_coef", "D_coef")}
  return {
      "params": params,
      "derived": {"loss_coef": laws["loss_coef"], "loss_exp": laws["loss_exp"]},
      "envelope": {"C": c_G.tolist(), "N_opt": n[0].tolist(), "loss": loss[0].tolist()},
      "residuals": (np.log(params["N_coef"] * c_G ** params["a"]) - np.log(n[0])).tolist(),
      "method": (f"Hoffmann et al. 2022 Approach 1: minimum loss over runs at {GRID} "
                 "log-spaced FLOP values (curves interpolated in log C), log-log least squares "
                 "of the minimising runs' N and tokens"),
  }


def bootstrap(points, options, result, weights_RN) -> dict:
  curves = _curves(points)
  inverse = curves[1]
  # A run's weight is its resample count; every point of a run carries the same weight.
  run_w_RU = np.zeros((weights_RN.shape[0], len(curves[0])))
  run_w_RU[:, inverse] = weights_RN
  return _laws(curves[2], *_envelope(curves, run_w_RU))


def extrapolate(result, heldout) -> dict:
  """Predicts the envelope loss the held-out (largest) runs reach at their final FLOPs."""
  runs, inverse = np.unique(heldout.run_id, return_inverse=True)
  last = np.array([np.flatnonzero(inverse == u)[np.argmax(heldout.C[inverse == u])]
                   for u in range(len(runs))])
  params = {**result["params"], **result["derived"]}
  _, _, pred = allocation(params, heldout.C[last])
  # The envelope is a lower bound: a held-out run should not beat it by much.
  rel = pred / heldout.loss[last] - 1
  return {"target": "final loss vs envelope L_opt(C)", "run_id": runs.tolist(),
          "relative_error": rel.tolist(), "mean_abs_relative_error": float(np.mean(np.abs(rel))),
          "max_abs_relative_error": float(np.max(np.abs(rel)))}


def optima(fit_obj: dict, points) -> dict:
  """The envelope's minimising runs' N per FLOP grid value (allocation figure)."""
  env = fit_obj.get("envelope") or {}
  n = np.asarray([np.nan if v is None else v for v in env.get("N_opt") or []], float)
  return {"C": np.asarray(env.get("C") or [], float), "N": n, "D": None, "loss": None,
          "label": "envelope minimisers", "big": False}


LAW = base.Law(
    name=NAME, fit=fit, bootstrap=bootstrap, extrapolate=extrapolate, allocation=allocation,
    rows=base.CURVES,
    form=(r"$N_{opt} = N_{coef}\,C^{a},\ D_{opt} = D_{coef}\,C^{b}$",
          r"$L_{opt} = loss_{coef}\,C^{loss_{exp}}$"),
    optima=optima, residuals="sweeps.plot_residuals:envelope_grid")
