"""Chinchilla Approach 2 (IsoFLOP): per FLOP budget, a parabola of loss in log N; power laws
N_opt = N_coef * C^a and D_opt = D_coef * C^b through the parabolas' minima.

Runs are grouped into budgets by log10 C (points.buckets). A budget counts only if it
brackets its minimum (the parabola opens upward, its vertex lies inside the sampled sizes and
the lowest loss is not at an end); the others are dropped and named, as Porian et al. do.
D_opt at a budget is the tokens its runs train on at size N_opt (points.tokens_along_budget):
C / (6 N_opt) when C = 6ND, as in the paper, but right when C counts every executed FLOP, so b
is fitted, not set to 1 - a. The minima's losses also give
L_opt = loss_E + loss_coef * C^loss_exp (powerlaw.loss_floor picks loss_E), for prescriptions.
"""
import numpy as np

from sweeps import points as points_lib
from sweeps.laws import base, powerlaw

NAME = "isoflop"
BUCKET_DECADES = points_lib.BUCKET_DECADES
buckets = points_lib.buckets


def _minima(points, weights_RN=None):
  """Per resample and budget: (C_G, log N_opt_RG, D_opt_RG, loss_min_RG, parabola_RG3); NaN
  where no valid minimum.

  Without weights (the fit itself) a budget must also have sampled sizes on both sides of
  its lowest loss; a resample only needs its parabola's vertex inside its sizes (requiring
  both sides there would drop most resamples of a 5-size budget and bias the interval)."""
  strict = weights_RN is None
  if strict:
    weights_RN = np.ones((1, len(points)))
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
  if strict:
    valid &= interior_minimum(points, weights_RN)
  x_opt = np.where(valid, x_opt, np.nan)
  loss_min = np.where(valid, p0 + p1 * x_opt + p2 * x_opt ** 2, np.nan)
  # The tokens at the vertex come from all the budget's runs, resampled or not: they are
  # the design's, not a noisy measurement.
  d_opt = np.full_like(x_opt, np.nan)
  for g in range(n_buckets):
    sel = bucket == g
    d_opt[:, g] = points_lib.tokens_along_budget(points.N[sel], points.D[sel])(
        np.exp(x_opt[:, g]))
  return c_g, x_opt, d_opt, loss_min, coef_RG3


def interior_minimum(points, weights_RN):
  """[R, G]: the budget's lowest-loss size (among runs weighted in) is not its smallest or
  largest size: there are sizes on both sides of the minimum."""
  bucket = buckets(points.C)
  out = np.zeros((weights_RN.shape[0], bucket.max() + 1), bool)
  for g in range(bucket.max() + 1):
    sel = np.flatnonzero(bucket == g)
    for r, w in enumerate(weights_RN[:, sel]):
      inside = sel[w > 0]
      if len(np.unique(points.N[inside])) < 3:
        continue
      best = points.N[inside[np.argmin(points.loss[inside])]]
      out[r, g] = points.N[inside].min() < best < points.N[inside].max()
  return out


def describe_budgets(points) -> list[dict]:
  """Per budget (ascending C): C, runs, distinct sizes, whether it brackets its minimum, and
  which end wins if not. The design check every isoFLOP analysis needs."""
  c_g, x_opt, _, _, _ = _minima(points)
  bucket = buckets(points.C)
  out = []
  for g, c in enumerate(c_g):
    sel = bucket == g
    sizes = np.unique(points.N[sel])
    best = points.N[sel][np.argmin(points.loss[sel])]
    where = ("smallest" if best == sizes.min() else "largest" if best == sizes.max()
             else "interior")
    out.append({"C": float(c), "runs": int(sel.sum()), "sizes": int(len(sizes)),
                "bracketed": bool(np.isfinite(x_opt[0, g])), "best": where,
                "N_range": [float(sizes.min()), float(sizes.max())]})
  return out


def _laws(c_g, x_opt_RG, d_opt_RG, loss_min_RG, loss_E=0.0) -> dict:
  n_opt_RG = np.exp(x_opt_RG)  # NaN where a budget has no interior minimum
  return powerlaw.allocation_laws(c_g, n_opt_RG, d_opt_RG, loss_min_RG, loss_E)


allocation = powerlaw.allocation
N_PARAMS = 2  # per budget the parabola's vertex, then a line through the vertices


def fit(points, options=None) -> dict:
  c_g, x_opt, d_opt, loss_min, coef = _minima(points)
  used = np.isfinite(x_opt[0])
  if used.sum() < 2:
    bad = [f"C={b['C']:.3g} ({b['sizes']} sizes, lowest loss at the {b['best']})"
           for b in describe_budgets(points) if not b["bracketed"]]
    raise ValueError(f"IsoFLOP needs >= 2 FLOP budgets that bracket their loss minimum; "
                     f"{int(used.sum())} of {len(c_g)} do. "
                     + (f"Not bracketed: {'; '.join(bad)}. Centre each budget's sizes on its "
                        "optimum (sweeps.design.centered_isoflop) with sizes on both sides."
                        if bad else "Add FLOP budgets."))
  loss_E, how = powerlaw.loss_floor(c_g, loss_min[0], points.floor)
  laws = {k: float(v[0]) for k, v in _laws(c_g, x_opt, d_opt, loss_min, loss_E).items()}
  params = {k: laws[k] for k in ("a", "b", "N_coef", "D_coef")}
  n_pred = params["N_coef"] * c_g[used] ** params["a"]
  return {
      "params": params,
      "derived": {k: laws[k] for k in ("loss_E", "loss_coef", "loss_exp")},
      "budgets": {"C": c_g.tolist(), "N_opt": np.exp(x_opt[0]).tolist(),
                  "D_opt": d_opt[0].tolist(), "loss_min": loss_min[0].tolist(), "parabola": coef[0].tolist(),
                  "bracketed": used.tolist()},
      "residuals": (np.log(n_pred) - x_opt[0][used]).tolist(),
      "loss_E_source": how,
      "method": ("Hoffmann et al. 2022 Approach 2: per FLOP budget (the runs within "
                 f"{BUCKET_DECADES} decades below its largest, C their geometric mean) a "
                 "least-squares parabola of loss in log N; "
                 "budgets without a bracketed minimum dropped; log-log least squares of the "
                 "minima; D_opt the tokens the budget's runs train on at N_opt (log-linear between "
                 "its sizes); loss at the optimum L = loss_E + k C^loss_exp "
                 f"(loss_E: {how})"),
  }


def bootstrap(points, options, result, weights_RN) -> dict:
  """Resamples runs; loss_E stays at the full fit's value (the profile is not refit)."""
  c_g, x_opt, d_opt, loss_min, _ = _minima(points, weights_RN)
  return _laws(c_g, x_opt, d_opt, loss_min, result["derived"].get("loss_E", 0.0))


def holdout_split(points, fraction=0.2):
  """Holds out the largest bracketed budgets, whole (at least one, leaving >= 2 to fit)."""
  c_g, x_opt, _, _, _ = _minima(points)
  good = np.flatnonzero(np.isfinite(x_opt[0]))
  n_out = max(1, int(round(fraction * len(good))))
  bucket = buckets(points.C)
  if len(good) - n_out < 2:
    return np.ones(len(points), bool), np.zeros(len(points), bool)
  held = np.isin(bucket, good[-n_out:])
  return ~held, held


def extrapolate(result, heldout) -> dict:
  """Predicts the optimal N of the held-out budgets (those with a valid parabola there)."""
  c_g, x_opt, _, _, _ = _minima(heldout)
  ok = np.isfinite(x_opt[0])
  if not ok.any():
    return {"target": "N_opt", "error": "no held-out budget has a parabola with an interior "
            "minimum (needs >= 3 distinct N per budget)"}
  pred, _, _ = allocation({**result["params"], **result["derived"]}, c_g[ok])
  rel = pred / np.exp(x_opt[0][ok]) - 1
  return {"target": "N_opt", "C": c_g[ok].tolist(), "relative_error": rel.tolist(),
          "mean_abs_relative_error": float(np.mean(np.abs(rel))),
          "max_abs_relative_error": float(np.max(np.abs(rel)))}


def _fit_budget_index(fit_obj: dict, c: float):
  """Index of the fit_obj['budgets'] entry at FLOPs c (same bucket), or None."""
  budget_c = np.asarray((fit_obj.get("budgets") or {}).get("C") or [], np.float64)
  if not budget_c.size:
    return None
  gap = np.abs(np.log10(budget_c) - np.log10(c))
  g = int(np.argmin(gap))
  return g if gap[g] <= BUCKET_DECADES else None


def _flag(values, g):
  if values is None or g is None or g >= len(values) or values[g] is None:
    return None
  return bool(values[g])


def along_budget(fit_obj, params, entry, n_G, d_G, d_of) -> dict:
  """IsoFLOP figure: the budget's fitted parabola in log N (n_G: None below 2 sizes), its
  vertex (tokens d_of(N_opt) from the budget's runs) and whether it is bracketed."""
  fitted = fit_obj.get("budgets") or {}
  g = _fit_budget_index(fit_obj, entry["C"])
  if g is None:
    return {}
  out = {}
  if n_G is not None and g < len(fitted.get("parabola") or []):
    p0, p1, p2 = (float("nan") if v is None else v for v in fitted["parabola"][g])
    if np.isfinite(p2):
      x = np.log(n_G)
      out["curve"] = (n_G, d_G, p0 + p1 * x + p2 * x ** 2)
  n_opt = (fitted.get("N_opt") or [None] * (g + 1))[g]
  l_min = (fitted.get("loss_min") or [None] * (g + 1))[g]
  ok = n_opt is not None and l_min is not None and np.isfinite(n_opt) and np.isfinite(l_min)
  if ok:
    out["vertex"] = (n_opt, float(d_of(n_opt)), l_min)
  flag = _flag(fitted.get("bracketed"), g)
  out["bracketed"] = ok if flag is None else flag and ok
  return out


def fitted_range(fit_obj: dict, points):
  """The FLOP range of the budgets whose minimum the fit found (None: not recorded)."""
  fitted = fit_obj.get("budgets") or {}
  c = np.asarray(fitted.get("C") or [], float)
  n = np.asarray([np.nan if v is None else v for v in fitted.get("N_opt") or []], float)
  if len(c) == len(n) and np.isfinite(n).sum() >= 1:
    used = c[np.isfinite(n)]
    return float(used.min()), float(used.max()), "FLOP range of the fitted budgets"
  return None


LAW = base.Law(
    name=NAME, fit=fit, bootstrap=bootstrap, extrapolate=extrapolate, allocation=allocation,
    holdout_split=holdout_split, isoflop_grid=True,
    checks=("sweeps.diagnostics:loss_floor_at_zero", "sweeps.diagnostics:parabola_misfit"),
    form=(r"$N_{opt} = N_{coef}\,C^{a},\ D_{opt} = D_{coef}\,C^{b}$",
          r"$L_{opt} = loss_{coef}\,C^{loss_{exp}}$"),
    figures=(("isoflop.png", "sweeps.plot_isoflop:isoflop_figure"),),
    fitted_range=fitted_range, optima="sweeps.plot_isoflop:budget_optima",
    residuals="sweeps.plot_residuals:per_budget_optimum", budget_curve=along_budget,
    budget_curve_label="parabola in log N per budget")
