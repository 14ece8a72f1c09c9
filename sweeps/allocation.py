"""Compute-optimal allocation from a fit.json group: N_opt(C), D_opt(C), loss, with intervals.

Intervals come from re-evaluating the law with every bootstrap sample's parameters, so they
hold at budgets the fit never saw (not just for the fitted parameters themselves).
"""
import numpy as np

from sweeps import laws


def law_module(fit_obj: dict) -> laws.Law:
  """The fit's law, which must allocate (Law.allocation: N_opt(C), D_opt(C))."""
  law = laws.get(fit_obj["law"])
  if not law.allocates:
    raise ValueError(f"a {law.name!r} fit does not prescribe N_opt/D_opt; fit with "
                     f"--law={'|'.join(laws.allocating())}")
  return law


def allocate(fit_obj: dict, c) -> dict:
  """{'N_opt'|'D_opt'|'tokens_per_param'|'loss': (value_M, lo_M, hi_M)} at FLOP budgets c
  (lo/hi are NaN without a bootstrap)."""
  law = law_module(fit_obj)
  c_M = np.atleast_1d(np.asarray(c, np.float64))
  with_ratio = lambda n, d, loss: (n, d, d / n, loss)
  point = with_ratio(*law.allocation({**fit_obj["params"], **fit_obj.get("derived", {})}, c_M))
  samples = fit_obj.get("bootstrap", {}).get("samples")
  level = fit_obj.get("bootstrap", {}).get("level", 0.95)
  if samples:
    # Failed resamples are null in fit.json; float conversion turns them back into NaN.
    params = {k: np.asarray(v, np.float64)[:, None] for k, v in samples.items()}
    with np.errstate(all="ignore"):
      draws = with_ratio(*law.allocation(params, c_M[None]))
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    bands = [(np.nanpercentile(d, lo, axis=0), np.nanpercentile(d, hi, axis=0)) for d in draws]
  else:
    bands = [(np.full_like(c_M, np.nan), np.full_like(c_M, np.nan))] * 4
  return {key: (np.asarray(v, np.float64), b[0], b[1])
          for key, v, b in zip(("N_opt", "D_opt", "tokens_per_param", "loss"), point, bands)}
