"""Grouped-query self-attention whose core is `kernels.attention` (any kind)."""
import jax.numpy as jnp
from flax import nnx

import kernels
from kernels.sparse import ESTIMATOR_PARAMS
import parallel
from models.layers import apply_rope, param
from models.layout import head_dim, pattern_kinds


SPARSE_KINDS = ("block_sparse", "spectral")


def layer_kinds(cfg):
  """The attention kind of each layer: `attention.pattern` cycled over depth, else `kind`."""
  # Name the key that holds the bad kind: `kind` is only read when `pattern` is empty.
  for i, kind in enumerate(cfg.attention.pattern):
    if kind not in kernels.KINDS:
      raise ValueError(f"attention.pattern entry {i} {kind!r} is not a kind; "
                       f"choose from {kernels.KINDS}.")
  if cfg.attention.kind not in kernels.KINDS:
    raise ValueError(f"attention.kind {cfg.attention.kind!r} is not a kind; "
                     f"choose from {kernels.KINDS}.")
  return pattern_kinds(cfg)


def kind_params(attn_cfg, kind):
  """The config's parameters that this layer's kind (and block-mask estimator)
  takes; None means the default. One config serves layers of several kinds, so
  e.g. `topp` reaches a spectral layer but not a static block-sparse one."""
  keys = kernels.KIND_PARAMS[kind]
  if kind in SPARSE_KINDS:
    estimator = attn_cfg.estimator if kind == "block_sparse" else "prism"
    own = ("estimator", "block_q", "block_k", *ESTIMATOR_PARAMS[estimator])
    keys = [k for k in keys if k in own]
  params = {key: attn_cfg[key] for key in keys if key in attn_cfg and attn_cfg[key] is not None}
  if kind == "spectral":
    params.pop("estimator", None)
  return params


class Attention(nnx.Module):
  def __init__(self, cfg, kind, *, rngs, std, out_std):
    m = cfg.model
    self.kind, self.impl = kind, cfg.attention.impl
    self.params = kind_params(cfg.attention, kind)
    self.heads, self.kv_heads, self.head_dim = m.heads, m.kv_heads, head_dim(m)
    # muP uses 1/K attention logits (Tensor Programs V); the kernels scale by
    # 1/sqrt(K), so q is pre-scaled by another 1/sqrt(K).
    self.q_scale = self.head_dim ** -0.5 if m.parametrization == "mup" else 1.0
    D, H, G, K = m.width, m.heads, m.kv_heads, self.head_dim
    self.wq_DHK = param(rngs, (D, H, K), ("embed", "heads", "head_dim"), std)
    self.wk_DGK = param(rngs, (D, G, K), ("embed", "kv_heads", "head_dim"), std)
    self.wv_DGK = param(rngs, (D, G, K), ("embed", "kv_heads", "head_dim"), std)
    self.wo_HKD = param(rngs, (H, K, D), ("heads", "head_dim", "embed"), out_std)

  def __call__(self, x_BLD, cos_LF, sin_LF):
    dtype = x_BLD.dtype
    q_BLHK = jnp.einsum("bld,dhk->blhk", x_BLD, self.wq_DHK[...].astype(dtype))
    k_BLGK = jnp.einsum("bld,dgk->blgk", x_BLD, self.wk_DGK[...].astype(dtype))
    v_BLGK = jnp.einsum("bld,dgk->blgk", x_BLD, self.wv_DGK[...].astype(dtype))
    q_BLHK = apply_rope(q_BLHK, cos_LF, sin_LF) * jnp.asarray(self.q_scale, dtype)
    k_BLGK = apply_rope(k_BLGK, cos_LF, sin_LF)
    q_BLHK = parallel.constrain(q_BLHK, ("batch", "length", "heads", "head_dim"))
    if self.kind in SPARSE_KINDS:
      # Kept fraction of causal blocks, for metrics and the FLOP count (cheap: the
      # estimator works on pooled blocks).
      self.sow(nnx.Intermediate, "attn_density", kernels.attention_density(
          q_BLHK, k_BLGK, kind=self.kind, causal=True, **self.params))
    # Under a multi-device mesh the kernel runs per device inside shard_map.
    o_BLHK = parallel.attention(q_BLHK, k_BLGK, v_BLGK, kind=self.kind,
                                impl=self.impl, causal=True, **self.params)
    o_BLHK = parallel.constrain(o_BLHK, ("batch", "length", "heads", "head_dim"))
    return jnp.einsum("blhk,hkd->bld", o_BLHK, self.wo_HKD[...].astype(dtype))
