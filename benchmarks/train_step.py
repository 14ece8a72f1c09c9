"""Train-step throughput: tokens/s and achieved FLOP/s vs this machine's matmul rate.

  python benchmarks/train_step.py [--variants=tiny,small] [--steps=20]

The reference rate is a float32 matmul (jit, 2048^3 by default) measured in the
same process; the step's FLOPs come from models.flops_per_token (Chinchilla
counting, training = 3x forward), so the fraction is a model-FLOPs utilisation.
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
          "FLOP/s": tokens * models.flops_per_token(cfg) / seconds}


def main(argv):
  del argv
  rate = matmul_flops_per_sec(_MATMUL.value)
  print(f"backend {jax.default_backend()}, float32 matmul {_MATMUL.value}^3: "
        f"{rate / 1e9:.1f} GFLOP/s")
  print(f"{'variant':>8} {'params':>10} {'tokens/step':>11} {'step ms':>9} "
        f"{'tokens/s':>10} {'GFLOP/s':>9} {'of matmul':>9}")
  for name in _VARIANTS.value:
    r = time_variant(name, _STEPS.value)
    print(f"{r['variant']:>8} {r['params']:>10,} {r['tokens/step']:>11,} {r['step ms']:>9.1f} "
          f"{r['tokens/s']:>10,.0f} {r['FLOP/s'] / 1e9:>9.2f} {r['FLOP/s'] / rate:>9.1%}")


if __name__ == "__main__":
  app.run(main)
