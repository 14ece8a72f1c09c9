"""Attention forward and backward timing and TFLOP/s per kind, impl and baseline.

  python benchmarks/attention.py                 # backend defaults (below)
  python benchmarks/attention.py --lengths=4096,32768 --head_dims=128 --gqa=1,4 \
      --densities=0.05,0.2 --convention=chinchilla --json=out.json --markdown=out.md

One row per (L, head_dim, heads/kv_heads, case): forward ms, backward ms (the vjp
alone, its residuals computed beforehand) and their TFLOP/s. FLOPs are the
attention core's count from models.flops (each kind's KindSpec.flops, so never
re-derived here) under --convention: `executed` (causal dense at (L+1)/2 keys,
block kinds whole kept blocks at the measured density) or `chinchilla` (full L,
density-scaled). Backward = 2x forward FLOPs (models.flops' training = 3x forward;
recomputation not credited). Sparse kinds run at each --densities target (sparge
topk / prism max_blocks; the measured density is printed): `est ms` is the block
estimator alone, `fwd ms` the kernel on its mask, `fwd+est` both in one program.
--fused_bwd=on (the default) adds a dense Pallas row whose backward is the fused
kernel (kernels.fused_bwd_*: P and dS computed once per tile), beside the default
two-kernel backward's row. --mask_block=64 adds, per sparse Pallas row, the same
target at 64-blocks computed in 128-tiles (kernels.flash_lists.retile: finer masks,
TPU-valid tiles); its note gives the share of reachable 128-tiles the kernel visits.
Baselines: jax.nn.dot_product_attention (xla, cudnn) and the Pallas kernels that
ship with JAX (benchmarks/attention_baselines.py); a baseline the backend lacks is
a row with the reason. Defaults: on GPU/TPU L 4k..32k, head_dim 64 and 128, MHA
and GQA 4, bfloat16; on CPU toy sizes, float32, Pallas rows off (--pallas=on runs
them interpreted). XLA paths stop at --xla_max_len (their L x L scores).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

import attention_baselines  # noqa: E402
from kernels import attention, kinds  # noqa: E402
from kernels.flash import flash_attention  # noqa: E402
from models import flops as model_flops  # noqa: E402

ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")
DEFAULTS = {
    True: dict(lengths="4096,8192,16384,32768", head_dims="64,128", heads=16, gqa="1,4",
               dtype="bfloat16", densities="0.05,0.1,0.2,0.4", xla_max_len=8192),
    False: dict(lengths="256,512", head_dims="64", heads=4, gqa="1,2",
                dtype="float32", densities="0.25,0.5", xla_max_len=4096),
}
BLOCK = 128
FUSED_CASE = "full, fused bwd"
COLUMNS = [("L", 6), ("K", 4), ("H/G", 6), ("kind", 13), ("impl", 8), ("case", 30),
           ("density", 8), ("est ms", 8), ("fwd ms", 9), ("fwd+est", 9), ("bwd ms", 9),
           ("fwd TF/s", 9), ("bwd TF/s", 9), ("note", 0)]


def _inputs(batch, length, heads, kv_heads, head_dim, dtype, seed=0):
  kq, kk, kv, ko = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(kq, (batch, length, heads, head_dim), dtype)
  k = jax.random.normal(kk, (batch, length, kv_heads, head_dim), dtype)
  v = jax.random.normal(kv, (batch, length, kv_heads, head_dim), dtype)
  return q, k, v, jax.random.normal(ko, q.shape, dtype)


def timed(fn, args, repeats):
  """Median seconds of compiled fn(*args) (compiled and run once beforehand)."""
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def forward_backward(fn, q, k, v, do, repeats, backward=True):
  """(forward s, backward s or None): the backward is the vjp applied to dO, its
  residuals computed by a separate jitted forward (so not timed)."""
  fwd = timed(fn, (q, k, v), repeats)
  if not backward:
    return fwd, None
  _, vjp = jax.jit(lambda q, k, v: jax.vjp(fn, q, k, v))(q, k, v)
  return fwd, timed(lambda vjp, do: vjp(do), (vjp, do), repeats)


def flop_config(kind, impl, length, heads, kv_heads, head_dim, params):
  """The config fields models.flops reads for one attention layer."""
  return ml_collections.ConfigDict(dict(
      seq_len=length,
      model=dict(heads=heads, kv_heads=kv_heads, head_dim=head_dim, width=heads * head_dim),
      attention=dict(kind=kind, impl=impl, block_q=params.get("block_q", BLOCK),
                     block_k=params.get("block_k", BLOCK),
                     feature_map=params.get("feature_map", "identity"),
                     normalize=params.get("normalize", False),
                     chunk_size=params.get("chunk_size", 64))))


def forward_flops(kind, impl, shape, params, density, convention):
  batch, length, heads, kv_heads, head_dim = shape
  cfg = flop_config(kind, impl, length, heads, kv_heads, head_dim, params)
  per_token = model_flops.attention_core_flops_per_token(
      kind, cfg, density if kinds.get(kind).estimate else None, convention=convention)
  return per_token * batch * length


def sparse_params(kind, length, density, block=BLOCK):
  """Estimator params aiming at `density` of the reachable causal blocks."""
  blocks = math.ceil(length / block)
  if kind == "block_sparse":
    return dict(estimator="sparge", topk=density)
  # prism keeps up to max_blocks per query row; a causal row reaches ~nK/2 on average.
  return dict(topp=0.99, max_blocks=max(1, round(density * (blocks + 1) / 2)))


def cases(kind_names, impls, densities, fused_bwd=False, mask_block=None):
  """(kind, impl, label, density target or None, mask block or None) rows for the
  registered kinds; fused_bwd: also dense Pallas with the fused backward (label
  FUSED_CASE); mask_block: also sparse Pallas at that block in BLOCK-tiles."""
  rows = []
  for kind in kind_names:
    spec = kinds.get(kind)
    for impl in impls:
      if impl not in spec.impls:
        continue
      if spec.estimate is None:
        rows.append((kind, impl, "full", None, None))
        if fused_bwd and kind == "dense" and impl == "pallas":
          rows.append((kind, impl, FUSED_CASE, None, None))
      else:
        for d in densities:
          rows.append((kind, impl, f"target density {d:g}", d, None))
          if mask_block and impl == "pallas":
            rows.append((kind, impl, f"target density {d:g}, {mask_block}-blocks", d,
                         mask_block))
  return rows


def tile_note(mask_BHQK, block):
  """The share of reachable BLOCK-tiles that hold a kept block-sized block."""
  import numpy as np
  from kernels import estimators
  mask = np.asarray(mask_BHQK)
  group = BLOCK // block
  *lead, num_q, num_k = mask.shape
  tiles = mask.reshape(*lead, num_q // group, group, num_k // group, group).any(axis=(-3, -1))
  reachable = np.asarray(estimators.reachable_blocks(num_q // group, num_k // group, BLOCK,
                                                     BLOCK, True))
  return f"{BLOCK}-tiles visited: {tiles.sum() / (reachable.sum() * np.prod(lead)):.3f}"


def _tflops(flop, seconds):
  return flop / seconds / 1e12 if seconds else float("nan")


def run_case(kind, impl, target, q, k, v, do, repeats, convention, fused_bwd=False,
             mask_block=None):
  shape = (*q.shape[:3], k.shape[2], q.shape[3])
  spec = kinds.get(kind)
  row = dict(kind=kind, impl=impl, case="full" if target is None else f"target {target:g}",
             density=1.0, est_ms=None, fwd_est_ms=None)
  params = {} if target is None else sparse_params(kind, q.shape[1], target,
                                                   mask_block or BLOCK)
  if mask_block:  # finer mask blocks, TPU-valid compute tiles
    params.update(block_q=mask_block, block_k=mask_block, fwd_block_q=BLOCK,
                  fwd_block_k=BLOCK)
  if fused_bwd:  # the dense kind's Pallas call (kernels.dispatch) with the fused backward
    row["case"] = FUSED_CASE
    fn = lambda q, k, v: flash_attention(q, k, v, causal=True, fused_bwd=True)
  elif spec.estimate is None:
    fn = lambda q, k, v: attention(q, k, v, kind=kind, impl=impl, **params)
  else:
    estimate = spec.estimate_fn()

    def estimate_mask(q, k):
      density, out = estimate(q, k, causal=True, **params)
      return density, out.get("mask_BHQK")
    est_s = timed(estimate_mask, (q, k), repeats)
    density, mask = jax.jit(estimate_mask)(q, k)
    row.update(density=float(density), est_ms=est_s * 1e3,
               case=" ".join([f"{n}={x}" for n, x in params.items()
                              if n not in kinds.FLASH_PARAMS and n not in kinds.BLOCK_PARAMS]
                             + ([f"[{mask_block}-blocks]"] if mask_block else [])))
    if mask_block and mask is not None:
      row["note"] = tile_note(mask, mask_block)
    masked = dict(params) if mask is None else dict(params, mask_BHQK=mask)
    fn = lambda q, k, v: attention(q, k, v, kind=kind, impl=impl, **masked)
    row["fwd_est_ms"] = 1e3 * timed(
        lambda q, k, v: attention(q, k, v, kind=kind, impl=impl, **params), (q, k, v), repeats)
  fwd_s, bwd_s = forward_backward(fn, q, k, v, do, repeats)
  flop = forward_flops(kind, impl, shape, params, row["density"], convention)
  row.update(fwd_ms=fwd_s * 1e3, bwd_ms=bwd_s * 1e3, fwd_tflops=_tflops(flop, fwd_s),
             bwd_tflops=_tflops(2 * flop, bwd_s), forward_flops=flop)
  return row


def run_baseline(base, q, k, v, do, repeats, convention):
  row = dict(kind="dense", impl="baseline", case=base.name, density=1.0, est_ms=None,
             fwd_est_ms=None, note=base.reason)
  if base.fn is None:
    return dict(row, skipped=base.reason)
  fwd_s, bwd_s = forward_backward(base.fn, q, k, v, do, repeats, backward=base.backward)
  flop = forward_flops("dense", "xla", (*q.shape[:3], k.shape[2], q.shape[3]), {}, None,
                       convention)
  return dict(row, fwd_ms=fwd_s * 1e3, bwd_ms=None if bwd_s is None else bwd_s * 1e3,
              fwd_tflops=_tflops(flop, fwd_s),
              bwd_tflops=None if bwd_s is None else _tflops(2 * flop, bwd_s),
              forward_flops=flop)


def _cell(value, width):
  if value is None:
    text = "-"
  elif isinstance(value, float):
    text = "nan" if math.isnan(value) else (f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}")
  else:
    text = str(value)
  return text.rjust(width) if width else text


def _row_cells(r):
  note = r.get("skipped") or r.get("error") or r.get("note", "")
  return [r["L"], r["K"], f"{r['H']}/{r['G']}", r["kind"], r["impl"],
          r["case"].replace("estimator=", "")[:30],
          r["density"], r.get("est_ms"), r.get("fwd_ms"), r.get("fwd_est_ms"), r.get("bwd_ms"),
          r.get("fwd_tflops"), r.get("bwd_tflops"), note]


def format_line(r):
  return " ".join(_cell(c, w) for c, (_, w) in zip(_row_cells(r), COLUMNS))


def markdown(rows, header):
  lines = [header, "", "| " + " | ".join(n for n, _ in COLUMNS) + " |",
           "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(_cell(c, 0) for c in _row_cells(r)) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def print_linear_table(lengths, repeats):
  """Linear attention time and compiled temporary memory against L, the log-log
  slope (~1 for linear, ~2 for dense) and the speed-up over dense at 8192."""
  import linear_attention
  rows = linear_attention.linear_rows(tuple(lengths), dense_length=8192, repeats=repeats)
  print("\nlinear attention (xla, chunk 64), batch 1, 4 heads, head_dim 64, float32, "
        "forward+backward incl. the log_decay gradient")
  print(f"{'kind':<8}{'impl':<6}{'L':>7}{'fwd+bwd ms':>12}{'temp MiB':>10}")
  for r in rows:
    print(f"{r['kind']:<8}{r['impl']:<6}{r['L']:>7}{r['fwd_bwd_ms']:>12.1f}"
          f"{r['temp_MiB']:>10.1f}", flush=True)
  print(f"log-log slope of linear time vs L: {linear_attention.loglog_slope(rows):.3f}")


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", help="comma-separated L (default by backend)")
  parser.add_argument("--head_dims", help="comma-separated head_dim (K)")
  parser.add_argument("--heads", type=int, help="query heads H")
  parser.add_argument("--gqa", help="comma-separated H/G ratios (1: MHA)")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"))
  parser.add_argument("--kinds", default=",".join(kinds.names()),
                      help="comma-separated registered kinds")
  parser.add_argument("--impls", default="xla,pallas")
  parser.add_argument("--pallas", default="auto", choices=("auto", "on", "off"),
                      help="auto: Pallas rows only on GPU/TPU (interpreted on CPU)")
  parser.add_argument("--densities", help="sparse kinds' target densities")
  parser.add_argument("--fused_bwd", default="on", choices=("on", "off"),
                      help="with Pallas rows: also dense Pallas with the fused backward")
  parser.add_argument("--mask_block", type=int, default=0,
                      help="with Pallas rows: also each sparse target at this mask block "
                           f"in {BLOCK}-tiles (0: off)")
  parser.add_argument("--baselines", default="on", choices=("on", "off"))
  parser.add_argument("--convention", default="executed", choices=model_flops.CONVENTIONS)
  parser.add_argument("--xla_max_len", type=int, help="longest L for the xla rows")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--budget_s", type=float, default=0,
                      help="stop starting rows after this many seconds (0: no limit)")
  parser.add_argument("--linear_lengths", default="",
                      help="also print the linear-attention scaling table at these L "
                           "(xla, with the decay gradient; benchmarks/linear_attention.py)")
  parser.add_argument("--json", help="write the rows here")
  parser.add_argument("--markdown", help="write the table here")
  args = parser.parse_args(argv)
  backend = jax.default_backend()
  for name, value in DEFAULTS[backend in ACCELERATORS].items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  return args, backend


def grid(args):
  ints = lambda text: [int(x) for x in str(text).split(",") if x]
  for length in ints(args.lengths):
    for head_dim in ints(args.head_dims):
      for ratio in ints(args.gqa):
        yield length, head_dim, args.heads, max(1, args.heads // ratio)


def main(argv=None):
  args, backend = parse_args(argv)
  on_accelerator = backend in ACCELERATORS
  impls = [i for i in args.impls.split(",") if i]
  if args.pallas == "off" or (args.pallas == "auto" and not on_accelerator):
    impls = [i for i in impls if i != "pallas"]
  densities = [float(x) for x in args.densities.split(",") if x]
  case_list = cases([k for k in args.kinds.split(",") if k], impls, densities,
                    fused_bwd=args.fused_bwd == "on", mask_block=args.mask_block)
  dtype = jnp.dtype(args.dtype)
  header = (f"backend={backend} ({jax.devices()[0].device_kind}) jax={jax.__version__} "
            f"batch={args.batch} dtype={args.dtype} causal block={BLOCK} "
            f"repeats={args.repeats} (median); FLOPs: attention core, convention "
            f"{args.convention}, backward = 2x forward; xla rows up to "
            f"L={args.xla_max_len}")
  print(header)
  print(" ".join(n.rjust(w) if w else n for n, w in COLUMNS), flush=True)
  rows, start = [], time.perf_counter()
  for length, head_dim, heads, kv_heads in grid(args):
    q, k, v, do = _inputs(args.batch, length, heads, kv_heads, head_dim, dtype)
    todo = [("case", c) for c in case_list]
    if args.baselines == "on":
      todo += [("baseline", b) for b in attention_baselines.baselines(dtype, head_dim)]
    for what, item in todo:
      base = dict(L=length, K=head_dim, H=heads, G=kv_heads)
      xla = item.name == "sdpa xla" if what == "baseline" else item[1] == "xla"
      label = dict(kind=item[0], impl=item[1], case=item[2]) if what == "case" else dict(
          kind="dense", impl="baseline", case=item.name)
      if args.budget_s and time.perf_counter() - start > args.budget_s:
        row = dict(base, **label, density=None, skipped=f"over --budget_s={args.budget_s:g}")
      elif xla and length > args.xla_max_len:
        row = dict(base, **label, density=None, skipped=f"L > --xla_max_len={args.xla_max_len}")
      else:
        try:
          row = dict(base, **(
              run_case(item[0], item[1], item[3], q, k, v, do, args.repeats, args.convention,
                       fused_bwd=item[2] == FUSED_CASE, mask_block=item[4])
              if what == "case" else
              run_baseline(item, q, k, v, do, args.repeats, args.convention)))
        except Exception as e:  # noqa: BLE001  an OOM or unsupported shape is one row
          row = dict(base, **label, density=None,
                     error=f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
      rows.append(row)
      print(format_line(row), flush=True)
  if args.linear_lengths:
    print_linear_table([int(x) for x in args.linear_lengths.split(",")], args.repeats)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(header=header, args=vars(args), rows=rows), f, indent=1)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(markdown(rows, header))
  return rows


if __name__ == "__main__":
  main()
