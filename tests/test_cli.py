"""The entry points coexist in one process (absl flags are global) and dispatch."""
import importlib
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
