"""The accelerator suite's compile stage: every registered kind's Pallas path
compiled for the backend (forward and backward; bfloat16 and float32; ragged and
block-multiple L, GQA), run once and compared with the kind's reference impl.

On GPU/TPU the kernels compile for real (interpret=None -> compiled); on CPU they
run interpreted, which checks this stage's plumbing only. Each row: compile
seconds, run seconds, finiteness and the relative error of o, dq, dk, dv against
the float32 reference on the same rounded inputs and the same block mask (the
estimator runs once, on float32, and both paths take its mask).
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from kernels import attention, kinds

# Estimator settings that keep a fraction of blocks (the defaults of some keep all).
# The flash kernels' options too: the fused backward, 64-blocks in 128-tiles.
KIND_PARAMS = {
    "dense": [{}, dict(fused_bwd=True)],
    "block_sparse": [dict(estimator="static", window_blocks=3, sink_blocks=1),
                     dict(estimator="sparge", topk=0.3),
                     dict(estimator="sparge", topk=0.3, block_q=64, block_k=64,
                          fwd_block_q=128, fwd_block_k=128, fused_bwd=True)],
    "spectral": [dict(topp=0.9)],
}
# Relative error bounds: compiled float32 matmuls may run at TF32 / bf16x3 passes.
TOLERANCE = {"float32": 2e-3, "bfloat16": 3e-2}


def plan(lengths, dtypes, impl="pallas"):
  """[(kind, impl, params, dtype, L)] for every registered kind with `impl`."""
  items = []
  for kind in kinds.names():
    spec = kinds.get(kind)
    if impl not in spec.impls:
      continue
    for params in KIND_PARAMS.get(kind, [{}]):
      items += [(kind, impl, params, dtype, length) for dtype in dtypes for length in lengths]
  return items


def _rel_err(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def check(kind, impl, params, dtype, length, heads=4, kv_heads=2, head_dim=128, batch=1):
  """One row: compile and run fn's forward+backward, errors against the reference."""
  keys = jax.random.split(jax.random.PRNGKey(length), 4)
  shapes = [(batch, length, h, head_dim) for h in (heads, kv_heads, kv_heads, heads)]
  q32, k32, v32, do32 = [jax.random.normal(key, s).astype(dtype).astype(jnp.float32)
                         for key, s in zip(keys, shapes)]
  spec = kinds.get(kind)
  run_params = dict(params)
  if spec.estimate is not None:  # one mask for both paths
    _, run_params = spec.estimate_fn()(q32, k32, causal=True, **params)

  def fwd_bwd(impl_name):
    def fn(q, k, v, do):
      o, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, kind=kind, impl=impl_name,
                                                 **run_params), q, k, v)
      return (o, *vjp(do))
    return fn

  args = [x.astype(dtype) for x in (q32, k32, v32, do32)]
  start = time.perf_counter()
  compiled = jax.jit(fwd_bwd(impl)).lower(*args).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  outs = jax.block_until_ready(compiled(*args))
  run_s = time.perf_counter() - start
  ref_impl = "reference" if "reference" in spec.impls else "xla"
  refs = jax.jit(fwd_bwd(ref_impl))(q32, k32, v32, do32)
  errors = {name: _rel_err(o, r) for name, o, r in zip(("o", "dq", "dk", "dv"), outs, refs)}
  finite = all(bool(jnp.all(jnp.isfinite(o))) for o in outs)
  ok = finite and max(errors.values()) < TOLERANCE[str(jnp.dtype(dtype))]
  return dict(kind=kind, impl=impl, params=_label(params), dtype=str(jnp.dtype(dtype)),
              L=length, H=heads, G=kv_heads, K=head_dim, compile_s=compile_s, run_s=run_s,
              finite=finite, max_rel_err=max(errors.values()), **{f"err_{n}": e for n, e in
                                                                    errors.items()},
              status="ok" if ok else "FAIL")


def _label(params):
  return " ".join(f"{n}={v}" for n, v in params.items()) or "-"


def run(lengths, dtypes, head_dim=128, budget_s=0, log=print):
  """Rows for the whole plan; an exception is a FAIL row, the budget skips the rest."""
  rows, start = [], time.perf_counter()
  for kind, impl, params, dtype, length in plan(lengths, dtypes):
    base = dict(kind=kind, impl=impl, params=_label(params), dtype=dtype, L=length)
    if budget_s and time.perf_counter() - start > budget_s:
      row = dict(base, status="skipped (budget)")
    else:
      try:
        row = check(kind, impl, params, jnp.dtype(dtype), length, head_dim=head_dim)
      except Exception as e:  # noqa: BLE001  a kernel that fails to compile is one row
        row = dict(base, status="FAIL", error=f"{type(e).__name__}: "
                                               f"{str(e).splitlines()[0][:160]}")
    rows.append(row)
    log(format_row(row))
  return rows


COLUMNS = ("kind", "impl", "params", "dtype", "L", "compile_s", "run_s", "max_rel_err", "status")


def format_row(row):
  cells = []
  for name in COLUMNS:
    value = row.get(name, "-")
    cells.append(f"{value:.3g}" if isinstance(value, float) else str(value))
  if "error" in row:
    cells.append(row["error"])
  return " | ".join(cells)


def markdown(rows, header):
  lines = [header, "", "| " + " | ".join(COLUMNS) + " | error |",
           "|" + "---|" * (len(COLUMNS) + 1)]
  lines += ["| " + format_row(dict(r, error=r.get("error", ""))) + " |" for r in rows]
  return "\n".join(lines) + "\n"
