"""IsoFLOP, envelope, Kaplan and frontier laws on data with a known answer."""
import numpy as np
import pandas as pd
import pytest

from sweeps import fit as fit_cli
from sweeps import fitting, points, synthetic

TRUE = synthetic.TRUE
A_TRUE = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])


@pytest.fixture(scope="module")
def design_points():
  return points.from_frame(synthetic.isoflop_design(seed=0), points.CSV_COLUMNS)


def test_isoflop_recovers_allocation_exponent(design_points):
  result = fitting.fit_points(design_points, "isoflop", fitting.FitOptions(bootstrap=50))
  assert abs(result["params"]["a"] - A_TRUE) < 0.03
  assert result["params"]["a"] + result["params"]["b"] == pytest.approx(1.0)
  lo, hi = result["intervals"]["a"]
  assert lo < result["params"]["a"] < hi and hi - lo < 0.1
  assert result["extrapolation"]["target"] == "N_opt"
  assert result["extrapolation"]["mean_abs_relative_error"] < 0.5


def test_isoflop_d_opt_is_the_tokens_the_runs_trained_on():
  """C counts every executed FLOP (here 6.6 ND, as attention adds to 6ND): D_opt is the
  tokens a budget's runs had at N_opt, C / 6.6 N_opt, not the C / 6 N_opt of the paper's
  convention (10% too many), and b is fitted, not set to 1 - a."""
  frame = synthetic.isoflop_design(seed=3)
  frame["D"] = frame.C / (6.6 * frame.N)
  frame["loss"] = synthetic.chinchilla_loss(frame.N.values, frame.D.values, TRUE) * np.exp(
      0.01 * np.random.default_rng(3).standard_normal(len(frame)))
  pts = points.from_frame(frame, points.CSV_COLUMNS)
  result = fitting.fit_points(pts, "isoflop", fitting.FitOptions(bootstrap=0))
  p, budgets = result["params"], result["budgets"]
  assert p["N_coef"] * p["D_coef"] == pytest.approx(1 / 6.6, rel=0.02)
  used = np.asarray(budgets["bracketed"])
  c, n, d = (np.asarray(budgets[k])[used] for k in ("C", "N_opt", "D_opt"))
  np.testing.assert_allclose(d, c / (6.6 * n), rtol=1e-9)
  assert abs(p["a"] - A_TRUE) < 0.03 and abs(p["b"] - (1 - A_TRUE)) < 0.03


def test_isoflop_needs_bracketed_minima(design_points):
  one_budget = design_points.subset(design_points.C == design_points.C.min())
  with pytest.raises(ValueError, match="IsoFLOP needs >= 2 FLOP budgets"):
    fitting.fit_points(one_budget, "isoflop", fitting.FitOptions())


def test_envelope_from_store_curves(tmp_path):
  frame = synthetic.isoflop_design(budgets=8, per_budget=12, seed=2)
  synthetic.write_store(str(tmp_path), frame, steps=16)
  result = fit_cli.run(store=str(tmp_path), law="envelope", out=str(tmp_path / "out"),
                       plots=False, options=fitting.FitOptions(bootstrap=20))
  assert result["n_points"] == 16 * len(frame)
  assert abs(result["params"]["a"] - A_TRUE) < 0.08
  lo, hi = result["intervals"]["a"]
  assert lo <= result["params"]["a"] <= hi
  # Whole budgets are held out (never split): the top 2 of 8 budgets reach 20% of the runs.
  assert result["extrapolation"]["n_heldout_runs"] == 2 * 12


def test_kaplan_recovers_pure_power_laws():
  rng = np.random.default_rng(0)
  n = np.geomspace(1e6, 1e10, 30)
  d = rng.permutation(np.geomspace(1e8, 1e12, 30))
  loss = (8.8e13 / n) ** 0.076 * np.exp(0.001 * rng.standard_normal(30))
  pts = points.from_frame(pd.DataFrame({"N": n, "D": d, "loss": loss}), points.CSV_COLUMNS)
  result = fitting.fit_points(pts, "kaplan", fitting.FitOptions(irreducible=False))
  assert result["params"]["alpha_N"] == pytest.approx(0.076, abs=0.003)
  assert result["params"]["N_c"] == pytest.approx(8.8e13, rel=0.5)
  assert result["params"]["E_N"] == 0


def test_kaplan_with_irreducible_term_fits_the_design(design_points):
  result = fitting.fit_points(design_points, "kaplan", fitting.FitOptions(bootstrap=5))
  p = result["params"]
  assert 0 < p["E_C"] < design_points.loss.min()
  assert p["alpha_C"] > 0 and p["alpha_N"] > 0 and p["alpha_D"] > 0
  assert np.max(np.abs(result["residuals"])) < 0.1


def test_frontier_is_a_low_loss_quantile_with_held_out_coverage():
  rng = np.random.default_rng(1)
  c = np.geomspace(1e18, 1e23, 250)
  z = np.log10(c)
  boundary = 2.0 + 1.5 / (1 + np.exp(1.2 * (z - 20)))
  loss = boundary + rng.exponential(0.2, len(c))  # every run at or above the boundary
  pts = points.from_frame(pd.DataFrame({"N": 1e9, "C": c, "loss": loss}), points.CSV_COLUMNS)
  result = fitting.fit_points(pts, "frontier", fitting.FitOptions(tau=0.9, bootstrap=5))
  assert result["coverage_in_sample"] == pytest.approx(0.9, abs=0.03)
  p = result["params"]
  assert p["k"] > 0 and p["span"] > 0  # monotone, saturating by construction
  assert p["floor"] == pytest.approx(2.0, abs=0.1)
  ex = result["extrapolation"]
  assert ex["target"] == "coverage" and ex["coverage"] == pytest.approx(0.9, abs=0.1)


def test_envelope_from_a_csv_of_curves_without_run_ids(tmp_path):
  frame = synthetic.isoflop_design(budgets=6, per_budget=6, seed=3)
  rows = [(r.N, r.D * f, r.loss * synthetic.chinchilla_loss(r.N, r.D * f)
           / synthetic.chinchilla_loss(r.N, r.D)) for r in frame.itertuples()
          for f in (0.25, 0.5, 0.75, 1.0)]
  csv = tmp_path / "curves.csv"
  pd.DataFrame(rows, columns=["N", "D", "loss"]).to_csv(csv, index=False)
  result = fit_cli.run(csv=str(csv), law="envelope", out=str(tmp_path / "out"), plots=False)
  assert result["n_runs"] == frame.N.nunique()  # rows of one model size form one curve
  assert 0.3 < result["params"]["a"] < 0.7
