"""The accelerator check suite in one command: every kernel compiled for real, the
kernel tests compiled instead of interpreted, and the attention benchmarks.

  python benchmarks/accelerator_suite.py --out=suite_out            # on a GPU or TPU
  python benchmarks/accelerator_suite.py --dry_run                  # what it would run
  python benchmarks/accelerator_suite.py --smoke --out=/tmp/smoke   # CPU: toy sizes

Stages (each a subprocess with its share of --budget_s as a hard timeout, so a hung
or crashing kernel costs one stage, not the suite):
  env           backend, devices, versions, which JAX-shipped Pallas kernels import
  compile       benchmarks/kernel_compile.py: each registered kind's Pallas path,
                forward and backward, bfloat16 and float32, a ragged and a
                block-multiple L, GQA; compile time and error against the reference
  tests         pytest tests/kernels with CHINCHAX_TEST_INTERPRET=0 (tests/conftest.py:
                the Pallas kernels compile instead of interpreting, the other
                platform's variants and interpret-only tests skip)
  bench_dense   benchmarks/attention.py: dense kinds and baselines (cuDNN, the Pallas
                ops shipped with JAX), L 4k..32k, head_dim 64/128, MHA and GQA 4
  bench_sparse  benchmarks/attention.py: sparse kinds against density (estimator
                time separate; also 64-blocks in 128-tiles) and linear attention,
                L 8k and 32k
Everything lands in --out: <stage>.md, <stage>.json, <stage>.log, summary.md and
summary.json. --smoke runs the same stages at toy sizes (interpreted on CPU) to
check the plumbing; its numbers mean nothing.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from kernels import kinds  # noqa: E402  (the registry; no JAX)
from models.flops import CONVENTIONS  # noqa: E402  (no JAX)

STAGES = ("env", "compile", "tests", "bench_dense", "bench_sparse")
SHARE = {"env": 0.05, "compile": 0.25, "tests": 0.25, "bench_dense": 0.27, "bench_sparse": 0.18}
ATTENTION = os.path.join(ROOT, "benchmarks", "attention.py")
FULL = dict(
    compile=dict(lengths=[1000, 4096], dtypes=["bfloat16", "float32"], head_dim=128),
    tests=["tests/kernels"],
    bench_dense=["--kinds=dense", "--lengths=4096,16384,32768", "--head_dims=64,128",
                 "--gqa=1,4", "--heads=16", "--dtype=bfloat16", "--repeats=5"],
    bench_sparse=["--kinds=SPARSE", "--baselines=off", "--lengths=8192,32768",
                  "--head_dims=128", "--gqa=4", "--heads=16",
                  "--dtype=bfloat16", "--densities=0.05,0.1,0.2,0.4", "--repeats=5",
                  "--mask_block=64"],
)
SMOKE = dict(
    compile=dict(lengths=[77], dtypes=["float32"], head_dim=64),
    tests=["tests/kernels/test_flash.py", "-k", "poisons"],
    bench_dense=["--kinds=dense", "--lengths=256", "--head_dims=64", "--gqa=2", "--heads=4",
                 "--dtype=float32", "--repeats=1", "--pallas=on"],  # pallas interpreted
    bench_sparse=["--kinds=SPARSE", "--baselines=off", "--lengths=256",
                  "--head_dims=64", "--gqa=2", "--heads=4", "--dtype=float32",
                  "--densities=0.5", "--repeats=1"],
)


def _bench_args(stage, settings):
  """The stage's attention.py flags; SPARSE: every registered kind but dense."""
  rest = ",".join(k for k in kinds.names() if k != "dense")
  return [a.replace("SPARSE", rest) for a in settings[stage]]


def stage_command(stage, settings, out, budget_s, convention):
  """argv and extra environment of one stage's subprocess."""
  py = sys.executable
  if stage in ("env", "compile"):
    return [py, os.path.abspath(__file__), f"--stage={stage}", f"--out={out}",
            f"--budget_s={0.8 * budget_s:.0f}"] + (["--smoke"] if settings is SMOKE else []), {}
  if stage == "tests":
    on_cpu = settings is SMOKE
    env = {} if on_cpu else {"CHINCHAX_TEST_INTERPRET": "0"}
    return [py, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
            f"--junitxml={os.path.join(out, 'tests.xml')}", *settings["tests"]], env
  return [py, ATTENTION, *_bench_args(stage, settings), f"--convention={convention}",
          f"--budget_s={0.8 * budget_s:.0f}", f"--json={os.path.join(out, stage + '.json')}",
          f"--markdown={os.path.join(out, stage + '.md')}"], {}


def dry_run(settings, out, budget_s, convention):
  import kernel_compile
  print(f"accelerator suite ({'smoke' if settings is SMOKE else 'full'}), out={out}, "
        f"budget {budget_s:.0f}s; registered kinds: {', '.join(kinds.names())}")
  for stage in STAGES:
    argv, env = stage_command(stage, settings, out, budget_s * SHARE[stage], convention)
    print(f"\n[{stage}] timeout {budget_s * SHARE[stage]:.0f}s: "
          + " ".join(f"{k}={v}" for k, v in env.items()) + (" " if env else "") + " ".join(argv))
    if stage == "compile":
      c = settings["compile"]
      for kind, impl, params, dtype, length in kernel_compile.plan(c["lengths"], c["dtypes"]):
        print(f"  compile {kind} impl={impl} {kernel_compile._label(params)} {dtype} L={length} "
              f"K={c['head_dim']} fwd+bwd")
    if stage.startswith("bench"):
      names = next(a for a in _bench_args(stage, settings)
                   if a.startswith("--kinds=")).split("=")[1]
      print(f"  bench kinds: {names.replace(',', ', ')}")


def run_env(out):
  import jax
  ops = {}
  for name in ("gpu.attention", "gpu.attention_mgpu", "tpu.splash_attention"):
    try:
      __import__(f"jax.experimental.pallas.ops.{name}")
      ops[name] = "imports"
    except Exception as e:  # noqa: BLE001
      ops[name] = f"{type(e).__name__}: {e}"
  devices = jax.devices()
  info = dict(backend=jax.default_backend(), devices=[str(d) for d in devices],
              device_kind=devices[0].device_kind, jax=jax.__version__,
              jaxlib=jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
              pallas_ops=ops, kinds=list(kinds.names()))
  _write(out, "env", info, "\n".join(f"- {k}: {v}" for k, v in info.items()) + "\n")
  print(json.dumps(info, indent=1))


def run_compile(out, settings, budget_s):
  import jax
  import kernel_compile
  c = settings["compile"]
  header = (f"compile: backend={jax.default_backend()} ({jax.devices()[0].device_kind}), "
            f"H=4 G=2 K={c['head_dim']} batch 1, causal, forward+backward vs the reference")
  print(header, flush=True)
  rows = kernel_compile.run(c["lengths"], c["dtypes"], head_dim=c["head_dim"],
                            budget_s=budget_s, log=lambda line: print(line, flush=True))
  _write(out, "compile", dict(header=header, rows=rows), kernel_compile.markdown(rows, header))
  return 0 if all(r["status"] == "ok" for r in rows) else 1


def _write(out, stage, data, text):
  with open(os.path.join(out, stage + ".json"), "w") as f:
    json.dump(data, f, indent=1, default=str)
  with open(os.path.join(out, stage + ".md"), "w") as f:
    f.write(text)


def tests_summary(out):
  """tests.md and tests.json from pytest's junit xml."""
  path = os.path.join(out, "tests.xml")
  if not os.path.exists(path):
    return
  suite = ElementTree.parse(path).getroot()
  suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
  counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
  failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
            if c.find("failure") is not None or c.find("error") is not None]
  text = ("pytest: " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f", {float(suite.get('time', 0)):.0f}s\n" + "".join(f"- FAILED {n}\n" for n in failed))
  _write(out, "tests", dict(counts, failed=failed), text)


def run_suite(settings, out, budget_s, convention, stages):
  os.makedirs(out, exist_ok=True)
  summary, start = [], time.perf_counter()
  for stage in stages:
    timeout = budget_s * SHARE[stage]
    argv, env = stage_command(stage, settings, out, timeout, convention)
    print(f"[{stage}] {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    with open(os.path.join(out, stage + ".log"), "w") as log:
      try:
        rc = subprocess.run(argv, cwd=ROOT, env={**os.environ, **env}, stdout=log,
                            stderr=subprocess.STDOUT, timeout=timeout).returncode
        status = "ok" if rc == 0 else f"exit {rc}"
      except subprocess.TimeoutExpired:
        status = f"timed out after {timeout:.0f}s"
    if stage == "tests":
      tests_summary(out)
    seconds = time.perf_counter() - t0
    summary.append(dict(stage=stage, status=status, seconds=round(seconds, 1)))
    print(f"[{stage}] {status} in {seconds:.0f}s", flush=True)
  lines = [f"# accelerator suite ({'smoke' if settings is SMOKE else 'full'}), "
           f"{time.perf_counter() - start:.0f}s, convention {convention}", "",
           "| stage | status | seconds |", "|---|---|---|"]
  lines += [f"| {s['stage']} | {s['status']} | {s['seconds']} |" for s in summary]
  for s in summary:
    md = os.path.join(out, s["stage"] + ".md")
    body = open(md).read() if os.path.exists(md) else f"(no table; see {s['stage']}.log)\n"
    lines += ["", f"## {s['stage']}", "", body]
  with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(lines))
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print("\n".join(lines))
  return 0 if all(s["status"] == "ok" for s in summary) else 1


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="accelerator_suite_out")
  parser.add_argument("--budget_s", type=float, default=540,
                      help="total seconds (under the 10 minutes a device command may run); "
                     "each stage gets a fixed share as its timeout")
  parser.add_argument("--smoke", action="store_true", help="toy sizes (CPU plumbing check)")
  parser.add_argument("--dry_run", action="store_true", help="print the plan, run nothing")
  parser.add_argument("--stages", default=",".join(STAGES))
  parser.add_argument("--convention", default="executed", choices=CONVENTIONS)
  parser.add_argument("--stage", help=argparse.SUPPRESS)  # a stage's own subprocess
  args = parser.parse_args(argv)
  settings = SMOKE if args.smoke else FULL
  if args.stage == "env":
    return run_env(args.out)
  if args.stage == "compile":
    return run_compile(args.out, settings, args.budget_s)
  stages = [s for s in args.stages.split(",") if s]
  unknown = set(stages) - set(STAGES)
  if unknown:
    parser.error(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
  if args.dry_run:
    return dry_run(settings, args.out, args.budget_s, args.convention)
  return run_suite(settings, args.out, args.budget_s, args.convention, stages)


if __name__ == "__main__":
  sys.exit(main())
