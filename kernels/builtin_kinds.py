"""The built-in attention kinds' specs and FLOP counts (no JAX import).

FLOPs follow Hoffmann et al. 2022 (App. F): a multiply-add is 2 FLOPs, softmax
costs 3 per score. Causal dense attention scores (L+1)/2 keys per query on
average; block-sparse/spectral kernels compute whole blocks, so a kept density
rho costs rho * (causal blocks * block_q * block_k) / L scores per query;
chunked linear attention costs, per impl (`attention.impl`), a full C x C chunk
product plus the state read and update per chunk-padded position. These are the
executed counts; models.flops also has the model count behind MFU.
"""
import math

from kernels.kinds import KindSpec, estimator_params, register

FEATURE_DIM = {"identity": 1, "elu1": 1, "relu": 1}  # x K; "squared": see feature_width


def feature_width(feature_map, head_dim):
  """Features of a linear layer's map: K, or the squared map's symmetric K(K+1)/2
  (kernels.linear_reference.squared_features)."""
  K = head_dim
  return K * (K + 1) // 2 if feature_map == "squared" else K * FEATURE_DIM[feature_map]


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
  """Forward FLOPs per token of the linear core as `attention.impl` computes it
  ("auto" counted as xla, its CPU choice; the trainer counts with the impl it
  resolved). Per head, with F = feature_width and V' = K (+1: the normaliser, one
  more value column), per position:
    xla        chunk product q.k 2 C F (the squared map as (q.k)^2: K wide),
               (scores)V 2 C V', state read and update 4 F V';
    pallas     the same (linear_kernels: the state walk, the chunk scores and
               output), plus the current token in jnp (q.k 2 F, its v 2 V');
    reference  the recurrence: state read and update 4 F V' per token, no chunks.
  The xla path's normaliser is a ones column of v; the Pallas kernels carry it in
  accumulators of their own (a state row z_F: 4 F, as a column; the chunk's row
  sums of the scores: C adds where a column is 2 C), counted as the column.
  Chunked impls pad L to whole chunks of C = chunk_size, paid by the real tokens.
  Not counted: the Pallas paths' padding of F and V to their tiles, the tpu kernel's
  repeat of the chunk scores per value tile (V > 2048 only), elementwise decay. The decay and conv
  projections are models.flops.linear_extra_flops."""
  a, K = cfg.attention, head_dim
  F, V = feature_width(a.feature_map, K), K + (1 if a.normalize else 0)
  impl = a.get("impl", "xla")
  if impl == "reference":
    return cfg.model.heads * 4 * F * V
  C, L = a.chunk_size, cfg.seq_len
  qk = K if a.feature_map == "squared" else F  # (q.k)^2 at width K, both impls
  per_position = 2 * C * qk + 2 * C * V + 4 * F * V
  if impl == "pallas":
    per_position += 2 * F + 2 * V
  return cfg.model.heads * per_position * (-(-L // C) * C) / L


def _same(ref):
  return {impl: ref for impl in ("pallas", "xla", "reference")}


register(KindSpec(
    "dense", impls=_same("kernels.dispatch:dense_attention"), flops=dense_flops,
    params={"fused_bwd": False}, segments=True))
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
