"""Grouped-query self-attention whose core is `kernels.attention` (any kind of layer
"attention" in the registry, kernels.kinds)."""
import jax.numpy as jnp
from flax import nnx

from kernels import kinds
import parallel
from models import parametrization
from models import unit_scaling as U
from models.layers import apply_rope, param
from models.layout import head_dim, layer_kinds  # noqa: F401  (layer_kinds: re-export)

SPARSE_KINDS = kinds.BLOCK_KINDS  # live: kinds registered later are included


class Captured(nnx.Variable):
  """A layer's attention inputs (q, k, v after RoPE; segment ids or None), sown when
  `Attention.capture` is set: calibration and recall probes read them. Not an
  nnx.Intermediate, so the training loss never sees it."""


def kind_params(attn_cfg, kind):
  """The config's parameters that this layer's kind (and block-mask estimator)
  takes; None means the default. One config serves layers of several kinds, so
  e.g. `topp` reaches a spectral layer but not a static block-sparse one."""
  spec = kinds.get(kind)
  keys = spec.params
  if spec.estimators:
    chosen = attn_cfg.get("estimator") if len(spec.estimators) > 1 else None
    estimator = chosen or spec.estimators[0]
    own = ("estimator", *kinds.BLOCK_PARAMS, *kinds.ESTIMATOR_PARAMS.get(estimator, ()))
    keys = [k for k in keys if k in own]
  return {key: attn_cfg[key] for key in keys if key in attn_cfg and attn_cfg[key] is not None}


def attend(q_BLHK, k_BLGK, v_BLGK, spec, impl, params, sow, segment_ids_BL=None):
  """The kind's core under the active mesh; a kind with an estimator runs it once
  here, sows the density ("attn_density") and hands the kernel its result.
  segment_ids_BL: document masking of a packed batch (estimator and kernel)."""
  seg = {} if segment_ids_BL is None else {"segment_ids_BL": segment_ids_BL}
  estimate = spec.estimate_fn()
  if estimate is not None:
    density, params = estimate(q_BLHK, k_BLGK, causal=True, **params, **seg)
    sow(nnx.Intermediate, "attn_density", density)
  # Under a multi-device mesh the kernel runs per device inside shard_map.
  return parallel.attention(q_BLHK, k_BLGK, v_BLGK, kind=spec.name, impl=impl,
                            causal=True, **params, **seg)


class Attention(nnx.Module):
  def __init__(self, cfg, kind, *, rngs, std, out_std):
    m = cfg.model
    self.kind, self.impl = kind, cfg.attention.impl
    self.params = kind_params(cfg.attention, kind)
    self.heads, self.kv_heads, self.head_dim = m.heads, m.kv_heads, head_dim(m)
    # muP's 1/K attention logits (parametrization.ATTENTION_POWER): the kernels scale
    # by 1/sqrt(K), so q carries the rest.
    self.q_scale = parametrization.attention_q_scale(m, self.head_dim)
    D, H, G, K = m.width, m.heads, m.kv_heads, self.head_dim
    self.wq_DHK = param(rngs, (D, H, K), ("embed", "heads", "head_dim"), std)
    self.wk_DGK = param(rngs, (D, G, K), ("embed", "kv_heads", "head_dim"), std)
    self.wv_DGK = param(rngs, (D, G, K), ("embed", "kv_heads", "head_dim"), std)
    self.wo_HKD = param(rngs, (H, K, D), ("heads", "head_dim", "embed"), out_std)
    # u-muP: unit-scaled q/k/v/o matmuls (x 1/sqrt(fan_in)) and softmax output; 1 / off.
    self.unit = parametrization.is_unit(m)
    self.in_mult = parametrization.forward_multiplier(m, "hidden", D)
    self.out_mult = parametrization.forward_multiplier(m, "hidden", H * K)
    self.softmax_mult = parametrization.umup(m, "attn_softmax_mult")
    self.capture = False  # set True to sow Captured(q, k, v, segment ids)

  def __call__(self, x_BLD, cos_LF, sin_LF, segment_ids_BL=None):
    dtype, unit = x_BLD.dtype, self.unit
    qk = U.qk_grad_scale(self.softmax_mult, self.head_dim)
    q_BLHK = U.project("bld,dhk->blhk", x_BLD, self.wq_DHK, self.in_mult, unit, qk)
    k_BLGK = U.project("bld,dgk->blgk", x_BLD, self.wk_DGK, self.in_mult, unit, qk)
    v_BLGK = U.project("bld,dgk->blgk", x_BLD, self.wv_DGK, self.in_mult, unit)
    q_BLHK = apply_rope(q_BLHK, cos_LF, sin_LF) * jnp.asarray(self.q_scale, dtype)
    k_BLGK = apply_rope(k_BLGK, cos_LF, sin_LF)
    q_BLHK = parallel.constrain(q_BLHK, ("batch", "length", "heads", "head_dim"))
    if self.capture:
      self.sow(Captured, "attn_inputs", (q_BLHK, k_BLGK, v_BLGK, segment_ids_BL))
    o_BLHK = attend(q_BLHK, k_BLGK, v_BLGK, kinds.get(self.kind), self.impl,
                    self.params, self.sow, segment_ids_BL)
    o_BLHK = parallel.constrain(o_BLHK, ("batch", "length", "heads", "head_dim"))
    if unit:  # block kinds too: at init they keep (nearly) every reachable key
      scale = U.attention_out_scale(self.softmax_mult, self.head_dim, x_BLD.shape[1])
      o_BLHK = o_BLHK * jnp.asarray(scale, o_BLHK.dtype)
    return U.project("blhk,hkd->bld", o_BLHK, self.wo_HKD, self.out_mult, unit)
