"""Prescriptions: N_opt, D_opt, loss with intervals, and a concrete config within the budget."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from experiments import config as config_lib
from experiments.configs import lm
from models import flops
from sweeps import define
from sweeps import fit as fit_cli
from sweeps import fitting, prescribe, synthetic
from sweeps.defs import quickstart
from sweeps.laws import chinchilla

TINY_C = (3e10, 1e12)  # the quickstart's budgets


@pytest.fixture(scope="module")
def isoflop_fit(tmp_path_factory):
  out = tmp_path_factory.mktemp("fit")
  csv = out / "runs.csv"
  synthetic.isoflop_design(seed=0).to_csv(csv, index=False)
  fit_cli.run(csv=str(csv), law="isoflop", out=str(out), plots=True,
              options=fitting.FitOptions(bootstrap=40))
  return out


def resolved_run(**overrides):
  """A quickstart-like run's resolved config, flattened as fit.json's base_config holds it."""
  cfg = config_lib.override(lm.get_config("tiny"), {
      **quickstart.BASE, **define.model_size(96, 2, 4), "batch_size": 12, **overrides})
  return config_lib.flatten(config_lib.to_dict(cfg))


@pytest.fixture(scope="module")
def tiny_fit(tmp_path_factory):
  """An isoFLOP fit over the quickstart's FLOP range, with the keys sweeps.fit records for a
  store (base_config, config_spec, data_range)."""
  out = tmp_path_factory.mktemp("tiny")
  csv = out / "runs.csv"
  design = synthetic.isoflop_design(budgets=4, per_budget=8, c_range=TINY_C, n_range=(1e3, 1e8))
  design.to_csv(csv, index=False)
  fit = fit_cli.run(csv=str(csv), law="isoflop", out=str(out), plots=False)
  fit["source"] = {"store": "runs/quickstart", "csv": None, "columns": {"loss": "eval_loss"}}
  fit["base_config"] = resolved_run()
  fit["config_spec"] = "experiments/configs/lm.py:tiny"
  fit["data_range"] = {k: [float(design[k].min()), float(design[k].max())] for k in "CND"}
  return fit


def concrete(p, variant="tiny"):
  """The config the prescription describes: variant + base overrides + prescribed keys."""
  return config_lib.override(lm.get_config(variant), {**p["base_overrides"], **p["config"]})


def test_prescription_matches_the_law_and_the_model_family(isoflop_fit):
  fit = json.loads((isoflop_fit / "fit.json").read_text())
  p = prescribe.prescribe(fit, 1e21, lm.get_config("small"))
  n_opt = fit["params"]["N_coef"] * 1e21 ** fit["params"]["a"]
  assert p["N_opt"]["value"] == pytest.approx(n_opt)
  for key in ("N_opt", "D_opt", "tokens_per_param", "loss"):
    lo, hi = p[key]["interval"]
    assert lo <= p[key]["value"] <= hi, key
  assert abs(p["model_params_vs_N_opt"]) < 0.03
  cfg = concrete(p, "small")
  assert flops.count_params(cfg)["total"] == p["model_params"]
  assert cfg.model.width == 64 * cfg.model.heads  # small's head_dim is kept
  tokens = cfg.steps * cfg.batch_size * cfg.seq_len
  assert tokens == p["tokens"]
  assert p["model_tokens_per_param"] == pytest.approx(tokens / p["model_params"])
  assert p["model_train_flops"] == pytest.approx(flops.flops_per_token(cfg) * tokens)
  assert abs(p["budget_error"]) < 0.1
  assert "N_opt" in prescribe.format_text(p)
  assert {f.name for f in isoflop_fit.glob("*.png")} == {
      "loss_vs_compute.png", "isoflop.png", "allocation.png", "residuals.png"}


@pytest.mark.parametrize("batch_rule", ["fitted", "deepseek"])
def test_config_flops_keep_to_the_budget(tiny_fit, batch_rule):
  for budget in (TINY_C[0], 1e11, TINY_C[1], 1e13, 100 * TINY_C[1]):
    p = prescribe.prescribe(tiny_fit, budget, batch_rule=batch_rule)
    cfg = concrete(p)
    tokens = cfg.steps * cfg.batch_size * cfg.seq_len
    assert tokens == p["tokens"]
    assert flops.flops_per_token(cfg) * tokens == pytest.approx(p["model_train_flops"])
    assert abs(p["model_train_flops"] / budget - 1) < 0.1, (budget, p["budget_error"])
    assert p["budget_error"] == pytest.approx(p["model_train_flops"] / budget - 1)
    assert flops.count_params(cfg)["total"] == p["model_params"]


def test_a_budget_too_small_for_five_steps_is_refused(tiny_fit):
  with pytest.raises(ValueError, match="steps of the prescribed model"):
    prescribe.prescribe(tiny_fit, 1e6)


def test_base_config_comes_from_the_fitted_runs(tiny_fit):
  run = resolved_run(**{"attention.kind": "linear", "model.heads": 4, "model.kv_heads": 2,
                        "model.width": 64, "model.mlp_width": 256, "data.corpus": "synthetic"})
  fit = dict(tiny_fit, base_config={**run, "unknown.key": 1, "attention.topk": None},
             config_spec="experiments/configs/lm.py:small")
  p = prescribe.prescribe(fit, 1e12)
  c = p["config"]
  assert p["config_spec"] == "experiments/configs/lm.py:small"
  assert "base_config of the largest-compute fitted run" in p["base"]
  assert any("unknown.key" in note for note in p["base_notes"])
  # From the fitted run, not from the small variant (seq 256, batch 16, dense, head_dim 64).
  assert (c["seq_len"], c["batch_size"], c["attention.kind"]) == (64, 12, "linear")
  assert c["model.head_dim"] >= 16 and c["model.width"] == c["model.head_dim"] * c["model.heads"]
  assert p["aspect"]["preferred"] == 64 / 2  # the fitted run's width / depth
  assert c["model.heads"] == 2 * c["model.kv_heads"]
  assert c["model.mlp_width"] == 4 * c["model.width"]
  assert p["base_overrides"]["data.corpus"] == "synthetic"  # small reads pystdlib
  assert "optimizer.lr" in p["base_overrides"]  # the run's 3e-3, not small's 1e-3
  assert not set(p["base_overrides"]) & set(c)  # prescribed keys are not base overrides
  cfg = concrete(p, "small")
  assert flops.count_params(cfg)["total"] == p["model_params"]
  assert flops.flops_per_token(cfg) * p["tokens"] == pytest.approx(p["model_train_flops"])


def test_csv_fit_falls_back_to_the_variant(isoflop_fit):
  fit = json.loads((isoflop_fit / "fit.json").read_text())
  p = prescribe.prescribe(fit, 1e20)
  assert p["base"] == "variant tiny (fit.json has no base_config: fitted from a CSV)"
  assert p["config_spec"] == "experiments/configs/lm.py:tiny" and p["base_overrides"] == {}
  assert p["config"]["seq_len"] == lm.get_config("tiny").seq_len
  assert f"base: {p['base']}" in prescribe.format_text(p)
  fit.pop("data_range", None)  # a fit.json from before sweeps.fit recorded it
  p = prescribe.prescribe(fit, 1e20)
  assert p["extrapolation_decades"] is None
  assert any("extrapolation not assessed" in w for w in p["warnings"])


def test_extrapolation_and_quality_warnings(tiny_fit):
  near = prescribe.prescribe(tiny_fit, 1e13)
  assert near["extrapolation_decades"] == pytest.approx(1.0)
  assert not any("extrapolates" in w for w in near["warnings"])
  far = prescribe.prescribe(tiny_fit, 1e15)
  assert far["extrapolation_decades"] == pytest.approx(3.0)
  assert far["warnings"][0] == ("extrapolates 3.0 decades beyond the largest fitted run "
                                "(C=1e+12): treat the prescription as a hypothesis to verify")
  assert "WARNING: extrapolates 3.0 decades" in prescribe.format_text(far)
  diagnostics = [{"code": "unbracketed_budget", "message": "C=3e10: minimum not bracketed"}]
  p = prescribe.prescribe(dict(tiny_fit, quality="warn", diagnostics=diagnostics), 1e12)
  assert any("'warn'" in w and "unbracketed_budget" in w for w in p["warnings"])
  assert "unbracketed_budget: C=3e10: minimum not bracketed" in p["warnings"]
  assert p["quality"] == "warn"


def test_batch_rule_is_stated_and_followed(tiny_fit):
  fitted = prescribe.prescribe(tiny_fit, 1e14)
  assert fitted["batch_rule"] == "fitted" and fitted["config"]["batch_size"] == 12
  assert "batch rule: fitted" in prescribe.format_text(fitted)
  deepseek = prescribe.prescribe(tiny_fit, 1e14, batch_rule="deepseek")
  assert deepseek["config"]["batch_size"] == round(prescribe.batch_tokens(1e14) / 64)
  assert "DeepSeek" in deepseek["batch_rule_text"]
  with pytest.raises(ValueError, match="batch_rule"):
    prescribe.prescribe(tiny_fit, 1e14, batch_rule="largest")


def test_non_embedding_fits_match_non_embedding_counts():
  fit = {"law": "chinchilla", "params": dict(synthetic.TRUE),
         "derived": {k: float(v) for k, v in chinchilla.derive(synthetic.TRUE).items()},
         "n_kind": "params_non_embedding"}
  p = prescribe.prescribe(fit, 1e19, lm.get_config("tiny"))
  n_opt, d_opt, loss = chinchilla.allocation(fit["derived"] | fit["params"], 1e19)
  assert p["N_opt"]["value"] == pytest.approx(n_opt)
  assert p["loss"]["value"] == pytest.approx(loss)
  assert np.isnan(p["N_opt"]["interval"]).all()  # no bootstrap, no interval
  assert p["params_counted"] == "non_embedding"
  assert abs(p["model_params_vs_N_opt"]) < 0.03


def test_cli_json_and_errors(isoflop_fit):
  cmd = [sys.executable, "-m", "sweeps.prescribe", f"--fit={isoflop_fit / 'fit.json'}"]
  proc = subprocess.run(cmd + ["--budget=1e20", "--format=json"], capture_output=True,
                        text=True, check=True)
  out = json.loads(proc.stdout)
  assert out["budget"] == 1e20 and out["config"]["steps"] >= 1
  assert abs(out["budget_error"]) < 0.1 and isinstance(out["warnings"], list)
  proc = subprocess.run(cmd + ["--budget=1e20", "--variant=huge"], capture_output=True,
                        text=True)
  assert proc.returncode == 2 and "error: " in proc.stderr and "--variant" in proc.stderr
  fit = json.loads((isoflop_fit / "fit.json").read_text())
  with pytest.raises(ValueError, match="positive"):  # main() prints these without traceback
    prescribe.prescribe(fit, -1, lm.get_config("tiny"))


def test_a_missing_or_unreadable_fit_says_how_to_make_one(tmp_path, isoflop_fit):
  missing = tmp_path / "nofit" / "fit.json"
  proc = subprocess.run([sys.executable, "-m", "sweeps.prescribe", f"--fit={missing}",
                         "--budget=1e14"], capture_output=True, text=True)
  assert proc.returncode == 2 and "Errno" not in proc.stderr, proc.stderr
  assert proc.stderr == (f"error: --fit={missing}: the fit file does not exist; create it with "
                         "`python -m sweeps.fit --store=STORE --out=DIR` (it writes "
                         "DIR/fit.json)\n")
  with pytest.raises(ValueError, match=re.escape(f"--fit={isoflop_fit / 'fit.json'}")):
    prescribe.load_fit(str(isoflop_fit))  # the directory: name the file in it
  (tmp_path / "bad.json").write_text("{")
  with pytest.raises(ValueError, match="cannot read --fit=.*bad.json"):
    prescribe.load_fit(str(tmp_path / "bad.json"))
  assert prescribe.load_fit(str(isoflop_fit / "fit.json"))["law"] == "isoflop"


def test_grouped_fit_needs_a_group_and_keeps_its_attention_kind(isoflop_fit):
  group = json.loads((isoflop_fit / "fit.json").read_text())
  fit = {"law": "isoflop", "group_by": "attention.kind",
         "groups": {"dense": group, "linear": group}}
  with pytest.raises(ValueError, match="--group=NAME"):
    prescribe.prescribe(fit, 1e20, lm.get_config("tiny"))
  p = prescribe.prescribe(fit, 1e20, lm.get_config("tiny"), group="linear")
  assert p["group"] == "linear" and p["config"]["attention.kind"] == "linear"


def test_batch_grows_with_budget():
  small, large = prescribe.batch_tokens(1e15), prescribe.batch_tokens(1e23)
  assert 1e3 < small < large
  assert large == pytest.approx(0.292 * 1e23 ** 0.3271)  # ~9.7M tokens at 1e23 FLOPs
