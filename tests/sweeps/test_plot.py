"""Fit plots: every file written, and the pieces a reader relies on (actual N and D on the
IsoFLOP axes, one legend entry per budget, vertices, bracketing, data range, units)."""
import dataclasses
import math
import struct

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from sweeps import fitting, plot, points as points_lib, synthetic  # noqa: E402
from sweeps.laws import chinchilla, isoflop  # noqa: E402


@pytest.fixture(scope="module")
def pts():
  frame = synthetic.isoflop_design(budgets=4, per_budget=6)
  return points_lib.from_frame(frame, points_lib.CSV_COLUMNS)


@pytest.fixture(scope="module")
def fits(pts):
  options = fitting.FitOptions(bootstrap=8)
  with pytest.MonkeyPatch.context() as mp:
    # The plots do not read the extrapolation check; skipping its refit halves the cost of
    # the Approach 3 fit (a 4,500-start grid), which dominates this file's run time.
    mp.setattr(fitting, "extrapolation", lambda *args: {"skipped": "test"})
    return {law: fitting.fit_points(pts, law, options) for law in ("chinchilla", "isoflop")}


def _png_size(path):
  with open(path, "rb") as f:
    head = f.read(24)
  assert head[:8] == b"\x89PNG\r\n\x1a\n", path
  return struct.unpack(">II", head[16:24])


@pytest.mark.parametrize("law", ["chinchilla", "isoflop"])
def test_write_plots_writes_every_file(tmp_path, fits, pts, law):
  paths = plot.write_plots(str(tmp_path), fits[law], pts, prefix=f"{law}_")
  names = [p.rsplit("/", 1)[-1] for p in paths]
  assert names == [f"{law}_{n}" for n in ("loss_vs_compute.png", "isoflop.png",
                                          "allocation.png", "residuals.png")]
  for path in paths:
    width, height = _png_size(path)
    assert width >= 800 and height >= 400, (path, width, height)
    assert (tmp_path / path.rsplit("/", 1)[-1]).stat().st_size > 20_000


def _offsets(ax):
  """(x, y) of every scatter point drawn on ax, concatenated."""
  xy = [c.get_offsets() for c in ax.collections if len(c.get_offsets())]
  return np.concatenate(xy) if xy else np.zeros((0, 2))


def _budget_legend_labels(fig):
  return [t.get_text() for ax in fig.axes if ax.get_legend()
          for t in ax.get_legend().get_texts() if t.get_text().startswith("C = ")]


def test_isoflop_axes_use_the_runs_actual_n_and_tokens(fits, pts):
  # Runs of the largest budget trained on fewer tokens than C/6N: the D panel must show the
  # tokens they trained on, and the law's curve must pass through L(N, D) at those runs.
  top = pts.C == pts.C.max()
  d = np.where(top, pts.D * np.linspace(0.5, 0.9, len(pts)), pts.D)
  shifted = dataclasses.replace(pts, D=d)
  fig = plot.isoflop_figure(fits["chinchilla"], shifted)
  ax_n, ax_d = fig.axes[:2]
  n_xy, d_xy = _offsets(ax_n), _offsets(ax_d)
  for run in range(len(pts)):
    assert np.isclose(n_xy[:, 0], pts.N[run], rtol=1e-12).any()
    assert np.isclose(d_xy[:, 0], d[run], rtol=1e-12).any()
  assert not np.isclose(d_xy[:, 0], (pts.C / (6 * pts.N))[top][0], rtol=1e-6).any()
  params = fits["chinchilla"]["params"]
  sel = np.flatnonzero(top)
  ends = sel[[np.argmin(pts.N[sel]), np.argmax(pts.N[sel])]]
  curves = [line for line in ax_n.get_lines() if len(line.get_xdata()) > 10]
  top_curve = max(curves, key=lambda line: np.max(line.get_xdata()))
  x, y = top_curve.get_xdata(), top_curve.get_ydata()
  np.testing.assert_allclose([x[0], x[-1]], pts.N[ends], rtol=1e-9)
  np.testing.assert_allclose([y[0], y[-1]], chinchilla.predict(params, pts.N[ends], d[ends]),
                             rtol=1e-9)
  assert "parameters N" in ax_n.get_xlabel() and "tokens D" in ax_d.get_xlabel()
  assert "nats" in ax_n.get_ylabel()
  plt.close(fig)


@pytest.mark.parametrize("law", ["chinchilla", "isoflop"])
def test_legend_has_one_entry_per_budget(fits, pts, law):
  fig = plot.isoflop_figure(fits[law], pts)
  labels = _budget_legend_labels(fig)
  budgets_c = np.exp([np.mean(np.log(pts.C[isoflop.buckets(pts.C) == g])) for g in range(4)])
  assert labels == [f"C = {plot.sci(c)} FLOPs" for c in budgets_c]
  assert labels[0] == "C = 1.0e18 FLOPs"
  plt.close(fig)


def test_isoflop_vertices_are_the_fitted_minima(fits, pts):
  fit_obj = fits["isoflop"]
  fig = plot.isoflop_figure(fit_obj, pts)
  stars = [c for c in fig.axes[0].collections if c.get_offsets().shape[0] == 1]
  xy = np.concatenate([c.get_offsets() for c in stars])
  np.testing.assert_allclose(xy[:, 0], fit_obj["budgets"]["N_opt"], rtol=1e-9)
  np.testing.assert_allclose(xy[:, 1], fit_obj["budgets"]["loss_min"], rtol=1e-9)
  plt.close(fig)


def test_unbracketed_budgets_are_marked(fits, pts):
  fit_obj = {**fits["isoflop"], "budgets": {**fits["isoflop"]["budgets"],
                                            "bracketed": [False, True, True, None]}}
  fit_obj["diagnostics"] = [{"code": "unbracketed_budget", "level": "warn", "message": "x",
                             "C": fit_obj["budgets"]["C"][3]}]
  entries = plot.budgets(fit_obj, pts)
  assert [e["bracketed"] for e in entries] == [False, True, True, False]
  fig = plot.isoflop_figure(fit_obj, pts)
  labels = _budget_legend_labels(fig)
  assert [("not bracketed" in label) for label in labels] == [True, False, False, True]
  plt.close(fig)
  # Without the optional keys every budget with a minimum counts as bracketed.
  bare = {k: v for k, v in fits["isoflop"].items() if k not in ("diagnostics", "quality")}
  assert all(e["bracketed"] for e in plot.budgets(bare, pts))


def test_chinchilla_minimum_along_each_budget(fits, pts):
  params = fits["chinchilla"]["params"]
  for entry in plot.budgets(fits["chinchilla"], pts):
    n, d, loss = entry["curve"]
    assert entry["vertex"][2] == pytest.approx(loss.min())
    assert entry["vertex"][2] <= chinchilla.predict(params, entry["N"], entry["D"]).min() + 1e-12
    assert entry["bracketed"]  # the synthetic design centres every budget on its optimum


def test_parameters_and_quality_on_the_figure(fits):
  fit_obj = {**fits["chinchilla"], "quality": "warn",
             "diagnostics": [{"code": "E_below_floor", "level": "warn", "message": "m"}],
             "intervals": {**fits["chinchilla"]["intervals"], "E": [math.nan, math.nan],
                           "A": None}}
  text = plot.info_text(fit_obj)
  assert "E + A/N^{\\alpha} + B/D^{\\beta}" in text
  lo, hi = fit_obj["intervals"]["alpha"]
  assert f"α = {plot.num(fit_obj['params']['alpha'])}  [{plot.num(lo)}, {plot.num(hi)}]" in text
  e_line = next(line for line in text.splitlines() if line.startswith("E = "))
  assert "[" not in e_line and "nan" not in e_line
  assert next(line for line in text.splitlines() if line.startswith("A = ")) == \
      f"A = {plot.num(fit_obj['params']['A'])}"
  assert "quality: warn" in text and "E_below_floor" in text
  assert "quality: warn" in plot.title(fit_obj, "x")
  iso = plot.info_text(fits["isoflop"])
  assert "N_{opt} = N_{coef}" in iso and "a = " in iso


def test_allocation_marks_data_range_extrapolation_and_optima(fits, pts):
  fit_obj = fits["isoflop"]
  fig = plot.allocation_figure(fit_obj, pts)
  ax = fig.axes[0]
  spans = [p for p in ax.patches if p.get_label() == "FLOP range of the fitted budgets"]
  assert len(spans) == 1
  span = spans[0]
  assert (span.get_x(), span.get_x() + span.get_width()) == pytest.approx(
      (pts.C.min(), pts.C.max()))
  styles = {line.get_linestyle() for line in ax.get_lines() if len(line.get_xdata()) > 10}
  assert {"-", "--"} <= styles
  assert any(isinstance(c, PolyCollection) for c in ax.collections)  # the interval band
  optima = [c for c in ax.collections if c.get_label() == "per-budget parabola minima"]
  np.testing.assert_allclose(optima[0].get_offsets()[:, 1], fit_obj["budgets"]["N_opt"])
  plt.close(fig)


def test_residuals_against_compute_with_units(fits, pts):
  fig = plot.residuals_figure(fits["chinchilla"], pts)
  ax = fig.axes[0]
  xy = _offsets(ax)
  assert sorted(xy[:, 0]) == pytest.approx(sorted(pts.C))
  assert sorted(xy[:, 1]) == pytest.approx(sorted(fits["chinchilla"]["residuals"]))
  assert ax.get_xscale() == "log" and "FLOPs C" in ax.get_xlabel()
  assert "log L_pred − log L_obs" in ax.get_ylabel()
  assert len(_budget_legend_labels(fig)) == 4
  plt.close(fig)
  fig = plot.residuals_figure(fits["isoflop"], pts)
  xy = _offsets(fig.axes[0])
  np.testing.assert_allclose(xy[:, 0], fits["isoflop"]["budgets"]["C"])
  assert "N_opt" in fig.axes[0].get_ylabel()
  plt.close(fig)


def test_frontier_fit_plots(tmp_path, pts):
  params = {"floor": 1.8, "span": 60.0, "z0": 9.8, "k": 0.45}
  fit_obj = {"law": "frontier", "params": params, "derived": {}, "tau": 0.98, "n_runs": 24,
             "residuals": (pts.loss - plot.frontier.curve(params, pts.C)).tolist(),
             "intervals": {k: [None, None] for k in params}}
  paths = plot.write_plots(str(tmp_path), fit_obj, pts)
  assert [p.rsplit("/", 1)[-1] for p in paths] == ["loss_vs_compute.png", "residuals.png"]
  assert all(_png_size(p)[0] >= 800 for p in paths)


def test_number_formats():
  assert plot.sci(1e12) == "1.0e12" and plot.sci(2.15e19) == "2.2e19"
  assert [plot.num(v) for v in (0.4, 995.2, 0.0311, 2.1e19, None, math.nan)] == \
      ["0.400", "995", "0.0311", "2.1e19", "n/a", "n/a"]
