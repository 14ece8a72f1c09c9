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


def train_losses(cfg, steps=3):
  """Losses (and metrics) of `steps` train steps on a 1-device mesh, in-process."""
  import jax
  import parallel
  from experiments import data as data_lib, state as state_lib
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1},
                            jax.devices()[:1])
  program = state_lib.build(cfg, mesh)
  state = program.init()
  it = data_lib.build(cfg).train_iterator()
  out = []
  for _ in range(steps):
    state, m = program.train_step(state, state_lib.global_batch(program, next(it)))
    out.append(jax.device_get(m))
  return out
