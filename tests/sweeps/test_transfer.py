"""The LR-transfer experiment: its sweep definition and sweeps.transfer's analysis."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from sweeps import plan, reproduce, transfer
from tests.helpers import REPO

mup_transfer = plan.load_definition(reproduce.path_of("mup_transfer"))


def _grid(runs, **match):
  return sorted({r["optimizer.lr"] for r in runs
                 if all(r.get(k) == v for k, v in match.items())})


def test_width_sweep_is_a_factor_two_grid_at_four_widths_for_each_parametrization():
  sweep = mup_transfer.get_sweep("tiny")
  runs = sweep.runs
  assert {r["model.parametrization"] for r in runs} == {"sp", "mup", "umup"}
  assert sorted({r["model.width"] for r in runs}) == [32, 64, 128, 256]
  for name in ("sp", "mup", "umup"):
    for width in (32, 256):
      lrs = _grid(runs, **{"model.parametrization": name, "model.width": width})
      assert len(lrs) >= 7
      assert np.allclose(np.diff(np.log2(lrs)), 1.0)
  planned = plan.plan(sweep)
  assert len({r.run_id for r in planned}) == len(runs)
  wide = [r for r in planned if r.cfg.model.width == 256][0]
  assert wide.cfg.model.mlp_width == 4 * 256 and wide.cfg.data.corpus == "pystdlib"
  assert {r.cfg.model.mup_base_width for r in planned} == {32}


def test_depth_and_paper_variants_plan():
  depth = plan.plan(mup_transfer.get_sweep("tiny_depth"))
  arms = {(r.cfg.model.parametrization, r.cfg.model.depth_scaling) for r in depth}
  assert arms == {("mup", "none"), ("mup", "completep"), ("umup", "none")}
  assert sorted({r.cfg.model.depth for r in depth}) == [1, 2, 4, 8]
  assert {r.cfg.model.width for r in depth} == {64}
  cluster = plan.plan(mup_transfer.get_sweep("paper"))
  assert sorted({r.cfg.model.width for r in cluster}) == [512, 1024, 2048, 4096]
  assert {r.cfg.model.width // r.cfg.model.heads for r in cluster} == {64}
  assert len(plan.plan(mup_transfer.get_sweep("paper_depth"))) > 0
  with pytest.raises(ValueError, match="smoke"):
    mup_transfer.get_sweep("huge")


def _write_run(store, run_id, parametrization, width, lr, loss, status="done",
               depth_scaling="none"):
  path = os.path.join(store, run_id)
  os.makedirs(path)
  config = {"model": {"parametrization": parametrization, "width": width, "depth": 2,
                      "depth_scaling": depth_scaling}, "optimizer": {"lr": lr}}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(path, "summary.json"), "w") as f:
    json.dump({"status": status, "eval_loss": loss}, f)


def _synthetic_store(store, optimum_of, grid=range(-12, -3), curvature=0.05):
  """Runs whose loss is a parabola in log2 LR around optimum_of(arm, width)."""
  for arm in ("sp", "mup"):
    for width in (32, 64, 128, 256):
      for e in grid:
        loss = 2.0 + curvature * (e - optimum_of(arm, width)) ** 2
        _write_run(store, f"{arm}-w{width}-lr{e}", arm, width, 2.0 ** e, loss)


def test_analysis_finds_each_widths_optimum_and_tells_transfer_from_drift(tmp_path):
  # sp's optimum falls as 1/width (Adam); mup's stays at 2^-7.3.
  def optimum_of(arm, width):
    return -7.3 - (math.log2(width / 32) if arm == "sp" else 0.0)

  store = str(tmp_path / "store")
  _synthetic_store(store, optimum_of)
  result = transfer.run(store)
  assert result["axis"] == "width"
  sp, mup = result["arms"]["sp"], result["arms"]["mup"]
  for width, o in mup["optima"].items():
    assert o["bracketed"] and o["log2_lr"] == -7
    assert o["refined_log2_lr"] == pytest.approx(-7.3, abs=1e-6)  # exact for a parabola
    assert o["margin"] == pytest.approx(0.05 * (0.7 ** 2 - 0.3 ** 2))  # neighbour -8
  assert [o["log2_lr"] for o in sp["optima"].values()] == [-7, -8, -9, -10]
  assert mup["transfers"] and mup["spread_steps"] == 0
  assert not sp["transfers"] and sp["spread_steps"] == 3
  assert sp["drift"] == pytest.approx(-1.0, abs=1e-6) and mup["drift"] == pytest.approx(0.0)
  assert not result["problems"]
  table = transfer.format_table(result, "width")
  assert "mup: optimum spread 0" in table and "sp: optimum spread 3" in table
  assert "does not transfer" in table
  assert os.path.getsize(os.path.join(store, "transfer.png")) > 10_000
  saved = json.load(open(os.path.join(store, "transfer.json")))
  assert saved["arms"]["mup"]["transfers"] is True


def test_an_optimum_on_the_grid_edge_is_not_bracketed_and_blocks_a_transfer_verdict(tmp_path):
  store = str(tmp_path / "store")
  _synthetic_store(store, lambda arm, width: -13.0 if width == 256 else -7.0)
  result = transfer.run(store)
  mup = result["arms"]["mup"]
  assert not mup["optima"][256]["bracketed"] and mup["optima"][256]["refined_log2_lr"] is None
  assert not mup["transfers"] and not mup["bracketed"]
  assert any("mup at 256: optimum on the grid edge" in p for p in result["problems"])
  assert "undetermined" in transfer.format_table(result, "width")


def test_diverged_runs_are_worse_than_any_loss_and_unfinished_runs_are_reported(tmp_path):
  store = str(tmp_path / "store")
  for e, loss in [(-9, 2.5), (-8, 2.2), (-7, 2.1), (-6, 2.3)]:
    _write_run(store, f"mup-w32-lr{e}", "mup", 32, 2.0 ** e, loss)
    _write_run(store, f"mup-w64-lr{e}", "mup", 64, 2.0 ** e, loss)
  _write_run(store, "mup-w64-lr-5", "mup", 64, 2.0 ** -5, None, status="diverged")
  _write_run(store, "mup-w32-lr-5", "mup", 32, 2.0 ** -5, None, status="failed")
  _write_run(store, "mup+c-w32-lr-5", "mup", 32, 2.0 ** -5, 2.0, depth_scaling="completep")
  with pytest.warns(UserWarning, match=r"1 run\(s\) not finished.*mup-w32-lr-5 \(failed\)"):
    result = transfer.run(store)
  assert result["arms"]["mup"]["optima"][64]["log2_lr"] == -7
  assert result["arms"]["mup"]["optima"][64]["bracketed"]
  assert "mup+completep" in result["arms"]
  assert any("only 1 LR point" in p for p in result["problems"])


def test_cli_rejects_a_store_that_is_not_an_lr_grid(tmp_path):
  store = tmp_path / "store"
  run = store / "r1"
  run.mkdir(parents=True)
  (run / "config.json").write_text(json.dumps({"model": {"width": 32}}))
  (run / "summary.json").write_text(json.dumps({"status": "done", "eval_loss": 2.0}))
  proc = subprocess.run([sys.executable, "-m", "sweeps.transfer", f"--store={store}"],
                        cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 2, proc.stderr
  assert "no 'optimizer.lr' column" in proc.stderr
  assert not (store / "transfer.json").exists()
