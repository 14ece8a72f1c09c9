"""Decoder-only LM: embedding, pre-norm blocks (RMSNorm, RoPE GQA, SwiGLU), head."""
import jax.numpy as jnp
from flax import nnx

import parallel
from kernels import kinds
from models.attention import Attention, head_dim, layer_kinds
from models.linear_attention import LinearAttention
from models import parametrization as P
from models import unit_scaling as U
from models.layers import RMSNorm, SwiGLU, param, rope_tables
from models.parametrization import width_mult  # noqa: F401  (re-export)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# KindSpec.layer -> the module around the attention core.
LAYERS = {"attention": Attention, "linear": LinearAttention}


class Activation(nnx.Variable):
  """A coordinate-check probe (`LM(...)(tokens, probe=True)`). Not an nnx.Intermediate:
  the train step averages every Intermediate into attn_density."""


def _swiglu_unit(m):
  """u-muP's SwiGLU multipliers (in, out, act, glu scale); None for sp / mup."""
  if not P.is_unit(m):
    return None
  act = P.umup(m, "ffn_act_mult")
  return (P.forward_multiplier(m, "hidden", m.width),
          P.forward_multiplier(m, "hidden", m.mlp_width), act, U.glu_scale(act))


class Block(nnx.Module):
  def __init__(self, cfg, kind, *, rngs, std, out_std, index=0):
    m = cfg.model
    norm_scale, unit = P.init_scale(m, "vector", 1.0), P.is_unit(m)
    self.attn_norm = RMSNorm(m.width, eps=m.norm_eps, scale=norm_scale, unit=unit)
    layer = kinds.get(kind).layer
    where = {"layer": index} if layer == "attention" else {}  # per-layer thresholds
    self.attn = LAYERS[layer](cfg, kind, rngs=rngs, std=std, out_std=out_std, **where)
    self.mlp_norm = RMSNorm(m.width, eps=m.norm_eps, scale=norm_scale, unit=unit)
    self.mlp = SwiGLU(m.width, m.mlp_width, rngs=rngs, std=std, out_std=out_std,
                      unit=_swiglu_unit(m))
    self.branch_mult = P.branch_multiplier(m)  # CompleteP: 1 / d
    # u-muP: (branch, skip) weights of this block's attention and MLP sublayers.
    self.tau = ((P.residual_weights(m, 2 * index), P.residual_weights(m, 2 * index + 1))
                if unit else None)

  def _branch(self, y_BLD, name, probe):
    if self.branch_mult != 1.0:  # "none" keeps the old graph exactly
      y_BLD = y_BLD * jnp.asarray(self.branch_mult, y_BLD.dtype)
    if probe:
      self.sow(Activation, name, y_BLD)
    return y_BLD

  def _unit_residual(self, x_BLD, fn, weights, name, probe):
    """u-muP's residual_split / residual_add: b x + a F(x) in the forward; F's gradients
    stay unit-scaled (a is applied to its input's gradient, not to its output's). The
    probe sees F's own (unit-scaled) output."""
    a, b = weights
    y_BLD = fn(U.scaled(x_BLD, 1.0, a))
    if probe:
      self.sow(Activation, name, y_BLD)
    return U.scaled(y_BLD, a, 1.0) + x_BLD * jnp.asarray(b, x_BLD.dtype)

  def __call__(self, x_BLD, cos_LF, sin_LF, probe=False, segment_ids_BL=None):
    seg = {} if segment_ids_BL is None else {"segment_ids_BL": segment_ids_BL}
    if self.tau:
      attn = lambda h: self.attn(self.attn_norm(h), cos_LF, sin_LF, **seg)  # noqa: E731
      x_BLD = self._unit_residual(x_BLD, attn, self.tau[0], "attn_out", probe)
      x_BLD = parallel.constrain(x_BLD, ("batch", "length", "embed"))
      mlp = lambda h: self.mlp(self.mlp_norm(h))  # noqa: E731
      x_BLD = self._unit_residual(x_BLD, mlp, self.tau[1], "mlp_out", probe)
      return parallel.constrain(x_BLD, ("batch", "length", "embed"))
    attn_BLD = self.attn(self.attn_norm(x_BLD), cos_LF, sin_LF, **seg)
    x_BLD = x_BLD + self._branch(attn_BLD, "attn_out", probe)
    x_BLD = parallel.constrain(x_BLD, ("batch", "length", "embed"))
    x_BLD = x_BLD + self._branch(self.mlp(self.mlp_norm(x_BLD)), "mlp_out", probe)
    return parallel.constrain(x_BLD, ("batch", "length", "embed"))


class LM(nnx.Module):
  """`LM(cfg, rngs=...)(tokens_BL) -> logits_BLV` (float32 logits)."""

  def __init__(self, cfg, *, rngs):
    m = cfg.model
    P.check(m)
    if m.compute_dtype not in DTYPES:
      raise ValueError(f"model.compute_dtype must be one of {list(DTYPES)}, got {m.compute_dtype!r}.")
    if m.heads % m.kv_heads:
      raise ValueError(f"model.heads {m.heads} must be a multiple of model.kv_heads {m.kv_heads}.")
    if head_dim(m) % 2:
      raise ValueError(f"head_dim {head_dim(m)} must be even for RoPE.")
    self.compute_dtype = DTYPES[m.compute_dtype]
    self.head_dim, self.rope_theta = head_dim(m), m.rope_theta
    # Every init std and multiplier comes from the table in models/parametrization.py
    # (SP, muP; CompleteP for depth). The residual branches' output projections get
    # GPT-2's extra 1/sqrt(2 L).
    std = P.init_scale(m, "hidden", m.init_std)
    out_std = P.residual_out_std(m, std)
    self.readout_scale = P.forward_multiplier(m, "readout", m.width)
    self.embed_VD = param(rngs, (m.vocab_size, m.width), ("vocab", "embed"),
                          P.init_scale(m, "embedding", m.init_std))
    self.blocks = nnx.List([Block(cfg, kind, rngs=rngs, std=std, out_std=out_std, index=i)
                            for i, kind in enumerate(layer_kinds(cfg))])
    self.final_norm = RMSNorm(m.width, eps=m.norm_eps, scale=P.init_scale(m, "vector", 1.0),
                              unit=P.is_unit(m))
    self.tie_embeddings = m.tie_embeddings
    # u-muP: logits x umup_loss_softmax_mult; None for sp / mup.
    self.loss_mult = P.umup(m, "loss_softmax_mult") if P.is_unit(m) else None
    if not m.tie_embeddings:
      self.unembed_DV = param(rngs, (m.width, m.vocab_size), ("embed", "vocab"),
                              P.init_scale(m, "readout", m.init_std))

  def __call__(self, tokens_BL, probe=False, segment_ids_BL=None, positions_BL=None):
    """probe=True sows each group's activations as `Activation`s (the coordinate check).
    A packed batch (experiments.packing) passes segment_ids_BL (attention stays inside
    each document) and positions_BL (RoPE positions restart per document)."""
    dtype = self.compute_dtype
    embed_VD = self.embed_VD[...]
    if self.loss_mult is not None:  # u-muP's unit-scaled embedding gradient
      embed_VD = U.scaled(embed_VD, 1.0, (embed_VD.shape[0] / tokens_BL.size) ** 0.5)
    x_BLD = embed_VD.astype(dtype)[tokens_BL]
    x_BLD = parallel.constrain(x_BLD, ("batch", "length", "embed"))
    if probe:
      self.sow(Activation, "embed", x_BLD)
    cos_LF, sin_LF = rope_tables(tokens_BL.shape[1], self.head_dim, self.rope_theta,
                                 positions_BL)
    for block in self.blocks:
      x_BLD = block(x_BLD, cos_LF, sin_LF, probe=probe, segment_ids_BL=segment_ids_BL)
    if probe:
      self.sow(Activation, "residual", x_BLD)
    x_BLD = self.final_norm(x_BLD)
    if self.loss_mult is not None:
      return self._unit_readout(x_BLD)
    head_DV = (self.embed_VD[...].T if self.tie_embeddings else self.unembed_DV[...])
    logits_BLV = (x_BLD @ head_DV.astype(dtype)).astype(jnp.float32)
    logits_BLV = logits_BLV * self.readout_scale
    return parallel.constrain(logits_BLV, ("batch", "length", "vocab"))

  def _unit_readout(self, x_BLD):
    """u-muP's readout and loss scaling: logits = loss_mult x_BLD W / fan_in; the input's
    gradient x 1/sqrt(V) (u-muP's unconstrained readout), the weight's x 1/sqrt(tokens),
    and the logits' gradient x tokens V / sqrt(V - 1), so that the trainer's mean
    cross-entropy hands back unit-scaled gradients."""
    head_DV = (self.embed_VD[...].T if self.tie_embeddings else self.unembed_DV[...])
    T, V = U.tokens(x_BLD), head_DV.shape[1]
    x_BLD = U.scaled(x_BLD, 1.0, V ** -0.5)
    head_DV = U.scaled(head_DV, 1.0, T ** -0.5).astype(x_BLD.dtype)
    logits_BLV = (x_BLD @ head_DV).astype(jnp.float32)
    logits_BLV = U.scaled(logits_BLV, self.readout_scale * self.loss_mult,
                          U.loss_grad_scale(V, T))
    return parallel.constrain(logits_BLV, ("batch", "length", "vocab"))
