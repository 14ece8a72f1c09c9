"""notebooks/chinchilla_refit.ipynb on a CSV drawn from Besiroglu et al.'s law (named
columns, a small bootstrap): its refit must place Besiroglu's exponents inside its intervals
and Hoffmann et al.'s beta (0.28 against 0.37) outside them."""
import os

import pandas as pd
import pytest
from nbclient.exceptions import CellExecutionError

from sweeps import plot, synthetic
from sweeps.laws.chinchilla import PUBLISHED
from tests.notebooks import nbrun

HOFFMANN, BESIROGLU = "Hoffmann et al. 2022", "Besiroglu et al. 2024"


def _write_csv(path):
  design = synthetic.isoflop_design(p=PUBLISHED[BESIROGLU], noise=0.005, budgets=8,
                                    per_budget=12, c_range=(1e18, 1e21))
  design = design.rename(columns={"N": "Model Size", "C": "Training FLOP"})
  design[["Model Size", "Training FLOP", "loss"]].to_csv(path, index=False)


def test_refit_of_besiroglus_law_matches_it_and_excludes_hoffmanns_beta(tmp_path, monkeypatch):
  csv = str(tmp_path / "runs.csv")
  _write_csv(csv)
  nbrun.execute("chinchilla_refit.ipynb", monkeypatch, CHINCHAX_CSV=csv,
                CHINCHAX_COLUMNS="N:Model Size,C:Training FLOP,loss:loss",
                CHINCHAX_BOOTSTRAP=20)
  figures = plot.beside(csv)
  assert figures == str(tmp_path / "runs-figures")
  nbrun.assert_figures(figures, ["refit_vs_published.png", "parameters.png"])
  nbrun.assert_figures(os.path.join(figures, "fit"), ["isoflop.png", "allocation.png"])
  assert os.path.exists(os.path.join(figures, "fit", "fit.json"))

  table = pd.read_csv(os.path.join(figures, "comparison.csv"), index_col="parameter")
  assert list(table.index) == ["E", "A", "B", "alpha", "beta", "a", "b"]
  assert table.loc["beta", HOFFMANN] == 0.28 and table.loc["B", BESIROGLU] == 2085.4
  assert abs(table.loc["a", HOFFMANN] - 0.28 / 0.62) < 1e-9  # derived, not copied
  lo, hi = table["refit 95% low"], table["refit 95% high"]
  assert (lo <= table["refit"]).all() and (table["refit"] <= hi).all()
  for k in ("alpha", "beta", "a"):
    true = PUBLISHED[BESIROGLU].get(k, table.loc[k, BESIROGLU])
    assert lo[k] - 0.01 <= true <= hi[k] + 0.01, (k, true, lo[k], hi[k])
    assert abs(table.loc[k, "refit"] - true) < 0.03, (k, table.loc[k, "refit"], true)
  assert hi["beta"] - lo["beta"] < 0.06  # narrow enough for the next line to mean something
  assert not table.loc["beta", f"{HOFFMANN} inside"]
  assert not table.loc["a", f"{HOFFMANN} inside"]
  # the "inside" column agrees with the interval it reports
  for name in (HOFFMANN, BESIROGLU):
    inside = (lo <= table[name]) & (table[name] <= hi)
    assert (table[f"{name} inside"] == inside).all(), name


def test_a_missing_csv_says_which_variable_to_set(tmp_path, monkeypatch):
  with pytest.raises(CellExecutionError, match="set CHINCHAX_CSV"):
    nbrun.execute("chinchilla_refit.ipynb", monkeypatch, CHINCHAX_CSV=str(tmp_path / "no.csv"))
