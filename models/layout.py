"""Shape facts read from a config, with no JAX import (the FLOP counts and the
sweep planner's dry run use them without starting JAX)."""

PARAMETRIZATIONS = ("sp", "mup")


def head_dim(model_cfg):
  return model_cfg.head_dim or model_cfg.width // model_cfg.heads


def pattern_kinds(cfg):
  """The attention kind of each layer: `attention.pattern` cycled over depth, else `kind`
  (unvalidated; models.attention.layer_kinds checks them against the kernels)."""
  pattern = tuple(cfg.attention.pattern) or (cfg.attention.kind,)
  return [pattern[i % len(pattern)] for i in range(cfg.model.depth)]
