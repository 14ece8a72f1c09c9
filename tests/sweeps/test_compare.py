"""sweeps.compare: one law per attention kind from a store of several kinds, each group drawn
from its own known Chinchilla law (synthetic.ATTENTION_LAWS), so every number is checked
against the truth: exponents, the loss at the common budget, where the curves cross, and a
kind with too few runs that must fail alone."""
import itertools
import json
import os

import numpy as np
import pytest
from scipy import optimize

from sweeps import compare, prescribe, store as store_lib, synthetic
from sweeps.laws import chinchilla

LAWS = synthetic.ATTENTION_LAWS
C_RANGE = (1e18, 1e21)  # the design's budgets; the hybrid stops at 10^20.5
HYBRID_TOP = 10 ** 20.5
BOOTSTRAP = 12


def write_attention_store(path, **design) -> str:
  """dense, linear and the dense+linear hybrid (ATTENTION_LAWS) on one isoFLOP design, plus
  'spectral' with only 8 runs (too few for Approach 3's 5 parameters). Shared with
  tests/notebooks (the attention_scaling notebook runs on it)."""
  design = {"budgets": 6, "per_budget": 8, "c_range": C_RANGE, "noise": 0.005, **design}
  synthetic.write_groups_store(path, designs={"dense+linear": {
      "c_range": (C_RANGE[0], HYBRID_TOP)}}, **design)
  synthetic.write_groups_store(path, {"spectral": synthetic.TRUE}, budgets=2, per_budget=4,
                               c_range=(1e18, 1e19), seed=9)
  return path


def true_lopt(p, c):
  return chinchilla.allocation({**p, **chinchilla.derive(p)}, c)[2]


def true_crossings(c_range):
  """(pair, C) of every crossing of the true compute-optimal loss curves in c_range."""
  x = np.linspace(np.log10(c_range[0]), np.log10(c_range[1]), 2001)
  out = []
  for g1, g2 in itertools.combinations(sorted(LAWS), 2):
    f = lambda xx: true_lopt(LAWS[g1], 10.0 ** xx) - true_lopt(LAWS[g2], 10.0 ** xx)
    v = f(x)
    for i in np.flatnonzero(np.sign(v[:-1]) != np.sign(v[1:])):
      out.append(((g1, g2), 10.0 ** optimize.brentq(f, x[i], x[i + 1])))
  return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  return write_attention_store(str(tmp_path_factory.mktemp("compare") / "store"))


@pytest.fixture(scope="module")
def fits(store):
  return compare.fit_groups(store, bootstrap=BOOTSTRAP)


def test_store_groups_by_attention_layers(store):
  runs = store_lib.load(store)
  counts = runs.groupby(store_lib.ATTENTION_COLUMN).size().to_dict()
  assert counts == {"dense": 48, "linear": 48, "dense+linear": 48, "spectral": 8}
  assert runs.run_id.is_unique


def test_each_kind_recovers_its_law(fits):
  table = compare.law_table(fits)
  for kind, p in LAWS.items():
    row = table.loc[kind]
    assert row["quality_chinchilla"] == "ok", (kind, row["diagnostics_chinchilla"])
    for key in ("alpha", "beta"):
      assert abs(row[key] - p[key]) < 0.05, (kind, key, row[key], p[key])
      assert row[f"{key}_lo"] <= row[key] <= row[f"{key}_hi"]
    assert abs(row["E"] - p["E"]) < 0.1, (kind, row["E"], p["E"])
    # a from Approach 3 (derived) and from Approach 2 (isoflop) both near the truth
    true_a = p["beta"] / (p["alpha"] + p["beta"])
    assert abs(row["a"] - true_a) < 0.03 and abs(row["a_isoflop"] - true_a) < 0.05, kind


def test_loss_at_the_common_budget_matches_the_true_law(fits):
  budget = compare.common_budget(fits)
  # the largest budget every fitted kind reached: the hybrid's top (spectral failed)
  assert budget == pytest.approx(HYBRID_TOP, rel=1e-9)
  table = compare.law_table(fits, budget)
  assert table.attrs["budget"] == budget
  for kind, p in LAWS.items():
    row = table.loc[kind]
    truth = float(true_lopt(p, budget))
    assert row["loss"] == pytest.approx(truth, rel=0.01), kind
    assert row["loss_lo"] <= row["loss"] <= row["loss_hi"]
    assert row["loss_isoflop"] == pytest.approx(truth, rel=0.015), kind
    true_n = float(chinchilla.allocation({**p, **chinchilla.derive(p)}, budget)[0])
    assert row["N_opt"] == pytest.approx(true_n, rel=0.35), kind


def test_crossings_where_the_true_laws_cross(fits):
  expected = true_crossings(C_RANGE)
  # the toy is built so: linear crosses dense near 5.9e19 and the hybrid near 2.6e18
  assert [pair for pair, _ in expected] == [("dense", "linear"), ("dense+linear", "linear")]
  found = compare.crossings(fits, C_RANGE)
  assert len(found) == len(expected), compare.format_crossings(found)
  for pair, c in expected:
    (hit,) = [e for e in found if e["groups"] == pair]
    assert abs(np.log10(hit["C"] / c)) < 0.15, (pair, hit["C"], c)
    # linear is the cheaper kind: lower loss below the crossing, higher above
    assert hit["lower_below"] == "linear" and hit["lower_above"] != "linear"
    lo, hi = hit["C_interval"]
    assert lo <= hit["C"] <= hi and hit["share_crossing"] > 0.9
  assert [e["C"] for e in found] == sorted(e["C"] for e in found)
  dense_linear = [e for e in found if e["groups"] == ("dense", "linear")][0]
  assert not dense_linear["extrapolated"]
  # no crossing when the range stops short of them; dense and the hybrid never cross
  assert compare.crossings(fits, (1e20, 1e21)) == []
  assert not any(e["groups"] == ("dense", "dense+linear") for e in found)


def test_a_kind_with_too_few_runs_fails_alone(fits):
  table = compare.law_table(fits)
  row = table.loc["spectral"]
  assert row["quality_chinchilla"] == "failed" and row["quality"] == "failed"
  assert "needs >= 10 points" in row["reason_chinchilla"]
  assert row["n_runs_chinchilla"] == 8 and np.isnan(row["alpha"])
  assert "spectral" in fits["chinchilla"]["failed"]
  assert "spectral" not in fits["chinchilla"]["groups"]
  assert set(fits["chinchilla"]["groups"]) == set(LAWS)
  text = compare.format_diagnostics(fits)
  assert "spectral]: NOT FITTED (8 runs)" in text and "[attention_layers=dense]: OK" in text


def test_format_table_is_markdown_with_intervals(fits):
  table = compare.law_table(fits)
  text = compare.format_table(table)
  lines = text.splitlines()
  assert lines[0].startswith("| attention_layers | E | A | B | alpha | beta |")
  assert "loss @ C=3.16e20" in lines[0] and "quality (isoflop)" in lines[0]
  assert set(lines[1]) <= set("|-:")
  assert len(lines) == 2 + len(table)  # header, separator, a row per kind
  assert all(line.count("|") == lines[0].count("|") for line in lines)
  dense = next(line for line in lines if line.startswith("| dense |"))
  assert " [" in dense and "], " not in dense.split("|")[5]  # 'value [lo, hi]' cells
  assert "| failed: Approach 3" in text
  report = compare.format_report(fits, c_range=C_RANGE)
  assert text in report and "dense x linear: C = " in report


def test_number_formatting():
  assert compare.num(0.34217) == "0.342"
  assert compare.num(1177.0) == "1180"
  assert compare.num(1.234e9) == "1.23e9"
  assert compare.num(float("nan")) == "-"


def test_out_writes_a_grouped_fit_json_prescribe_reads(store, tmp_path):
  fits = compare.fit_groups(store, laws=("isoflop",), bootstrap=0, out=str(tmp_path),
                            where=[f"{store_lib.ATTENTION_COLUMN}!=dense+linear"])
  path = tmp_path / "isoflop" / "fit.json"
  with open(path) as f:
    written = json.load(f)
  assert sorted(written["groups"]) == ["dense", "linear"]
  assert "spectral" in written["failed"] and written["group_by"] == "attention_layers"
  assert fits["isoflop"]["files"][0] == str(path)
  assert os.path.exists(tmp_path / "isoflop" / "linear_isoflop.png")
  fit_obj, group = prescribe.select_group(written, "linear")
  assert group == "linear" and fit_obj["law"] == "isoflop"
  with pytest.raises(ValueError, match="no group was fitted"):
    compare.common_budget({"isoflop": {"groups": {}, "failed": written["failed"]}})
