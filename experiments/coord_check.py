"""Coordinate check (microsoft/mup, CompleteP Fig. 7): the RMS of each layer's activations
at init and after a few Adam steps, as width or depth grows. Under a parametrization that
transfers (mup, umup; completep in depth), the numbers stay put; under SP (width) or no
depth scaling (depth) they grow.

Used by benchmarks/coord_check.py (table and PNG) and tests/models/test_coord_check.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import models
from experiments import config as config_lib, optimizer
from experiments.configs import lm
from models.transformer import Activation

GROUPS = ("embed", "attn_out", "mlp_out", "residual", "logits")
# The global Adam LR: u-muP's weights are N(0, 1), not O(1 / sqrt(width)), so its global
# LR is ~25x muP's (the paper's optimum is near 2^1.5, times its per-group rules).
LR = {"sp": 1e-2, "mup": 1e-2, "umup": 0.25}


def coord_config(width, depth=2, parametrization="mup", depth_scaling="none", *,
                 base_width=64, base_depth=2, head_dim=16, seq_len=16, batch_size=4,
                 lr=None, **overrides):
  """A tiny float32 dense model: heads of fixed size, MLP 2x width, constant LR."""
  lr = LR[parametrization] if lr is None else lr
  return config_lib.override(lm.get_config("tiny"), {
      "seq_len": seq_len, "batch_size": batch_size, "model.width": width,
      "model.depth": depth, "model.heads": width // head_dim,
      "model.kv_heads": width // head_dim, "model.mlp_width": 2 * width,
      "model.parametrization": parametrization, "model.mup_base_width": base_width,
      "model.depth_scaling": depth_scaling, "model.depth_base": base_depth,
      "attention.impl": "xla", "optimizer.lr": lr, "optimizer.schedule": "constant",
      "optimizer.warmup_steps": 0, "optimizer.weight_decay": 0.0, **overrides})


def bigram_tokens(cfg, seed=0):
  """[B, L + 1] tokens of a fixed random successor map: learnable in a few steps, so the
  updates are correlated with the activations as in real training."""
  rng = np.random.default_rng(seed)
  successor = rng.permutation(cfg.model.vocab_size)
  tokens = np.empty((cfg.batch_size, cfg.seq_len + 1), np.int32)
  tokens[:, 0] = rng.integers(0, cfg.model.vocab_size, cfg.batch_size)
  for t in range(1, cfg.seq_len + 1):
    tokens[:, t] = successor[tokens[:, t - 1]]
  return jnp.asarray(tokens)


def _rms(x):
  x = jnp.asarray(x, jnp.float32)
  return jnp.sqrt(jnp.mean(x * x))


def _layer_rms(graphdef, params, inputs_BL):
  """{layer: RMS}: "embed", "blocks.{i}.attn_out", "blocks.{i}.mlp_out", "residual",
  "logits"."""
  model = nnx.merge(graphdef, nnx.State(params))
  logits_BLV = model(inputs_BL, probe=True)
  acts = nnx.to_pure_dict(nnx.pop(model, Activation))
  out = {"logits": _rms(logits_BLV)}
  for path, value in jax.tree_util.tree_flatten_with_path(acts)[0]:
    keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    out[".".join(keys[:-1])] = _rms(value)  # the last key: sow's tuple index
  return out


def measure(cfg, steps=5, seed=0):
  """{"t0": {layer: RMS}, f"t{steps}": {...}} for `steps` Adam steps on one batch."""
  model = models.LM(cfg, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  params = nnx.to_pure_dict(params)
  tx, _ = optimizer.make(cfg.optimizer, steps, params, cfg.model)
  tokens_BL = bigram_tokens(cfg, seed)

  def loss(p):
    logits_BLV = nnx.merge(graphdef, nnx.State(p))(tokens_BL[:, :-1])
    logp_BLV = jax.nn.log_softmax(logits_BLV)
    return -jnp.mean(jnp.take_along_axis(logp_BLV, tokens_BL[:, 1:, None], -1))

  @jax.jit
  def step(p, opt_state):
    updates, opt_state = tx.update(jax.grad(loss)(p), opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  probe = jax.jit(lambda p: _layer_rms(graphdef, p, tokens_BL[:, :-1]))
  out = {"t0": jax.device_get(probe(params))}
  opt_state = tx.init(params)
  for _ in range(steps):
    params, opt_state = step(params, opt_state)
  out[f"t{steps}"] = jax.device_get(probe(params))
  return {t: {k: float(v) for k, v in layers.items()} for t, layers in out.items()}


def group_rms(layers):
  """{group: RMS}: the per-block layers averaged over blocks."""
  out = {}
  for group in GROUPS:
    values = [v for k, v in layers.items() if k == group or k.endswith("." + group)]
    out[group] = float(np.mean(values))
  return out
