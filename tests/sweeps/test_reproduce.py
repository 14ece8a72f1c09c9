"""Paper reproductions (experiments/reproduce/*.py) and their runner, sweeps.reproduce."""
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import validation
from sweeps import define, design, plan, reproduce, synthetic
from tests.helpers import REPO

NAMES = ("attention_scaling", "chinchilla_isoflop", "kaplan_vs_chinchilla", "mup_transfer")


def _module(name):
  return plan.load_definition(reproduce.path_of(name))


def test_every_reproduction_is_listed_with_tiny_paper_and_smoke_variants():
  assert tuple(reproduce.available()) == NAMES
  for name in NAMES:
    module = _module(name)
    assert callable(module.report), name
    for variant in ("tiny", "paper", "smoke"):
      runs = plan.plan(module.get_sweep(variant))
      assert runs, (name, variant)
      for run in runs:  # every run: a bad shape (an odd prism band) fails here, not at launch
        validation.validate(run.cfg)
      if variant != "smoke":  # no run shorter than warmup, none absurdly long, all bracketed
        assert design.check(runs) == [], (name, variant)
    with pytest.raises(ValueError, match="tiny"):
      module.get_sweep("huge")


def test_bad_names_say_what_to_use():
  with pytest.raises(ValueError, match="NAME:VARIANT"):
    reproduce.parse("attention_scaling")
  with pytest.raises(ValueError, match="unknown reproduction 'chinchila'.*chinchilla_isoflop"):
    reproduce.parse("chinchila:tiny")
  assert reproduce.parse("mup_transfer:tiny") == ("mup_transfer", "tiny")


def test_attention_scaling_tiny_is_one_cpu_sized_grid_for_every_kind():
  runs = plan.plan(_module("attention_scaling").get_sweep("tiny"))
  layouts = {}
  for r in runs:
    layout = "+".join(r.cfg.attention.pattern) or r.cfg.attention.kind
    budget = float(f"{r.flops:.2g}")  # steps spend the budget to within a step
    shape = (r.cfg.model.width, r.cfg.model.depth)
    layouts.setdefault(layout, {}).setdefault(budget, set()).add(shape)
  assert sorted(layouts) == ["block_sparse", "dense", "dense+linear", "linear", "spectral"]
  shapes = {layout: sorted((b, s) for b, ss in by.items() for s in ss)
            for layout, by in layouts.items()}
  assert len({tuple(v) for v in shapes.values()}) == 1  # the same shapes for every kind
  for by_budget in layouts.values():
    assert len(by_budget) == 3 and all(len(s) == 5 for s in by_budget.values())
  assert all(r.cfg.model.depth % 2 == 0 for r in runs)  # the hybrid has both layer kinds
  # The CPU promise (under 25 minutes on 2 cores) rests on this total; the README's table
  # was measured at it.
  assert len(runs) == 75 and sum(r.flops for r in runs) < 1.2e13



def test_attention_scaling_paper_centres_every_budget_on_its_optimum():
  module = _module("attention_scaling")
  runs = plan.plan(module.get_sweep("paper"))
  assert len(runs) == 150  # 5 budgets x 6 shapes x 5 layouts
  assert design.check(runs, tokens_per_param=module.PAPER_TOKENS_PER_PARAM) == []
  layouts = {}
  for r in runs:
    assert r.cfg.steps >= r.cfg.optimizer.warmup_steps, r.run_id
    assert r.tokens <= 1000 * r.params, r.run_id
    layout = "+".join(r.cfg.attention.pattern) or r.cfg.attention.kind
    budget = float(f"{r.flops:.2g}")
    layouts.setdefault(layout, {}).setdefault(budget, []).append(r)
  shapes = {layout: sorted((b, r.cfg.model.width, r.cfg.model.depth) for b, rs in by.items()
                           for r in rs) for layout, by in layouts.items()}
  assert len({tuple(v) for v in shapes.values()}) == 1  # the same shapes for every kind
  for layout, by_budget in layouts.items():
    assert sorted(by_budget) == list(module.PAPER_BUDGETS), layout
    for budget, rs in by_budget.items():
      n_star = design.prior_optimum(budget, module.PAPER_TOKENS_PER_PARAM)
      sizes = sorted(r.params for r in rs)
      assert len(set(sizes)) == 6 and sizes[0] < n_star < sizes[-1], (layout, budget, sizes)
      assert all(r.cfg.model.depth % 2 == 0 for r in rs)  # the hybrid has both layer kinds


def test_design_check_flags_fixed_sizes_across_four_decades_of_budgets():
  """The former `paper` design: six sizes 4e6..7e8 at every budget 1e17..1e21."""
  module = _module("attention_scaling")
  sizes = [define.model_size(w, d, h, kv_heads=h // 2, mlp_ratio=4) for w, d, h in
           [(256, 4, 4), (384, 6, 6), (512, 8, 8), (768, 12, 12), (1024, 16, 16), (1536, 20, 12)]]
  sweep = define.Sweep(name="attn-old", config=module.PAPER_CONFIG,
                       base=dict(module.PAPER_BASE, batch_size=64),
                       runs=define.isoflop(module.PAPER_BUDGETS, sizes))
  text = "\n".join(design.check(plan.plan(sweep)))
  assert "C1e17-N7.1e8" in text and "fewer than its 200 warmup steps" in text
  assert "C1e21-N4.1e6" in text and "tokens per parameter (> 1000)" in text
  for budget in ("1e+20", "1e+21"):
    assert f"budget {budget}: sizes 4.07e+06..7.09e+08 do not bracket" in text, text
  assert "budget 1e+19" not in text


def test_isoflop_reproductions_tiny_share_the_quickstart_runs():
  quickstart = {r.run_id for r in plan.plan(plan.load_sweep("sweeps/defs/quickstart.py"))}
  for name in ("chinchilla_isoflop", "kaplan_vs_chinchilla"):
    assert {r.run_id for r in plan.plan(_module(name).get_sweep("tiny"))} == quickstart


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
  """An isoFLOP store from a known Chinchilla law (a = beta / (alpha + beta) = 0.514)."""
  store = str(tmp_path_factory.mktemp("store"))
  frame = synthetic.isoflop_design(budgets=5, per_budget=9, c_range=(1e18, 1e21), noise=0.005)
  synthetic.write_store(store, frame)
  return store


def _a_cells(text, label):
  line = next(line for line in text.splitlines() if line.startswith(f"| {label}"))
  return [cell.strip() for cell in line.strip("|").split("|")]


def test_chinchilla_report_recovers_the_known_allocation(synthetic_store, tmp_path):
  text, path = reproduce.analyse("chinchilla_isoflop", "tiny", synthetic_store,
                                 str(tmp_path / "out"))
  assert os.path.exists(path) and open(path).read().startswith("# chinchilla_isoflop:tiny")
  truth = synthetic.TRUE["beta"] / (synthetic.TRUE["alpha"] + synthetic.TRUE["beta"])
  for label in ("Approach 2", "Approach 3"):
    cells = _a_cells(text, label)
    assert abs(float(cells[1].split()[0]) - truth) < 0.05, cells
    assert cells[3] in ("0.49 / 0.51", "0.46 / 0.54")
  assert os.path.exists(tmp_path / "out" / "fit-isoflop" / "isoflop.png")


def test_kaplan_counting_raises_the_exponent_when_embeddings_are_a_fixed_cost(tmp_path):
  """N_non-embedding = N - V*D_model grows faster than N along the optima: a rises."""
  store = str(tmp_path / "store")
  frame = synthetic.isoflop_design(budgets=5, per_budget=9, c_range=(1e18, 1e21), noise=0.002)
  synthetic.write_store(store, frame)
  for run_id, n in zip(frame.run_id, frame.N):  # an embedding of 2e7 parameters in every run
    summary = os.path.join(store, run_id, "summary.json")
    text = open(summary).read().replace(f'"params_non_embedding": {0.9 * n}',
                                        f'"params_non_embedding": {n - 2e7}')
    open(summary, "w").write(text)
  text, _ = reproduce.analyse("kaplan_vs_chinchilla", "tiny", store, str(tmp_path / "out"))
  standard = float(_a_cells(text, "standard")[1].split()[0])
  kaplan = float(_a_cells(text, "Kaplan")[1].split()[0])
  assert abs(standard - 0.514) < 0.03 and kaplan > standard + 0.02, text


@pytest.mark.slow
def test_smoke_end_to_end_launches_then_reports_what_could_not_be_fitted(tmp_path):
  """Six real runs, three per kind: the sweep finishes, and the report says per kind why no
  law can be fitted to three runs, instead of failing."""
  store = tmp_path / "store"
  proc = subprocess.run(
      [sys.executable, "-m", "sweeps.reproduce", "--name=attention_scaling:smoke",
       f"--store={store}", "--parallel=2", "--nopin"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = open(tmp_path / "store-figures" / "attention_scaling" / "report.md").read()
  assert "No group could be fitted" in report
  for kind in ("dense", "linear"):
    assert f"[attention_layers={kind}]: NOT FITTED (3 runs): only 3 usable row" in report
  assert len(os.listdir(store)) == 6


def test_a_budget_keeps_runs_that_spent_less_than_planned():
  """Block-sparse runs are charged their measured density (the plan assumes 1), so a budget's
  runs sit up to ~0.1 decades below it; continuously spread C still splits narrowly."""
  from sweeps import points
  c = 1e11 * 10 ** -np.array([0.09, 0.05, 0.02, 0.0, 0.0])
  c = np.concatenate([c, 3.2e11 * 10 ** -np.array([0.07, 0.0]), [1e12]])
  assert points.buckets(c).tolist() == [0, 0, 0, 0, 0, 1, 1, 2]
  spread = np.log10(np.geomspace(1e10, 1e12, 400))
  labels = points.buckets(10 ** spread)
  assert labels.max() + 1 >= 2 / points.BUCKET_DECADES
  assert max(np.ptp(spread[labels == g]) for g in range(labels.max() + 1)) \
      <= points.BUCKET_DECADES
