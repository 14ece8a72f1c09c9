import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
from models import flops


def n_params(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("parametrization", ["sp", "mup"])
@pytest.mark.parametrize("pattern", [(), ("linear",), ("dense", "linear")])
def test_count_params_matches_model(micro_cfg, tie, parametrization, pattern):
  cfg = micro_cfg(**{"model.tie_embeddings": tie, "model.parametrization": parametrization,
                     "attention.pattern": pattern})
  model = models.LM(cfg, rngs=nnx.Rngs(0))
  counts = models.count_params(cfg)
  assert counts["total"] == n_params(model)
  V, D = cfg.model.vocab_size, cfg.model.width
  assert counts["non_embedding"] == counts["total"] - V * D * (1 if tie else 2)


def test_forward_is_causal_and_shaped(micro_cfg):
  cfg = micro_cfg()
  model = models.LM(cfg, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
  logits = model(tokens)
  assert logits.shape == (2, 16, 256) and logits.dtype == jnp.float32
  changed = tokens.at[:, 10:].set((tokens[:, 10:] + 7) % 256)
  np.testing.assert_allclose(model(changed)[:, :10], logits[:, :10], rtol=1e-5, atol=1e-5)
  assert not np.allclose(model(changed)[:, 10:], logits[:, 10:])


def test_bfloat16_compute_keeps_float32_params(micro_cfg):
  cfg = micro_cfg(**{"model.compute_dtype": "bfloat16"})
  model = models.LM(cfg, rngs=nnx.Rngs(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  logits = model(jnp.zeros((1, 8), jnp.int32))
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()


def test_invalid_model_config_errors(micro_cfg):
  with pytest.raises(ValueError, match="multiple of model.kv_heads"):
    models.LM(micro_cfg(**{"model.kv_heads": 3, "model.heads": 4}), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="parametrization"):
    models.LM(micro_cfg(**{"model.parametrization": "ntk"}), rngs=nnx.Rngs(0))


def test_flops_per_token_matches_hand_count(micro_cfg):
  cfg = micro_cfg()
  m = cfg.model
  D, H, G, F, V, L, K = m.width, m.heads, m.kv_heads, m.mlp_width, m.vocab_size, cfg.seq_len, m.width // m.heads
  per_layer = 2 * D * (2 * H * K + 2 * G * K) + 6 * D * F + H * (4 * K + 3) * (L + 1) / 2
  expected = 3 * (4 * V * D + m.depth * per_layer)
  assert models.flops_per_token(cfg) == pytest.approx(expected)
  # The 6N rule of thumb holds up to the attention scores and the embedding.
  n = models.count_params(cfg)["non_embedding"]
  assert models.flops_per_token(cfg) > 6 * n


def test_sparse_flops_scale_with_density(micro_cfg):
  cfg = micro_cfg(**{"attention.block_q": 8, "attention.block_k": 8})
  full = flops.attention_core_flops_per_token("block_sparse", cfg, density=1.0)
  half = flops.attention_core_flops_per_token("block_sparse", cfg, density=0.5)
  assert half == pytest.approx(full / 2)
  dense = flops.attention_core_flops_per_token("dense", cfg)
  assert full >= dense  # whole diagonal blocks are computed
