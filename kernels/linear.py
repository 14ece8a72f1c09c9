"""Chunkwise causal linear attention with decay: the XLA path and the kind's dispatcher.

The sequence is cut into chunks of C tokens. Inside a chunk the output is the
small quadratic form; across chunks a [F, V] state per head carries the past:

  b      = cumsum of log_decay within the chunk (b_last: the chunk's total)
  O      = (phi(Q) * exp(b)) S_n + [(phi(Q) phi(K)^T) * exp(b_i - b_j) * causal] V
  S_n+1  = exp(b_last) S_n + (phi(K) * exp(b_last - b))^T V

Cost is O(L C F + L F V) and memory linear in L. Only within-chunk cumulative
decays are exponentiated, so they stay small even when the global cumsum is huge.
"""
import jax
import jax.numpy as jnp

from kernels import linear_pallas
from kernels import linear_reference
from kernels.dense import repeat_kv
from kernels.linear_reference import (apply_feature_map, check_linear_args, pad_to_chunks,
                                      safe_divide)


def _within_chunk_decay(g_BNCH):
  """exp(sum_{j < u <= i} g_u) for j <= i, else 0: [B, N, H, C, C].

  Segment sums rather than differences b_i - b_j of the chunk cumsum: when b is
  large the difference loses digits, and the log-decay gradient of a nearly
  diagonal weight (all there is under strong decay) would inherit that error.
  """
  batch, chunks, chunk, heads = g_BNCH.shape
  sums_XHCC = linear_reference.segment_sums(g_BNCH.reshape(batch * chunks, chunk, heads))
  return jnp.exp(sums_XHCC).reshape(batch, chunks, heads, chunk, chunk)


def _chunked(q_BLHK, k_BLHK, values_BLHV, g_BLH, feature_map, chunk_size):
  """The chunkwise algorithm on float32 inputs with kv heads already expanded."""
  length = q_BLHK.shape[1]
  q, k, values, g = (pad_to_chunks(x, chunk_size) for x in (q_BLHK, k_BLHK, values_BLHV, g_BLH))
  batch, padded, heads, _ = q.shape
  chunks = padded // chunk_size

  def by_chunk(x):
    return x.reshape(batch, chunks, chunk_size, *x.shape[2:])

  fq_BNCHF = by_chunk(apply_feature_map(q, feature_map))
  fk_BNCHF = by_chunk(apply_feature_map(k, feature_map))
  values_BNCHV = by_chunk(values)
  g_BNCH = by_chunk(g)
  b_BNCH = jnp.cumsum(g_BNCH, axis=2)
  b_last_BNH = b_BNCH[:, :, -1]
  # b_last - b_j summed directly (the decay from token j to the chunk's end).
  to_end_BNCH = jnp.exp(jnp.pad(jnp.cumsum(g_BNCH[:, :, :0:-1], axis=2)[:, :, ::-1],
                                ((0, 0), (0, 0), (0, 1), (0, 0))))

  if feature_map == "squared":
    # (q.k)^2 costs C*C*K here; the K*K expansion is needed only for the state.
    q_BNCHK, k_BNCHK = by_chunk(q), by_chunk(k)
    scores_BNHCC = jnp.einsum("bnihk,bnjhk->bnhij", q_BNCHK, k_BNCHK) ** 2
  else:
    scores_BNHCC = jnp.einsum("bnihf,bnjhf->bnhij", fq_BNCHF, fk_BNCHF)
  weights_BNHCC = scores_BNHCC * _within_chunk_decay(g_BNCH)
  intra_BNCHV = jnp.einsum("bnhij,bnjhv->bnihv", weights_BNHCC, values_BNCHV)

  contrib_BNHFV = jnp.einsum("bnjhf,bnjhv->bnhfv", fk_BNCHF * to_end_BNCH[..., None],
                             values_BNCHV)

  def carry_state(state_BHFV, chunk):
    b_last_BH, contrib_BHFV = chunk
    entering = state_BHFV
    state_BHFV = jnp.exp(b_last_BH)[..., None, None] * state_BHFV + contrib_BHFV
    return state_BHFV, entering

  state0_BHFV = jnp.zeros(contrib_BNHFV.shape[:1] + contrib_BNHFV.shape[2:], jnp.float32)
  _, entering_NBHFV = jax.lax.scan(
      carry_state, state0_BHFV,
      (jnp.moveaxis(b_last_BNH, 1, 0), jnp.moveaxis(contrib_BNHFV, 1, 0)))
  inter_BNCHV = jnp.einsum("bnihf,nbhfv->bnihv", fq_BNCHF * jnp.exp(b_BNCH)[..., None],
                           entering_NBHFV)
  o_BNCHV = inter_BNCHV + intra_BNCHV
  return o_BNCHV.reshape(batch, padded, heads, -1)[:, :length]


def xla_linear_attention(q_BLHK, k_BLGK, v_BLGK, log_decay_BLH=None, *,
                         feature_map="identity", normalize=False, chunk_size=64):
  """Chunked linear attention in plain XLA ops, float32 inside; returns o_BLHK."""
  out_dtype = q_BLHK.dtype
  num_heads = q_BLHK.shape[2]
  q = q_BLHK.astype(jnp.float32)
  k = repeat_kv(k_BLGK, num_heads).astype(jnp.float32)
  v = repeat_kv(v_BLGK, num_heads).astype(jnp.float32)
  if log_decay_BLH is None:
    log_decay_BLH = jnp.zeros(q.shape[:3], jnp.float32)
  g = log_decay_BLH.astype(jnp.float32)
  if normalize:
    # The normaliser is the same attention applied to a column of ones.
    values = jnp.concatenate([v, jnp.ones(v.shape[:3] + (1,), jnp.float32)], axis=-1)
    o_aug = _chunked(q, k, values, g, feature_map, chunk_size)
    o = safe_divide(o_aug[..., :-1], o_aug[..., -1:])
  else:
    o = _chunked(q, k, v, g, feature_map, chunk_size)
  return o.astype(out_dtype)


def linear_attention(q_BLHK, k_BLGK, v_BLGK, *, impl, causal=True, log_decay=None,
                     feature_map="identity", normalize=False, chunk_size=64):
  """The `kind="linear"` entry of kernels.attention; see the module docstring."""
  check_linear_args(q_BLHK, k_BLGK, log_decay, feature_map, causal, chunk_size)
  options = dict(feature_map=feature_map, normalize=normalize)
  if impl == "reference":
    return linear_reference.recurrent_linear_attention(
        q_BLHK, k_BLGK, v_BLGK, log_decay, **options)
  if impl == "xla":
    return xla_linear_attention(q_BLHK, k_BLGK, v_BLGK, log_decay,
                                chunk_size=chunk_size, **options)
  if impl == "pallas":
    return linear_pallas.pallas_linear_attention(
        q_BLHK, k_BLGK, v_BLGK, log_decay, chunk_size=chunk_size, **options)
  raise ValueError(
      f"attention kind 'linear' has no impl {impl!r}; use 'pallas', 'xla' or 'reference'.")
