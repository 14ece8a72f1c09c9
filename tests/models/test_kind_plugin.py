"""A kind defined outside the package plugs in with one registration line: it
trains in the model, its FLOPs are counted and config errors list it."""
import jax.numpy as jnp
import pytest

import models
from kernels import kinds
from tests.helpers import micro_config, train_losses


def uniform_attention(q_BLHK, k_BLGK, v_BLGK, *, impl, causal, scale=1.0):
  """Each query averages the values it may see (a causal mean), times `scale`."""
  del impl
  v_BLHK = jnp.repeat(v_BLGK, q_BLHK.shape[2] // k_BLGK.shape[2], axis=2)
  if not causal:
    return jnp.mean(v_BLHK, axis=1, keepdims=True) * scale + 0 * q_BLHK
  counts_L1 = jnp.arange(1, v_BLHK.shape[1] + 1, dtype=v_BLHK.dtype)[:, None, None]
  return jnp.cumsum(v_BLHK, axis=1) / counts_L1 * scale


def uniform_flops(cfg, head_dim, density=None):
  return 2 * cfg.model.heads * head_dim  # a running sum and a divide per value


UNIFORM = kinds.KindSpec("uniform", impls={"xla": uniform_attention}, flops=uniform_flops,
                         params={"scale": 1.0})


@pytest.fixture
def uniform():
  with kinds.registered(UNIFORM):  # the one registration line
    yield


def test_a_registered_kind_trains_counts_flops_and_is_listed(uniform):
  cfg = micro_config(**{"attention.kind": "uniform", "model.kv_heads": 2})
  losses = [float(m["loss"]) for m in train_losses(cfg, steps=4)]
  assert all(map(jnp.isfinite, losses)) and losses[-1] < losses[0], losses
  layers = cfg.model.depth
  assert models.flops_breakdown(cfg)["attn_core"] == layers * uniform_flops(cfg, head_dim=16)
  assert models.flops_per_token(cfg) == 3 * sum(models.flops_breakdown(cfg).values())
  bad = micro_config(**{"attention.kind": "nope"})
  with pytest.raises(ValueError, match=r"attention.kind 'nope'.*'uniform'"):
    models.layer_kinds(bad)


def test_an_estimator_runs_once_per_layer_and_feeds_density_and_kernel():
  calls = {"estimate": 0, "kernel": 0}

  def estimate(q, k, *, causal, **params):
    calls["estimate"] += 1
    return jnp.float32(0.5), {**params, "mask_BHQK": jnp.ones((1, 1, 1, 1), bool)}

  def kernel(q, k, v, *, impl, causal, mask_BHQK, **params):
    calls["kernel"] += 1
    return uniform_attention(q, k, v, impl=impl, causal=causal, **params)

  spec = kinds.KindSpec("estimated", impls={"xla": kernel}, flops=uniform_flops,
                        params={"scale": 1.0}, estimate=estimate)
  with kinds.registered(spec):
    cfg = micro_config(**{"attention.kind": "estimated", "model.kv_heads": 2})
    metrics = train_losses(cfg, steps=2)
  assert float(metrics[-1]["attn_density"]) == 0.5
  assert calls["estimate"] == calls["kernel"] > 0, calls
