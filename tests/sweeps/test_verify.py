"""Prescribe, then verify: a prescribed config really trains, and its loss meets the law's."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import config as config_lib
from experiments.configs import lm
from sweeps import verify
from sweeps.defs import quickstart
from sweeps.laws import chinchilla
from tests.helpers import REPO
from tests.sweeps.sweep_files import read_run

# N_opt = G (C/6)^0.5 with G = (A/B)^(1/0.7) = 1.2: 1.2e4 params at 6e8 FLOPs, the smallest
# smoke shape (width 16, depth 1), ~31 steps of 8 x 32 tokens.
LAW = {"E": 1.0, "A": 20 * 1.2 ** 0.7, "B": 20.0, "alpha": 0.35, "beta": 0.35}
BUDGET = 6e8


def smoke_fit(bootstrap=True, residuals=True) -> dict:
  """A chinchilla fit.json as sweeps.fit writes it for a store of smoke-size runs."""
  rng = np.random.default_rng(0)
  fit = {"law": "chinchilla", "params": dict(LAW), "n_kind": "params",
         "derived": {k: float(v) for k, v in chinchilla.derive(LAW).items()},
         "source": {"store": "runs/smoke", "csv": None, "columns": {"loss": "eval_loss"}},
         "config_spec": "experiments/configs/lm.py:tiny",
         "data_range": {"C": [1e8, 3e8], "N": [1e4, 3e4], "D": [1e3, 1e4]}, "quality": "ok"}
  cfg = config_lib.override(lm.get_config("tiny"), {**quickstart.SMOKE, "model.width": 16,
                                                    "model.depth": 1, "steps": 20})
  fit["base_config"] = config_lib.flatten(config_lib.to_dict(cfg))
  if bootstrap:
    samples = {k: v * np.exp(0.03 * rng.standard_normal(50)) for k, v in LAW.items()}
    samples.update(chinchilla.derive(samples))
    fit["bootstrap"] = {"level": 0.95, "samples": {k: np.asarray(v).tolist()
                                                   for k, v in samples.items()}}
  if residuals:
    fit["residuals"] = (0.02 * np.random.default_rng(1).standard_normal(20)).tolist()
  return fit


def write_fit(tmp_path, fit) -> str:
  path = tmp_path / "fit.json"
  path.write_text(json.dumps(fit))
  return str(path)


def test_verify_trains_the_prescription_and_reports(tmp_path):
  store = str(tmp_path / "verify")
  fit_path = write_fit(tmp_path, smoke_fit())
  report, code = verify.verify(fit_path, BUDGET, store)
  assert code == 0 and report["status"] == "done"
  p = report["prescription"]
  cfg, summary, _ = read_run(report["run_dir"])
  # The run is the prescription over the fitted runs' config, not the tiny variant's.
  assert (cfg["seq_len"], cfg["batch_size"], cfg["steps"]) == (32, 8, p["config"]["steps"])
  assert cfg["model"]["width"] == p["config"]["model.width"] and cfg["eval_batches"] == 2
  assert abs(summary["flops"] / BUDGET - 1) < 0.1
  assert report["achieved"] == summary["eval_loss"] and report["loss_column"] == "eval_loss"
  pred = chinchilla.predict(LAW, summary["params"], summary["tokens"])
  assert report["predicted"] == pytest.approx(pred)
  lo, hi = report["interval"]
  assert lo < report["predicted"] < hi
  assert report["band"][0] <= lo and report["band"][1] >= hi
  assert report["verdict"] in ("within", "outside")
  assert report["relative_error"] == pytest.approx(report["achieved"] / pred - 1)
  path = os.path.join(store, "verify-6e8.json")
  assert report["report"] == path and json.load(open(path))["verdict"] == report["verdict"]

  # The CLI finds the run done (no retraining) and rewrites the same report.
  proc = subprocess.run([sys.executable, "-m", "sweeps.verify", f"--fit={fit_path}",
                         f"--budget={BUDGET}", f"--store={store}"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "launching 0" in proc.stderr and f"verdict               {report['verdict']}" in \
      proc.stdout
  assert json.load(open(path))["achieved"] == report["achieved"]

  # After an upgrade that added a config key, the run's id has another hash: verify takes
  # the old directory over (plan.adopt, as launch does) instead of failing or retraining.
  old_dir = report["run_dir"].rsplit("-", 1)[0] + "-abc123"
  os.rename(report["run_dir"], old_dir)
  cfg["attention"].pop("fused_bwd")
  with open(os.path.join(old_dir, "config.json"), "w") as f:
    json.dump(cfg, f)
  again, code = verify.verify(fit_path, BUDGET, store)
  assert code == 0 and again["run_dir"] == old_dir and again["achieved"] == report["achieved"]


def summary_for(loss, **extra):
  return {"status": "done", "params": 12080, "tokens": 7936, "flops": 6.0e8,
          "eval_loss": loss, "final_loss": loss, **extra}


def test_verdict_from_the_band():
  fit = smoke_fit()
  p = {"model_params": 12080, "tokens": 7936, "model_train_flops": 6e8}
  predicted = float(chinchilla.predict(LAW, 12080, 7936))
  near = verify.assess(fit, summary_for(predicted * 1.01), p)
  assert near["verdict"] == "within" and near["relative_error"] == pytest.approx(0.01)
  sigma = near["scatter_log_std"]
  assert sigma == pytest.approx(np.std(fit["residuals"], ddof=1))
  # The band widens the parameter interval by the scatter: a loss just outside the interval
  # can be within the band.
  lo, hi = near["interval"]
  assert near["band"][1] > hi and near["band"][0] < lo
  just_above = verify.assess(fit, summary_for((hi + near["band"][1]) / 2), p)
  assert not just_above["within_interval"] and just_above["verdict"] == "within"
  far = verify.assess(fit, summary_for(predicted * 1.5), p)
  assert far["verdict"] == "outside" and far["relative_error"] == pytest.approx(0.5)
  # No bootstrap: the band is the scatter alone; neither: not assessed.
  scatter_only = verify.assess(smoke_fit(bootstrap=False), summary_for(predicted), p)
  z = 1.959963984540054
  assert scatter_only["band"][1] == pytest.approx(predicted * math.exp(z * sigma))
  assert math.isnan(scatter_only["interval"][0]) and scatter_only["verdict"] == "within"
  bare = verify.assess(smoke_fit(bootstrap=False, residuals=False), summary_for(predicted), p)
  assert bare["verdict"] == "not assessed"
  # The fitted loss column, else eval_loss, else final_loss.
  fallback = verify.assess(fit, {**summary_for(None), "final_loss": predicted}, p)
  assert fallback["loss_column"] == "final_loss" and fallback["verdict"] == "within"


def test_isoflop_prediction_is_the_compute_optimal_loss():
  c = np.array([1e8, 3e8, 1e9])
  fit = {"law": "isoflop", "params": {"a": 0.5, "b": 0.5, "N_coef": 0.5, "D_coef": 0.3},
         "derived": {"loss_coef": 30.0, "loss_exp": -0.1},
         "budgets": {"C": c.tolist(), "loss_min": (30 * c ** -0.1 * [1.01, 0.99, 1.0]).tolist()}}
  p = {"model_params": 12080, "tokens": 7936, "model_train_flops": 6e8}
  out = verify.assess(fit, summary_for(3.0, flops=5.9e8), p)
  assert out["predicted"] == pytest.approx(30 * 5.9e8 ** -0.1)
  assert out["predicted_at"] == {"C": 5.9e8}
  assert out["scatter_log_std"] == pytest.approx(np.std(np.log([1.01, 0.99, 1.0]), ddof=1))
  assert "minimum losses" in out["scatter_source"]


def test_a_failed_run_exits_1_and_bad_input_exits_2(tmp_path, monkeypatch):
  fit_path = write_fit(tmp_path, smoke_fit())
  store = tmp_path / "store"
  # A launcher whose run fails (the trainer's failure paths are sweeps.launch's tests).
  monkeypatch.setattr(verify.launch_lib, "launch", lambda sweep, *a, **k: {
      r.run_id: "failed" for r in verify.plan_lib.plan(sweep)})
  report, code = verify.verify(fit_path, BUDGET, str(store))
  assert code == 1 and report["verdict"] == "not assessed" and "ended failed" in report["error"]
  assert json.load(open(store / "verify-6e8.json"))["status"] == "failed"
  proc = subprocess.run([sys.executable, "-m", "sweeps.verify", f"--fit={tmp_path / 'no.json'}",
                         "--budget=6e8", f"--store={store}"], cwd=REPO, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 2 and "the fit file does not exist" in proc.stderr
  assert "python -m sweeps.fit --store=STORE --out=DIR" in proc.stderr


def test_chinchax_help_lists_every_subcommand():
  run = lambda *args: subprocess.run(
      [sys.executable, "-c", "from experiments.cli import main; main()", *args], cwd=REPO,
      capture_output=True, text=True, timeout=60)
  for flag in ("--help", "-h"):
    proc = run(flag)
    assert proc.returncode == 0, proc.stderr
    for name in ("train", "launch", "fit", "prescribe", "verify"):
      assert f"  {name} " in proc.stdout, proc.stdout
  bare = run()
  assert bare.returncode == 2 and "verify" in bare.stderr and "usage: chinchax" in bare.stderr
