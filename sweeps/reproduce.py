"""Runs a paper reproduction end to end: its sweep, then its analysis, printed and saved.

  python -m sweeps.reproduce --list
  python -m sweeps.reproduce --name=NAME:VARIANT --store=DIR [--parallel=K] [--launcher=slurm ...]
      [--dry_run] [--report_only] [--report_dir=DIR]

A reproduction is a sweep definition in experiments/reproduce/NAME.py (get_sweep(variant):
`tiny` for two CPU cores, `paper` for a cluster, `smoke` for tests) with a
`report(store, out, variant) -> markdown` that makes the paper's comparison from the store's
runs. This launches the sweep (sweeps.launch: idempotent, resumable, the same launcher flags),
then writes REPORT_DIR/report.md (default: DIR-figures/NAME beside the store,
sweeps.plot.beside; one store may serve several reproductions) with the fits and their plots under it, and prints it. --report_only
re-analyses a store without launching (e.g. one trained on a cluster).
"""
import ast
import glob
import os

from absl import app, flags

from experiments import logs
from experiments.metrics import write_text_atomic
from sweeps import launch as launch_lib
from sweeps import plan as plan_lib
from sweeps import rundir

DIRECTORY = os.path.join(plan_lib.REPO, "experiments", "reproduce")

_NAME = flags.DEFINE_string("name", None, "Reproduction and variant: NAME:VARIANT (--list).")
_LIST = flags.DEFINE_bool("list", False, "List the reproductions and exit.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Analyse the store without launching.")
_REPORT_DIR = flags.DEFINE_string("report_dir", None, "Where report.md, the fits and their "
                                  "plots go (default: DIR-figures/NAME beside --store).")


def available() -> dict:
  """{name: first line of its docstring} for every experiments/reproduce/*.py (read, not run)."""
  out = {}
  for path in sorted(glob.glob(os.path.join(DIRECTORY, "*.py"))):
    name = os.path.splitext(os.path.basename(path))[0]
    if name.startswith("_"):
      continue
    with open(path) as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ""
    out[name] = doc.strip().splitlines()[0] if doc.strip() else ""
  return out


def path_of(name: str) -> str:
  if name not in available():
    raise ValueError(f"unknown reproduction {name!r}; choose one of "
                     f"{', '.join(available())} (python -m sweeps.reproduce --list)")
  return os.path.join(DIRECTORY, f"{name}.py")


def parse(spec: str) -> tuple:
  """'NAME:VARIANT' -> (name, variant); the variant is required (tiny, paper, ...)."""
  name, sep, variant = (spec or "").partition(":")
  if not name or not sep or not variant:
    raise ValueError(f"--name={spec!r}: use NAME:VARIANT, e.g. --name=attention_scaling:tiny "
                     f"(reproductions: {', '.join(available())})")
  path_of(name)
  return name, variant


def analyse(name: str, variant: str, store: str, out: str = None) -> tuple:
  """(markdown report, path of report.md): the reproduction's report on the store."""
  from sweeps import plot
  module = plan_lib.load_definition(path_of(name))
  module.get_sweep(variant)  # an unknown variant fails here, naming the valid ones
  out = out or os.path.join(plot.beside(store), name)  # stores are shared: one per name
  os.makedirs(out, exist_ok=True)
  body = module.report(store, out, variant)
  text = f"# {name}:{variant}\n\n{available()[name]}\n\nStore: `{store}`\n\n{body}\n"
  path = os.path.join(out, "report.md")
  write_text_atomic(path, text)
  return text, path


def reproduce(name, variant, store, *, out=None, report_only=False, dry_run=False,
              launcher="local", parallel=1, **options) -> int:
  """Launch (unless report_only), then analyse; returns the exit status."""
  spec = f"{path_of(name)}:{variant}"
  if not report_only:
    states = launch_lib.launch(spec, store, launcher, parallel, dry_run=dry_run, **options)
    if dry_run:
      return 0
    unfinished = sorted(r for r, s in states.items() if s not in rundir.FINISHED)
    if unfinished:
      logs.warn(f"{len(unfinished)} run(s) did not finish ({', '.join(unfinished[:5])}"
                f"{' ...' if len(unfinished) > 5 else ''}); the report uses the finished "
                "ones. Relaunch the same command to resume them.")
  text, path = analyse(name, variant, store, out)
  print(text)
  print(f"wrote {path}")
  return 0


def main(argv):
  logs.setup()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}", exitcode=logs.EXIT_BAD_INPUT)
  if _LIST.value:
    for name, line in available().items():
      print(f"{name:<22} {line}")
    return 0
  if not _NAME.value or not launch_lib._STORE.value:
    raise app.UsageError("--name=NAME:VARIANT and --store=DIR are required (--list shows "
                         "the reproductions)", exitcode=logs.EXIT_BAD_INPUT)

  def body():
    name, variant = parse(_NAME.value)
    return reproduce(name, variant, launch_lib._STORE.value, out=_REPORT_DIR.value,
                     report_only=_REPORT_ONLY.value, dry_run=launch_lib._DRY_RUN.value,
                     launcher=launch_lib._LAUNCHER.value, parallel=launch_lib._PARALLEL.value,
                     rerun=rundir.parse_rerun(launch_lib._RERUN.value),
                     stale_minutes=launch_lib._STALE.value, **launch_lib.flag_options())
  return logs.guard(body)


if __name__ == "__main__":
  app.run(main, flags_parser=logs.parse_flags)
