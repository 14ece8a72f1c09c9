"""Every attention kind trains in the model, and pallas (interpret) matches xla."""
import numpy as np
import pytest

import models

from experiments import train
from tests.helpers import train_losses

KINDS = {
    # One layer per kind (dense, static block-sparse, spectral) via attention.pattern.
    "mixed": {"attention.pattern": ("dense", "block_sparse", "spectral"), "model.depth": 3,
              "attention.window_blocks": 1, "attention.sink_blocks": 1,
              "attention.topp": 0.3},
    "sparge": {"attention.kind": "block_sparse", "attention.estimator": "sparge",
               "attention.topk": 0.3, "model.depth": 1},
    "dense": {"model.depth": 1},
    # 2Mamba: decay, size-2 conv, squared feature map with row normalisation.
    "2mamba": {"attention.kind": "linear", "attention.feature_map": "squared",
               "attention.normalize": True, "attention.chunk_size": 16, "model.depth": 1},
    "hybrid": {"attention.pattern": ("dense", "linear"), "attention.chunk_size": 16},
}
STATIC = {"attention.kind": "block_sparse", "attention.window_blocks": 1,
          "attention.sink_blocks": 1}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_kind_trains_and_pallas_matches_xla(micro_cfg, name):
  overrides = {"seq_len": 64, "attention.block_q": 16, "attention.block_k": 16,
               "model.width": 32, "model.heads": 2, **KINDS[name]}
  xla = train_losses(micro_cfg(**overrides, **{"attention.impl": "xla"}))
  pallas = train_losses(micro_cfg(**overrides, **{"attention.impl": "pallas"}))
  loss_xla = np.array([m["loss"] for m in xla])
  loss_pallas = np.array([m["loss"] for m in pallas])
  np.testing.assert_allclose(loss_pallas, loss_xla, rtol=1e-4)
  assert np.all(np.isfinite(loss_xla)) and loss_xla[-1] < loss_xla[0]
  if name in ("mixed", "sparge"):
    density = xla[-1]["attn_density"]
    assert 0 < density < 1, density
    np.testing.assert_allclose(pallas[-1]["attn_density"], density, rtol=1e-6)
  else:
    assert "attn_density" not in xla[-1]


def test_sparse_run_logs_density_and_counts_fewer_flops(tmp_path, micro_cfg):
  cfg = micro_cfg(**{"steps": 10, "seq_len": 64, "attention.block_q": 16,
                     "attention.block_k": 16, **STATIC})
  sparse = train.run(cfg, str(tmp_path))
  density = sparse["attn_density"]
  assert 0 < density < 1
  tokens = 10 * cfg.batch_size * cfg.seq_len
  assert sparse["flops"] == pytest.approx(tokens * models.flops_per_token(cfg, density))
  assert sparse["flops_chinchilla"] == pytest.approx(
      tokens * models.flops_per_token(cfg, density, convention="chinchilla"))
  dense = micro_cfg(**{"steps": 10, "seq_len": 64})
  assert sparse["flops"] < tokens * models.flops_per_token(dense)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert all("attn_density" in line and "flops_chinchilla" in line for line in lines)
