"""IsoFLOP designs centred on a prior optimum (sweeps.design) and the quickstart built on it."""
import math

import numpy as np
import pytest

from sweeps import define, design, plan
from sweeps.laws import isoflop

CONFIG = "experiments/configs/lm.py:tiny"


@pytest.fixture(scope="module")
def count():
  return design.param_counter(CONFIG, {"seq_len": 64})


def test_sizes_straddle_the_prior_optimum_and_follow_the_budget(count):
  for budget in (1e11, 1e13, 1e15):
    sizes = design.sizes_for_budget(budget, count, tokens_per_param=20, per_budget=5,
                                    span_decades=1.0)
    n = np.array([count(s) for s in sizes])
    prior = design.prior_optimum(budget, 20)
    assert len(set(n)) == 5 and np.all(np.diff(n) > 0)
    assert n.min() < prior < n.max()
    assert 0.7 < math.log10(n.max() / n.min()) < 1.3  # about the requested span
  small = design.sizes_for_budget(1e11, count, tokens_per_param=20)
  large = design.sizes_for_budget(1e15, count, tokens_per_param=20)
  assert count(large[0]) > count(small[-1])  # 4 decades of C move the sizes 2 decades


def test_shapes_are_realizable(count):
  for size in design.shape_ladder():
    assert size["model.width"] % size["model.heads"] == 0
    assert size["model.heads"] % size["model.kv_heads"] == 0
    assert 8 <= size["model.width"] / size["model.depth"] <= 64


def test_budgets_outside_the_ladder_are_clear_errors(count):
  with pytest.raises(ValueError, match="shape ladder spans"):
    design.sizes_for_budget(1e6, count)
  with pytest.raises(ValueError, match="per_budget"):
    design.sizes_for_budget(1e12, count, per_budget=2)


def test_quickstart_design_meets_the_bar():
  """>= 3 budgets over >= 1.5 decades, >= 4 sizes each, every prior optimum inside."""
  runs = plan.plan(plan.load_sweep("sweeps/defs/quickstart.py"))
  c = np.array([r.flops for r in runs])
  n = np.array([r.params for r in runs])
  budget = isoflop.buckets(c)
  assert budget.max() + 1 >= 3
  assert define.log10_span(c) >= 1.5
  centres = []
  for g in range(budget.max() + 1):
    sel = budget == g
    assert len(set(n[sel])) >= 4
    prior = design.prior_optimum(float(np.exp(np.log(c[sel]).mean())), 40.0)
    assert n[sel].min() < prior < n[sel].max()
    assert np.allclose(c[sel], c[sel][0], rtol=0.03)  # steps spend the budget
    centres.append(np.exp(np.log(n[sel]).mean()))
  assert np.all(np.diff(centres) > 0)  # sizes follow the budget
  assert {r.cfg.data.corpus for r in runs} == {"pystdlib"}
