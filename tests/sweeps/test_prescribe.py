"""Prescriptions: N_opt, D_opt, loss with intervals, and a concrete model config."""
import json
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import lm
from models import flops
from sweeps import fit as fit_cli
from sweeps import fitting, prescribe, synthetic
from sweeps.laws import chinchilla


@pytest.fixture(scope="module")
def isoflop_fit(tmp_path_factory):
  out = tmp_path_factory.mktemp("fit")
  csv = out / "runs.csv"
  synthetic.isoflop_design(seed=0).to_csv(csv, index=False)
  fit_cli.run(csv=str(csv), law="isoflop", out=str(out), plots=True,
              options=fitting.FitOptions(bootstrap=40))
  return out


def test_prescription_matches_the_law_and_the_model_family(isoflop_fit):
  fit = json.loads((isoflop_fit / "fit.json").read_text())
  p = prescribe.prescribe(fit, 1e21, lm.get_config("small"))
  n_opt = fit["params"]["N_coef"] * 1e21 ** fit["params"]["a"]
  assert p["N_opt"]["value"] == pytest.approx(n_opt)
  for key in ("N_opt", "D_opt", "tokens_per_param", "loss"):
    lo, hi = p[key]["interval"]
    assert lo <= p[key]["value"] <= hi, key
  assert abs(p["model_params_vs_N_opt"]) < 0.03
  cfg = lm.get_config("small")
  for key, value in p["config"].items():
    section, _, name = key.rpartition(".")
    setattr(getattr(cfg, section) if section else cfg, name, value)
  assert flops.count_params(cfg)["total"] == p["model_params"]
  assert cfg.model.width == 64 * cfg.model.heads
  tokens = cfg.steps * cfg.batch_size * cfg.seq_len
  assert tokens == pytest.approx(p["D_opt"]["value"], rel=1e-3)
  assert "N_opt" in prescribe.format_text(p)
  assert {f.name for f in isoflop_fit.glob("*.png")} == {
      "loss_vs_compute.png", "isoflop.png", "allocation.png", "residuals.png"}


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
  fit = json.loads((isoflop_fit / "fit.json").read_text())
  with pytest.raises(ValueError, match="positive"):  # main() prints these without traceback
    prescribe.prescribe(fit, -1, lm.get_config("tiny"))


def test_grouped_fit_needs_a_group_and_keeps_its_attention_kind(isoflop_fit):
  group = json.loads((isoflop_fit / "fit.json").read_text())
  fit = {"law": "isoflop", "group_by": "attention.kind",
         "groups": {"dense": group, "linear": group}}
  with pytest.raises(ValueError, match="--group=NAME"):
    prescribe.prescribe(fit, 1e20, lm.get_config("tiny"))
  p = prescribe.prescribe(fit, 1e20, lm.get_config("tiny"), group="linear")
  assert p["group"] == "linear" and p["config"]["attention.kind"] == "linear"


def test_batch_grows_with_budget():
  from sweeps import prescribe
  small, large = prescribe.batch_tokens(1e15), prescribe.batch_tokens(1e23)
  assert 1e3 < small < large
  assert large == pytest.approx(0.292 * 1e23 ** 0.3271)  # ~9.7M tokens at 1e23 FLOPs
