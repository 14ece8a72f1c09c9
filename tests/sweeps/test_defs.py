"""Sweep definitions: helpers, run ids, derived steps, validation, jax-free dry runs."""
import os
import re
import resource
import subprocess
import sys
import time

import pytest

from sweeps import define, plan
from tests.helpers import REPO
from tests.sweeps.sweep_files import write_def

TINY = "experiments/configs/lm.py:tiny"


def test_product_zip_and_lr_grid_build_tagged_override_dicts():
  runs = define.product(define.lr_grid([1e-3, 3e-3]), [{"attention.kind": "dense"},
                                                        {"attention.kind": "linear"}])
  assert len(runs) == 4
  assert runs[1] == {"optimizer.lr": 1e-3, "attention.kind": "linear", "_tag": "lr0.001-linear"}
  zipped = define.zip([{"model.width": 32}, {"model.width": 64}], [{"steps": 5}, {"steps": 7}])
  assert zipped[1] == {"model.width": 64, "steps": 7, "_tag": "width64-steps7"}
  with pytest.raises(ValueError, match="equal length"):
    define.zip([{}], [{}, {}])
  with pytest.raises(ValueError, match="'steps' is set by two"):
    define.product([{"steps": 1}], [{"steps": 2}])


def test_run_ids_are_stable_and_follow_the_resolved_config():
  sweep = define.Sweep("s", TINY, define.lr_grid([1e-3, 3e-3]))
  ids = [r.run_id for r in plan.plan(sweep)]
  assert ids == [r.run_id for r in plan.plan(sweep)]
  assert re.fullmatch(r"s-lr0\.001-[0-9a-f]{6}", ids[0]), ids
  # Same run defined differently (base vs run override) -> same id; another config -> new id.
  moved = define.Sweep("s", TINY, [{"_tag": "lr0.001"}], base={"optimizer.lr": 1e-3})
  assert plan.plan(moved)[0].run_id == ids[0]
  other = define.Sweep("s", TINY, define.lr_grid([1e-3]), base={"seed": 1})
  assert plan.plan(other)[0].run_id != ids[0]
  with pytest.raises(ValueError, match="same config"):
    plan.plan(define.Sweep("s", TINY, [{"steps": 5}, {"steps": 5, "_tag": "x"}]))


def test_isoflop_and_ladder_derive_steps_from_the_resolved_model():
  from models import flops
  sizes = [define.model_size(32, 2, 2), define.model_size(64, 2, 4)]
  kinds = [{"attention.kind": "dense"}, {"attention.kind": "linear"}]
  runs = plan.plan(define.Sweep("iso", TINY, define.product(define.isoflop([1e12], sizes), kinds)))
  assert len(runs) == 4
  for r in runs:
    step_flops = flops.flops_per_token(r.cfg) * r.cfg.batch_size * r.cfg.seq_len
    assert abs(r.flops - 1e12) <= step_flops / 2 + 1  # rounded to whole steps
  assert runs[0].run_id.startswith("iso-C1e12-N4.3e4-dense-")
  assert runs[0].cfg.steps != runs[1].cfg.steps  # linear attention costs differ per token
  ladder = plan.plan(define.Sweep("lad", TINY, define.ladder(sizes, tokens_per_param=20)))
  for r in ladder:
    assert r.tokens == pytest.approx(20 * r.params, rel=0.01)


def test_unknown_override_key_names_the_key_and_closest_valid_ones(tmp_path):
  spec = write_def(str(tmp_path), "bad", [{"model.widht": 8}])
  with pytest.raises(ValueError, match=r"'model.widht'.*Did you mean model.width"):
    plan.plan(plan.load_sweep(spec))


def test_dry_run_plans_attention_scaling_without_importing_jax(tmp_path):
  """The paper variant: 5 budgets x 6 sizes x 5 attention layouts."""
  start, cpu_start = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
  proc = subprocess.run(
      [sys.executable, "-X", "importtime", "-m", "sweeps.launch",
       "--sweep=experiments/reproduce/attention_scaling.py:paper", f"--store={tmp_path}",
       "--dry_run"],
      cwd=REPO, capture_output=True, text=True, timeout=60)
  seconds = time.time() - start
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = usage.ru_utime + usage.ru_stime - cpu_start.ru_utime - cpu_start.ru_stime
  assert proc.returncode == 0, proc.stderr
  imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
              if line.startswith("import time:") and "|" in line}
  heavy = sorted(m for m in imported if m.split(".")[0] in ("jax", "jaxlib", "flax", "optax"))
  assert not heavy, heavy
  assert "150 runs" in proc.stdout
  for kind in ("dense", "block_sparse", "spectral", "linear", "dense+linear"):
    assert f"-{kind}-" in proc.stdout
  assert not os.listdir(tmp_path)  # a dry run writes nothing
  assert cpu < 2, cpu  # instant: wall time depends on the machine's load, CPU time does not
  print(f"dry run of 150 runs: {seconds:.2f} s wall, {cpu:.2f} s CPU, "
        f"{len(imported)} modules imported")
