"""Chinchilla Approach 2 (IsoFLOP): per FLOP budget, a parabola of loss in log N; power laws
N_opt = N_coef * C^a and D_opt = D_coef * C^b through the parabolas' minima.

Runs are grouped into budgets by log10 C (runs within BUCKET_DECADES of their neighbour share
a budget). D_opt at a budget is C / (6 N_opt), the convention of the paper. The minima's
losses also give L_opt = loss_coef * C^loss_exp, used for prescriptions.
"""
import numpy as np

from sweeps.laws import powerlaw

NAME = "isoflop"
BUCKET_DECADES = 0.05


def buckets(c) -> np.ndarray:
  """Bucket index per point: consecutive log10 C values closer than BUCKET_DECADES join."""
  z = np.log10(c)
  order = np.argsort(z, kind="stable")
  gaps = np.diff(z[order]) > BUCKET_DECADES
  labels = np.empty(len(z), int)
  labels[order] = np.concatenate([[0], np.cumsum(gaps)])
  return labels


def _minima(points, weights_RN):
  """Per resample and budget: (C_G, log N_opt_RG, loss_min_RG); NaN where no valid minimum."""
  bucket = buckets(points.C)
  n_buckets = bucket.max() + 1
  c_g = np.array([np.exp(np.mean(np.log(points.C[bucket == g]))) for g in range(n_buckets)])
  x = np.log(points.N)
  coef_RG3 = powerlaw.parabolas(x, points.loss, bucket, weights_RN, n_buckets)
  p0, p1, p2 = np.moveaxis(coef_RG3, -1, 0)
  with np.errstate(divide="ignore", invalid="ignore"):
    x_opt = -p1 / (2 * p2)
  lo = np.array([x[bucket == g].min() for g in range(n_buckets)])
  hi = np.array([x[bucket == g].max() for g in range(n_buckets)])
  # A minimum only counts if the parabola opens upward and its vertex lies inside the sampled
  # sizes: outside, the budget did not bracket the optimum.
  valid = (p2 > 0) & (x_opt >= lo) & (x_opt <= hi)
  x_opt = np.where(valid, x_opt, np.nan)
  loss_min = np.where(valid, p0 + p1 * x_opt + p2 * x_opt ** 2, np.nan)
  return c_g, x_opt, loss_min, coef_RG3


def _laws(c_g, x_opt_RG, loss_min_RG) -> dict:
  n_opt_RG = np.exp(x_opt_RG)  # NaN where a budget has no interior minimum
  return powerlaw.allocation_laws(c_g, n_opt_RG, c_g / (6 * n_opt_RG), loss_min_RG)


allocation = powerlaw.allocation


def fit(points, options=None) -> dict:
  c_g, x_opt, loss_min, coef = _minima(points, np.ones((1, len(points))))
  used = np.isfinite(x_opt[0])
  if used.sum() < 2:
    raise ValueError(f"IsoFLOP needs >= 2 FLOP budgets whose parabola has its minimum inside "
                     f"the sampled model sizes; found {int(used.sum())} of {len(c_g)} budgets "
                     "(each needs >= 3 distinct N). Add model sizes around each optimum.")
  laws = {k: float(v[0]) for k, v in _laws(c_g, x_opt, loss_min).items()}
  params = {k: laws[k] for k in ("a", "b", "N_coef", "D_coef")}
  n_pred = params["N_coef"] * c_g[used] ** params["a"]
  return {
      "params": params,
      "derived": {"loss_coef": laws["loss_coef"], "loss_exp": laws["loss_exp"]},
      "budgets": {"C": c_g.tolist(), "N_opt": np.exp(x_opt[0]).tolist(),
                  "loss_min": loss_min[0].tolist(), "parabola": coef[0].tolist()},
      "residuals": (np.log(n_pred) - x_opt[0][used]).tolist(),
      "method": ("Hoffmann et al. 2022 Approach 2: per FLOP budget (log10 C buckets of "
                 f"{BUCKET_DECADES} decades) a least-squares parabola of loss in log N; "
                 "log-log least squares of the minima; D_opt = C / 6 N_opt"),
  }


def bootstrap(points, options, result, weights_RN) -> dict:
  c_g, x_opt, loss_min, _ = _minima(points, weights_RN)
  return _laws(c_g, x_opt, loss_min)


def extrapolate(result, heldout) -> dict:
  """Predicts the optimal N of the held-out budgets (those with a valid parabola there)."""
  c_g, x_opt, _, _ = _minima(heldout, np.ones((1, len(heldout))))
  ok = np.isfinite(x_opt[0])
  if not ok.any():
    return {"target": "N_opt", "error": "no held-out budget has a parabola with an interior "
            "minimum (needs >= 3 distinct N per budget)"}
  pred, _, _ = allocation({**result["params"], **result["derived"]}, c_g[ok])
  rel = pred / np.exp(x_opt[0][ok]) - 1
  return {"target": "N_opt", "C": c_g[ok].tolist(), "relative_error": rel.tolist(),
          "mean_abs_relative_error": float(np.mean(np.abs(rel))),
          "max_abs_relative_error": float(np.max(np.abs(rel)))}
