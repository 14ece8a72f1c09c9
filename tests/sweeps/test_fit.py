"""Scaling-law fits: recovery of a known law, invariance, bad input, CLI and fit.json."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sweeps import fit as fit_cli
from sweeps import fitting, points, synthetic
from sweeps.laws import chinchilla

TRUE = synthetic.TRUE


@pytest.fixture(scope="module")
def design():
  return synthetic.isoflop_design(seed=0)  # 240 points, 1% noise


@pytest.fixture(scope="module")
def chinchilla_fit(design):
  pts = points.from_frame(design, points.CSV_COLUMNS)
  # 9 resamples x 4 warm starts = 36 problems: the wide lane program the grid already
  # compiled (<= 32 problems would compile a narrow one).
  return fitting.fit_points(pts, "chinchilla", fitting.FitOptions(bootstrap=9, seed=1))


def test_chinchilla_recovers_known_law(chinchilla_fit):
  p = chinchilla_fit["params"]
  assert abs(p["alpha"] - TRUE["alpha"]) < 0.02
  assert abs(p["beta"] - TRUE["beta"]) < 0.02
  assert abs(p["E"] - TRUE["E"]) < 0.03
  d = chinchilla_fit["derived"]
  assert d["a"] == pytest.approx(p["beta"] / (p["alpha"] + p["beta"]))
  assert d["a"] + d["b"] == pytest.approx(1.0)
  assert chinchilla_fit["n_points"] == 240 and chinchilla_fit["n_dropped"] == 0


def test_chinchilla_objective_is_the_best_of_the_grid(chinchilla_fit, design):
  # Nudging the optimum in any direction must not lower the Huber objective.
  pts = points.from_frame(design, points.CSV_COLUMNS)
  data = tuple(np.log(x) for x in (pts.N, pts.D, pts.loss)) + (np.zeros(len(pts)),)
  p = chinchilla_fit["params"]
  theta = np.log([p["A"], p["B"], p["E"]]).tolist() + [p["alpha"], p["beta"]]
  best = float(chinchilla.objective(np.array(theta), data, np.ones(len(pts))))
  assert best == pytest.approx(chinchilla_fit["objective"], rel=1e-6)
  for i in range(5):
    for step in (-1e-3, 1e-3):
      nudged = np.array(theta)
      nudged[i] += step
      assert float(chinchilla.objective(nudged, data, np.ones(len(pts)))) >= best * (1 - 1e-9)


def test_chinchilla_allocation_spends_the_flops_the_runs_count(chinchilla_fit):
  """C = k N D with k read off the runs: 6 for the 6ND design; at k = 6.6 (C counting
  attention too) the allocation buys N D = C / 6.6, not the C / 6 that overspends 10%."""
  assert chinchilla_fit["derived"]["flops_per_nd"] == pytest.approx(6.0)
  frame = synthetic.isoflop_design(budgets=3, per_budget=4, seed=0)
  frame["C"] = 6.6 * frame.N * frame.D
  assert chinchilla.flops_per_nd(points.from_frame(frame, points.CSV_COLUMNS)) == \
      pytest.approx(6.6)
  params = {**chinchilla_fit["params"], **chinchilla_fit["derived"], "flops_per_nd": 6.6}
  c = np.array([1e20, 1e22])
  n, d, _ = chinchilla.allocation(params, c)
  np.testing.assert_allclose(n * d, c / 6.6, rtol=1e-12)
  n6, _, _ = chinchilla.allocation({k: v for k, v in params.items() if k != "flops_per_nd"}, c)
  np.testing.assert_allclose(n6 / n, (6.6 / 6) ** params["a"], rtol=1e-12)


def test_bootstrap_intervals_and_extrapolation(chinchilla_fit):
  intervals = chinchilla_fit["intervals"]
  assert set(intervals) == {"E", "A", "B", "alpha", "beta", "a", "b", "G", "flops_per_nd"}
  for key, (lo, hi) in intervals.items():
    value = {**chinchilla_fit["params"], **chinchilla_fit["derived"]}[key]
    assert lo <= hi and np.isfinite(lo) and np.isfinite(hi), key
    assert lo <= value * 1.5 and hi >= value / 1.5, key
  assert chinchilla_fit["bootstrap"]["resamples"] == 9
  ex = chinchilla_fit["extrapolation"]
  assert ex["n_heldout_runs"] == 48  # top 20% of 240 runs by compute
  assert len(ex["relative_error"]) == 48
  assert ex["mean_abs_relative_error"] < 0.03  # 1% noise, exact functional form


def test_shuffled_rows_give_identical_points(chinchilla_fit, design):
  # Rows are sorted canonically before fitting, so a shuffled table is the same problem.
  shuffled = design.sample(frac=1.0, random_state=3).reset_index(drop=True)
  pts = points.from_frame(shuffled, points.CSV_COLUMNS)
  ref = points.from_frame(design, points.CSV_COLUMNS)
  for name in ("N", "D", "C", "loss", "run_id"):
    np.testing.assert_array_equal(getattr(pts, name), getattr(ref, name))
  assert pts.input_hash() == chinchilla_fit["input_hash"]


def test_optimizer_is_deterministic_and_independent_of_lane_order(design):
  # Lanes are refilled as problems finish, so each start must come out the same whichever
  # lane (and alongside whichever other starts) it ran.
  from sweeps import lbfgs
  pts = points.from_frame(design, points.CSV_COLUMNS)
  starts = chinchilla.start_grid()[::150]  # 30 starts from across the grid
  data = tuple(np.log(x) for x in (pts.N, pts.D, pts.loss)) + (np.zeros(len(pts)),)
  weights = np.ones((1, len(pts)))
  solve = lambda s: lbfgs.minimize(chinchilla.objective, s[None], data, weights, max_iter=30)
  theta, value, _ = solve(starts)
  perm = np.random.default_rng(0).permutation(len(starts))
  theta_p, value_p, _ = solve(starts[perm])
  np.testing.assert_array_equal(theta_p[0], theta[0][perm])
  np.testing.assert_array_equal(value_p[0], value[0][perm])


def test_bootstrap_weights_resample_runs_deterministically():
  run_id = np.array(["a", "a", "b", "c"])  # run "a" logged two points
  w1 = fitting.run_weights(run_id, 50, seed=4)
  np.testing.assert_array_equal(w1, fitting.run_weights(run_id, 50, seed=4))
  assert (w1[:, 0] == w1[:, 1]).all()  # a run's points are drawn together
  np.testing.assert_array_equal(w1[:, 1:].sum(1), 3)  # 3 runs drawn per resample


def test_bad_rows_are_dropped_with_counts(design):
  frame = design.head(20).copy()
  frame.loc[0, "loss"] = np.nan
  frame.loc[1, "N"] = -5
  frame.loc[2, "D"] = 0
  with pytest.warns(UserWarning, match=r"dropped 3 of 20 rows.*1 with N <= 0"):
    pts = points.from_frame(frame, points.CSV_COLUMNS)
  assert len(pts) == 17 and pts.n_dropped == 3


def test_too_few_points_and_missing_columns_are_clear_errors(design):
  with pytest.raises(ValueError, match="only 4 usable row"):
    points.from_frame(design.head(4), points.CSV_COLUMNS)
  with pytest.raises(ValueError, match=r"missing column.*--columns"):
    points.from_frame(design.drop(columns=["loss"]), points.CSV_COLUMNS)
  with pytest.raises(ValueError, match="D or C"):
    points.from_frame(design.drop(columns=["D", "C"]), points.CSV_COLUMNS)


def test_flops_column_gives_tokens(design):
  renamed = design.drop(columns=["D"]).rename(columns={"N": "Model Size", "C": "Training FLOP"})
  mapping = {**points.CSV_COLUMNS,
             **points.parse_columns("N:Model Size,C:Training FLOP,loss:loss")}
  pts = points.from_frame(renamed, mapping)
  ref = points.from_frame(design, points.CSV_COLUMNS)
  np.testing.assert_allclose(pts.D, ref.D, rtol=1e-12)


def test_where_filters():
  frame = pd.DataFrame({"attention.kind": ["dense", "linear", "dense"], "x": [1, 2, 3]})
  assert len(points.apply_where(frame, ["attention.kind=dense"])) == 2
  assert points.apply_where(frame, ["x>=2", "attention.kind!=linear"])["x"].tolist() == [3]
  with pytest.raises(ValueError, match="unknown column"):
    points.apply_where(frame, ["nope=1"])


def test_cli_reports_bad_input_without_traceback(tmp_path):
  csv = tmp_path / "runs.csv"
  pd.DataFrame({"Model Size": [1e8] * 6, "loss": [3.0] * 6}).to_csv(csv, index=False)
  proc = subprocess.run([sys.executable, "-m", "sweeps.fit", f"--csv={csv}",
                         f"--out={tmp_path / 'out'}"], capture_output=True, text=True)
  assert proc.returncode == 2
  assert "missing column" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "out" / "fit.json").exists()


def test_fit_run_on_store_writes_fit_json(tmp_path, design):
  synthetic.write_store(str(tmp_path / "store"), design.iloc[::4], steps=2)
  result = fit_cli.run(store=str(tmp_path / "store"), out=str(tmp_path / "out"),
                       law="isoflop", group_by="attention.kind", plots=False,
                       options=fitting.FitOptions(bootstrap=0))
  written = json.loads((tmp_path / "out" / "fit.json").read_text())
  assert written["groups"].keys() == {"dense"}
  group = written["groups"]["dense"]
  for key in ("law", "params", "intervals", "n_points", "n_dropped", "extrapolation",
              "residuals", "method", "input_hash"):
    assert key in group, key
  assert group["n_points"] == 60 and group["n_kind"] == "params"
  assert written["versions"]["jax"] and result["group_by"] == "attention.kind"
  assert "dense" in fit_cli.format_table(result)
  assert group["intervals"]["a"] == [None, None]  # no bootstrap: strict JSON nulls, not NaN


def test_a_group_with_too_few_runs_is_named_not_fitted_and_the_others_fit(tmp_path, design):
  store, out = str(tmp_path / "store"), str(tmp_path / "out")
  synthetic.write_store(store, design.iloc[:30], steps=1)
  synthetic.write_store(store, design.iloc[30:33].assign(
      run_id=["x0", "x1", "x2"]), steps=1, extra_config={"attention.kind": "linear"})
  result = fit_cli.run(store=store, out=out, law="isoflop", group_by="attention.kind",
                       plots=False)
  assert list(result["groups"]) == ["dense"] and result["quality"] != "ok"
  assert result["failed"]["linear"]["n_runs"] == 3
  assert "only 3 usable row" in result["failed"]["linear"]["reason"]
  assert "[attention.kind=linear]: NOT FITTED (3 runs): only 3 usable row" in \
      fit_cli.format_diagnostics(result)
  with pytest.raises(ValueError, match=r"no attention.kind group could be fitted: linear: "
                     r"only 3 usable row"):
    fit_cli.run(store=store, out=str(tmp_path / "none"), law="isoflop",
                group_by="attention.kind", where=["attention.kind=linear"], plots=False)
  assert not (tmp_path / "none" / "fit.json").exists()


def test_extrapolation_refit_from_the_fits_local_minima_equals_a_full_grid_refit():
  pts = points.from_frame(synthetic.isoflop_design(budgets=4, per_budget=6, seed=3),
                          points.CSV_COLUMNS)
  full_fit = chinchilla.fit(pts)
  kept, _ = points.holdout_split(pts, 0.2)
  sub = pts.subset(kept)
  grid = chinchilla.fit(sub)
  warm = chinchilla.fit(sub, starts=full_fit["_refit_starts"])
  assert warm["objective"] == pytest.approx(grid["objective"], rel=1e-6)
  for key in ("E", "alpha", "beta"):
    assert warm["params"][key] == pytest.approx(grid["params"][key], rel=1e-4), key
