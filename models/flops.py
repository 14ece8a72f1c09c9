"""Parameter and FLOP counts from a config alone (no model is built).

FLOPs follow Hoffmann et al. 2022 (Chinchilla, App. F): a multiply-add is 2
FLOPs, the embedding is counted as a one-hot matmul (2 V D per token) like the
output layer, softmax costs 3 per score, and training is 3x the forward pass.
Attention is counted for the kind actually used: causal dense attention scores
(L+1)/2 keys per query on average; block-sparse/spectral kernels compute whole
blocks, so a kept density rho costs rho * (causal blocks * block_q * block_k) / L
scores per query; chunked linear attention costs a full C x C chunk product plus
the state read and update per token.

Imports no JAX, so sweep plans (`sweeps.launch --dry_run`) count without starting it.
"""
import math

from models.layout import head_dim, pattern_kinds

FEATURE_DIM = {"identity": 1, "elu1": 1, "relu": 1}  # x K; "squared" is K^2


def count_params(cfg):
  """{'total', 'non_embedding'} for a full config (layer kinds change the count).

  non_embedding excludes the input embedding and an untied output head (Kaplan
  et al.'s N); with tied embeddings the shared matrix counts once in total."""
  m = cfg.model
  D, H, G, K, F, V = m.width, m.heads, m.kv_heads, head_dim(m), m.mlp_width, m.vocab_size
  per_layer = D * H * K + 2 * D * G * K + H * K * D + 3 * D * F + 2 * D
  blocks = per_layer * m.depth
  embedding = V * D
  head = 0 if m.tie_embeddings else V * D
  total = embedding + blocks + D + head
  return {"total": total, "non_embedding": total - embedding - head}


def attention_scores_per_token(kind, cfg, density=None):
  """Query-key pairs each query scores in the forward pass, for one head."""
  L = cfg.seq_len
  if kind == "dense":
    return (L + 1) / 2
  if kind in ("block_sparse", "spectral"):
    bq = min(cfg.attention.block_q, L)
    bk = min(cfg.attention.block_k, L)
    nq, nk = math.ceil(L / bq), math.ceil(L / bk)
    reachable = sum(min(nk, ((i + 1) * bq - 1) // bk + 1) for i in range(nq))
    rho = 1.0 if density is None else float(density)
    return rho * reachable * bq * bk / L
  raise ValueError(f"no score count for attention kind {kind!r}")


def attention_core_flops_per_token(kind, cfg, density=None):
  """Forward FLOPs per token of the attention core (everything but projections)."""
  m = cfg.model
  H, K = m.heads, head_dim(m)
  if kind == "linear":
    C = min(cfg.attention.chunk_size, cfg.seq_len)
    feature = cfg.attention.feature_map
    Kf = K * K if feature == "squared" else K * FEATURE_DIM[feature]
    # intra-chunk QK^T (whole C x C chunk) and (.)V, state read q.S and update k^T v.
    return H * (2 * Kf * C + 2 * K * C + 4 * Kf * K)
  scores = attention_scores_per_token(kind, cfg, density)
  return H * (4 * K * scores + 3 * scores)


def flops_breakdown(cfg, density=None):
  """Forward FLOPs per token by part, summed over layers."""
  m = cfg.model
  D, H, G, K, F, V = m.width, m.heads, m.kv_heads, head_dim(m), m.mlp_width, m.vocab_size
  kinds = pattern_kinds(cfg)
  return {
      "embed": 2 * V * D,
      "attn_proj": len(kinds) * 2 * D * (2 * H * K + 2 * G * K),
      "attn_core": sum(attention_core_flops_per_token(k, cfg, density) for k in kinds),
      "mlp": len(kinds) * 2 * 3 * D * F,
      "head": 2 * D * V,
  }


def flops_per_token(cfg, density=None):
  """Training FLOPs per token (forward + backward = 3x forward)."""
  return 3 * sum(flops_breakdown(cfg, density).values())
