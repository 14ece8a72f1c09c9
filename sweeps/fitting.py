"""One fit, end to end: point estimate, bootstrap intervals, extrapolation check, diagnostics.

Produces the JSON-ready object that fit.json holds per group (docs/ARCHITECTURE.md §3,
`fit.json`).
"""
import dataclasses
import warnings

import numpy as np

from sweeps import diagnostics, laws, points as points_lib

MIN_HELDOUT_POINTS = 3  # fewer held-out points cannot tell a miss from noise


@dataclasses.dataclass(frozen=True)
class FitOptions:
  """How to fit. e_floor, tau and irreducible are read only by the laws that name them in
  their Law.options; the others ignore them."""
  bootstrap: int = 200  # resamples of runs (with replacement); 0 = no intervals
  seed: int = 0
  holdout_fraction: float = 0.2  # share of runs (whole largest budgets) held out
  e_floor: object = None  # chinchilla: lower bound on E: a number, "auto" (the runs' floor)
  level: float = 0.95  # interval coverage
  tau: float = 0.98  # frontier quantile
  irreducible: bool = True  # kaplan: fit an irreducible loss term E_X


FITTING_LIBRARIES = ("jax", "optax", "numpy", "scipy", "pandas")


def run_weights(run_id: np.ndarray, resamples: int, seed: int, strata=None) -> np.ndarray:
  """Bootstrap weights_RN: resample runs with replacement; a point weighs its run's count.

  strata (one label per point, e.g. its FLOP budget): resample within each stratum, so every
  resample keeps the design (each budget its number of runs), as an isoFLOP grid was run."""
  runs, first, inverse = np.unique(run_id, return_index=True, return_inverse=True)
  rng = np.random.default_rng(seed)
  labels_U = np.zeros(len(runs), int) if strata is None else np.asarray(strata)[first]
  counts_RU = np.zeros((resamples, len(runs)), np.int64)
  for label in np.unique(labels_U):
    members = np.flatnonzero(labels_U == label)
    counts_RU[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)),
                                            size=resamples)
  return counts_RU[:, inverse].astype(np.float64)


def bootstrap_strata(points):
  """FLOP budgets as strata when the data is an isoFLOP grid (every budget has >= 3 runs);
  else None (plain resampling: a stratum of one run would never vary)."""
  runs, inverse, budget_U = points_lib.run_budgets(points)
  sizes = np.bincount(budget_U)
  return budget_U[inverse] if len(sizes) > 1 and sizes.min() >= 3 else None


def _intervals(samples: dict, level: float) -> dict:
  lo, hi = 50 * (1 - level), 50 * (1 + level)
  out = {}
  for key, values in samples.items():
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    out[key] = ([float(np.percentile(values, lo)), float(np.percentile(values, hi))]
                if values.size else [float("nan"), float("nan")])
  return out


def _public(result: dict) -> dict:
  return {k: v for k, v in result.items() if not k.startswith("_")}


def fit_points(points: points_lib.Points, law_name: str, options: FitOptions) -> dict:
  law = laws.get(law_name)
  result = law.fit(points, options)
  out = {"law": law_name, **_public(result), "n_points": len(points),
         "n_runs": int(len(np.unique(points.run_id))), "n_dropped": points.n_dropped,
         "dropped": [list(d) for d in points.dropped], "n_kind": points.n_kind,
         "loss_floor": points.floor, "input_hash": points.input_hash(),
         "data_range": {k: [float(getattr(points, k).min()), float(getattr(points, k).max())]
                        for k in ("N", "D", "C")}}
  if options.bootstrap > 0:
    strata = bootstrap_strata(points)
    weights_RN = run_weights(points.run_id, options.bootstrap, options.seed, strata)
    samples = law.bootstrap(points, options, result, weights_RN)
    failed = int(np.sum(~np.isfinite(np.asarray(next(iter(samples.values()))))))
    out["intervals"] = _intervals(samples, options.level)
    out["bootstrap"] = {"resamples": options.bootstrap, "failed": failed, "seed": options.seed,
                        "level": options.level,
                        "stratified_by_budget": strata is not None,
                        "samples": {k: np.asarray(v, float).tolist() for k, v in samples.items()}}
  else:
    keys = list(result["params"]) + list(result.get("derived", {}))
    out["intervals"] = {k: [float("nan"), float("nan")] for k in keys}
  out["extrapolation"] = extrapolation(points, law, options, result)
  out["diagnostics"] = diagnostics.check(out, points, law, options)
  out["quality"] = diagnostics.quality(out["diagnostics"])
  return out


def extrapolation(points, law, options, result=None) -> dict:
  """Refits without the largest FLOP budgets (whole budgets, never split) and predicts them.

  Says "not assessed" with the reason when the held-out set is too small or the refit
  cannot be made, never a silent null. A law that returns `_refit_starts` (Approach 3: the
  full fit's best distinct local minima) refits from those instead of its whole start grid:
  the same optimum (tests/sweeps/test_fit.py) at a fifth of the cost."""
  split = law.holdout_split or (lambda p, f: points_lib.holdout_split(p, f, MIN_HELDOUT_POINTS))
  kept, held = split(points, options.holdout_fraction)
  base = {"holdout_fraction": options.holdout_fraction,
          "n_heldout_runs": int(len(np.unique(points.run_id[held]))),
          "n_heldout_points": int(held.sum()),
          "heldout_C": sorted({float(f"{c:.3g}") for c in points.C[held]})}
  not_assessed = lambda why: {**base, "assessed": False, "reason": why}
  if not held.any():
    return not_assessed("holding out the largest budget(s) would leave too little to fit "
                        f"({int(len(np.unique(points.run_id)))} runs)")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      hints = {"starts": result["_refit_starts"]} if result and "_refit_starts" in result else {}
      train = law.fit(points.subset(kept), options, **hints)
  except ValueError as err:  # too few runs left to fit: report why instead of failing
    return not_assessed(f"the refit without the held-out runs failed: {err}")
  result = law.extrapolate(train, points.subset(held))
  if "error" in result:
    return not_assessed(result.pop("error"))
  return {**base, "assessed": True, **result}
