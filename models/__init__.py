"""Flax NNX language models, muP, and parameter / FLOP counts.

Names load on first use (PEP 562), so `models.count_params` / `models.flops`
work without importing JAX or Flax (sweep dry runs plan hundreds of runs instantly).
"""
import importlib

_EXPORTS = {"LM": "models.transformer", "width_mult": "models.transformer",
            "count_params": "models.flops", "flops_per_token": "models.flops",
            "flops_breakdown": "models.flops", "layer_kinds": "models.attention"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'models' has no attribute {name!r}")
  return getattr(importlib.import_module(_EXPORTS[name]), name)
