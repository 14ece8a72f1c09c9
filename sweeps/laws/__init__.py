"""Scaling laws. Each module has NAME and:

  fit(points, options) -> dict with params, derived, objective, residuals, method
      (keys starting with "_" are private state for bootstrap, not written to fit.json)
  bootstrap(points, options, result, weights_RN) -> {name: values_R} for params and derived
  extrapolate(result, heldout_points) -> dict of errors on held-out runs
"""
from sweeps.laws import chinchilla, envelope, frontier, isoflop, kaplan

LAWS = {law.NAME: law for law in (chinchilla, isoflop, envelope, kaplan, frontier)}


def get(name: str):
  if name not in LAWS:
    raise ValueError(f"unknown law {name!r}; choose one of {', '.join(LAWS)}")
  return LAWS[name]
