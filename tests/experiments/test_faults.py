"""Fault injection: kill -9 during saves, damaged checkpoints, damaged and lost
records. Each case asserts that nothing finished is lost and that the user is told."""
import glob
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from experiments import checkpoint, metrics, train
from sweeps import rundir
from tests.helpers import LM_CONFIG, MICRO_FLAGS, REPO, micro_config, run_train

OVERRIDES = {"keep_checkpoints": 5}  # steps 10, 20, 30 all kept


def losses(workdir):
  records, bad = metrics.read_metrics(os.path.join(workdir, metrics.METRICS))
  assert bad == 0
  return {r["step"]: r["loss"] for r in records}


def strict_load(path):
  def reject(constant):
    raise AssertionError(f"{path}: bare {constant} is not JSON")
  with open(path) as f:
    return json.load(f, parse_constant=reject)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted 30-step run (checkpoints at 10, 20, 30)."""
  workdir = str(tmp_path_factory.mktemp("faults") / "reference")
  assert train.run(micro_config(**OVERRIDES), workdir)["status"] == "done"
  return workdir


def crashed_copy(reference, workdir, at=25):
  """The reference as a crash at step `at` would leave it: checkpoints <= at,
  metrics up to `at`, summary still running."""
  shutil.copytree(reference, workdir)
  for step in os.listdir(os.path.join(workdir, "checkpoints")):
    if step.isdigit() and int(step) > at:
      shutil.rmtree(os.path.join(workdir, "checkpoints", step))
  metrics.truncate_metrics(os.path.join(workdir, metrics.METRICS), at)
  summary = metrics.read_json(os.path.join(workdir, metrics.SUMMARY))
  summary.update(status="running", step=at)
  metrics.write_json_atomic(os.path.join(workdir, metrics.SUMMARY), summary)


def _truncate(step_dir):
  """Halves every OCDBT data file (which copy orbax reads depends on the layout:
  per-process files are merged into the item's own d/ on some meshes)."""
  files = glob.glob(f"{step_dir}/state/**/d/*", recursive=True)
  assert files
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


CORRUPTIONS = {
    "truncated data files": _truncate,
    "deleted _METADATA": lambda d: os.remove(f"{d}/state/_METADATA"),
    "missing state item": lambda d: shutil.rmtree(f"{d}/state"),
    "damaged iterator state": lambda d: open(
        f"{d}/iterator/process_0-of-1.json", "w").write('{"next_index": '),
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_damaged_latest_checkpoint_falls_back_to_the_previous(reference, tmp_path, caplog, how):
  caplog.set_level(logging.INFO)
  workdir = str(tmp_path / "run")
  crashed_copy(reference, workdir)
  CORRUPTIONS[how](f"{workdir}/checkpoints/20")
  summary = train.run(micro_config(**OVERRIDES), workdir)
  assert summary["status"] == "done"
  assert losses(workdir) == losses(reference)  # bitwise, every step
  err = caplog.text
  assert "checkpoint 20 does not restore" in err and "moved the damaged checkpoint 20" in err
  skipped = os.listdir(os.path.join(workdir, checkpoint.SKIPPED))
  assert len(skipped) == 1 and skipped[0].startswith("20-")  # kept, not deleted


def test_no_restorable_checkpoint_marks_the_run_failed_and_keeps_them(reference, tmp_path):
  workdir = str(tmp_path / "run")
  crashed_copy(reference, workdir)
  for step in ("10", "20"):
    shutil.rmtree(f"{workdir}/checkpoints/{step}/state")
  # The same config as micro_config(**OVERRIDES), on the command line.
  proc = run_train(workdir, *MICRO_FLAGS, "steps=30", "log_every=5", "eval_every=10",
                   "checkpoint_every=10", "keep_checkpoints=5")
  assert proc.returncode == train.EXIT_CODES["failed"], proc.stderr[-2000:]
  assert "no checkpoint" in proc.stderr and "step 20" in proc.stderr
  summary = strict_load(f"{workdir}/summary.json")
  assert summary["status"] == "failed" and "step 10" in summary["error"]
  assert rundir.state(workdir) == "failed"  # the launcher's --rerun policy sees it
  assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["10", "20"]


@pytest.mark.slow
def test_kill_9_during_saves_at_random_moments_resumes_bitwise(tmp_path):
  """A checkpoint every step, so kills land inside saves; three kills, then finish."""
  flags = (*MICRO_FLAGS, "steps=120", "log_every=1", "eval_every=60", "checkpoint_every=1")
  workdir, ref = tmp_path / "killed", tmp_path / "reference"
  rng = random.Random(os.getpid())
  cmd = [sys.executable, "-m", "experiments.train", f"--config={LM_CONFIG}:tiny",
         f"--workdir={workdir}", *[f"--config.{f}" for f in flags]]
  kills = 0
  for _ in range(3):
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    start = max([0, *[int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()]]
                ) if (workdir / "checkpoints").is_dir() else 0
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # wait for this attempt's saves
      done = [int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()] if (
          workdir / "checkpoints").is_dir() else []
      if done and max(done) > start:
        break
      time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.5))
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      kills += 1
    proc.wait()
  assert kills >= 2, "the run finished before it could be killed"
  assert run_train(workdir, *flags).returncode == 0
  assert run_train(ref, *flags).returncode == 0
  assert list(losses(workdir)) == list(range(1, 121))
  assert losses(workdir) == losses(ref)
  assert strict_load(workdir / "summary.json")["status"] == "done"


def test_lost_or_damaged_config_json_cannot_mix_configs(reference, tmp_path, caplog):
  caplog.set_level(logging.INFO)
  other = micro_config(**OVERRIDES, **{"optimizer.lr": 1e-3})
  for damage in ("missing", "truncated"):
    workdir = str(tmp_path / damage)
    crashed_copy(reference, workdir)
    path = os.path.join(workdir, "config.json")
    if damage == "missing":
      os.remove(path)
    else:
      open(path, "w").write('{"seed": 0, "st')
    with pytest.raises(ValueError, match="different config.*optimizer.lr"):
      train.run(other, workdir)
    assert losses(workdir) == {s: l for s, l in losses(reference).items() if s <= 25}
    # The run's own config resumes, and config.json is rewritten (a damaged one kept).
    assert train.run(micro_config(**OVERRIDES), workdir)["status"] == "done"
    assert losses(workdir) == losses(reference)
    assert metrics.read_json(path)["optimizer"]["lr"] == 3e-3
    if damage == "truncated":
      assert glob.glob(path + ".unreadable-*")
    assert "fingerprint matches" in caplog.text
    caplog.clear()


def test_damaged_record_files_are_survived(reference, tmp_path):
  workdir = str(tmp_path / "run")
  crashed_copy(reference, workdir)
  with open(os.path.join(workdir, metrics.METRICS), "a") as f:
    f.write('{"step": 26, "loss": 1.')  # a line cut by the kill
  open(os.path.join(workdir, metrics.SUMMARY), "w").write('{"status": "runn')
  open(os.path.join(workdir, rundir.LAUNCH), "w").write("[")
  assert rundir.state(workdir) == "new"  # unreadable records read as absent, not a crash
  assert train.run(micro_config(**OVERRIDES), workdir)["status"] == "done"
  assert losses(workdir) == losses(reference)
  assert strict_load(os.path.join(workdir, metrics.SUMMARY))["status"] == "done"


def test_resumed_wall_seconds_count_each_step_once(reference, tmp_path):
  workdir = str(tmp_path / "run")
  crashed_copy(reference, workdir)
  summary_path = os.path.join(workdir, metrics.SUMMARY)
  summary = metrics.read_json(summary_path)
  summary["wall_seconds"] = 1000.0  # a killed attempt that ran long after checkpoint 20
  metrics.write_json_atomic(summary_path, summary)
  at_20 = [r for r in metrics.read_metrics(f"{workdir}/{metrics.METRICS}")[0]
           if r["step"] == 20][0]["wall_seconds"]
  done = train.run(micro_config(**OVERRIDES), workdir)
  assert at_20 < done["wall_seconds"] < 1000.0


def test_divergence_stops_at_its_step_strict_json_and_exit_3(tmp_path):
  diverge = {"steps": 40, "optimizer.lr": 1e30, "optimizer.grad_clip": 1e30,
             "optimizer.warmup_steps": 1, "eval_every": 40, "checkpoint_every": 40}
  flags = (*MICRO_FLAGS, *[f"{k}={v}" for k, v in diverge.items()])
  # Which step diverges, logging every step: in-process (lr 1e30 breaks the first update
  # on any mesh); the exit code and the sparse logging are the CLI's, in a subprocess.
  every = train.run(micro_config(**diverge, log_every=1), str(tmp_path / "every"))
  sparse = run_train(tmp_path / "sparse", *flags, "log_every=10")
  assert every["status"] == "diverged"
  assert sparse.returncode == train.EXIT_CODES["diverged"], sparse.stderr
  every_summary = strict_load(tmp_path / "every" / "summary.json")
  assert every_summary["status"] == "diverged"  # (was test_train's divergence test)
  first = every_summary["step"]
  assert first == every["step"]
  summary = strict_load(tmp_path / "sparse" / "summary.json")
  assert summary["status"] == "diverged" and summary["step"] == first < 10
  assert "non-finite" in summary["error"]
  with open(tmp_path / "sparse" / metrics.METRICS) as f:
    last = [json.loads(line, parse_constant=lambda c: pytest.fail(c)) for line in f][-1]
  assert last["step"] == first and last[metrics.NONFINITE]  # which fields were NaN/inf
  assert None in (last["loss"], last["grad_norm"])


def test_records_are_strict_json_with_a_nonfinite_flag(tmp_path):
  path = str(tmp_path / "r.json")
  metrics.write_json_atomic(path, {"a": float("nan"), "b": {"c": float("-inf")}, "d": 1.5})
  record = strict_load(path)
  assert record == {"a": None, "b": {"c": None}, "d": 1.5,
                    metrics.NONFINITE: {"a": "nan", "b.c": "-inf"}}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_records_honour_the_umask(tmp_path, umask, mode):
  old = os.umask(umask)
  try:
    metrics.write_json_atomic(str(tmp_path / "s.json"), {"x": 1})
    metrics.write_text_atomic(str(tmp_path / "m.jsonl"), "{}\n")
  finally:
    os.umask(old)
  for name in ("s.json", "m.jsonl"):
    assert os.stat(tmp_path / name).st_mode & 0o777 == mode, name


def test_wandb_environment_beats_the_config(micro_cfg, tmp_path):
  cfg = micro_cfg(**{"wandb.mode": "offline", "wandb.project": "from-config"})
  assert metrics.wandb_init_args(cfg.wandb, tmp_path, environ={"WANDB_MODE": "disabled"}) is None
  assert metrics.wandb_init_args(cfg.wandb, tmp_path, environ={"WANDB_DISABLED": "true"}) is None
  args = metrics.wandb_init_args(cfg.wandb, tmp_path, environ={
      "WANDB_MODE": "online", "WANDB_PROJECT": "p", "WANDB_RUN_ID": "r"})
  assert args["mode"] == "online" and "project" not in args and "id" not in args
  args = metrics.wandb_init_args(cfg.wandb, tmp_path, environ={})
  assert args["mode"] == "offline" and args["project"] == "from-config"
  disabled_cfg = micro_cfg(**{"wandb.mode": "disabled"})
  assert metrics.wandb_init_args(disabled_cfg.wandb, tmp_path,
                                 environ={"WANDB_MODE": "offline"})["mode"] == "offline"


def test_exported_wandb_mode_disabled_wins_over_the_config(micro_cfg, tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "disabled")
  cfg = micro_cfg(**{"wandb.mode": "offline", "steps": 2, "checkpoint_every": 2})
  assert train.run(cfg, str(tmp_path))["status"] == "done"
  assert not (tmp_path / "wandb").exists()
