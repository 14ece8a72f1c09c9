"""The accelerator suite's plan (benchmarks/accelerator_suite.py --dry_run): every
registered attention kind and every stage is in it, and nothing runs."""
import importlib.util
import os

from kernels import kinds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _suite():
  path = os.path.join(ROOT, "benchmarks", "accelerator_suite.py")
  spec = importlib.util.spec_from_file_location("accelerator_suite", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_dry_run_lists_every_kind_and_stage(capsys, tmp_path):
  suite = _suite()
  out = tmp_path / "out"
  suite.main(["--dry_run", f"--out={out}"])
  text = capsys.readouterr().out
  assert not out.exists()  # a dry run writes nothing
  for stage in suite.STAGES:
    assert f"[{stage}]" in text, stage
  compiled = {line.split()[1] for line in text.splitlines() if line.startswith("  compile ")}
  benched = {name.strip() for line in text.splitlines() if line.startswith("  bench kinds:")
             for name in line.split(":", 1)[1].split(",")}
  for kind in kinds.names():
    if "pallas" in kinds.get(kind).impls:
      assert kind in compiled, kind
    assert kind in benched, kind
  assert "CHINCHAX_TEST_INTERPRET=0" in text  # the tests stage compiles the kernels


def test_dry_run_follows_the_registry(capsys):
  """A kind registered later is benchmarked too (the stages read kernels.kinds)."""
  toy = kinds.KindSpec("toy_kind", impls={"xla": lambda *a, **k: None},
                       flops=lambda cfg, head_dim, density=None: 0)
  with kinds.registered(toy):
    _suite().main(["--dry_run"])
  assert "toy_kind" in capsys.readouterr().out
