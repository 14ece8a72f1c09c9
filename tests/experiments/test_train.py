import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import LM_CONFIG, MICRO_FLAGS, REPO, run_train
from experiments import metrics, optimizer, train


def read_losses(workdir):
  records, bad = metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert bad == 0
  return {r["step"]: r["loss"] for r in records}, [r["step"] for r in records]


def test_tiny_trains_to_near_the_entropy_rate(tmp_path):
  """The README's main job on defaults (wandb offline: no account, no network)."""
  workdir = tmp_path / "tiny"
  proc = run_train(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "done"
  assert summary["eval_loss"] <= 1.3 * summary["data_entropy_rate"], summary
  for key in ("params", "params_non_embedding", "tokens", "flops", "final_loss",
              "wall_seconds", "versions"):
    assert summary[key] is not None, key
  _, steps = read_losses(workdir)
  assert steps == list(range(10, 401, 10))
  records, _ = metrics.read_metrics(workdir / "metrics.jsonl")
  assert {"step", "tokens", "flops", "loss", "lr", "tokens_per_sec"} <= set(records[0])
  assert [r["step"] for r in records if "eval_loss" in r] == [100, 200, 300, 400]
  assert json.loads((workdir / "config.json").read_text())["model"]["width"] == 64
  assert (workdir / "checkpoints" / "400").is_dir()
  assert (workdir / "wandb").is_dir()


def _spawn(workdir, *flags):
  cmd = [sys.executable, "-m", "experiments.train", f"--config={LM_CONFIG}:tiny",
         f"--workdir={workdir}", *[f"--config.{f}" for f in MICRO_FLAGS + flags]]
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          start_new_session=True)


def test_exact_resume_after_sigkill(tmp_path):
  flags = ("steps=600", "log_every=1", "eval_every=300", "checkpoint_every=20")
  killed, reference = tmp_path / "killed", tmp_path / "reference"
  proc = _spawn(killed, *flags)
  ckpts = killed / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
      break
    time.sleep(0.01)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  summary = json.loads((killed / "summary.json").read_text())
  assert summary["status"] == "running", "the run finished before it could be killed"
  _, steps_before = read_losses(killed)
  saved = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
  assert saved < 600
  assert run_train(killed, *MICRO_FLAGS, *flags).returncode == 0
  assert run_train(reference, *MICRO_FLAGS, *flags).returncode == 0
  resumed, steps = read_losses(killed)
  expected, _ = read_losses(reference)
  assert steps == list(range(1, 601)), "duplicated or missing steps"
  assert resumed == expected  # bitwise, every step (before and after the kill)
  assert json.loads((killed / "summary.json").read_text())["status"] == "done"
  print(f"killed with {len(steps_before)} steps logged; resumed from checkpoint {saved}")


def test_misspelled_key_fails_naming_it_and_writes_nothing(tmp_path):
  workdir = tmp_path / "never"
  proc = run_train(workdir, "modle.width=8")
  assert proc.returncode != 0
  assert "modle.width" in proc.stderr and "model.width" in proc.stderr
  assert not workdir.exists()


def test_bad_values_fail_before_anything_is_written(tmp_path, micro_cfg):
  workdir = tmp_path / "never"
  for bad in ({"data.corpus": "wiki"}, {"attention.kind": "sparse"},
              {"optimizer.schedule": "linear"}, {"data.corpus": "text_files",
                                                  "data.files": str(tmp_path / "*.txt")}):
    with pytest.raises(ValueError):
      train.run(micro_cfg(**bad), str(workdir))
    assert not workdir.exists(), bad


# Divergence (status "diverged" returned and in summary.json): test_faults'
# test_divergence_stops_at_its_step_strict_json_and_exit_3, in-process and on the CLI.


def test_relaunch_is_idempotent_and_config_changes_are_refused(tmp_path, micro_cfg):
  cfg = micro_cfg(**{"steps": 10})
  first = train.run(cfg, str(tmp_path))
  assert first["status"] == "done"
  lines = (tmp_path / "metrics.jsonl").read_text()
  again = train.run(cfg, str(tmp_path))
  assert again["status"] == "done" and (tmp_path / "metrics.jsonl").read_text() == lines
  with pytest.raises(ValueError, match="different config"):
    train.run(micro_cfg(**{"steps": 10, "model.width": 64}), str(tmp_path))


@pytest.mark.parametrize("name", ["cosine", "wsd", "constant"])
def test_schedules_warm_up_then_follow_their_shape(micro_cfg, name):
  cfg = micro_cfg(**{"optimizer.schedule": name, "optimizer.warmup_steps": 10})
  lr = optimizer.schedule(cfg.optimizer, 100)
  peak = cfg.optimizer.lr
  values = np.array([float(lr(s)) for s in range(101)])
  assert values[0] == 0 and values[10] == pytest.approx(peak)
  assert np.all(np.diff(values[:11]) > 0)
  if name == "constant":
    assert np.allclose(values[10:], peak)
  else:
    assert values[100] == pytest.approx(peak * cfg.optimizer.min_lr_ratio, rel=1e-3)
  if name == "wsd":
    assert np.allclose(values[10:80], peak)  # stable until the last 20%
