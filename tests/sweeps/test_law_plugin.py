"""A scaling law is a plug-in: a law defined here, registered with one line, is fitted by
sweeps.fit (run() and the CLI), written to fit.json and plotted, with no other edit."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from sweeps import fit as fit_cli
from sweeps import allocation, fitting, laws, synthetic
from tests.helpers import REPO


def _fit_power(c_N, loss_N, weights_RN):
  """Weighted least squares of log L = log A - a log C, per resample: (A_R, a_R)."""
  x_N, y_N = np.log(c_N), np.log(loss_N)
  w = np.asarray(weights_RN, float)
  mx = (w * x_N).sum(-1) / w.sum(-1)
  my = (w * y_N).sum(-1) / w.sum(-1)
  slope = (w * (x_N - mx[:, None]) * (y_N - my[:, None])).sum(-1) / \
      (w * (x_N - mx[:, None]) ** 2).sum(-1)
  return np.exp(my - slope * mx), -slope


def _fit(points, options=None):
  amp, a = (float(v[0]) for v in _fit_power(points.C, points.loss, np.ones((1, len(points)))))
  pred = amp * points.C ** -a
  return {"params": {"A": amp, "a_C": a}, "derived": {},
          "residuals": (np.log(pred) - np.log(points.loss)).tolist(),
          "method": "toy: log-log least squares of L = A C^-a"}


def _bootstrap(points, options, result, weights_RN):
  amp, a = _fit_power(points.C, points.loss, weights_RN)
  return {"A": amp, "a_C": a}


def _extrapolate(result, heldout):
  p = result["params"]
  rel = p["A"] * heldout.C ** -p["a_C"] / heldout.loss - 1
  return {"target": "loss", "mean_abs_relative_error": float(np.mean(np.abs(rel)))}


TOY = laws.Law(name="toy_power", fit=_fit, bootstrap=_bootstrap, extrapolate=_extrapolate,
               form=(r"$L(C) = A\,C^{-a}$",))


@pytest.fixture
def store(tmp_path):
  design = synthetic.isoflop_design(budgets=4, per_budget=6, seed=0)
  synthetic.write_store(str(tmp_path / "store"), design, steps=3)
  return str(tmp_path / "store")


@pytest.fixture
def registered():
  def register(law):
    laws.register(law)  # the one registration line a new law needs
    added.append(law.name)
  added = []
  yield register
  for name in added:
    laws.unregister(name)


def test_a_registered_law_is_fitted_written_and_plotted(tmp_path, store, registered):
  registered(TOY)
  out = tmp_path / "out"
  result = fit_cli.run(store=store, law="toy_power", out=str(out),
                       options=fitting.FitOptions(bootstrap=20))
  written = json.loads((out / "fit.json").read_text())
  assert written["law"] == "toy_power" and written["n_points"] == 24
  assert set(written["params"]) == {"A", "a_C"} and 0 < written["params"]["a_C"] < 1
  lo, hi = written["intervals"]["a_C"]
  assert lo <= written["params"]["a_C"] <= hi
  assert written["extrapolation"]["assessed"] and written["quality"] in ("ok", "warn")
  names = [p.rsplit("/", 1)[-1] for p in result["files"]]
  assert names == ["fit.json", "loss_vs_compute.png", "residuals.png"]  # it does not allocate
  for name in names[1:]:
    assert (out / name).stat().st_size > 10_000


def _toy_allocation(params, c):
  """N_opt = D_opt = sqrt(C / 6), at the toy's loss."""
  n = np.sqrt(np.asarray(c, float) / 6)
  return n, n, params["A"] * np.asarray(c, float) ** -params["a_C"]


def test_an_allocating_law_gets_the_allocation_figure_and_prescribes(tmp_path, store,
                                                                    registered):
  registered(dataclasses.replace(TOY, name="toy_alloc", allocation=_toy_allocation))
  result = fit_cli.run(store=store, law="toy_alloc", out=str(tmp_path / "out"),
                       options=fitting.FitOptions(bootstrap=5))
  assert [p.rsplit("/", 1)[-1] for p in result["files"]] == [
      "fit.json", "loss_vs_compute.png", "allocation.png", "residuals.png"]
  n_opt, lo, hi = allocation.allocate(result, 6e20)["N_opt"]
  assert n_opt[0] == pytest.approx(1e10) and "toy_alloc" in laws.allocating()


def test_a_law_of_loss_curves_gets_every_logged_step(tmp_path, store, registered):
  registered(dataclasses.replace(TOY, name="toy_curves", rows=laws.CURVES))
  result = fit_cli.run(store=store, law="toy_curves", out=str(tmp_path / "out"),
                       options=fitting.FitOptions(bootstrap=0), plots=False)
  assert result["n_points"] == 24 * 3 and result["n_runs"] == 24


def test_the_cli_accepts_a_law_registered_before_it_parses(tmp_path, store):
  script = ("import sys; from absl import app; from sweeps import fit, laws; "
            "from tests.sweeps.test_law_plugin import TOY; laws.register(TOY); "
            "app.run(fit.main)")
  proc = subprocess.run([sys.executable, "-c", script, f"--store={store}", "--law=toy_power",
                         "--bootstrap=0", "--tau=0.9", f"--out={tmp_path / 'out'}"], cwd=REPO,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.startswith("toy_power fit: 24 points") and "a_C" in proc.stdout
  # A flag of another law's option is ignored, and the CLI says so (Law.options).
  assert "--tau is ignored: the toy_power law does not read it (laws that do: frontier)" \
      in proc.stderr
  assert json.loads((tmp_path / "out" / "fit.json").read_text())["law"] == "toy_power"
