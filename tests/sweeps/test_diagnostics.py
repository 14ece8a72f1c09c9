"""Fit diagnostics: every fit says when it cannot be trusted (issue: scaling science)."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sweeps import fit as fit_cli
from sweeps import diagnostics, fitting, points, synthetic

TRUE = synthetic.TRUE


def _codes(result, level=None):
  return [d["code"] for d in result["diagnostics"] if level is None or d["level"] == level]


def _shifted_design(shift_decades, budgets=4, per_budget=6, seed=0, noise=0.005):
  """An isoFLOP design whose sizes all sit shift_decades away from each budget's optimum."""
  rng = np.random.default_rng(seed)
  p = TRUE
  total = p["alpha"] + p["beta"]
  g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / total)
  rows = []
  for c in np.geomspace(1e18, 1e21, budgets):
    n_opt = g * (c / 6) ** (p["beta"] / total)
    for n in n_opt * np.logspace(shift_decades, shift_decades + 1.0, per_budget):
      rows.append((n, c / (6 * n), c))
  n, d, c = map(np.array, zip(*rows))
  loss = synthetic.chinchilla_loss(n, d) * np.exp(noise * rng.standard_normal(len(n)))
  return pd.DataFrame({"N": n, "D": d, "C": c, "loss": loss,
                       "run_id": [f"r{i}" for i in range(len(n))]})


def _partly_unbracketed(seed=1):
  frame = synthetic.isoflop_design(budgets=4, per_budget=8, seed=seed)
  top = frame["C"].max()
  n_top = frame.loc[frame["C"] == top, "N"]
  return frame[~((frame["C"] == top) & (frame["N"] < np.median(n_top) * 1.3))]


@pytest.fixture(scope="module")
def good_fit():
  pts = points.from_frame(synthetic.isoflop_design(budgets=5, per_budget=8, seed=3),
                          points.CSV_COLUMNS)
  return fitting.fit_points(pts, "chinchilla", fitting.FitOptions(bootstrap=24))


def test_a_well_designed_sweep_is_ok(good_fit):
  assert good_fit["quality"] == "ok", good_fit["diagnostics"]
  assert good_fit["extrapolation"]["assessed"]


def test_smallest_model_winning_every_budget_is_degenerate_and_names_each_budget():
  frame = _shifted_design(0.3)  # every size at least 2x above the optimum
  pts = points.from_frame(frame, points.CSV_COLUMNS)
  result = fitting.fit_points(pts, "chinchilla", fitting.FitOptions(bootstrap=0))
  assert result["quality"] == "degenerate"
  assert "no_bracketed_budget" in _codes(result, "degenerate")
  named = [d for d in result["diagnostics"] if d["code"] == "unbracketed_budget"]
  assert len(named) == 4
  for d, c in zip(named, sorted(set(frame["C"]))):
    assert d["C"] == pytest.approx(c, rel=1e-6) and "smallest" in d["message"]
  # The isoFLOP law refuses it outright, naming the budgets.
  with pytest.raises(ValueError, match=r"Not bracketed: C=1e\+18.*smallest"):
    fitting.fit_points(pts, "isoflop", fitting.FitOptions(bootstrap=0))


def test_a_partly_unbracketed_design_warns_and_drops_the_named_budget():
  frame = _partly_unbracketed()
  top = frame["C"].max()
  pts = points.from_frame(frame, points.CSV_COLUMNS)
  result = fitting.fit_points(pts, "isoflop", fitting.FitOptions(bootstrap=20))
  flagged = [d for d in result["diagnostics"] if d["code"] == "unbracketed_budget"]
  assert [d["C"] for d in flagged] == [pytest.approx(top)]
  assert "dropped" in flagged[0]["message"]
  assert result["budgets"]["bracketed"] == [True, True, True, False]
  assert result["quality"] == "warn"


def test_five_rows_are_refused():
  frame = synthetic.isoflop_design(budgets=1, per_budget=5, seed=0)
  pts = points.from_frame(frame, points.CSV_COLUMNS)
  with pytest.raises(ValueError, match="needs >= 10 points"):
    fitting.fit_points(pts, "chinchilla", fitting.FitOptions(bootstrap=0))


@pytest.mark.parametrize("budgets,per_budget,fraction", [(3, 5, 0.2), (4, 7, 0.1), (6, 3, 0.5),
                                                          (10, 24, 0.2), (2, 9, 0.3)])
def test_holdout_never_splits_a_budget(budgets, per_budget, fraction):
  frame = synthetic.isoflop_design(budgets=budgets, per_budget=per_budget, seed=budgets)
  # Budgets as a sweep realises them: each run's C is off its budget by step rounding.
  rng = np.random.default_rng(0)
  frame["C"] = frame["C"] * (1 + 0.004 * rng.standard_normal(len(frame)))
  pts = points.from_frame(frame, points.CSV_COLUMNS)
  kept, held = points.holdout_split(pts, fraction, min_points=3)
  budget = points.buckets(pts.C)
  for g in np.unique(budget):
    assert held[budget == g].all() or not held[budget == g].any()
  if held.any():
    assert pts.C[held].min() > pts.C[kept].max()  # the largest budgets, whole
    assert held.sum() >= 3


def test_isoflop_holds_out_whole_bracketed_budgets():
  pts = points.from_frame(synthetic.isoflop_design(budgets=5, per_budget=8, seed=2),
                          points.CSV_COLUMNS)
  result = fitting.fit_points(pts, "isoflop", fitting.FitOptions(bootstrap=0))
  ex = result["extrapolation"]
  assert ex["assessed"] and ex["n_heldout_runs"] == 8 and len(ex["C"]) == 1


def test_too_small_a_holdout_says_not_assessed():
  # Two budgets: holding one out leaves one, and the isoFLOP refit needs two.
  pts = points.from_frame(synthetic.isoflop_design(budgets=2, per_budget=8, seed=2),
                          points.CSV_COLUMNS)
  result = fitting.fit_points(pts, "isoflop", fitting.FitOptions(bootstrap=0))
  ex = result["extrapolation"]
  assert ex["assessed"] is False and ex["reason"]
  assert "extrapolation_not_assessed" in _codes(result, "warn")
  assert result["quality"] != "ok"


def test_E_below_a_known_floor_is_degenerate_and_the_floor_bound_fixes_it():
  frame = synthetic.isoflop_design(budgets=5, per_budget=8, seed=4)
  frame["data_min_loss"] = TRUE["E"] + 0.15  # a floor above what the law's E would give
  pts = points.from_frame(frame, points.CSV_COLUMNS)
  assert pts.floor == pytest.approx(TRUE["E"] + 0.15)
  free = fitting.fit_points(pts, "chinchilla", fitting.FitOptions(bootstrap=0))
  assert free["params"]["E"] < pts.floor
  assert any(d["code"] == "E_below_floor" and d["level"] == "degenerate"
             for d in free["diagnostics"])
  bounded = fitting.fit_points(pts, "chinchilla", fitting.FitOptions(bootstrap=8,
                                                                     e_floor="auto"))
  assert bounded["params"]["E"] >= pts.floor
  assert "E_below_floor" not in _codes(bounded)
  assert bounded["e_floor"] == pytest.approx(pts.floor)
  assert min(bounded["bootstrap"]["samples"]["E"]) >= pts.floor


def test_implausible_exponents_are_degenerate():
  # Loss that depends on N alone through a steep cliff: Approach 3 cannot identify beta.
  rng = np.random.default_rng(0)
  n = np.geomspace(1e6, 1e9, 30)
  d = rng.permutation(np.geomspace(1e8, 1e11, 30))
  loss = 2.0 + 1e40 / n ** 6 + 0.001 * rng.standard_normal(30)
  frame = pd.DataFrame({"N": n, "D": d, "loss": loss})
  result = fitting.fit_points(points.from_frame(frame, points.CSV_COLUMNS), "chinchilla",
                              fitting.FitOptions(bootstrap=0))
  assert result["quality"] == "degenerate"
  assert "exponent_out_of_range" in _codes(result, "degenerate")


def test_cli_prints_quality_and_strict_exits_nonzero(tmp_path):
  csv = tmp_path / "runs.csv"
  _partly_unbracketed().to_csv(csv, index=False)
  cmd = [sys.executable, "-m", "sweeps.fit", f"--csv={csv}", "--law=isoflop", "--bootstrap=20",
         f"--out={tmp_path / 'out'}", "--plots=false"]
  proc = subprocess.run(cmd + ["--strict"], capture_output=True, text=True)
  assert proc.returncode == 3, proc.stderr
  assert "QUALITY: WARN" in proc.stdout and "unbracketed_budget" in proc.stdout
  fit = json.loads((tmp_path / "out" / "fit.json").read_text())
  assert fit["quality"] == "warn" and fit["diagnostics"]
  assert str(tmp_path / "out" / "fit.json") in proc.stdout  # names what it wrote
  assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0


def test_isoflop_loss_without_a_floor_is_said():
  profiled = {"loss_E_source": "profiled over [0, min loss)"}
  (note,) = diagnostics.loss_floor_at_zero({**profiled, "derived": {"loss_E": 0.0}}, None)
  assert note["level"] == "info" and "falls forever" in note["message"]
  assert not diagnostics.loss_floor_at_zero({**profiled, "derived": {"loss_E": 1.2}}, None)
  known = {"loss_E_source": "known floor of the data", "derived": {"loss_E": 0.0}}
  assert not diagnostics.loss_floor_at_zero(known, None)


def test_a_budget_its_parabola_misses_is_named_with_the_exponent_without_it():
  frame = synthetic.isoflop_design(budgets=5, per_budget=8, seed=3)
  clean = fitting.fit_points(points.from_frame(frame, points.CSV_COLUMNS), "isoflop",
                             fitting.FitOptions(bootstrap=20))
  assert "parabola_misfit" not in _codes(clean)
  # The smallest budget's profile, steeper at both ends than a parabola in log N.
  small = frame.C == frame.C.min()
  x = np.log(frame.N[small])
  frame.loc[small, "loss"] += 0.3 * ((x - x.mean()) / (x.max() - x.mean())) ** 6
  result = fitting.fit_points(points.from_frame(frame, points.CSV_COLUMNS), "isoflop",
                              fitting.FitOptions(bootstrap=20))
  (note,) = [d for d in result["diagnostics"] if d["code"] == "parabola_misfit"]
  assert note["C"] == pytest.approx(frame.C.min(), rel=1e-6)
  assert note["level"] in ("info", "warn") and "Without it a = " in note["message"]


def test_a_spread_of_flops_per_nd_is_said_with_its_bound():
  frame = synthetic.isoflop_design(budgets=3, per_budget=4, seed=0)
  pts = points.from_frame(frame, points.CSV_COLUMNS)
  fit = {"derived": {"flops_per_nd": 6.0, "a": 0.5}}
  assert diagnostics.flops_per_nd_spread(fit, pts) == []  # C = 6ND exactly
  # Attention's share shrinking with N: k from 9 at the smallest model to 7 at the largest.
  log_n = np.log(frame.N)
  frame["C"] = frame.N * frame.D * (9 - 2 * (log_n - log_n.min()) / np.ptp(log_n))
  (note,) = diagnostics.flops_per_nd_spread(
      {"derived": {"flops_per_nd": 8.0, "a": 0.5}}, points.from_frame(frame, points.CSV_COLUMNS))
  assert note["level"] == "info" and "7..9 over the runs (falling with N)" in note["message"]
  assert f"up to {((8 / 7) ** 0.5 - 1) * 100:.0f}%" in note["message"]
