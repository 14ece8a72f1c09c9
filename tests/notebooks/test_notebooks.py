"""Every notebook in notebooks/ is executed by some test here (each on a store its test
writes), and the two of this file run top to bottom and write their figures beside it."""
import glob
import json
import math
import os

import nbformat
import numpy as np
import pytest

from experiments.configs import lm
from experiments.metrics import write_json_atomic
from sweeps import fit, fitting, plot, prescribe, synthetic, verify
from tests.helpers import REPO
from tests.notebooks import nbrun
from tests.sweeps.test_compare import write_attention_store

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))
TESTS = sorted(glob.glob(os.path.join(REPO, "tests", "notebooks", "test_*.py")))


def test_there_are_notebooks():
  assert NOTEBOOKS


def test_every_notebook_has_a_test():
  """A notebook no test names is a notebook nobody runs: name it in a tests/notebooks file."""
  texts = []
  for path in TESTS:
    with open(path) as f:
      texts.append(f.read())
  untested = [os.path.basename(nb) for nb in NOTEBOOKS
              if not any(os.path.basename(nb) in text for text in texts)]
  assert not untested, f"notebooks no tests/notebooks/test_*.py names: {untested}"


def _text(nb) -> str:
  """Everything the executed notebook printed or displayed as text."""
  out = []
  for c in nb.cells:
    for o in c.get("outputs", []) if c.cell_type == "code" else []:
      out.append(o.get("text", "") if o.output_type == "stream"
                 else (o.get("data") or {}).get("text/plain", "")
                 + (o.get("data") or {}).get("text/markdown", ""))
  return "\n".join(out)


def write_verify_report(store: str, budget_factor: float = 10.0) -> dict:
  """A verify-<budget>.json as `python -m sweeps.verify` writes it, without training: the
  real prescription and sweeps.verify.assess of a run that reached the true law's loss. (An
  IsoFLOP fit, Approach 2, which verify supports too: it costs no JAX compile.)"""
  approach2 = fit.run(store=store, law="isoflop", out=store + "-fit", plots=False,
                      options=fitting.FitOptions(bootstrap=50))
  budget = budget_factor * approach2["data_range"]["C"][1]
  p = prescribe.prescribe(approach2, budget, lm.get_config("small"))
  n, d = p["model_params"], p["tokens"]
  summary = {"status": "done", "params": n, "params_non_embedding": 0.9 * n, "tokens": d,
             "flops": p["model_train_flops"], "wall_seconds": 1.0,
             "eval_loss": float(synthetic.chinchilla_loss(n, d)) * 1.002}
  run_id = "verify-run"
  report = {"fit": os.path.abspath(store + "-fit/fit.json"), "law": "isoflop",
            "group": p["group"], "budget": budget, "store": os.path.abspath(store),
            "run_id": run_id, "run_dir": os.path.join(os.path.abspath(store), run_id),
            "status": "done",
            "run": {k: summary[k] for k in ("params", "params_non_embedding", "tokens",
                                            "flops", "wall_seconds")},
            "warnings": p["warnings"], "prescription": p}
  report["run"]["flops_vs_budget"] = summary["flops"] / budget - 1
  report.update(verify.assess(approach2, summary, p, verify.loss_column(approach2)))
  report["report"] = verify.report_path(store, budget)
  write_json_atomic(report["report"], report)
  return report


def test_scaling_curves_with_a_verification_report(tmp_path, monkeypatch):
  store = str(tmp_path / "store")
  design = synthetic.isoflop_design(budgets=5, per_budget=8, c_range=(1e18, 1e21))
  synthetic.write_store(store, design, steps=4)
  report = write_verify_report(store)
  assert report["verdict"] == "within" and math.isfinite(report["interval"][0])

  nb = nbrun.execute("scaling_curves.ipynb", monkeypatch, CHINCHAX_STORE=store,
                     CHINCHAX_BOOTSTRAP=9)
  figures = plot.beside(store)
  assert figures == str(tmp_path / "store-figures")
  nbrun.assert_figures(figures, ["loss_curves.png", "verify.png",
                                 "chinchilla/loss_vs_compute.png", "chinchilla/isoflop.png",
                                 "isoflop/allocation.png"])
  assert not glob.glob(os.path.join(store, "*.png")), "figures must go beside the store"
  text = _text(nb)
  assert "1 verification report(s)" in text and "within" in text
  assert "QUALITY: " in text  # both fits' diagnostics are shown
  assert report["run_id"] in text


def test_scaling_curves_on_its_synthetic_fallback(monkeypatch):
  nb = nbrun.execute("scaling_curves.ipynb", monkeypatch, CHINCHAX_BOOTSTRAP=9)
  text = _text(nb)
  (figures,) = [line.split(" ", 1)[1] for line in text.splitlines()
                if line.startswith("FIGURES ")]
  nbrun.assert_figures(figures, ["loss_curves.png", "chinchilla/allocation.png"])
  assert not os.path.exists(os.path.join(figures, "verify.png"))
  assert "No verify-*.json yet" in text and "python -m sweeps.verify" in text
  assert "predicted loss at C = " in text  # the 100x prescription with its interval


def test_attention_scaling_on_a_multi_kind_store(tmp_path, monkeypatch):
  store = write_attention_store(str(tmp_path / "attn"), budgets=5, per_budget=7)
  nb = nbrun.execute("attention_scaling.ipynb", monkeypatch, CHINCHAX_STORE=store,
                     CHINCHAX_BOOTSTRAP=9)
  figures = str(tmp_path / "attn-figures")
  nbrun.assert_figures(figures, ["loss_vs_compute.png", "allocation.png",
                                 "isoflop_by_kind.png"])
  with open(os.path.join(figures, "fits", "chinchilla", "fit.json")) as f:
    written = json.load(f)
  assert sorted(written["groups"]) == ["dense", "dense+linear", "linear"]
  assert "spectral" in written["failed"]
  text = _text(nb)
  assert "| attention_layers | E | A | B | alpha | beta |" in text  # the markdown table
  assert "failed: Approach 3" in text
  assert "dense x linear: C = " in text  # the crossing the toy laws put in range
  assert np.isfinite(written["groups"]["linear"]["params"]["alpha"])


def test_attention_scaling_says_how_to_make_its_store(tmp_path, monkeypatch):
  import nbclient
  import pytest
  with pytest.raises(nbclient.exceptions.CellExecutionError,
                     match="sweeps.reproduce --name=attention_scaling:tiny"):
    nbrun.execute("attention_scaling.ipynb", monkeypatch,
                  CHINCHAX_STORE=str(tmp_path / "missing"))


# Each notebook's parameter: (environment variable, the variable its parameter cell sets).
PARAMETERS = {"attention_scaling.ipynb": ("CHINCHAX_STORE", "STORE"),
              "scaling_curves.ipynb": ("CHINCHAX_STORE", "STORE"),
              "mup_transfer.ipynb": ("CHINCHAX_STORE", "STORE"),
              "chinchilla_refit.ipynb": ("CHINCHAX_CSV", "CSV")}


def test_every_notebook_has_its_parameter_listed():
  assert sorted(PARAMETERS) == [os.path.basename(nb) for nb in NOTEBOOKS]


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_a_relative_parameter_is_read_from_the_repository_root(tmp_path, monkeypatch, name):
  """Jupyter starts a notebook in notebooks/, the README's commands write from the root:
  CHINCHAX_STORE=runs/quickstart names REPO/runs/quickstart from either (plot.repo_path).
  The path is relative to the root, so from notebooks/ as the working directory it
  names nothing."""
  variable, python_name = PARAMETERS[name]
  target = tmp_path / ("runs.csv" if variable == "CHINCHAX_CSV" else "store")
  if variable == "CHINCHAX_CSV":
    target.write_text("N,C,loss\n1e8,1e18,3.0\n")
  else:
    target.mkdir()

  def parameter_cell(cells):
    first = next(c for c in cells if c.cell_type == "code" and variable in c.source)
    return [first, nbformat.v4.new_code_cell(f"print({python_name})")]

  nb = nbrun.execute(name, monkeypatch, cwd=os.path.join(REPO, "notebooks"),
                     cells=parameter_cell, **{variable: os.path.relpath(target, REPO)})
  assert nb.cells[-1].outputs[0].text.strip() == str(target)


def test_repo_path_is_independent_of_the_working_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert plot.repo_path("runs/quickstart") == os.path.join(REPO, "runs", "quickstart")
  assert plot.repo_path(str(tmp_path / "s")) == str(tmp_path / "s")  # absolute: as given
