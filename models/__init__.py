"""Flax NNX language models, muP, and parameter / FLOP counts.

Names load on first use, so `models.count_params` / `models.flops` work without
importing JAX or Flax (sweep dry runs plan hundreds of runs instantly).
"""
from kernels.lazy import loader

_EXPORTS = {"LM": "models.transformer", "width_mult": "models.parametrization",
            "depth_mult": "models.parametrization",
            "count_params": "models.flops", "flops_per_token": "models.flops",
            "flops_breakdown": "models.flops", "flops_per_step": "models.flops",
            "mfu": "models.flops", "layer_kinds": "models.layout",
            "attention_stats": "models.attention"}

__all__ = sorted(_EXPORTS)
__getattr__ = loader(__name__, _EXPORTS)
