"""The entry points coexist in one process (absl flags are global) and dispatch."""
import glob
import importlib
import os
import subprocess
import sys

import pytest

from experiments import cli
from tests.helpers import REPO


def test_all_entry_points_import_together():
  for module in cli.COMMANDS.values():
    importlib.import_module(module)


def test_cli_rejects_unknown_command():
  proc = subprocess.run([sys.executable, "-c", "from experiments.cli import main; main()", "nope"],
                        cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 2 and "usage: chinchax" in proc.stderr


@pytest.mark.parametrize("command,flag", [("train", "--workdir"), ("prepare", "--shards"),
                                          ("launch", "--sweep"),
                                          ("fit", "--law"), ("prescribe", "--budget"),
                                          ("reproduce", "--report_only")])
def test_cli_dispatches_to_the_module(command, flag):
  proc = subprocess.run([sys.executable, "-c", "from experiments.cli import main; main()",
                         command, "--helpshort"], cwd=REPO, capture_output=True, text=True)
  assert flag in proc.stdout + proc.stderr, proc.stderr[-2000:]


# A malformed flag is bad input in every CLI: one `error:` line naming it, exit 2 (absl's
# own parser exits 1 with `FATAL Flags parsing error`); logs.parse_flags.
MALFORMED = [
    ("sweeps.fit", ["--store=X", "--law=chinchila", "--out=Y"], "--law=chinchila"),
    ("sweeps.fit", ["--store=X", "--bootstrap=abc", "--out=Y"], "--bootstrap=abc"),
    ("sweeps.fit", ["--store=X", "--lawz=", "--out=Y"], "'lawz'"),
    ("sweeps.fit", ["--store=X", "--e_floor=abc", "--out=Y"], "--e_floor=abc"),
    ("sweeps.launch", ["--parallel=two"], "--parallel=two"),
    ("sweeps.prescribe", ["--budget=lots"], "--budget=lots"),
    ("sweeps.verify", ["--budget=abc"], "--budget=abc"),
    ("sweeps.reproduce", ["--parallel=x"], "--parallel=x"),
    ("sweeps.transfer", ["--tolerance_steps=x"], "--tolerance_steps=x"),
    ("experiments.calibrate", ["--target_error=x"], "--target_error=x"),
    ("experiments.prepare", ["--shards=x"], "--shards=x"),
    ("experiments.train", ["--workdirr=x"], "'workdirr'"),
]


def test_every_cli_is_in_the_malformed_flag_cases():
  mains = {os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
           for package in ("sweeps", "experiments")
           for path in glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True)
           if "\n  app.run(" in open(path).read()}  # an absl main
  assert mains and mains <= {module for module, _, _ in MALFORMED}


@pytest.mark.parametrize("module,args,named", MALFORMED,
                         ids=[f"{m} {' '.join(a)}" for m, a, _ in MALFORMED])
def test_malformed_flag_exits_2_naming_it(module, args, named):
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.startswith("error: ") and named in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and "FATAL" not in proc.stderr


@pytest.mark.parametrize("module,args", [("sweeps.fit", ["--store=X"]),
                                         ("sweeps.prescribe", ["--budget=1e14"])])
def test_missing_required_flag_exits_2(module, args):
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "required" in proc.stderr and "Traceback" not in proc.stderr
