"""Flax NNX language models, muP, and parameter / FLOP counts."""
from models.transformer import LM, width_mult
from models.flops import count_params, flops_per_token, flops_breakdown
from models.attention import layer_kinds

__all__ = ["LM", "width_mult", "count_params", "flops_per_token",
           "flops_breakdown", "layer_kinds"]
