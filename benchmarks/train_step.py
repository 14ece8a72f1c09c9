"""Train-step throughput: tokens/s, achieved FLOP/s and MFU.

  python benchmarks/train_step.py [--variants=tiny,small] [--steps=20] [--peak_flops=989e12]

FLOP/s is given under both conventions of models.flops: `exec` the work the kernels
do (the count sweeps use), `model` the Chinchilla/PaLM model FLOPs (attention over
the full L). MFU = model FLOPs per step / (seconds per step x peak FLOP/s), as in
the literature. Without --peak_flops the peak is a float32 matmul (jit, 2048^3 by
default) measured in the same process, so MFU is relative to this machine's rate.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import models
import parallel
from experiments import data as data_lib, state as state_lib
from experiments.configs import lm

_VARIANTS = flags.DEFINE_list("variants", ["tiny", "small"], "lm.py variants to time.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per variant (after 3 warm-up steps).")
_MATMUL = flags.DEFINE_integer("matmul", 2048, "Size n of the n x n x n reference matmul.")
_PEAK = flags.DEFINE_float("peak_flops", None, "The device's peak FLOP/s for MFU (e.g. "
                           "989e12: H100/H200 bf16 dense); default: the measured matmul.")


def matmul_flops_per_sec(n, repeats=10):
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def time_variant(name, steps):
  cfg = lm.get_config(name)
  cfg.mesh.data = 1  # one device: the rate is per device
  mesh = parallel.make_mesh(cfg.mesh, jax.devices()[:1])
  program = state_lib.build(cfg, mesh)
  state = program.init()
  it = data_lib.build(cfg).train_iterator()
  batches = [state_lib.global_batch(program, next(it)) for _ in range(4)]
  for i in range(3):
    state, m = program.train_step(state, batches[i % 4])
  jax.block_until_ready(m)
  t = time.perf_counter()
  for i in range(steps):
    state, m = program.train_step(state, batches[i % 4])
  jax.block_until_ready(m)
  seconds = (time.perf_counter() - t) / steps
  tokens = cfg.batch_size * cfg.seq_len
  return {"variant": name, "params": models.count_params(cfg)["total"],
          "tokens/step": tokens, "step ms": 1e3 * seconds,
          "tokens/s": tokens / seconds,
          "seconds": seconds, "cfg": cfg,
          "FLOP/s": models.flops_per_step(cfg) / seconds,
          "model FLOP/s": models.flops_per_step(cfg, convention="chinchilla") / seconds}


def main(argv):
  del argv
  rate = matmul_flops_per_sec(_MATMUL.value)
  peak = _PEAK.value or rate
  print(f"backend {jax.default_backend()}, float32 matmul {_MATMUL.value}^3: "
        f"{rate / 1e9:.1f} GFLOP/s; MFU against {peak / 1e9:.1f} GFLOP/s")
  print(f"{'variant':>8} {'params':>10} {'tokens/step':>11} {'step ms':>9} "
        f"{'tokens/s':>10} {'exec GFLOP/s':>12} {'model GFLOP/s':>13} {'MFU':>7}")
  for name in _VARIANTS.value:
    r = time_variant(name, _STEPS.value)
    mfu = models.mfu(r["cfg"], r["seconds"], peak)
    print(f"{r['variant']:>8} {r['params']:>10,} {r['tokens/step']:>11,} {r['step ms']:>9.1f} "
          f"{r['tokens/s']:>10,.0f} {r['FLOP/s'] / 1e9:>12.2f} "
          f"{r['model FLOP/s'] / 1e9:>13.2f} {mfu:>7.1%}")


if __name__ == "__main__":
  app.run(main)
