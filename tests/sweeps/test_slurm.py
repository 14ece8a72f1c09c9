"""The Slurm launcher against a real single-node Slurm (slurmctld + slurmd on loopback)."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.sweeps import slurm_cluster
from tests.sweeps.sweep_files import QUICKSTART_SMOKE as SMOKE


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  missing = slurm_cluster.missing_binaries()
  if missing:
    pytest.skip(f"SLURM NOT TESTED: {missing} not installed (.ci/run installs Debian's "
                "slurm-wlm when it runs as root with apt; here that did not happen)")
  if os.geteuid() != 0:
    pytest.skip("SLURM NOT TESTED: the test cluster runs its daemons as root")
  c = slurm_cluster.Cluster(str(tmp_path_factory.mktemp("slurm")))
  yield c
  c.stop()


def test_sweep_through_submitit_and_sbatch(cluster, tmp_path):
  store = tmp_path / "store"
  proc = subprocess.run(
      [sys.executable, "-m", "sweeps.launch", f"--sweep={SMOKE}", f"--store={store}",
       "--launcher=slurm", "--parallel=2", "--cpus_per_run=1", "--time_minutes=10",
       "--poll_seconds=1"], cwd=REPO, env=cluster.env, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr + cluster.logs()
  assert "submitted array job" in proc.stderr
  run_dirs = sorted(p for p in store.iterdir() if not p.name.startswith("."))
  assert len(run_dirs) == 2
  for run_dir in run_dirs:
    summary = json.loads((run_dir / "summary.json").read_text())
    launch = json.loads((run_dir / "launch.json").read_text())
    assert summary["status"] == "done", (run_dir / "stderr.log").read_text()
    assert summary["step"] == summary["steps"]
    assert launch["launcher"] == "slurm" and "_" in launch["job_id"]  # an array task
  # Relaunching finds everything done and submits nothing.
  again = subprocess.run(
      [sys.executable, "-m", "sweeps.launch", f"--sweep={SMOKE}", f"--store={store}",
       "--launcher=slurm", "--poll_seconds=1"], cwd=REPO, env=cluster.env,
      capture_output=True, text=True, timeout=120)
  assert again.returncode == 0, again.stderr
  assert "launching 0" in again.stderr and "submitted" not in again.stderr
