"""Parameter and FLOP counts from a config alone (no model is built).

Two conventions (`CONVENTIONS`), both per token, training = 3x the forward pass,
recomputation in the backward (remat, a flash kernel's second look at P) not counted:

  executed    the work the kernels do (Hoffmann et al. 2022, Chinchilla App. F rules:
              a multiply-add is 2 FLOPs, the embedding is a one-hot matmul (2 V D)
              like the output layer, softmax costs 3 per score), with the attention
              core counted by each layer's kind (KindSpec.flops, registered in
              kernels.kinds; the built-in counts are in kernels.builtin_kinds): causal
              dense attention scores (L+1)/2 keys per query, block kinds whole kept
              blocks, linear attention its chunked products. Sweeps, fits and the
              logged `flops` use this one.
  chinchilla  the model FLOPs behind MFU in the literature: Chinchilla App. F, Table 4
              term by term, attention non-causal over the full L:
                logits 2 L H K + softmax 3 H L + attention-over-values 2 L H K
              per layer and token forward, i.e. 3 x 4 H K L = 12 H K L per layer in
              training: PaLM App. B's 12 n_layers n_heads head_dim seq_len term. It
              differs from PaLM's 6N + 12 l h q T only by the softmax (9 H L per
              layer) and, with tied embeddings, the input embedding's 6 V D (PaLM's
              N holds the shared matrix once, as the output layer).
              A block kind's kept density rho scales its attention term (rho L keys;
              stage-2 skips are not credited); a linear layer counts its recurrent
              form, the state read phi(q) S and update phi(k)^T v, 4 F V' per head
              (F the feature map's width, K(K+1)/2 for squared; V' = K + 1 with
              the normaliser, one more accumulated sum per token, as a value column
              would be), whatever chunking the impl uses.

MFU = chinchilla FLOPs per step / (seconds per step x peak FLOP/s) (`mfu`).

Imports no JAX, so sweep plans (`sweeps.launch --dry_run`) count without starting it.
"""
from kernels import kinds
from kernels.builtin_kinds import feature_width
from models.layout import head_dim, pattern_kinds

CONVENTIONS = ("executed", "chinchilla")


def linear_extra_params(cfg):
  """A linear layer's parameters beyond the q/k/v/o projections: the decay
  projection W_a [D, H] and bias [H], and the size-2 convolutions on q, k, v."""
  m, a = cfg.model, cfg.attention
  H, G, K = m.heads, m.kv_heads, head_dim(m)
  decay = m.width * H + H if a.get("decay", False) else 0
  conv = 2 * (H + 2 * G) * K if a.get("conv", False) else 0
  return decay + conv


def linear_extra_flops(cfg):
  """Forward FLOPs per token of those parameters: W_a x (2 D H) and two taps per
  q/k/v channel (2 x 2 (H + 2G) K)."""
  m, a = cfg.model, cfg.attention
  H, G, K = m.heads, m.kv_heads, head_dim(m)
  decay = 2 * m.width * H if a.get("decay", False) else 0
  conv = 4 * (H + 2 * G) * K if a.get("conv", False) else 0
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


def chinchilla_core_flops(kind, cfg, density=None):
  """Forward FLOPs per token of one layer's attention core, chinchilla convention
  (module docstring): softmax attention over rho L keys, or linear attention's
  recurrent form."""
  m, a, L = cfg.model, cfg.attention, cfg.seq_len
  H, K = m.heads, head_dim(m)
  if kinds.get(kind).layer == "linear":
    return H * 4 * feature_width(a.feature_map, K) * (K + (1 if a.normalize else 0))
  rho = 1.0 if density is None else float(density)
  return H * (4 * K + 3) * rho * L


def attention_core_flops_per_token(kind, cfg, density=None, pv_skip=None,
                                   convention="executed"):
  """Forward FLOPs per token of the attention core (everything but projections).
  pv_skip: stage 2's skipped share of reachable tiles (block kinds, executed only)."""
  if convention == "chinchilla":
    return chinchilla_core_flops(kind, cfg, density)
  if convention != "executed":
    raise ValueError(f"unknown FLOP convention {convention!r}; choose one of {CONVENTIONS}.")
  spec = kinds.get(kind)
  if pv_skip is not None and spec.estimators:
    return spec.flops(cfg, head_dim(cfg.model), density, pv_skip=pv_skip)
  return spec.flops(cfg, head_dim(cfg.model), density)


def distill_flops_per_token(cfg, density=None, convention="executed"):
  """attention.distill_weight > 0: each block-kind layer also runs dense attention
  forward (the target; no backward through it), its sparse attention again forward
  and backward (3x; models.attention.distill_distance) and the distance (4 per element)."""
  a, m = cfg.attention, cfg.model
  if not a.get("distill_weight", 0.0):
    return 0
  core = lambda kind, rho: attention_core_flops_per_token(kind, cfg, rho, convention=convention)
  return sum(core("dense", None) + 3 * core(kind, density) + 4 * m.heads * head_dim(m)
             for kind in pattern_kinds(cfg) if kinds.get(kind).estimators)


def flops_breakdown(cfg, density=None, pv_skip=None, convention="executed"):
  """Forward FLOPs per token by part, summed over layers."""
  m = cfg.model
  D, H, G, K, F, V = m.width, m.heads, m.kv_heads, head_dim(m), m.mlp_width, m.vocab_size
  layers = pattern_kinds(cfg)
  linear_proj = linear_extra_flops(cfg) * sum(kinds.get(k).layer == "linear" for k in layers)
  return {
      "embed": 2 * V * D,
      "attn_proj": len(layers) * 2 * D * (2 * H * K + 2 * G * K) + linear_proj,
      "attn_core": sum(attention_core_flops_per_token(k, cfg, density, pv_skip, convention)
                       for k in layers),
      "mlp": len(layers) * 2 * 3 * D * F,
      "head": 2 * D * V,
  }


def flops_per_token(cfg, density=None, pv_skip=None, convention="executed"):
  """Training FLOPs per token (forward + backward = 3x forward, plus distillation's
  forward-only dense target) under `convention` (module docstring)."""
  return (3 * sum(flops_breakdown(cfg, density, pv_skip, convention).values())
          + distill_flops_per_token(cfg, density, convention))


def flops_per_step(cfg, density=None, pv_skip=None, convention="executed"):
  return flops_per_token(cfg, density, pv_skip, convention) * cfg.batch_size * cfg.seq_len


def mfu(cfg, seconds_per_step, peak_flops, density=None):
  """Model FLOPs utilisation: chinchilla FLOPs per step / (seconds x peak FLOP/s).
  peak_flops: the devices' summed peak (e.g. 989e12 per H100 SXM at bf16, dense)."""
  return flops_per_step(cfg, density, convention="chinchilla") / (seconds_per_step * peak_flops)
