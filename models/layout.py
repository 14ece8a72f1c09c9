"""Shape facts read from a config, with no JAX import (the FLOP counts and the
sweep planner's dry run use them without starting JAX)."""
from kernels import kinds
from models.parametrization import PARAMETRIZATIONS  # noqa: F401  (re-export; no JAX)


def head_dim(model_cfg):
  return model_cfg.head_dim or model_cfg.width // model_cfg.heads


def pattern_kinds(cfg):
  """The attention kind of each layer: `attention.pattern` cycled over depth, else `kind`
  (unvalidated; layer_kinds checks them)."""
  pattern = tuple(cfg.attention.pattern) or (cfg.attention.kind,)
  return [pattern[i % len(pattern)] for i in range(cfg.model.depth)]


def layer_kinds(cfg):
  """pattern_kinds, checked against the kind registry (kernels.kinds)."""
  # Name the key that holds the bad kind: `kind` is only read when `pattern` is empty.
  for i, kind in enumerate(cfg.attention.pattern):
    if kind not in kinds.KINDS:
      raise ValueError(f"attention.pattern entry {i} {kind!r} is not a kind; "
                       f"choose from {kinds.names()}.")
  if cfg.attention.kind not in kinds.KINDS:
    raise ValueError(f"attention.kind {cfg.attention.kind!r} is not a kind; "
                     f"choose from {kinds.names()}.")
  return pattern_kinds(cfg)
