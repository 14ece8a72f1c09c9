"""Multi-process training (gloo on one machine) and compile-only planning, as users run them."""
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import metrics, train
from tests.helpers import LM_CONFIG, MICRO_FLAGS, REPO, micro_config

STEPS = 3
OVERRIDES = {"steps": STEPS, "log_every": 1, "eval_every": STEPS,
             "checkpoint_every": STEPS, "model.depth": 1, "mesh.fsdp": 2, "mesh.tensor": 2}
# The kill/resume test: the first checkpoint (step 2) leaves 14 steps to kill in, and
# every checkpoint is kept so the reference holds each step's iterator state.
RESUME_STEPS = 16
RESUME_OVERRIDES = {**OVERRIDES, "steps": RESUME_STEPS, "eval_every": RESUME_STEPS,
                    "checkpoint_every": 2, "keep_checkpoints": RESUME_STEPS}
ITERATOR_FILES = ("process_0-of-2.json", "process_1-of-2.json")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_cmd(workdir, *extra, overrides=OVERRIDES):
  flags = MICRO_FLAGS + tuple(f"{k}={v}" for k, v in overrides.items())
  return [sys.executable, "-m", "experiments.train", f"--config={LM_CONFIG}:tiny",
          f"--workdir={workdir}", *extra, *[f"--config.{f}" for f in flags]]


def _start_two_processes(workdir, logs, overrides=OVERRIDES):
  """Processes 0 and 1 of a job of 4 fake devices each, output to logs/<name>_<i>.log
  (a file, not a pipe: nothing reads while the test polls). Each leads its own
  session, so os.killpg reaches it and whatever it started."""
  address = f"127.0.0.1:{_free_port()}"
  os.makedirs(logs, exist_ok=True)
  procs = []
  for i in range(2):
    log_path = os.path.join(logs, f"{os.path.basename(workdir)}_{i}.log")
    with open(log_path, "a") as log:
      proc = subprocess.Popen(
          _train_cmd(workdir, "--num_fake_devices=4", f"--coordinator_address={address}",
                     "--num_processes=2", f"--process_id={i}", overrides=overrides),
          cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log_path
    procs.append(proc)
  return procs


def _tail(proc, chars=3000):
  with open(proc.log_path, errors="replace") as f:
    text = "".join(l for l in f if "spmd_partitioner" not in l)  # compiler noise
  return text[-chars:]


def _kill(procs):
  for proc in procs:
    if proc.poll() is None:
      try:
        os.killpg(proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    proc.wait()


def _wait_ok(procs, timeout=300):
  deadline = time.time() + timeout
  for proc in procs:
    try:
      proc.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      _kill(procs)
      pytest.fail(f"process timed out after {timeout}s:\n{_tail(proc)}")
    assert proc.returncode == 0, _tail(proc)


def _losses(workdir):
  records, bad = metrics.read_metrics(os.path.join(workdir, metrics.METRICS))
  assert bad == 0
  return [r["step"] for r in records], np.array([r["loss"] for r in records])


def _checkpoint_steps(workdir):
  """Finalized steps: orbax renames `<step>.orbax-checkpoint-tmp-*` to `<step>` last."""
  root = os.path.join(workdir, "checkpoints")
  names = os.listdir(root) if os.path.isdir(root) else []
  return sorted(int(n) for n in names if n.isdigit())


def _iterator_state(workdir, step, name):
  with open(os.path.join(workdir, "checkpoints", str(step), "iterator", name)) as f:
    return json.load(f)


@pytest.mark.slow
def test_two_processes_of_4_devices_match_one_process_of_8(tmp_path):
  workdir = tmp_path / "two_processes"
  procs = _start_two_processes(workdir, tmp_path / "logs")
  try:
    # The reference (8 fake devices in this process) runs while they do.
    reference = tmp_path / "one_process"
    train.run(micro_config(**OVERRIDES), str(reference))
    _wait_ok(procs)
  finally:
    _kill(procs)

  steps, losses = _losses(workdir)
  ref_steps, ref_losses = _losses(reference)
  assert steps == ref_steps == list(range(1, STEPS + 1))  # one writer: no duplicated lines
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  written = sorted(p.name for p in workdir.iterdir())
  assert written == ["checkpoints", "config.json", "metrics.jsonl", "summary.json"], written
  assert (workdir / "checkpoints" / str(STEPS)).is_dir()  # saved collectively
  assert metrics.read_json(workdir / "summary.json")["status"] == "done"


@pytest.mark.slow
def test_two_processes_killed_and_resumed_continue_as_if_uninterrupted(tmp_path):
  """SIGKILL both processes after a checkpoint, relaunch: each process resumes its own
  data position, so losses (a mean over both processes' batches) and each process's
  iterator state at every later checkpoint equal an uninterrupted two-process run's."""
  logs = tmp_path / "logs"
  reference, killed = tmp_path / "uninterrupted", tmp_path / "killed"
  started = []
  try:
    # The reference runs alongside the job that gets killed (the machine has 2 cores).
    uninterrupted = _start_two_processes(reference, logs, RESUME_OVERRIDES)
    victims = _start_two_processes(killed, logs, RESUME_OVERRIDES)
    started += uninterrupted + victims
    deadline = time.time() + 300
    while not _checkpoint_steps(killed):
      for proc in victims:
        assert proc.poll() is None, f"exited {proc.returncode} before a checkpoint:\n{_tail(proc)}"
      assert time.time() < deadline, "no checkpoint after 300s:\n" + _tail(victims[0])
      time.sleep(0.05)
    # A random point after the first save: a later save may be mid-write.
    delay = random.uniform(0, 0.5)
    time.sleep(delay)
    _kill(victims)
    summary = metrics.read_json(killed / "summary.json", {})
    resumed_from = _checkpoint_steps(killed)[-1]
    if summary.get("status") != "running" or resumed_from >= RESUME_STEPS:
      pytest.fail(f"the run was not interrupted (killed {delay:.2f}s after the first "
                  f"checkpoint: summary {summary.get('status')} at step {summary.get('step')}, "
                  f"latest checkpoint {resumed_from} of {RESUME_STEPS}); raise RESUME_STEPS.")
    assert summary["step"] < RESUME_STEPS
    # One iterator state per process (a primary-only JSON item held process 0's alone).
    iterator_dir = killed / "checkpoints" / str(resumed_from) / "iterator"
    assert sorted(p.name for p in iterator_dir.glob("*.json")) == list(ITERATOR_FILES)
    print(f"killed {delay:.2f}s after the first checkpoint: summary step "
          f"{summary['step']}, resuming from checkpoint {resumed_from}")

    resumed = _start_two_processes(killed, logs, RESUME_OVERRIDES)  # on a new port
    started += resumed
    _wait_ok(uninterrupted + resumed)
  finally:
    _kill(started)

  steps, losses = _losses(killed)
  ref_steps, ref_losses = _losses(reference)
  assert steps == ref_steps == list(range(1, RESUME_STEPS + 1))  # no gaps, no repeats
  assert losses.tolist() == ref_losses.tolist(), (
      f"max |diff| {np.abs(losses - ref_losses).max()}:\n{losses}\n{ref_losses}")
  summary, ref_summary = (metrics.read_json(w / "summary.json") for w in (killed, reference))
  assert summary["status"] == ref_summary["status"] == "done"
  assert summary["eval_loss"] == ref_summary["eval_loss"]
  assert not (killed / "checkpoints.skipped").exists()  # the latest step restored
  later = [s for s in _checkpoint_steps(killed) if s > resumed_from]
  assert later and later[-1] == RESUME_STEPS
  assert set(later) <= set(_checkpoint_steps(reference))
  for step in later:
    for name in ITERATOR_FILES:
      assert _iterator_state(killed, step, name) == _iterator_state(reference, step, name), (
          step, name)


def test_compile_only_plans_an_fsdp_mesh_without_writing(tmp_path):
  """The 1b config cut to 1 layer and short rows (compile time), fsdp over 8 fake devices."""
  workdir = tmp_path / "never_written"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train", f"--config={LM_CONFIG}:1b",
       f"--workdir={workdir}", "--compile_only", "--num_fake_devices=8",
       "--config.mesh.fsdp=8", "--config.mesh.data=1", "--config.model.depth=1",
       "--config.seq_len=128", "--config.batch_size=8"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  print(proc.stdout)
  assert "fsdp=8" in proc.stdout and "8 cpu devices" in proc.stdout
  rows = {m[0].strip(): [float(x) for x in m[1:] if x] for m in re.findall(
      r"^\s*([a-z ()A-Z]+?)\s+([\d.]+)?\s+([\d.]+)$", proc.stdout, re.M)}
  params_total, params_per_device = rows["params"]
  opt_total, opt_per_device = rows["optimizer state"]
  assert 7.9 < params_total / params_per_device < 8.01  # only norm vectors replicate
  assert 7.9 < opt_total / opt_per_device < 8.01
  assert rows["temporaries"][0] > 0
  assert not workdir.exists()
