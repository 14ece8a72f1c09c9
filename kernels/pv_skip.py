"""SpargeAttn's second stage: skip a tile's P.V product when its scores are negligible.

The rule (SpargeAttn, arXiv 2502.18137, sec. 3.4), shared by every implementation:
the kept tiles of one (batch, head, query block) row are visited in ascending key
block order, as the flash kernels do. For a tile with scaled, masked logits s
[bq, bk], m_local = rowmax(s) and m_new = max(m_prev, m_local) (the running max
after this tile). The tile's P.V product is skipped when every row r has

    m_local[r] - m_new[r] < pv_threshold      (or row r sees no key of this tile),

and at least one row sees a key of it; i.e. even its largest probability is below
exp(pv_threshold) of the row's running max. (A tile with no visible pair adds
nothing and is never counted as skipped.) pv_threshold (lambda, <= 0, natural-log units; None: stage 2 off). A skipped
tile still updates the running max and the softmax denominator: only its
numerator (P.V) is dropped, so the output is a slight underestimate of stage 1.
lambda = -inf never skips, so it equals stage 1 exactly.

Gradients treat the skip decisions as constants: for o = sum_{kept, not skipped}
P V / l with l over every kept tile, dS = P * (keep * dO V^T - delta) with
delta = rowsum(dO * o) as usual, and dV = (keep * P)^T dO.

`reference_attention` is the plain jnp oracle (autodiff gives those gradients);
the XLA path (kernels.gathered) and the Pallas kernels (kernels.block_sparse)
implement the same rule.
"""
import math

import jax.numpy as jnp
from jax import lax

from kernels import block_mask_lib, dense


def check_pv_threshold(pv_threshold):
  """Validates lambda: None (off) or a float <= 0 (-inf allowed)."""
  if pv_threshold is None:
    return None
  if (isinstance(pv_threshold, bool) or not isinstance(pv_threshold, (int, float))
      or math.isnan(pv_threshold) or pv_threshold > 0):
    raise ValueError(
        f"pv_threshold (SpargeAttn's lambda) must be None (stage 2 off) or a number <= 0 "
        f"in natural-log units, e.g. -8 (skip a tile whose scores sit e^-8 below the "
        f"running max); got {pv_threshold!r}.")
  return float(pv_threshold)


def skip_tiles(m_local_XQIN, m_run_XQIN, live_XQN, pv_threshold):
  """bool [..., nQ, N]: tiles whose P.V is skipped, from per-row tile maxima.

  m_local [..., nQ, I, N]: each row i's max over tile n's visible logits (-inf:
  none visible); m_run: the running max after tile n (cumulative over ascending
  n); live [..., nQ, N]: the tile is kept.
  """
  empty = m_local_XQIN == -jnp.inf
  gap = jnp.where(empty, -jnp.inf, m_local_XQIN - jnp.where(empty, 0.0, m_run_XQIN))
  below = empty | (gap < pv_threshold)
  visible = ~jnp.all(empty, axis=-2)  # a tile with no visible pair is not counted
  return live_XQN & visible & jnp.all(below, axis=-2)


def reference_attention(q_BLHK, k_BLGK, v_BLGK, mask_BHQK, *, block_q, block_k,
                        causal=True, segment_ids_BL=None, pv_threshold=None):
  """(o_BLHK, skipped_BHQK): block-masked attention with stage 2, in float32.

  mask_BHQK: bool block mask [B or 1, H or 1, nQ, nK] (query heads). skipped_BHQK
  (bool [B, H, nQ, nK], no gradient) marks the kept tiles whose P.V was dropped.
  """
  out_dtype = q_BLHK.dtype
  batch, length, num_heads, head_dim = q_BLHK.shape
  num_q, num_k = length // block_q, k_BLGK.shape[1] // block_k
  q = q_BLHK.astype(jnp.float32)
  k = dense.repeat_kv(k_BLGK, num_heads).astype(jnp.float32)
  v = dense.repeat_kv(v_BLGK, num_heads).astype(jnp.float32)
  mask_BHQK = jnp.broadcast_to(mask_BHQK, (batch, num_heads, num_q, num_k))
  allowed = block_mask_lib.expand_to_tokens(mask_BHQK, block_q, block_k)
  if causal:
    allowed = allowed & jnp.tril(jnp.ones((length, k.shape[1]), bool))
  if segment_ids_BL is not None:
    allowed = allowed & block_mask_lib.segment_mask_tokens(segment_ids_BL)
  logits = jnp.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(head_dim)
  logits = jnp.where(allowed, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  weights = jnp.exp(logits - row_max)
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  skipped = jnp.zeros(mask_BHQK.shape, bool)
  if pv_threshold is not None:
    tiles = lax.stop_gradient(logits).reshape(batch, num_heads, num_q, block_q, num_k,
                                              block_k)
    m_local = jnp.max(tiles, axis=-1)                 # [B, H, nQ, bq, nK]
    m_run = lax.cummax(m_local, axis=m_local.ndim - 1)
    skipped = skip_tiles(m_local, m_run, mask_BHQK, pv_threshold)
  keep = block_mask_lib.expand_to_tokens(~skipped, block_q, block_k)
  probs = weights * keep / jnp.where(denom == 0, 1.0, denom)
  o_BLHK = jnp.einsum("bhqs,bshk->bqhk", probs, v).astype(out_dtype)
  return o_BLHK, skipped


def skipped_fraction(skipped_BHQK, mask_BHQK):
  """float32 []: skipped tiles over kept tiles (0 when nothing is kept)."""
  kept = jnp.sum(jnp.broadcast_to(mask_BHQK, skipped_BHQK.shape), dtype=jnp.float32)
  return jnp.sum(skipped_BHQK, dtype=jnp.float32) / jnp.maximum(kept, 1.0)


def skipped_density(skipped_BHQK, *, block_q, block_k, causal=True):
  """float32 []: tiles whose P.V stage 2 skipped, as a fraction of the causally
  reachable tiles (the density's denominator: P.V runs on density - this)."""
  num_q, num_k = skipped_BHQK.shape[-2:]
  if causal:
    reachable = block_mask_lib.causal_blocks(num_q, num_k, block_q, block_k).sum()
  else:
    reachable = num_q * num_k
  rows = skipped_BHQK.shape[0] * skipped_BHQK.shape[1]
  return jnp.sum(skipped_BHQK, dtype=jnp.float32) / (rows * reachable)
