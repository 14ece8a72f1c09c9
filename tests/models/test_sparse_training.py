"""Sparse training in the model: stage 2's skip share, distillation, calibrated thresholds."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kernels
import models
from experiments import train, validation
from kernels import builtin_kinds, kinds
from models import attention as attention_lib
from tests.helpers import train_losses

SPARGE = {"seq_len": 64, "attention.kind": "block_sparse", "attention.estimator": "sparge",
          "attention.topk": 0.3, "attention.block_q": 16, "attention.block_k": 16,
          "attention.impl": "xla"}


def test_distill_weight_zero_is_the_plain_sparse_run(micro_cfg):
  plain = train_losses(micro_cfg(**SPARGE), steps=1)
  zero = train_losses(micro_cfg(**SPARGE, **{"attention.distill_weight": 0.0}), steps=1)
  assert (plain[0]["loss"], plain[0]["grad_norm"]) == (zero[0]["loss"], zero[0]["grad_norm"])
  assert "attn_distill" not in zero[0]
  distilled = train_losses(micro_cfg(**SPARGE, **{"attention.distill_weight": 5.0}), steps=1)
  assert distilled[0]["loss"] == plain[0]["loss"]  # logged loss is the cross-entropy
  assert distilled[0]["attn_distill"] > 0
  assert distilled[0]["grad_norm"] != plain[0]["grad_norm"]  # the distance has a gradient


def test_distill_trains_the_scores_only():
  """d distance / d(q, k) = that of the same expression with the dense output a
  constant; nothing reaches v (its degenerate optimum: v constant over positions)."""
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(kq, (1, 32, 2, 8))
  k, v = jax.random.normal(kk, (1, 32, 1, 8)), jax.random.normal(kv, (1, 32, 1, 8))
  params = {"block_q": 8, "block_k": 8, "window_blocks": 1}  # a sliding window: sparse
  spec = kinds.get("block_sparse")
  o_fn = lambda q, k, v: kernels.attention(  # noqa: E731
      q, k, v, kind="block_sparse", impl="xla", **params)
  target = jax.lax.stop_gradient(jax.nn.dot_product_attention(q, k, v, is_causal=True))

  def by_model(q, k, v):
    return attention_lib.distill_distance(q, k, v, spec, "xla", params, {})

  def by_hand(q, k, v):
    diff = o_fn(q, k, jax.lax.stop_gradient(v)) - target
    return jnp.sum(diff ** 2) / jnp.sum(target ** 2)

  assert float(by_model(q, k, v)) == pytest.approx(float(by_hand(q, k, v)), rel=1e-5)
  grads = jax.grad(by_model, (0, 1, 2))(q, k, v)
  for a, b in zip(grads[:2], jax.grad(by_hand, (0, 1))(q, k, v)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
  assert float(jnp.abs(grads[0]).max()) > 0 and not bool(jnp.any(grads[2]))


def test_stage_two_and_distillation_are_logged_and_counted(tmp_path, micro_cfg):
  cfg = micro_cfg(**SPARGE, **{"steps": 5, "log_every": 5, "attention.pv_threshold": -0.5,
                               "attention.distill_weight": 1.0})
  train.run(cfg, str(tmp_path))
  record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
  for name in ("attn_density", "attn_pv_skip", "attn_distill"):
    assert name in record
  assert 0 <= record["attn_pv_skip"] <= record["attn_density"]
  tokens = 5 * cfg.batch_size * cfg.seq_len
  # A 5-step run has one record: the whole run is charged at its measured values.
  assert record["flops"] == pytest.approx(tokens * models.flops_per_token(
      cfg, record["attn_density"], record["attn_pv_skip"]), rel=1e-6)


def test_flops_of_skipped_tiles_and_distillation(micro_cfg):
  cfg = micro_cfg(**SPARGE)
  K = models.layout.head_dim(cfg.model)
  skipped = builtin_kinds.block_scores(cfg, 0.1) * cfg.model.heads * 2 * K
  saved = (models.flops_breakdown(cfg, 0.5)["attn_core"]
           - models.flops_breakdown(cfg, 0.5, pv_skip=0.1)["attn_core"])
  assert saved == pytest.approx(cfg.model.depth * skipped)
  distilled = micro_cfg(**SPARGE, **{"attention.distill_weight": 1.0})
  extra = models.flops_per_token(distilled, 0.5) - models.flops_per_token(cfg, 0.5)
  per_layer = (kinds.get("dense").flops(cfg, K) + 3 * builtin_kinds.sparse_flops(cfg, K, 0.5)
               + 4 * cfg.model.heads * K)  # dense target forward only; sparse again, x3
  assert extra == pytest.approx(cfg.model.depth * per_layer)


def _thresholds(path, layers, **top):
  data = {"format": "chinchax.thresholds/1", "kind": "block_sparse", "estimator": "sparge",
          "block_q": 16, "block_k": 16, "target_error": 0.01, "layers": layers, **top}
  path.write_text(json.dumps(data))
  return str(path)


def test_calibrated_thresholds_reach_their_layers(tmp_path, micro_cfg):
  path = _thresholds(tmp_path / "t.json", [{"layer": 0, "params": {"topk": 0.9}},
                                           {"layer": 1, "params": {"topk": 0.2,
                                                                   "pv_threshold": -4.0}}])
  cfg = micro_cfg(**SPARGE, **{"attention.thresholds": path})
  validation.validate(cfg)
  model = models.LM(cfg, rngs=nnx.Rngs(0))
  params = [block.attn.params for block in model.blocks]
  assert params[0]["topk"] == 0.9 and "pv_threshold" not in params[0]
  assert params[1]["topk"] == 0.2 and params[1]["pv_threshold"] == -4.0


def test_forward_tiles_are_refused_when_a_thresholds_file_turns_stage2_on(tmp_path,
                                                                         micro_cfg):
  """Stage 2 decides per mask block, whether pv_threshold is in the config or in a
  calibrated layer's params."""
  path = _thresholds(tmp_path / "t.json", [None, {"layer": 1, "params": {
      "topk": 0.5, "pv_threshold": -4.0}}])
  cfg = micro_cfg(**SPARGE, **{"attention.thresholds": path, "attention.fwd_block_q": 32})
  with pytest.raises(ValueError, match="layer 1's pv_threshold"):
    validation.validate(cfg)
  cfg.attention.fwd_block_q = None
  validation.validate(cfg)


@pytest.mark.parametrize("change, message", [
    ({"layers": [None]}, "has 1 layers; the model has depth 2"),
    ({"estimator": "static"}, "calibrated for estimator 'static'"),
    ({"block_q": 32}, "calibrated with blocks"),
    ({"format": "other"}, "not a chinchax.thresholds/1 file"),
    ({"layers": [{"params": {"block_q": 8}}, None]}, "must be a dict of"),
])
def test_bad_thresholds_files_are_refused(tmp_path, micro_cfg, change, message):
  path = _thresholds(tmp_path / "t.json", [None, {"layer": 1, "params": {"topk": 0.5}}],
                     **{k: v for k, v in change.items() if k != "layers"})
  if "layers" in change:
    _thresholds(tmp_path / "t.json", change["layers"])
  cfg = micro_cfg(**SPARGE, **{"attention.thresholds": path})
  with pytest.raises(ValueError, match=message):
    validation.validate(cfg)


@pytest.mark.parametrize("overrides, message", [
    ({"attention.pv_threshold": 1.0}, "pv_threshold"),
    ({"attention.distill_weight": -1.0}, "distill_weight"),
    ({"attention.kind": "dense", "attention.distill_weight": 1.0}, "acts on block-sparse"),
    ({"attention.kind": "dense", "attention.pv_threshold": -2.0}, "acts on block-sparse"),
    ({"attention.thresholds": "/no/such.json"}, "no such file"),
])
def test_bad_sparse_training_settings_are_refused(micro_cfg, overrides, message):
  cfg = micro_cfg(**{**SPARGE, **overrides})
  with pytest.raises(ValueError, match=message):
    validation.validate(cfg)


def _last_record(workdir):
  return json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])


def test_init_from_and_teacher_distillation(tmp_path, micro_cfg):
  """A sparse run starts from dense params (init_from) and distils towards the frozen
  dense run's logits (distill_teacher): the KL is 0 for a student equal to its teacher."""
  dense = train.run(micro_cfg(**{"steps": 12, "seq_len": 64}), str(tmp_path / "dense"))
  teacher = str(tmp_path / "dense")
  tuned = micro_cfg(**SPARGE, **{"steps": 1, "log_every": 1, "init_from": teacher})
  first = train.run(tuned, str(tmp_path / "tuned"))["final_loss"]
  fresh = train_losses(micro_cfg(**SPARGE), steps=1)[0]
  assert first < fresh["loss"] - 0.3 and first == pytest.approx(dense["final_loss"], abs=0.3)
  with pytest.raises(ValueError, match="init_from"):
    validation.validate(micro_cfg(**{"init_from": str(tmp_path / "nothing")}))

  by_teacher = {"steps": 1, "log_every": 1, "init_from": teacher,
                "attention.distill_teacher": teacher, "attention.distill_weight": 1.0}
  same = micro_cfg(**{"seq_len": 64, **by_teacher})  # a dense student: no sparse layers
  train.run(same, str(tmp_path / "same"))
  record = _last_record(tmp_path / "same")
  assert record["distill_kl"] == pytest.approx(0.0, abs=1e-6)
  # Charged: the student's training step plus the teacher's forward and the KL.
  teacher_forward = sum(models.flops_breakdown(same).values()) + 4 * same.model.vocab_size
  assert record["flops"] == pytest.approx(same.batch_size * same.seq_len * (
      models.flops_per_token(same) + teacher_forward), rel=1e-6)
  # A fresh sparse student (the 12-step teacher's attention is still near-uniform, so
  # sparsity alone would move its logits little).
  record = train_losses(micro_cfg(**SPARGE, **{**by_teacher, "init_from": ""}), steps=1)[0]
  assert record["distill_kl"] > 0.01 and "attn_distill" not in record
  assert record["loss"] == pytest.approx(fresh["loss"], rel=1e-5)  # logged: cross-entropy
  assert record["grad_norm"] != fresh["grad_norm"]

  for overrides, message in (
      ({"attention.distill_weight": 0.0}, "distill_weight is 0"),
      ({"model.vocab_size": 300}, "model.vocab_size=256"),
      ({"attention.distill_teacher": str(tmp_path / "nothing")}, "does not exist")):
    with pytest.raises(ValueError, match=message):
      validation.validate(micro_cfg(**{**SPARGE, **by_teacher, **overrides}))
