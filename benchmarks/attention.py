"""Attention forward+backward timing per kind and impl; prints a table.

  python benchmarks/attention.py                       # CPU defaults: L in 1024..8192
  python benchmarks/attention.py --lengths=4096 --kinds=dense,block_sparse --repeats=5

Rows come from CASES, a small registry: add a Case (kind, impl, params as a
function of the sequence length) to benchmark another attention. Pallas rows
run only on a GPU/TPU backend (on CPU they would run interpreted). On a GPU,
`gpu_comparison` also times Pallas dense flash vs cuDNN and block-sparse Pallas
at density ~0.1 (L=8192, head_dim 128, bfloat16, causal).
"""
import argparse
import dataclasses
import os
import statistics
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from kernels import attention, attention_density  # noqa: E402

ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")


@dataclasses.dataclass(frozen=True)
class Case:
  label: str
  kind: str
  impl: str
  params: Callable[[int], dict] = lambda length: {}
  accelerator_only: bool = False


def _blocks(length, block=128):
  return length // block


CASES = [
    Case("dense", "dense", "xla"),
    Case("static window=3 + sink", "block_sparse", "xla",
         lambda length: dict(window_blocks=3, sink_blocks=1)),
    Case("sparge topk=0.2", "block_sparse", "xla",
         lambda length: dict(estimator="sparge", topk=0.2)),
    Case("prism topp=0.9, max_blocks=nK/4", "spectral", "xla",
         lambda length: dict(topp=0.9, max_blocks=max(2, _blocks(length) // 4))),
    Case("dense", "dense", "pallas", accelerator_only=True),
    Case("static window=3 + sink", "block_sparse", "pallas",
         lambda length: dict(window_blocks=3, sink_blocks=1), accelerator_only=True),
    Case("prism topp=0.9", "spectral", "pallas", lambda length: dict(topp=0.9),
         accelerator_only=True),
]


def _inputs(batch, length, heads, kv_heads, head_dim, dtype, seed=0):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = jax.random.normal(kq, (batch, length, heads, head_dim), dtype)
  k = jax.random.normal(kk, (batch, length, kv_heads, head_dim), dtype)
  v = jax.random.normal(kv, (batch, length, kv_heads, head_dim), dtype)
  return q, k, v


def time_forward_backward(fn, q, k, v, repeats):
  """Median seconds of one jitted forward + backward (vjp with dO = ones)."""
  @jax.jit
  def step(q, k, v):
    o, vjp = jax.vjp(fn, q, k, v)
    return vjp(jnp.ones_like(o))

  jax.block_until_ready(step(q, k, v))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(q, k, v))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def run_case(case, q, k, v, repeats):
  params = case.params(q.shape[1])
  fn = lambda q, k, v: attention(q, k, v, kind=case.kind, impl=case.impl, **params)
  seconds = time_forward_backward(fn, q, k, v, repeats)
  density = float(jax.jit(lambda q, k: attention_density(q, k, kind=case.kind, **params))(q, k))
  return seconds, density


def gpu_comparison(repeats):
  """Pallas dense flash vs cuDNN, and block-sparse Pallas at density ~0.1."""
  q, k, v = _inputs(1, 8192, 8, 8, 128, jnp.bfloat16)
  rows = [
      ("cudnn dense", lambda q, k, v: jax.nn.dot_product_attention(
          q, k, v, is_causal=True, implementation="cudnn"), None),
      ("pallas dense", lambda q, k, v: attention(q, k, v, kind="dense", impl="pallas"), None),
      ("pallas block_sparse window=3", lambda q, k, v: attention(
          q, k, v, kind="block_sparse", impl="pallas", window_blocks=3),
       dict(kind="block_sparse", window_blocks=3)),
  ]
  print("\nGPU, L=8192, heads=8, head_dim=128, bfloat16, causal, forward+backward")
  print(f"{'case':32} {'density':>8} {'ms':>9}")
  for label, fn, density_params in rows:
    seconds = time_forward_backward(fn, q, k, v, repeats)
    density = (float(attention_density(q, k, **density_params)) if density_params else 1.0)
    print(f"{label:32} {density:8.3f} {seconds * 1e3:9.2f}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="1024,2048,4096,8192")
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--kv_heads", type=int, default=None, help="default: --heads")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--kinds", default="dense,block_sparse,spectral",
                      help="comma-separated kinds to run")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)

  backend = jax.default_backend()
  on_accelerator = backend in ACCELERATORS
  kinds = set(args.kinds.split(","))
  cases = [c for c in CASES if c.kind in kinds and (on_accelerator or not c.accelerator_only)]
  dtype = jnp.dtype(args.dtype)
  print(f"backend={backend} heads={args.heads} kv_heads={args.kv_heads or args.heads} "
        f"head_dim={args.head_dim} batch={args.batch} dtype={args.dtype} causal "
        f"block=128 repeats={args.repeats}; time = median forward+backward; "
        f"load average at start {os.getloadavg()[0]:.1f}")
  print(f"{'L':>6} {'kind':13} {'impl':9} {'case':32} {'density':>8} {'ms':>10} {'vs dense':>9}")
  speedups = {}
  for length in (int(x) for x in args.lengths.split(",")):
    q, k, v = _inputs(args.batch, length, args.heads, args.kv_heads or args.heads,
                      args.head_dim, dtype)
    dense_seconds = {}
    for case in cases:
      seconds, density = run_case(case, q, k, v, args.repeats)
      if case.kind == "dense":
        dense_seconds[case.impl] = seconds
      base = dense_seconds.get(case.impl)
      ratio = base / seconds if base else float("nan")
      speedups[(length, case.label, case.impl)] = (ratio, density)
      print(f"{length:6d} {case.kind:13} {case.impl:9} {case.label:32} {density:8.3f} "
            f"{seconds * 1e3:10.1f} {ratio:8.2f}x", flush=True)
  for (length, label, impl), (ratio, density) in speedups.items():
    if length == 4096 and impl == "xla" and label.startswith("static") and density <= 0.25:
      print(f"\nblock_sparse xla ({label}, density {density:.3f}) over dense xla at "
            f"L=4096: {ratio:.2f}x (target >= 2.5x)")
  if backend in ("gpu", "cuda"):
    gpu_comparison(args.repeats)


if __name__ == "__main__":
  main()
