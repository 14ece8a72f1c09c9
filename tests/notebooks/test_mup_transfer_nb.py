"""notebooks/mup_transfer.ipynb on synthetic LR-grid stores whose optima are known: a bowl
in log2 LR whose bottom stays put under mup/umup and falls by 1 per width doubling under sp."""
import json
import math
import os

import pytest
from nbclient.exceptions import CellExecutionError

from sweeps import plot
from tests.notebooks import nbrun

GRID = range(-12, 2)  # log2 LR, factors of 2


def _write_run(store, run_id, *, arm, width, depth, lr, loss, depth_scaling="none"):
  """One finished run directory, as sweeps.store reads it. (tests/sweeps/test_transfer.py has
  a config+summary writer, but with a fixed depth and no size, FLOPs or metrics.)"""
  path = os.path.join(store, run_id)
  os.makedirs(path)
  params, tokens = 1000 * width * width * depth, 1e6
  config = {"seed": 0, "model": {"parametrization": arm, "width": width, "depth": depth,
                                 "depth_scaling": depth_scaling},
            "optimizer": {"lr": lr}}
  summary = {"status": "done", "eval_loss": loss, "final_loss": loss, "params": params,
             "tokens": tokens, "flops": 6 * params * tokens}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(path, "summary.json"), "w") as f:
    json.dump(summary, f)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for step in (1, 2, 3):
      f.write(json.dumps({"step": step, "tokens": tokens * step / 3,
                          "flops": 2 * params * tokens * step, "loss": loss + 1.0 / step,
                          "lr": lr}) + "\n")


def _bowl(e, optimum, size):
  """Loss at log2 LR e: a parabola around `optimum`, lower for larger models."""
  return 2.0 - 0.05 * math.log2(size) + 0.05 * (e - optimum) ** 2


def _width_store(store):
  optima = {"sp": lambda w: -7.3 - math.log2(w / 32), "mup": lambda w: -7.3,
            "umup": lambda w: -0.6}
  for arm, optimum in optima.items():
    for width in (32, 64, 128, 256):
      for e in GRID:
        _write_run(store, f"{arm}-w{width}-lr{e}", arm=arm, width=width, depth=2, lr=2.0 ** e,
                   loss=_bowl(e, optimum(width), width))


def _depth_store(store):
  # CompleteP holds the optimum; plain mup drifts up with depth and leaves the grid at 8.
  optima = {("mup", "completep"): lambda d: -7.3, ("mup", "none"): lambda d: -0.9 + 3 * d / 8,
            ("umup", "none"): lambda d: -0.6}
  for (arm, scaling), optimum in optima.items():
    for depth in (1, 2, 4, 8):
      for e in GRID:
        _write_run(store, f"{arm}-{scaling}-d{depth}-lr{e}", arm=arm, width=64, depth=depth,
                   lr=2.0 ** e, loss=_bowl(e, optimum(depth), depth), depth_scaling=scaling)


def _text(nb):
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs if o.output_type == "stream")


def test_width_store_sp_drifts_by_minus_one_and_mup_umup_transfer(tmp_path, monkeypatch):
  store = str(tmp_path / "transfer")
  _width_store(store)
  nb = nbrun.execute("mup_transfer.ipynb", monkeypatch, CHINCHAX_STORE=store)
  figures = plot.beside(store)
  assert figures == str(tmp_path / "transfer-figures")
  nbrun.assert_figures(figures, ["transfer.png", "optimum_vs_width.png"])
  assert not os.path.exists(os.path.join(store, "transfer.json"))  # the store holds runs only
  result = json.load(open(os.path.join(figures, "transfer.json")))
  assert result["axis"] == "width"
  arms = result["arms"]
  assert set(arms) == {"sp", "mup", "umup"}
  assert abs(arms["sp"]["drift"] + 1.0) < 0.05 and not arms["sp"]["transfers"]
  for arm in ("mup", "umup"):
    assert abs(arms[arm]["drift"]) < 0.05 and arms[arm]["transfers"], arms[arm]
  assert arms["sp"]["spread_steps"] == 3
  assert [o["log2_lr"] for o in arms["sp"]["optima"].values()] == [-7, -8, -9, -10]
  text = _text(nb)
  assert "sp: optimum spread 3" in text and "does not transfer" in text
  assert "mup: optimum spread 0" in text


def test_depth_store_picks_the_depth_axis_and_marks_an_unbracketed_optimum(tmp_path,
                                                                           monkeypatch):
  store = str(tmp_path / "transfer-depth")
  _depth_store(store)
  nb = nbrun.execute("mup_transfer.ipynb", monkeypatch, CHINCHAX_STORE=store)
  figures = plot.beside(store)
  nbrun.assert_figures(figures, ["transfer.png", "optimum_vs_depth.png"])
  result = json.load(open(os.path.join(figures, "transfer.json")))
  assert result["axis"] == "depth"
  arms = result["arms"]
  assert set(arms) == {"mup", "mup+completep", "umup"}
  assert arms["mup+completep"]["transfers"] and abs(arms["mup+completep"]["drift"]) < 0.05
  assert not arms["mup"]["bracketed"] and not arms["mup"]["optima"]["8"]["bracketed"]
  assert "undetermined" in _text(nb)
  assert "WARNING: mup at 8: optimum on the grid edge" in _text(nb)


def test_a_missing_store_names_the_command_that_writes_it(tmp_path, monkeypatch):
  with pytest.raises(CellExecutionError, match="experiments/reproduce/mup_transfer.py:tiny"):
    nbrun.execute("mup_transfer.ipynb", monkeypatch, CHINCHAX_STORE=str(tmp_path / "none"))
