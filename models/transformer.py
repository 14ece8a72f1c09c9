"""Decoder-only LM: embedding, pre-norm blocks (RMSNorm, RoPE GQA, SwiGLU), head."""
import jax.numpy as jnp
from flax import nnx

import parallel
from kernels import kinds
from models.attention import Attention, head_dim, layer_kinds
from models.linear_attention import LinearAttention
from models.layers import RMSNorm, SwiGLU, param, rope_tables

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# KindSpec.layer -> the module around the attention core.
LAYERS = {"attention": Attention, "linear": LinearAttention}


def width_mult(model_cfg):
  """muP's width multiplier relative to the base (proxy) width; 1 under SP."""
  if model_cfg.parametrization == "mup":
    return model_cfg.width / model_cfg.mup_base_width
  return 1.0


class Block(nnx.Module):
  def __init__(self, cfg, kind, *, rngs, std, out_std):
    m = cfg.model
    self.attn_norm = RMSNorm(m.width, eps=m.norm_eps)
    self.attn = LAYERS[kinds.get(kind).layer](cfg, kind, rngs=rngs, std=std, out_std=out_std)
    self.mlp_norm = RMSNorm(m.width, eps=m.norm_eps)
    self.mlp = SwiGLU(m.width, m.mlp_width, rngs=rngs, std=std, out_std=out_std)

  def __call__(self, x_BLD, cos_LF, sin_LF):
    x_BLD = x_BLD + self.attn(self.attn_norm(x_BLD), cos_LF, sin_LF)
    x_BLD = parallel.constrain(x_BLD, ("batch", "length", "embed"))
    x_BLD = x_BLD + self.mlp(self.mlp_norm(x_BLD))
    return parallel.constrain(x_BLD, ("batch", "length", "embed"))


class LM(nnx.Module):
  """`LM(cfg, rngs=...)(tokens_BL) -> logits_BLV` (float32 logits)."""

  def __init__(self, cfg, *, rngs):
    m = cfg.model
    if m.parametrization not in ("sp", "mup"):
      raise ValueError(f"model.parametrization must be 'sp' or 'mup', got {m.parametrization!r}.")
    if m.compute_dtype not in DTYPES:
      raise ValueError(f"model.compute_dtype must be one of {list(DTYPES)}, got {m.compute_dtype!r}.")
    if m.heads % m.kv_heads:
      raise ValueError(f"model.heads {m.heads} must be a multiple of model.kv_heads {m.kv_heads}.")
    if head_dim(m) % 2:
      raise ValueError(f"head_dim {head_dim(m)} must be even for RoPE.")
    self.compute_dtype = DTYPES[m.compute_dtype]
    self.head_dim, self.rope_theta = head_dim(m), m.rope_theta
    # SP: every matrix ~ N(0, init_std^2), residual outputs scaled by 1/sqrt(2 depth).
    # muP (Tensor Programs V, Table 3): hidden weights var ∝ 1/fan_in (std shrinks
    # with sqrt(width_mult)), embedding std fixed, readout logits divided by width_mult.
    mult = width_mult(m)
    std = m.init_std / mult ** 0.5
    out_std = std / (2 * m.depth) ** 0.5
    self.readout_scale = 1.0 / mult
    self.embed_VD = param(rngs, (m.vocab_size, m.width), ("vocab", "embed"), m.init_std)
    self.blocks = nnx.List([Block(cfg, kind, rngs=rngs, std=std, out_std=out_std)
                            for kind in layer_kinds(cfg)])
    self.final_norm = RMSNorm(m.width, eps=m.norm_eps)
    self.tie_embeddings = m.tie_embeddings
    if not m.tie_embeddings:
      self.unembed_DV = param(rngs, (m.width, m.vocab_size), ("embed", "vocab"), std)

  def __call__(self, tokens_BL):
    dtype = self.compute_dtype
    x_BLD = self.embed_VD[...].astype(dtype)[tokens_BL]
    x_BLD = parallel.constrain(x_BLD, ("batch", "length", "embed"))
    cos_LF, sin_LF = rope_tables(tokens_BL.shape[1], self.head_dim, self.rope_theta)
    for block in self.blocks:
      x_BLD = block(x_BLD, cos_LF, sin_LF)
    x_BLD = self.final_norm(x_BLD)
    head_DV = (self.embed_VD[...].T if self.tie_embeddings else self.unembed_DV[...])
    logits_BLV = (x_BLD @ head_DV.astype(dtype)).astype(jnp.float32)
    logits_BLV = logits_BLV * self.readout_scale
    return parallel.constrain(logits_BLV, ("batch", "length", "vocab"))
