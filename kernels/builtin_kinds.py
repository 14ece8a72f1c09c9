"""The built-in attention kinds' specs and FLOP counts (no JAX import).

FLOPs follow Hoffmann et al. 2022 (App. F): a multiply-add is 2 FLOPs, softmax
costs 3 per score. Causal dense attention scores (L+1)/2 keys per query on
average; block-sparse/spectral kernels compute whole blocks, so a kept density
rho costs rho * (causal blocks * block_q * block_k) / L scores per query;
chunked linear attention costs a full C x C chunk product plus the state read
and update per token.
"""
import math

from kernels.kinds import KindSpec, estimator_params, register

FEATURE_DIM = {"identity": 1, "elu1": 1, "relu": 1}  # x K; "squared" is K^2


def softmax_flops(cfg, head_dim, scores):
  """Forward FLOPs per token of softmax attention scoring `scores` keys per query."""
  return cfg.model.heads * (4 * head_dim * scores + 3 * scores)


def dense_flops(cfg, head_dim, density=None):
  return softmax_flops(cfg, head_dim, (cfg.seq_len + 1) / 2)


def block_scores(cfg, density=None):
  """Query-key pairs a block kernel scores per query (whole causal blocks, times rho)."""
  L = cfg.seq_len
  bq, bk = min(cfg.attention.block_q, L), min(cfg.attention.block_k, L)
  nq, nk = math.ceil(L / bq), math.ceil(L / bk)
  reachable = sum(min(nk, ((i + 1) * bq - 1) // bk + 1) for i in range(nq))
  rho = 1.0 if density is None else float(density)
  return rho * reachable * bq * bk / L


def sparse_flops(cfg, head_dim, density=None, pv_skip=None):
  """Kept tiles' scores and softmax; P.V (2K per score) only on tiles stage 2 kept
  (pv_skip: the skipped share of reachable tiles, kernels.pv_skip)."""
  full = softmax_flops(cfg, head_dim, block_scores(cfg, density))
  if not pv_skip:
    return full
  return full - cfg.model.heads * 2 * head_dim * block_scores(cfg, pv_skip)


def linear_flops(cfg, head_dim, density=None):
  a, K = cfg.attention, head_dim
  C = min(a.chunk_size, cfg.seq_len)
  Kf = K * K if a.feature_map == "squared" else K * FEATURE_DIM[a.feature_map]
  Vn = K + (1 if a.normalize else 0)  # normalisation carries a ones column with v
  # Per token, as the chunked XLA path computes it: its row of the whole C x C
  # chunk product q.k (the squared map squares q.k, so K wide, not K^2) and of
  # (scores)V, then the state read phi(q).S and its update phi(k)^T v (Kf x Vn).
  intra = 2 * K * C + 2 * Vn * C
  inter = 4 * Kf * Vn
  extra = 2 * cfg.model.width + (6 if a.get("conv", False) else 0) * K  # decay, conv
  return cfg.model.heads * (intra + inter) + extra


def _same(ref):
  return {impl: ref for impl in ("pallas", "xla", "reference")}


register(KindSpec(
    "dense", impls=_same("kernels.dispatch:dense_attention"), flops=dense_flops,
    segments=True))
register(KindSpec(
    "block_sparse", impls=_same("kernels.sparse:block_sparse"), flops=sparse_flops,
    params={"estimator": "static", **estimator_params("static", "sparge")},
    estimators=("static", "sparge"), estimate="kernels.sparse:estimate_block_sparse",
    segments=True))
register(KindSpec(
    "spectral", impls=_same("kernels.sparse:spectral"), flops=sparse_flops,
    params=estimator_params("prism"), estimators=("prism",),
    estimate="kernels.sparse:estimate_spectral", segments=True))
register(KindSpec(
    "linear", impls=_same("kernels.linear:linear_attention"), flops=linear_flops,
    params={"log_decay": None, "feature_map": "identity", "normalize": False,
            "chunk_size": 64},
    layer="linear", segments=True))
