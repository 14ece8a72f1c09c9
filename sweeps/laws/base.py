"""The scaling-law protocol: everything sweeps.fit, sweeps.fitting, sweeps.plot and
sweeps.allocation need to know about a law, so that none of them names one.

A law is a `Law` registered once (`sweeps.laws.register`). Only `name`, `fit`, `bootstrap`
and `extrapolate` are required; every other field has a default that means "not applicable".

Plot hooks may be given as "module:attribute" strings, imported on first use (`resolve`):
they live in the matplotlib modules, which a fit without plots must not import.
"""
import dataclasses
import importlib
from typing import Callable, Optional

RUNS = "runs"  # one row per run: its final loss
CURVES = "curves"  # every logged step of every run (points sharing run_id are one curve)


@dataclasses.dataclass(frozen=True)
class Law:
  name: str
  # (points, options, **hints) -> {params, derived, residuals, method, ...}; keys starting
  # with "_" are private state for bootstrap/refits, not written to fit.json. The hint
  # `starts` is passed back only to a law whose result returned `_refit_starts`.
  fit: Callable
  # (points, options, result, weights_RN) -> {name: values_R} for params and derived
  bootstrap: Callable
  # (result, heldout_points) -> errors dict ({"error": why} when it cannot be assessed)
  extrapolate: Callable
  # (params, c) -> (N_opt, D_opt, loss at the optimum): set for laws that prescribe an
  # allocation (sweeps.allocation, sweeps.prescribe, the allocation figure)
  allocation: Optional[Callable] = None
  # (params, N, D) -> loss: set for laws of L(N, D) (sweeps.verify compares a trained
  # run against it; their fit residuals are then log-loss residuals per run)
  loss_at: Optional[Callable] = None
  rows: str = RUNS  # RUNS or CURVES: the table sweeps.fit builds points from
  # (points, fraction) -> (kept_N, held_N): the extrapolation check's split (None: the
  # largest whole budgets, sweeps.points.holdout_split)
  holdout_split: Optional[Callable] = None
  options: tuple = ()  # the FitOptions fields the law reads (documentation and --help)
  n_params: int = 0  # free parameters, for the few-points-per-parameter check (0: none)
  isoflop_grid: bool = False  # reads its data as isoFLOP budgets: their bracketing matters
  # hooks (fit, points) -> [diagnostic]: the law's own checks (sweeps.diagnostics runs the
  # generic ones: budget design, allocation exponent, points per parameter, extrapolation,
  # intervals, dropped rows)
  checks: tuple = ()
  # Figures and their text (sweeps.plot): written loss_vs_compute, *figures, allocation (if
  # allocating), residuals.
  form: tuple = ()  # the law's form, LaTeX lines, on every figure
  figures: tuple = ()  # (file name, hook(fit_obj, points) -> figure) of law-specific figures
  # hook(fit_obj, c) -> (value_M, lo_M, hi_M, label) drawn on loss_vs_compute (None: the
  # compute-optimal loss for allocating laws, else nothing)
  loss_curve: Optional[Callable] = None
  asymptote: tuple = ("loss_E", "irreducible loss")  # (param key, label) of a floor line
  # hook(fit_obj, points) -> (C_lo, C_hi, label) | None: the FLOP range the law saw
  fitted_range: Optional[Callable] = None
  # hook(fit_obj, points) -> {"C", "N", "D" (or None), "loss" (or None), "label", "big"}:
  # measured optima drawn on the allocation figure (and, with loss, on loss_vs_compute)
  optima: Optional[Callable] = None
  # hook(ax, fit_obj, points, residuals, style) -> y label: draws the residuals (None, or
  # drawing nothing: by index, as fit.json lists them)
  residuals: Optional[Callable] = None
  # hook(fit_obj, points, n_G, d_G, budget_index) -> (loss_G, vertex or None, bracketed) |
  # None: the law's curve along one FLOP budget's runs on the IsoFLOP figure
  budget_curve: Optional[Callable] = None
  budget_curve_label: str = "fit"

  @property
  def allocates(self) -> bool:
    return self.allocation is not None

  def __post_init__(self):
    if self.rows not in (RUNS, CURVES):
      raise ValueError(f"law {self.name!r}: rows must be {RUNS!r} or {CURVES!r}")


def resolve(hook):
  """The callable a hook names ("module:attribute" is imported now); None stays None."""
  if not isinstance(hook, str):
    return hook
  module, _, attribute = hook.partition(":")
  return getattr(importlib.import_module(module), attribute)
