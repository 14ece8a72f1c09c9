"""Shared test helpers (import as `from tests.helpers import ...`)."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM_CONFIG = os.path.join(REPO, "experiments", "configs", "lm.py")


def micro_config(**overrides):
  """A few-second config (8 fake devices divide its batch)."""
  from experiments import config as config_lib
  from experiments.configs import lm
  cfg = lm.get_config("tiny")
  base = {
      "steps": 30, "batch_size": 8, "seq_len": 32, "log_every": 5, "eval_every": 10,
      "checkpoint_every": 10, "eval_batches": 2, "model.width": 32, "model.depth": 2,
      "model.heads": 2, "model.kv_heads": 1, "model.mlp_width": 64,
      "optimizer.warmup_steps": 5, "data.synthetic_windows": 512, "wandb.mode": "disabled",
  }
  base.update(overrides)
  return config_lib.override(cfg, base)


def run_train(workdir, *overrides, env=None, timeout=600, variant="tiny"):
  """`python -m experiments.train` in a subprocess (one CPU device)."""
  cmd = [sys.executable, "-m", "experiments.train", f"--config={LM_CONFIG}:{variant}",
         f"--workdir={workdir}", *[f"--config.{o}" for o in overrides]]
  full_env = dict(os.environ, **(env or {}))
  return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True,
                        timeout=timeout)


MICRO_FLAGS = ("batch_size=8", "seq_len=32", "model.width=32", "model.depth=2",
               "model.heads=2", "model.kv_heads=1", "model.mlp_width=64",
               "optimizer.warmup_steps=5", "data.synthetic_windows=512",
               "eval_batches=2", "wandb.mode=disabled")
