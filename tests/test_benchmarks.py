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


def test_attention_flops_are_the_models_counts():
  """benchmarks/attention.py's TFLOP/s use models.flops' per-kind counts (both
  conventions), times batch x L; here causal dense at L=256, H=4, K=64."""
  import sys
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  spec = importlib.util.spec_from_file_location(
      "attention_bench", os.path.join(ROOT, "benchmarks", "attention.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  shape = (2, 256, 4, 2, 64)  # batch, L, H, G, K
  executed = bench.forward_flops("dense", "xla", shape, {}, None, "executed")
  chinchilla = bench.forward_flops("dense", "xla", shape, {}, None, "chinchilla")
  assert executed == 2 * 256 * 4 * (4 * 64 + 3) * (256 + 1) / 2
  assert chinchilla == 2 * 256 * 4 * (4 * 64 + 3) * 256
  half = bench.forward_flops("block_sparse", "xla", shape, {}, 0.5, "chinchilla")
  assert half == chinchilla / 2
