"""Kaplan's single-variable laws are fitted to the lower envelope: one run per X."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from sweeps import fitting, points
from sweeps.laws import kaplan

E, C_C, ALPHA_C = 1.0, 1e15, 0.1
BUDGETS = np.geomspace(1e17, 1e22, 6)
# How much worse than its budget's best each run is, times a spread that narrows with C (as
# on the quickstart grid). Every run still beats the best of the budget below (gaps >= 4%), so
# ordering runs by exact C let the worse ones onto the frontier and biased alpha_C to 0.112.
EXCESS = np.array([0.03, 0.02, 0.0, 0.005, 0.01])
SPREAD = np.geomspace(3, 0.5, len(BUDGETS))


def _isoflop_points(budgets=BUDGETS):
  """5 sizes per budget; the best follows L(C) = E + (C_c / C)^alpha_C exactly. The worst run
  (the smallest model, as on a real isoFLOP grid) spends slightly less than the budget, so by
  exact C it comes first in its budget."""
  rows = []
  for g, c in enumerate(budgets):
    best = E + (C_C / c) ** ALPHA_C
    sizes = np.geomspace(1e-4, 1e-2, len(EXCESS)) * np.sqrt(c)
    for i, (n, excess) in enumerate(zip(sizes, EXCESS)):
      c_run = c * (1 - 5e-4) if excess == EXCESS.max() else c * (1 + 1e-4 * i)
      rows.append((n, c_run, best * (1 + excess * SPREAD[g]), f"b{g}s{i}"))
  frame = pd.DataFrame(rows, columns=["N", "C", "loss", "run_id"])
  return points.from_frame(frame, points.CSV_COLUMNS)


def test_c_frontier_takes_each_budgets_best_run_and_recovers_the_exponent():
  pts = _isoflop_points()
  _, select_RN = kaplan._selections(pts, np.ones((1, len(pts))))["C"]
  chosen = select_RN[0] > 0
  bucket = points.buckets(pts.C)
  assert chosen.sum() == len(BUDGETS)  # before: 18 of 30, the worst run of every budget first
  for g in range(len(BUDGETS)):
    in_budget = bucket == g
    assert chosen[in_budget].sum() == 1
    assert pts.loss[in_budget & chosen] == pts.loss[in_budget].min()
  result = fitting.fit_points(pts, "kaplan", fitting.FitOptions(bootstrap=20))
  p = result["params"]
  assert p["alpha_C"] == pytest.approx(ALPHA_C, abs=0.002)  # before: 0.112
  assert p["E_C"] == pytest.approx(E, abs=0.01)
  assert "per FLOP budget" in result["method"]
  # The held-out top budgets are predicted from the best runs below them, one per budget.
  held = result["extrapolation"]["relative_error_C"]
  assert len(held) == 2 and np.max(np.abs(held)) < 0.002


def test_bootstrap_frontier_takes_the_best_drawn_run_per_budget():
  pts = _isoflop_points()
  strata = fitting.bootstrap_strata(pts)
  assert strata is not None  # every budget is a stratum, as in fit_points
  weights_RN = fitting.run_weights(pts.run_id, 50, seed=3, strata=strata)
  _, select_RN = kaplan._selections(pts, weights_RN)["C"]
  bucket = points.buckets(pts.C)
  for w_N, s_N in zip(weights_RN, select_RN):
    for g in range(len(BUDGETS)):
      drawn = (bucket == g) & (w_N > 0)
      assert s_N[bucket == g].sum() == 1 and s_N[drawn].sum() == 1
      assert pts.loss[(s_N > 0) & (bucket == g)] == pts.loss[drawn].min()


def test_n_frontier_counts_each_size_once_by_its_lowest_loss():
  rows = [(n, c, (1e9 / n) ** 0.08 * (1 + 3e17 / c), f"n{n:.0e}c{c:.0e}")
          for n in (1e6, 1e7, 1e8) for c in (1e18, 1e19, 1e20)]
  pts = points.from_frame(pd.DataFrame(rows, columns=["N", "C", "loss", "run_id"]),
                          points.CSV_COLUMNS)
  _, select_RN = kaplan._selections(pts, np.ones((1, len(pts))))["N"]
  chosen = select_RN[0] > 0
  # Per size only its largest budget (before: every budget, each beating the one below).
  assert sorted(pts.C[chosen]) == [1e20] * 3
  assert sorted(pts.N[chosen]) == [1e6, 1e7, 1e8]


def test_a_budget_no_better_than_a_smaller_one_is_off_the_frontier():
  pts = _isoflop_points(BUDGETS[:4])
  worse = pts.C > 5e19  # the top budget: every run above the best of the one below
  pts = dataclasses.replace(pts, loss=np.where(worse, pts.loss.max() + 0.1, pts.loss))
  _, select_RN = kaplan._selections(pts, np.ones((1, len(pts))))["C"]
  assert select_RN[0].sum() == 3 and not select_RN[0][worse].any()
