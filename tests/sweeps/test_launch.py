"""The local launcher end to end: completion, divergence, bad keys, SIGKILL + relaunch."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from sweeps import launch
from sweeps import store as store_lib
from tests.helpers import REPO
from tests.sweeps.sweep_files import QUICKSTART_SMOKE, logged_steps, read_run, run_dirs, write_def


def launch_cli(*args, **kwargs):
  return subprocess.Popen([sys.executable, "-m", "sweeps.launch", *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_quickstart_smoke_completes_with_one_record_per_logged_step(tmp_path):
  store = str(tmp_path / "store")
  states = launch.launch(QUICKSTART_SMOKE, store, parallel=2)
  assert sorted(states.values()) == ["done", "done"]
  dirs = run_dirs(store)
  assert [os.path.basename(d) for d in dirs] == sorted(states)
  for d in dirs:
    cfg, summary, steps = read_run(d)
    assert summary["status"] == "done"
    assert summary["params"] > 0 and summary["tokens"] == cfg["steps"] * 8 * 32
    assert summary["flops"] == pytest.approx(summary["tokens"] * summary["flops_per_token"])
    assert summary["final_loss"] < 5.6 and summary["eval_loss"] < 5.6
    assert steps == logged_steps(cfg)
    assert os.path.getsize(os.path.join(d, "stderr.log")) > 0  # the trainer's log is kept
  frame = store_lib.load(store)  # the store reader sees the same runs
  assert sorted(frame.run_id) == sorted(states) and set(frame.status) == {"done"}
  for column in ("params", "tokens", "flops", "final_loss", "eval_loss", "model.width"):
    assert frame[column].notna().all(), column
  curves = store_lib.curves(store)
  assert set(curves.run_id) == set(states) and curves.loss.notna().all()


def test_diverging_run_ends_diverged_and_the_sweep_goes_on(tmp_path):
  runs = [{"optimizer.lr": 1e30, "optimizer.grad_clip": 1e30, "steps": 20},
          {"steps": 20}]
  spec = write_def(str(tmp_path), "div", runs, base={"model.width": 16, "model.depth": 1})
  proc = launch_cli(f"--sweep={spec}", f"--store={tmp_path / 'store'}", "--parallel=2")
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err  # diverged is an outcome, not a launcher failure
  statuses = sorted(read_run(d)[1]["status"] for d in run_dirs(str(tmp_path / "store")))
  assert statuses == ["diverged", "done"], err


def test_an_upgrade_that_adds_config_keys_keeps_the_stores_runs(tmp_path):
  """Runs written before a config key existed have another hash in their id; relaunched,
  the sweep takes their directories over (done stays done), and a directory whose config
  really differs is not taken."""
  import json
  from experiments import config as config_lib
  from sweeps import plan as plan_lib
  spec = write_def(str(tmp_path), "up", [{"steps": 10}, {"steps": 12}])
  store = tmp_path / "store"
  runs = plan_lib.plan(plan_lib.load_sweep(spec))
  old_ids = []
  for run, change in zip(runs, ({}, {"optimizer.lr": 0.5})):
    old = config_lib.to_dict(config_lib.override(run.cfg, change))
    del old["attention"]["fused_bwd"]  # as written before that key was added
    old_id = run.run_id[:-len(run.config_hash)] + "abc123"
    (store / old_id).mkdir(parents=True)
    (store / old_id / "config.json").write_text(json.dumps(old))
    (store / old_id / "summary.json").write_text(json.dumps({"status": "done"}))
    old_ids.append(old_id)
  states = launch.launch(spec, str(store), dry_run=True, out=open(os.devnull, "w"))
  assert states == {old_ids[0]: "done", runs[1].run_id: "new"}


def test_invalid_override_key_fails_before_any_run_starts(tmp_path):
  spec = write_def(str(tmp_path), "bad", [{"steps": 10}, {"optimizer.lrr": 0.1}])
  store = tmp_path / "store"
  proc = launch_cli(f"--sweep={spec}", f"--store={store}")
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 2
  assert "'optimizer.lrr'" in err and "optimizer.lr" in err.split("Did you mean")[1]
  assert "run 1" in err
  assert not store.exists()


def _wait_for(predicate, proc, timeout, what):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f"launcher ended ({proc.returncode}) before {what}: "
                           f"{proc.communicate()[1]}")
    time.sleep(0.1)
  raise AssertionError(f"timed out waiting for {what}")


def _summary_step(store, prefix):
  for d in run_dirs(store) if os.path.isdir(store) else []:
    if os.path.basename(d).startswith(prefix):
      try:
        _, summary, _ = read_run(d)
      except (OSError, ValueError):
        return 0
      return summary["step"] if summary["status"] == "running" else 0
  return 0


def test_sigkill_mid_sweep_then_relaunch_resumes(tmp_path):
  store = str(tmp_path / "store")
  runs = [{"steps": 10, "_tag": "a"},
          {"steps": 160, "log_every": 10, "checkpoint_every": 20, "_tag": "b"},
          {"steps": 15, "_tag": "c"}]
  spec = write_def(str(tmp_path), "kill", runs, base={"model.width": 16, "model.depth": 1})
  proc = launch_cli(f"--sweep={spec}", f"--store={store}", "--parallel=1",
                    start_new_session=True)  # the launcher leads a group holding its trainers
  try:
    _wait_for(lambda: _summary_step(store, "kill-b") >= 40, proc, 180, "run b passed step 40")
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
  a_dir, b_dir = run_dirs(store)[:2]
  a_metrics = os.path.join(a_dir, "metrics.jsonl")
  a_before = (open(a_metrics).read(), os.stat(a_metrics).st_mtime_ns)
  assert read_run(a_dir)[1]["status"] == "done"
  assert read_run(b_dir)[1]["status"] == "running"  # killed: its process is gone

  again = launch_cli(f"--sweep={spec}", f"--store={store}", "--parallel=1")
  _, err = again.communicate(timeout=300)
  assert again.returncode == 0, err
  assert "launching 2" in err  # b (stale) and c (new); a is done
  assert (open(a_metrics).read(), os.stat(a_metrics).st_mtime_ns) == a_before
  for d in run_dirs(store):
    cfg, summary, steps = read_run(d)
    assert summary["status"] == "done"
    assert steps == logged_steps(cfg), d  # no duplicate, no missing line
  attempts = open(os.path.join(b_dir, "stderr.log")).read().split("=== ")[1:]
  assert len(attempts) == 2
  first_step = int(re.search(r"\] step (\d+)/", attempts[1]).group(1))
  assert first_step > 20, attempts[1][:2000]  # resumed from a checkpoint, not from scratch
