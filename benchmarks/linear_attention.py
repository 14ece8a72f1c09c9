"""Chunked linear attention (XLA path): forward+backward time and memory versus L.

Rows for `benchmarks/attention.py` (which prints them, `--kinds=linear`): one
row per length (and XLA dense causal attention at dense_length for
comparison), the fitted log-log slope of time versus L (linear attention should
be ~1; dense is ~2) and the speedup over dense. Times are the best of N
wall-clock runs on the default backend; on a shared machine they still move
with its load.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from kernels import dense
from kernels import linear


def _loss_and_grads(attend):
  def loss(q, k, v, log_decay):
    return jnp.sum(attend(q, k, v, log_decay))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))


def _inputs(length, heads, head_dim, batch, dtype):
  keys = jax.random.split(jax.random.PRNGKey(length), 4)
  shape = (batch, length, heads, head_dim)
  q, k, v = (jax.random.normal(key, shape, dtype) for key in keys[:3])
  log_decay = -jax.nn.softplus(jax.random.normal(keys[3], shape[:3], jnp.float32))
  return q, k, v, log_decay


def _measure(fn, args, repeats):
  compiled = fn.lower(*args).compile()
  temp_bytes = compiled.memory_analysis().temp_size_in_bytes
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return min(times), temp_bytes  # best of N: the least disturbed by other load


def linear_rows(lengths=(1024, 2048, 4096, 8192, 16384), *, heads=4, head_dim=64, batch=1,
                dtype=jnp.float32, chunk_size=64, dense_length=8192, repeats=3):
  """Rows {kind, impl, L, fwd_bwd_ms, temp_MiB} for linear (xla) at each length and
  for dense causal attention (xla) at dense_length."""
  linear_fn = _loss_and_grads(lambda q, k, v, g: linear.xla_linear_attention(
      q, k, v, g, chunk_size=chunk_size))
  dense_fn = _loss_and_grads(lambda q, k, v, g: dense.xla_attention(q, k, v, causal=True))
  runs = [("linear", linear_fn, length) for length in lengths]
  if dense_length:
    runs.append(("dense", dense_fn, dense_length))
  rows = []
  for kind, fn, length in runs:
    seconds, temp_bytes = _measure(fn, _inputs(length, heads, head_dim, batch, dtype), repeats)
    rows.append(dict(kind=kind, impl="xla", L=length, fwd_bwd_ms=1e3 * seconds,
                     temp_MiB=temp_bytes / 2**20))
  return rows


def loglog_slope(rows, kind="linear"):
  """Least-squares slope of log(time) against log(L) over the rows of one kind."""
  picked = [r for r in rows if r["kind"] == kind]
  lengths = np.log([r["L"] for r in picked])
  times = np.log([r["fwd_bwd_ms"] for r in picked])
  return float(np.polyfit(lengths, times, 1)[0])


def speedup_over_dense(rows, length):
  """Dense time / linear time at one length (both must be in rows)."""
  at = {r["kind"]: r["fwd_bwd_ms"] for r in rows if r["L"] == length}
  return at["dense"] / at["linear"]
