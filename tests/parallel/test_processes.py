"""Multi-process training (gloo on one machine) and compile-only planning, as users run them."""
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from experiments import metrics, train
from tests.helpers import LM_CONFIG, MICRO_FLAGS, REPO, micro_config

STEPS = 3
OVERRIDES = {"steps": STEPS, "log_every": 1, "eval_every": STEPS,
             "checkpoint_every": STEPS, "model.depth": 1, "mesh.fsdp": 2, "mesh.tensor": 2}
FLAGS = MICRO_FLAGS + tuple(f"{k}={v}" for k, v in OVERRIDES.items())


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_cmd(workdir, *extra):
  return [sys.executable, "-m", "experiments.train", f"--config={LM_CONFIG}:tiny",
          f"--workdir={workdir}", *extra, *[f"--config.{f}" for f in FLAGS]]


def _losses(workdir):
  records, bad = metrics.read_metrics(os.path.join(workdir, metrics.METRICS))
  assert bad == 0
  return [r["step"] for r in records], np.array([r["loss"] for r in records])


@pytest.mark.slow
def test_two_processes_of_4_devices_match_one_process_of_8(tmp_path):
  workdir = tmp_path / "two_processes"
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      _train_cmd(workdir, "--num_fake_devices=4", f"--coordinator_address={address}",
                 "--num_processes=2", f"--process_id={i}"),
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  try:
    # The reference (8 fake devices in this process) runs while they do.
    reference = tmp_path / "one_process"
    train.run(micro_config(**OVERRIDES), str(reference))
    for proc in procs:
      out, _ = proc.communicate(timeout=300)
      assert proc.returncode == 0, out[-3000:]
  finally:
    for proc in procs:
      proc.kill()
      proc.wait()

  steps, losses = _losses(workdir)
  ref_steps, ref_losses = _losses(reference)
  assert steps == ref_steps == list(range(1, STEPS + 1))  # one writer: no duplicated lines
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  written = sorted(p.name for p in workdir.iterdir())
  assert written == ["checkpoints", "config.json", "metrics.jsonl", "summary.json"], written
  assert (workdir / "checkpoints" / str(STEPS)).is_dir()  # saved collectively
  assert metrics.read_json(workdir / "summary.json")["status"] == "done"


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
