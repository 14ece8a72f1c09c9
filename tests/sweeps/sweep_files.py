"""Helpers for the sweep tests: throwaway definition files and run-directory checks."""
import json
import os

from tests.helpers import REPO

QUICKSTART_SMOKE = os.path.join(REPO, "sweeps", "defs", "quickstart.py") + ":smoke"

_TEMPLATE = """from sweeps import define
from sweeps.defs.quickstart import SMOKE


def get_sweep(arg=None):
  return define.Sweep(name={name!r}, config="experiments/configs/lm.py:tiny",
                      base=dict(SMOKE, **{base!r}), runs={runs!r})
"""


def write_def(directory, name, runs, base=None):
  """A definition file over the micro (smoke) base config; returns its path."""
  path = os.path.join(directory, f"{name}.py")
  with open(path, "w") as f:
    f.write(_TEMPLATE.format(name=name, runs=runs, base=base or {}))
  return path


def logged_steps(cfg):
  """The steps at which the trainer writes a metrics line."""
  return [s for s in range(1, cfg["steps"] + 1)
          if s % cfg["log_every"] == 0 or s % cfg["eval_every"] == 0
          or s % cfg["checkpoint_every"] == 0 or s == cfg["steps"]]


def read_run(run_dir):
  """(config, summary, metrics steps) of a run directory."""
  with open(os.path.join(run_dir, "config.json")) as f:
    cfg = json.load(f)
  with open(os.path.join(run_dir, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  return cfg, summary, steps


def run_dirs(store):
  return sorted(os.path.join(store, d) for d in os.listdir(store) if not d.startswith("."))
