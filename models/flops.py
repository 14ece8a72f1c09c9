"""Parameter and FLOP counts from a config alone (no model is built).

FLOPs follow Hoffmann et al. 2022 (Chinchilla, App. F): a multiply-add is 2
FLOPs, the embedding is counted as a one-hot matmul (2 V D per token) like the
output layer, softmax costs 3 per score, and training is 3x the forward pass.
The attention core is counted by each layer's kind (KindSpec.flops, registered
in kernels.kinds; the built-in counts are in kernels.builtin_kinds).

Imports no JAX, so sweep plans (`sweeps.launch --dry_run`) count without starting it.
"""
from kernels import kinds
from models.layout import head_dim, pattern_kinds


def linear_extra_params(cfg):
  """A linear layer's parameters beyond the q/k/v/o projections: the decay
  projection W_a [D, H] and bias [H], and the size-2 convolutions on q, k, v."""
  m, a = cfg.model, cfg.attention
  H, G, K = m.heads, m.kv_heads, head_dim(m)
  decay = m.width * H + H if a.get("decay", False) else 0
  conv = 2 * (H + 2 * G) * K if a.get("conv", False) else 0
  return decay + conv


def count_params(cfg):
  """{'total', 'non_embedding'} for a full config (layer kinds change the count).

  non_embedding excludes the input embedding and an untied output head (Kaplan
  et al.'s N); with tied embeddings the shared matrix counts once in total."""
  m = cfg.model
  D, H, G, K, F, V = m.width, m.heads, m.kv_heads, head_dim(m), m.mlp_width, m.vocab_size
  per_layer = D * H * K + 2 * D * G * K + H * K * D + 3 * D * F + 2 * D
  linear_layers = sum(kinds.get(k).layer == "linear" for k in pattern_kinds(cfg))
  blocks = per_layer * m.depth + linear_layers * linear_extra_params(cfg)
  embedding = V * D
  head = 0 if m.tie_embeddings else V * D
  total = embedding + blocks + D + head
  return {"total": total, "non_embedding": total - embedding - head}


def attention_core_flops_per_token(kind, cfg, density=None, pv_skip=None):
  """Forward FLOPs per token of the attention core (everything but projections).
  pv_skip: stage 2's skipped share of reachable tiles (block kinds only)."""
  spec = kinds.get(kind)
  if pv_skip is not None and spec.estimators:
    return spec.flops(cfg, head_dim(cfg.model), density, pv_skip=pv_skip)
  return spec.flops(cfg, head_dim(cfg.model), density)


def distill_flops_per_token(cfg, density=None):
  """attention.distill_weight > 0: each block-kind layer also runs dense attention
  forward (the target; no backward through it), its sparse attention again forward
  and backward (3x; models.attention.distill_distance) and the distance (4 per element)."""
  a, m = cfg.attention, cfg.model
  if not a.get("distill_weight", 0.0):
    return 0
  K = head_dim(m)
  total = 0
  for kind in pattern_kinds(cfg):
    spec = kinds.get(kind)
    if spec.estimators:
      total += (kinds.get("dense").flops(cfg, K) + 3 * spec.flops(cfg, K, density)
                + 4 * m.heads * K)
  return total


def flops_breakdown(cfg, density=None, pv_skip=None):
  """Forward FLOPs per token by part, summed over layers."""
  m = cfg.model
  D, H, G, K, F, V = m.width, m.heads, m.kv_heads, head_dim(m), m.mlp_width, m.vocab_size
  layers = pattern_kinds(cfg)
  return {
      "embed": 2 * V * D,
      "attn_proj": len(layers) * 2 * D * (2 * H * K + 2 * G * K),
      "attn_core": sum(attention_core_flops_per_token(k, cfg, density, pv_skip)
                       for k in layers),
      "mlp": len(layers) * 2 * 3 * D * F,
      "head": 2 * D * V,
  }


def flops_per_token(cfg, density=None, pv_skip=None):
  """Training FLOPs per token (forward + backward = 3x forward, plus distillation's
  forward-only dense target)."""
  return (3 * sum(flops_breakdown(cfg, density, pv_skip).values())
          + distill_flops_per_token(cfg, density))
