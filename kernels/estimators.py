"""Block-mask estimators: which (query block, key block) pairs attention computes.

The dynamic estimators (sparge, prism) return a boolean mask [B, H, nQ, nK] over
query heads H (GQA kv heads are repeated per group) and never carry gradients;
they work on block-pooled q/k, so they cost the pooling (O(L K)) plus
O(nQ nK (K + log nK)) for the block scores and their sort. The static mask
depends only on sizes: numpy [nQ, nK], shared by every batch row and head.

Block geometry shared by all: query block i covers tokens [i bq, (i+1) bq), cut at
L (ceil(L / bq) blocks; a partial last block is pooled over its real tokens and the
kernels pad it, kernels.padding, so no estimator sees or selects padding);
its "diagonal" is every key block overlapping that span (one block when
bq == bk); the "sink" is key block 0. Both are always kept so every query row
has at least its own key and the usual attention sink.

Prism (prism_mask) against the reference (xinghaow99/prism, prism/prism.py
`prism_block_estimate` and its Triton kernels, prism/kernels/prism_estimation.py):
matches the reference: block means of post-RoPE q and of k repeated to the query
  heads; bands of the rotate-half layout, high = the first high_freq_dims/2 dims of
  each half, low = the last low_freq_dims/2 of each half, defaults 64 and 96 of 128
  (they overlap; our RoPE, models.layers.rope_tables, is the same layout, so the
  same indices rotate fastest); t = sqrt(d_b/d) (rms(q_b)/rms(q)) (rms(k_b)/rms(k))
  with RMS over all pooled blocks and dims per (batch, head) and the full RMS
  clamped at 1e-6; logits q_b.k_b / (sqrt(d_b) t); block-causal softmax per band;
  top-p per row and band over the sorted row, keeping a block while the mass before
  it is < topp (so the crossing block is kept), ties to the lower index (their
  Triton select); union of the bands, sink column and diagonal; topp 0.95.
differs: one `topp` for both bands, because the reference's two thresholds are
  equal in all its scripts (0.95; 0.93 for LongBench); no uncalibrated mode
  (their CALIBRATE=false, fixed temperature 1), because it is an ablation and off
  by default; t is also clamped at 1e-6, because an all-zero band would give 0/0
  logits (theirs go NaN), ours score it uniform; scores in float32 (they pool bf16);
  block_q != block_k, causal=False, packed documents (allowed_BXQK, each
  document's first block as its sink), topp >= 1 keeping the whole row and the
  `max_blocks` cap are ours, because our kernels and packed batches need them; with
  bq == bk, equal lengths, causal and none of those, the mask is theirs.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from kernels.block_mask_lib import causal_blocks
from kernels.padding import num_blocks, pad_tokens

_EPS = 1e-6


def reachable_blocks(num_q, num_k, block_q, block_k, causal):
  """bool [nQ, nK]: blocks holding at least one (query, key) pair attention may use."""
  if causal:
    return causal_blocks(num_q, num_k, block_q, block_k)
  return np.ones((num_q, num_k), bool)


# Block geometry is numpy: it depends only on static sizes, so it is a constant
# under jit and the static masks cost nothing at run time.
def _diagonal_span(num_q, block_q, block_k):
  """First and last key block overlapping each query block."""
  query_block_Q = np.arange(num_q)
  first_Q = (query_block_Q * block_q) // block_k
  last_Q = ((query_block_Q + 1) * block_q - 1) // block_k
  return first_Q, last_Q


def diagonal_blocks(num_q, num_k, block_q, block_k):
  """bool [nQ, nK]: key blocks overlapping each query block's own token span."""
  first_Q, last_Q = _diagonal_span(num_q, block_q, block_k)
  key_block_K = np.arange(num_k)
  return (key_block_K >= first_Q[:, None]) & (key_block_K <= last_Q[:, None])


def sink_blocks_mask(num_q, num_k, sink_blocks=1):
  """bool [nQ, nK]: the first `sink_blocks` key blocks of every row."""
  return np.broadcast_to(np.arange(num_k) < sink_blocks, (num_q, num_k))


def static_mask(num_q, num_k, block_q, block_k, *, causal=True,
                window_blocks=None, sink_blocks=0):
  """bool [nQ, nK] (numpy): union of a sliding window (in key blocks) and sink blocks.

  `window_blocks=w` keeps the diagonal block(s) and the w-1 key blocks before
  them (and, without causality, the w-1 after them); None keeps every block.
  """
  reachable_QK = reachable_blocks(num_q, num_k, block_q, block_k, causal)
  if window_blocks is None:
    return reachable_QK
  first_Q, last_Q = _diagonal_span(num_q, block_q, block_k)
  key_block_K = np.arange(num_k)
  distance_QK = np.maximum(first_Q[:, None] - key_block_K,
                           key_block_K - last_Q[:, None])
  window_QK = distance_QK < window_blocks
  keep_QK = window_QK | sink_blocks_mask(num_q, num_k, sink_blocks)
  return keep_QK & reachable_QK


def repeat_heads(x_BG, num_heads):
  """Repeats kv-head axis 1 to the query heads (head h reads kv head h // (H // G))."""
  return jnp.repeat(x_BG, num_heads // x_BG.shape[1], axis=1)


def pool_blocks(x_BLHK, block):
  """float32 [B, H, ceil(L/block), K]: mean of each block's vectors; a partial last
  block is averaged over its real tokens only (padding is not content)."""
  batch, length, heads, dim = x_BLHK.shape
  count = num_blocks(length, block)
  x = pad_tokens(x_BLHK.astype(jnp.float32), count * block)
  blocks = x.reshape(batch, count, block, heads, dim)
  if length % block:
    tokens_N = np.minimum(block, length - np.arange(count) * block)
    means = jnp.sum(blocks, axis=2) / tokens_N[None, :, None, None].astype(np.float32)
  else:
    means = jnp.mean(blocks, axis=2)
  return jnp.transpose(means, (0, 2, 1, 3))


def self_similarity(x_BLHK, block):
  """float32 [B, H, ceil(L/block)]: mean pairwise cosine similarity inside each block.

  Averages over all ordered pairs including i == j (as SpargeAttn does), which
  equals the squared norm of the block's mean unit vector: O(L K), no gram (a
  partial last block: pairs of its real tokens).
  """
  x = x_BLHK.astype(jnp.float32)
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  unit_BLHK = x / jnp.maximum(norm, _EPS)
  mean_unit_BHNK = pool_blocks(unit_BLHK, block)
  return jnp.sum(mean_unit_BHNK * mean_unit_BHNK, axis=-1)


def masked_softmax(logits, valid):
  """Softmax over the last axis restricted to `valid`; all-invalid rows give zeros."""
  logits = jnp.where(valid, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  weights = jnp.exp(logits - row_max) * valid
  total = jnp.sum(weights, axis=-1, keepdims=True)
  return weights / jnp.where(total == 0, 1.0, total)


def descending_order(x):
  """(order, rank): the row sorted descending (stable) and each entry's position in it."""
  order = jnp.argsort(-x, axis=-1, stable=True)
  return order, jnp.argsort(order, axis=-1, stable=True)


def select_blocks(probs, *, topk_counts=None, topp=None):
  """bool mask of the blocks kept per row by top-k counts and/or top-p mass.

  Top-p keeps the smallest prefix of the row sorted by probability whose mass
  reaches `topp` (an entry is kept if the mass before it is still below topp);
  topp >= 1 keeps the whole row, whatever rounding does to the cumulative sum.
  """
  if topp is not None and topp >= 1.0:
    return jnp.ones(probs.shape, bool)
  order, rank = descending_order(probs)
  keep = jnp.zeros(probs.shape, bool)
  if topk_counts is not None:
    keep = keep | (rank < topk_counts[..., None])
  if topp is not None:
    sorted_probs = jnp.take_along_axis(probs, order, axis=-1)
    mass_before_sorted = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    mass_before = jnp.take_along_axis(mass_before_sorted, rank, axis=-1)
    keep = keep | (mass_before < topp)
  return keep


def cap_blocks(mask, priority, max_blocks):
  """Keeps at most `max_blocks` kept blocks per row, highest priority first."""
  _, rank = descending_order(jnp.where(mask, priority, -1.0))
  return mask & (rank < max_blocks)


def topk_counts(reachable_QK, topk):
  """int [nQ] (numpy): blocks kept by top-k: the fraction `topk` of the row's reachable blocks, >= 1."""
  reachable_Q = np.sum(reachable_QK, axis=-1)
  # The small epsilon keeps e.g. 0.3 * 10 from flooring to 2 via rounding.
  return np.maximum(1, np.floor(topk * reachable_Q + 1e-6)).astype(np.int32)


def allowed_blocks(num_q, num_k, block_q, block_k, causal, allowed_BXQK=None):
  """Reachable blocks [nQ, nK] (numpy), intersected with a data-dependent bool
  allowed_BXQK [B, 1 or H, nQ, nK] (blocks sharing a document) when given."""
  reachable_QK = reachable_blocks(num_q, num_k, block_q, block_k, causal)
  return reachable_QK if allowed_BXQK is None else reachable_QK & allowed_BXQK


def sink_of(reachable_QK, num_q, num_k):
  """The sink: key block 0, or with document masks each row's first allowed block (its
  document's first block), so a packed document keeps the sink it would keep alone."""
  if isinstance(reachable_QK, np.ndarray):
    return sink_blocks_mask(num_q, num_k)
  return reachable_QK & (jnp.cumsum(reachable_QK, axis=-1) == 1)


def topk_counts_of(allowed, topk):
  """topk_counts for a mask that may be data-dependent (counts [..., nQ])."""
  if isinstance(allowed, np.ndarray):
    return topk_counts(allowed, topk)
  reachable = jnp.sum(allowed, axis=-1)
  return jnp.maximum(1, jnp.floor(topk * reachable + 1e-6)).astype(jnp.int32)


def sparge_mask(q_BLHK, k_BLGK, *, block_q, block_k, causal=True, topk=None,
                topp=None, sim_threshold=None, max_blocks=None, allowed_BXQK=None):
  """SpargeAttn-style mask from mean-pooled block scores.

  Scores softmax(pool_q . pool_k / sqrt(K)) under the block-causal mask. When
  both `topk` and `topp` are given a block is kept if either keeps it (as in
  SpargeAttention2): top-k alone keeps too little when attention is flat, and
  top-p alone collapses onto a few sink blocks when it is peaked.
  Blocks that are not self-similar (mean pairwise cosine < sim_threshold) are
  badly summarised by their mean, so they are always computed: such key blocks
  as whole columns (and excluded from the softmax), such query blocks as whole
  rows. `max_blocks` caps the kept blocks per row (diagonal, then sink, then
  guarded blocks, then by score) so the work has a static bound.
  allowed_BXQK (bool [B, 1, nQ, nK], optional): the only blocks it may keep (those
  sharing a document in a packed batch); scores, top-k counts and top-p mass are taken
  over them, so no share of the budget goes to a block that is masked anyway.
  """
  q_BLHK = jax.lax.stop_gradient(q_BLHK)
  k_BLGK = jax.lax.stop_gradient(k_BLGK)
  num_heads, head_dim = q_BLHK.shape[2], q_BLHK.shape[3]
  num_q, num_k = num_blocks(q_BLHK.shape[1], block_q), num_blocks(k_BLGK.shape[1], block_k)
  pool_q_BHQK = pool_blocks(q_BLHK, block_q)
  pool_k_BHNK = repeat_heads(pool_blocks(k_BLGK, block_k), num_heads)
  reachable_QK = allowed_blocks(num_q, num_k, block_q, block_k, causal, allowed_BXQK)
  diagonal_QK = diagonal_blocks(num_q, num_k, block_q, block_k)
  sink_QK = sink_of(reachable_QK, num_q, num_k)

  batch = q_BLHK.shape[0]
  similar_q_BHQ = jnp.ones((batch, num_heads, num_q), bool)
  similar_k_BHN = jnp.ones((batch, num_heads, num_k), bool)
  if sim_threshold is not None:
    similar_q_BHQ = self_similarity(q_BLHK, block_q) >= sim_threshold
    similar_k_BGN = self_similarity(k_BLGK, block_k) >= sim_threshold
    similar_k_BHN = repeat_heads(similar_k_BGN, num_heads)
  guard_BHQK = ~similar_q_BHQ[..., :, None] | ~similar_k_BHN[..., None, :]

  scored_BHQK = reachable_QK & similar_k_BHN[..., None, :]
  logits_BHQK = jnp.einsum("bhqk,bhnk->bhqn", pool_q_BHQK, pool_k_BHNK) / math.sqrt(head_dim)
  probs_BHQK = masked_softmax(logits_BHQK, scored_BHQK)
  counts_Q = None if topk is None else topk_counts_of(reachable_QK, topk)
  selected_BHQK = select_blocks(probs_BHQK, topk_counts=counts_Q, topp=topp) & scored_BHQK
  mask_BHQK = (selected_BHQK | guard_BHQK | sink_QK | diagonal_QK) & reachable_QK
  if max_blocks is not None:
    priority = probs_BHQK + 2.0 * guard_BHQK + 4.0 * sink_QK + 8.0 * diagonal_QK
    mask_BHQK = cap_blocks(mask_BHQK, priority, max_blocks)
  return mask_BHQK


def default_high_freq_dims(head_dim):
  """The reference's high band, half the head (64 of 128), rounded down to even (a head
  dim of 6 gets 2: rotate-half bands come in pairs)."""
  return 2 * (head_dim // 4)


def band_dims(head_dim, high_freq_dims=None, low_freq_dims=None):
  """(high, low) band widths with the reference's defaults (64 and 96 of 128 dims:
  half and three quarters of the head, each even); ValueError if a band is not
  an even width in (0, head_dim]."""
  high = default_high_freq_dims(head_dim) if high_freq_dims is None else high_freq_dims
  low = 2 * (3 * head_dim // 8) if low_freq_dims is None else low_freq_dims
  for name, dims in (("high_freq_dims", high), ("low_freq_dims", low)):
    if (head_dim % 2 or not isinstance(dims, int) or isinstance(dims, bool)
        or dims % 2 or not 0 < dims <= head_dim):
      raise ValueError(f"{name} must be even and in (0, head_dim={head_dim}] with an "
                       f"even head_dim (two rotate-half bands); got {dims!r}.")
  return high, low


def frequency_bands(head_dim, high_freq_dims, low_freq_dims):
  """(high, low) dim indices under rotate-half RoPE (models.layers.rope_tables).

  Dims i and i + K/2 share inv_freq = theta^(-2i/K), so the LOW indices of each
  half rotate fastest: the high band is the first high_freq_dims/2 of each half,
  the low band the last low_freq_dims/2 of each half. They overlap when the
  widths sum past K (the default 64 + 96 of 128 share dims 16-31 of each half).
  """
  half, half_high, half_low = head_dim // 2, high_freq_dims // 2, low_freq_dims // 2
  high = [*range(half_high), *range(half, half + half_high)]
  low = [*range(half - half_low, half), *range(head_dim - half_low, head_dim)]
  return jnp.array(high), jnp.array(low)


def _rms(x_BHNK):
  return jnp.sqrt(jnp.mean(x_BHNK * x_BHNK, axis=(-2, -1)))


def band_temperature(pool_q_BHQK, pool_k_BHNK, band):
  """float32 [B, H]: t = sqrt(d_band/d) (rms(q_band)/rms(q)) (rms(k_band)/rms(k)).

  RMS of the POOLED vectors over all blocks and dims of a (batch, head), as the
  reference: it measures how much of the pooled energy the band kept, so dividing
  the band's logits by t gives them the contrast of a full-width pooled score.
  """
  head_dim, band_dims = pool_q_BHQK.shape[-1], band.shape[0]
  ratio_q_BH = _rms(pool_q_BHQK[..., band]) / jnp.maximum(_rms(pool_q_BHQK), _EPS)
  ratio_k_BH = _rms(pool_k_BHNK[..., band]) / jnp.maximum(_rms(pool_k_BHNK), _EPS)
  return math.sqrt(band_dims / head_dim) * ratio_q_BH * ratio_k_BH


def prism_scores(q_BLHK, k_BLGK, *, block_q, block_k, causal=True, high_freq_dims=None,
                 low_freq_dims=None, allowed_BXQK=None):
  """{"high", "low"}: float32 [B, H, nQ, nK] block probabilities of each band.

  softmax(q_band . k_band / (sqrt(d_band) t)) over the reachable (and allowed)
  key blocks, on block means of q and of k repeated to the query heads.
  """
  q_BLHK = jax.lax.stop_gradient(q_BLHK)
  k_BLGK = jax.lax.stop_gradient(k_BLGK)
  num_heads, head_dim = q_BLHK.shape[2], q_BLHK.shape[3]
  dims = band_dims(head_dim, high_freq_dims, low_freq_dims)
  num_q, num_k = num_blocks(q_BLHK.shape[1], block_q), num_blocks(k_BLGK.shape[1], block_k)
  pool_q_BHQK = pool_blocks(q_BLHK, block_q)
  pool_k_BHNK = repeat_heads(pool_blocks(k_BLGK, block_k), num_heads)
  reachable_QK = allowed_blocks(num_q, num_k, block_q, block_k, causal, allowed_BXQK)
  probs = {}
  for name, band in zip(("high", "low"), frequency_bands(head_dim, *dims)):
    # Clamped so an all-zero band scores uniform instead of 0/0 (see the differences).
    temperature_BH = jnp.maximum(band_temperature(pool_q_BHQK, pool_k_BHNK, band), _EPS)
    scale_BH = math.sqrt(band.shape[0]) * temperature_BH
    logits_BHQK = jnp.einsum("bhqk,bhnk->bhqn", pool_q_BHQK[..., band],
                             pool_k_BHNK[..., band]) / scale_BH[..., None, None]
    probs[name] = masked_softmax(logits_BHQK, reachable_QK)
  return probs


def prism_mask(q_BLHK, k_BLGK, *, block_q, block_k, causal=True, topp=0.95,
               high_freq_dims=None, low_freq_dims=None, max_blocks=None,
               allowed_BXQK=None):
  """Prism (spectral) mask: the union of each band's top-p blocks, sink and diagonal.

  Mean pooling is a low-pass filter: fast-rotating RoPE dims cancel inside a
  block, so one pooled score is dominated by the slow dims and misses local
  "slash" patterns. Each band is scored on its own (prism_scores) with a
  calibrated temperature that restores the weak high band's contrast, and keeps
  its own top-p set. `max_blocks` caps it as in sparge (priority: diagonal, sink,
  then the larger of the two band probabilities); `allowed_BXQK` restricts it to
  blocks sharing a document, as in sparge.
  """
  num_q, num_k = num_blocks(q_BLHK.shape[1], block_q), num_blocks(k_BLGK.shape[1], block_k)
  probs = prism_scores(q_BLHK, k_BLGK, block_q=block_q, block_k=block_k, causal=causal,
                       high_freq_dims=high_freq_dims, low_freq_dims=low_freq_dims,
                       allowed_BXQK=allowed_BXQK)
  selected_BHQK = (select_blocks(probs["high"], topp=topp)
                   | select_blocks(probs["low"], topp=topp))
  reachable_QK = allowed_blocks(num_q, num_k, block_q, block_k, causal, allowed_BXQK)
  diagonal_QK = diagonal_blocks(num_q, num_k, block_q, block_k)
  sink_QK = sink_of(reachable_QK, num_q, num_k)
  mask_BHQK = (selected_BHQK | sink_QK | diagonal_QK) & reachable_QK
  if max_blocks is not None:
    best_probs_BHQK = jnp.maximum(probs["high"], probs["low"])
    priority = best_probs_BHQK + 4.0 * sink_QK + 8.0 * diagonal_QK
    mask_BHQK = cap_blocks(mask_BHQK, priority, max_blocks)
  return mask_BHQK
