"""Grouped-query self-attention whose core is `kernels.attention` (any kind of layer
"attention" in the registry, kernels.kinds)."""
import jax
import jax.numpy as jnp
from flax import nnx

from kernels import kinds, pv_skip
import parallel
from models import parametrization, thresholds
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
    own = ("estimator", *kinds.BLOCK_PARAMS, *kinds.FLASH_PARAMS, *kinds.STAGE2_PARAMS,
           *kinds.ESTIMATOR_PARAMS.get(estimator, ()))
    keys = [k for k in keys if k in own]
  return {key: attn_cfg[key] for key in keys if key in attn_cfg and attn_cfg[key] is not None}


def attend(q_BLHK, k_BLGK, v_BLGK, spec, impl, params, sow, segment_ids_BL=None,
           distill=False):
  """The kind's core under the active mesh; a kind with an estimator runs it once
  here, sows the density ("attn_density") and hands the kernel its result.
  segment_ids_BL: document masking of a packed batch (estimator and kernel).
  With pv_threshold (stage 2) it sows the skipped tiles' share of the reachable
  ones ("attn_pv_skip"); with distill the distance to dense attention on the
  same q, k, v ("attn_distill", see distill_distance)."""
  seg = {} if segment_ids_BL is None else {"segment_ids_BL": segment_ids_BL}
  estimate = spec.estimate_fn()
  if estimate is not None:
    density, params = estimate(q_BLHK, k_BLGK, causal=True, **params, **seg)
    sow(nnx.Intermediate, "attn_density", density)
  stage2 = params.get("pv_threshold") is not None
  # Under a multi-device mesh the kernel runs per device inside shard_map.
  o_BLHK = parallel.attention(q_BLHK, k_BLGK, v_BLGK, kind=spec.name, impl=impl,
                              causal=True, **params, **seg,
                              **({"return_skipped": True} if stage2 else {}))
  if stage2:
    o_BLHK, skipped_BHQK = o_BLHK
    blocks = {n: params.get(n, spec.params[n]) for n in kinds.BLOCK_PARAMS}
    sow(nnx.Intermediate, "attn_pv_skip", pv_skip.skipped_density(
        skipped_BHQK, block_q=blocks["block_q"], block_k=blocks["block_k"]))
  if distill:
    sow(nnx.Intermediate, "attn_distill",
        distill_distance(q_BLHK, k_BLGK, v_BLGK, spec, impl, params, seg))
  return o_BLHK


def distill_distance(q_BLHK, k_BLGK, v_BLGK, spec, impl, params, seg):
  """|o - sg(o_dense)|^2 / |sg(o_dense)|^2 over the layer's batch (scale-free, so one
  weight serves every width). o_dense: exact dense attention on the same inputs by
  the layer's impl (flash on accelerators), never differentiated. o is the layer's
  sparse attention again, with v under stop_gradient: the distance trains the scores
  (q, k) to put the mass where the sparse pattern keeps it. Letting it reach v too
  has a degenerate optimum (v constant over positions makes every pattern agree),
  which measurably hurt the cross-entropy (benchmarks/distill.py)."""
  q, k, v = (jax.lax.stop_gradient(x) for x in (q_BLHK, k_BLGK, v_BLGK))
  dense_BLHK = jax.lax.stop_gradient(parallel.attention(
      q, k, v, kind="dense", impl=impl, causal=True, **seg)).astype(jnp.float32)
  sparse_BLHK = parallel.attention(q_BLHK, k_BLGK, v, kind=spec.name, impl=impl, causal=True,
                                   **params, **seg).astype(jnp.float32)
  error = jnp.sum(jnp.square(sparse_BLHK - dense_BLHK))
  return error / jnp.maximum(jnp.sum(jnp.square(dense_BLHK)), 1e-30)


def attention_stats(intermediates):
  """{name: mean over layers} of the sown attention statistics (attn_density,
  attn_pv_skip, attn_distill) in a popped nnx.Intermediate state."""
  grouped = {}
  for path, value in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
    names = [getattr(key, "key", getattr(key, "name", None)) for key in path]
    name = next(n for n in reversed(names) if isinstance(n, str) and n.startswith("attn_"))
    grouped.setdefault(name, []).append(value)
  return {name: jnp.mean(jnp.stack(values)) for name, values in grouped.items()}


class Attention(nnx.Module):
  def __init__(self, cfg, kind, *, rngs, std, out_std, layer=0):
    m, a = cfg.model, cfg.attention
    self.kind, self.impl = kind, a.impl
    self.params = kind_params(a, kind)
    block_kind = kind in SPARSE_KINDS
    if block_kind and a.get("thresholds"):  # calibrated per layer (experiments.calibrate)
      self.params.update(thresholds.layer_params(a.thresholds, layer))
    # SpargeAttention2's distillation towards dense attention (experiments.state adds it).
    # With a teacher run (experiments.teacher) the distance is on the logits instead.
    self.distill = (block_kind and a.get("distill_weight", 0.0) > 0
                    and not a.get("distill_teacher"))
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
                    self.params, self.sow, segment_ids_BL, distill=self.distill)
    o_BLHK = parallel.constrain(o_BLHK, ("batch", "length", "heads", "head_dim"))
    if unit:  # block kinds too: at init they keep (nearly) every reachable key
      scale = U.attention_out_scale(self.softmax_mult, self.head_dim, x_BLD.shape[1])
      o_BLHK = o_BLHK * jnp.asarray(scale, o_BLHK.dtype)
    return U.project("blhk,hkd->bld", o_BLHK, self.wo_HKD, self.out_mult, unit)
