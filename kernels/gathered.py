"""Block-sparse attention in plain XLA: gather each query block's key blocks.

Work and memory are proportional to the number of gathered key blocks per
query block (a static bound N), not to L^2. Differentiable by plain autodiff
(the gather's transpose is a scatter-add into dk/dv).
"""
import math

import jax
import jax.numpy as jnp

from kernels import pv_skip


def gathered_attention(q_BLHK, k_BLGK, v_BLGK, kv_index_XYQN, kv_count_XYQ, *,
                       block_q, block_k, causal=True, segment_ids_BL=None,
                       pv_threshold=None, return_skipped=False):
  """Softmax attention over the listed key blocks of every query block.

  `kv_index_XYQN` (int, [B or 1, H or 1, nQ, N]) lists N key blocks per query
  block; slots at or past `kv_count_XYQ` are ignored. Size-1 batch/head axes
  mean one list shared by all (static masks), which avoids a per-head gather.
  segment_ids_BL (int [B, L], optional): a query attends only to keys of its own
  segment (packed documents). Computes in float32 and returns q's dtype.
  pv_threshold: stage 2 (kernels.pv_skip): a listed tile whose scores are negligible
  against the running max over the earlier slots (ascending, as the kernels visit
  them) drops out of the numerator. return_skipped: also return skipped_BHQK.
  """
  out_dtype = q_BLHK.dtype
  batch, length, num_heads, head_dim = q_BLHK.shape
  num_kv_heads = k_BLGK.shape[2]
  groups = num_heads // num_kv_heads
  num_q, num_k = length // block_q, k_BLGK.shape[1] // block_k
  index_batch, index_heads, _, num_slots = kv_index_XYQN.shape
  shared_heads = index_heads == 1

  q_BGRQIK = q_BLHK.astype(jnp.float32).reshape(
      batch, num_q, block_q, num_kv_heads, groups, head_dim).transpose(0, 3, 4, 1, 2, 5)

  def blocks_BGNJK(x_BLGK):
    return x_BLGK.astype(jnp.float32).reshape(
        batch, num_k, block_k, num_kv_heads, head_dim).transpose(0, 3, 1, 2, 4)

  index_XGRQN = kv_index_XYQN.reshape(
      index_batch, 1 if shared_heads else num_kv_heads, 1 if shared_heads else groups,
      num_q, num_slots)
  count_XGRQ = kv_count_XYQ.reshape(index_XGRQN.shape[:-1])
  batch_ids = jnp.arange(batch).reshape(batch, 1, 1, 1, 1)
  kv_head_ids = jnp.arange(num_kv_heads).reshape(1, num_kv_heads, 1, 1, 1)
  # [B, G, R or 1, nQ, N, block_k, K]: the key/value blocks each query block reads.
  k_gathered = blocks_BGNJK(k_BLGK)[batch_ids, kv_head_ids, index_XGRQN]
  v_gathered = blocks_BGNJK(v_BLGK)[batch_ids, kv_head_ids, index_XGRQN]
  if shared_heads:
    k_gathered, v_gathered = k_gathered[:, :, 0], v_gathered[:, :, 0]
    kv_spec = "bgqnjk"
  else:
    kv_spec = "bgrqnjk"

  logits = jnp.einsum(f"bgrqik,{kv_spec}->bgrqinj", q_BGRQIK, k_gathered)
  logits = logits / math.sqrt(head_dim)
  # Allowed (query, key) pairs: a live slot and, if causal, key <= query.
  live_slot = jnp.arange(num_slots) < count_XGRQ[..., None]
  allowed = live_slot[..., None, :, None]
  if causal:
    key_pos = index_XGRQN[..., None] * block_k + jnp.arange(block_k)
    query_pos_QI = jnp.arange(length).reshape(num_q, block_q)
    allowed = allowed & (key_pos[..., None, :, :] <= query_pos_QI[:, :, None, None])
  if segment_ids_BL is not None:
    allowed = allowed & _same_segment(segment_ids_BL, index_XGRQN, num_q, block_q, block_k)
  logits = jnp.where(allowed, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=(-2, -1), keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  weights = jnp.exp(logits - row_max)
  total = jnp.sum(weights, axis=(-2, -1), keepdims=True)
  skipped_XGRQN = None
  if pv_threshold is not None:
    m_local = jax.lax.stop_gradient(jnp.max(logits, axis=-1))  # [B, G, R, nQ, bq, N]
    m_run = jax.lax.cummax(m_local, axis=m_local.ndim - 1)
    skipped_XGRQN = pv_skip.skip_tiles(m_local, m_run, live_slot, pv_threshold)
    weights = weights * ~skipped_XGRQN[..., None, :, None]
  probs = weights / jnp.where(total == 0, 1.0, total)
  out_BGRQIK = jnp.einsum(f"bgrqinj,{kv_spec}->bgrqik", probs, v_gathered)
  out_BLHK = out_BGRQIK.transpose(0, 3, 4, 1, 2, 5).reshape(batch, length, num_heads, head_dim)
  out_BLHK = out_BLHK.astype(out_dtype)
  if not return_skipped:
    return out_BLHK
  shape_BHQN = (batch, num_heads, num_q, num_slots)
  if skipped_XGRQN is None:
    return out_BLHK, jnp.zeros(shape_BHQN[:3] + (num_k,), bool)
  index_BHQN = jnp.broadcast_to(index_XGRQN, skipped_XGRQN.shape).reshape(
      skipped_XGRQN.shape[:1] + (-1,) + shape_BHQN[2:])
  skipped_BHQN = skipped_XGRQN.reshape(index_BHQN.shape)
  return out_BLHK, _slots_to_blocks(skipped_BHQN, index_BHQN, num_k, shape_BHQN)


def _slots_to_blocks(skipped_XYQN, index_XYQN, num_k, shape_BHQN):
  """bool [B, H, nQ, nK] from per-slot flags (padded slots are never skipped)."""
  hits = jax.nn.one_hot(index_XYQN, num_k, dtype=bool) & skipped_XYQN[..., None]
  return jnp.broadcast_to(jnp.any(hits, axis=-2), shape_BHQN[:3] + (num_k,))


def _same_segment(segment_ids_BL, index_XGRQN, num_q, block_q, block_k):
  """bool [B, G|1, R|1, nQ, bq, N, bk]: query and gathered key share a segment id."""
  batch = segment_ids_BL.shape[0]
  seg_q_BQI = segment_ids_BL.reshape(batch, num_q, block_q)
  seg_k_BJC = segment_ids_BL.reshape(batch, -1, block_k)
  index = jnp.broadcast_to(index_XGRQN, (batch,) + index_XGRQN.shape[1:])
  batch_ids = jnp.arange(batch).reshape(batch, 1, 1, 1, 1)
  seg_k = seg_k_BJC[batch_ids, index]  # [B, G|1, R|1, nQ, N, bk]
  return seg_q_BQI[:, None, None, :, :, None, None] == seg_k[..., None, :, :]
