"""Chunkwise causal linear attention with decay: the XLA path and the kind's dispatcher.

The sequence is cut into chunks of C tokens. Inside a chunk the output is the
small quadratic form; across chunks a [F, V] state per head carries the past:

  b      = cumsum of log_decay within the chunk (b_last: the chunk's total)
  O      = (phi(Q) * exp(b)) S_n + [(phi(Q) phi(K)^T) * exp(b_i - b_j) * causal] V
  S_n+1  = exp(b_last) S_n + (phi(K) * exp(b_last - b))^T V

Cost is O(L C F + L F V) and memory linear in L. Only within-chunk cumulative
decays are exponentiated, so they stay small even when the global cumsum is huge.
"""
import functools

import jax
import jax.numpy as jnp

from kernels import linear_pallas
from kernels import linear_reference
from kernels.linear_reference import (apply_feature_map, check_linear_args, pad_to_chunks,
                                      safe_divide)


def _chunk_step(feature_map, state_BHFV, chunk):
  """One chunk: its output and the state after it (shapes per chunk, C tokens)."""
  q_BCHK, k_BCHK, v_BCHV, g_BCH = chunk
  fq_BCHF = apply_feature_map(q_BCHK, feature_map)
  fk_BCHF = apply_feature_map(k_BCHK, feature_map)
  if feature_map == "squared":
    # (q.k)^2 costs C*C*K here; the K(K+1)/2 expansion is needed only for the state.
    scores_BHCC = jnp.einsum("bihk,bjhk->bhij", q_BCHK, k_BCHK) ** 2
  else:
    scores_BHCC = jnp.einsum("bihf,bjhf->bhij", fq_BCHF, fk_BCHF)
  # Decays as direct segment sums (sum_{j < u <= i} g_u), not differences b_i - b_j
  # of the chunk cumsum: those lose digits when b is large, and the log-decay
  # gradient of the nearly diagonal weights (all there is under strong decay)
  # would inherit the error.
  weights_BHCC = scores_BHCC * jnp.exp(linear_reference.segment_sums(g_BCH))
  from_start_BCH = jnp.exp(jnp.cumsum(g_BCH, axis=1))
  to_end_BCH = jnp.exp(jnp.pad(jnp.cumsum(g_BCH[:, :0:-1], axis=1)[:, ::-1],
                               ((0, 0), (0, 1), (0, 0))))
  o_BCHV = jnp.einsum("bhij,bjhv->bihv", weights_BHCC, v_BCHV)
  o_BCHV += jnp.einsum("bihf,bhfv->bihv", fq_BCHF * from_start_BCH[..., None], state_BHFV)
  chunk_decay_BH = from_start_BCH[:, -1]
  state_BHFV = (chunk_decay_BH[..., None, None] * state_BHFV
                + jnp.einsum("bjhf,bjhv->bhfv", fk_BCHF * to_end_BCH[..., None], v_BCHV))
  return state_BHFV, o_BCHV


def _chunked(q_BLHK, k_BLHK, values_BLHV, g_BLH, feature_map, chunk_size):
  """The chunkwise algorithm on float32 inputs with kv heads already expanded.

  A scan over chunks whose body is rematerialised in the backward pass: only the
  [F, V] state entering each chunk is kept, so memory stays linear in L with a
  small constant and each step's working set fits in cache.
  """
  length = q_BLHK.shape[1]
  q, k, values, g = (pad_to_chunks(x, chunk_size) for x in (q_BLHK, k_BLHK, values_BLHV, g_BLH))
  batch, padded, heads, _ = q.shape
  chunks = padded // chunk_size

  def chunk_major(x_BL):
    return jnp.moveaxis(x_BL.reshape(batch, chunks, chunk_size, *x_BL.shape[2:]), 1, 0)

  features = apply_feature_map(q[:, :1], feature_map).shape[-1]
  state_BHFV = jnp.zeros((batch, heads, features, values.shape[-1]), jnp.float32)
  step = jax.checkpoint(functools.partial(_chunk_step, feature_map))
  _, o_NBCHV = jax.lax.scan(step, state_BHFV, tuple(chunk_major(x) for x in (q, k, values, g)))
  return jnp.moveaxis(o_NBCHV, 0, 1).reshape(batch, padded, heads, -1)[:, :length]


def xla_linear_attention(q_BLHK, k_BLGK, v_BLGK, log_decay_BLH=None, *,
                         feature_map="identity", normalize=False, chunk_size=64):
  """Chunked linear attention in plain XLA ops, float32 inside; returns o_BLHK."""
  out_dtype = q_BLHK.dtype
  q, k, v, g = linear_reference.as_float32_heads(q_BLHK, k_BLGK, v_BLGK, log_decay_BLH)
  if normalize:
    # The normaliser is the same attention applied to a column of ones.
    values = jnp.concatenate([v, jnp.ones(v.shape[:3] + (1,), jnp.float32)], axis=-1)
    o_aug = _chunked(q, k, values, g, feature_map, chunk_size)
    o = safe_divide(o_aug[..., :-1], o_aug[..., -1:])
  else:
    o = _chunked(q, k, v, g, feature_map, chunk_size)
  return o.astype(out_dtype)


# log decay at a document start: the state before it is multiplied by exp(this).
# -inf resets exactly in the XLA and reference paths (they sum decays directly); the
# Pallas kernels take differences b_i - b_j of a within-chunk cumsum, where -inf would
# give inf - inf, so they get a finite reset (exp(-30) ~ 1e-13 of the old state leaks;
# the cumsum is compensated, kernels/linear_chunk.py, so the -30 costs no precision).
RESET_LOG_DECAY = {"reference": -jnp.inf, "xla": -jnp.inf, "pallas": -30.0}


def document_starts(segment_ids_BL):
  """bool [B, L]: token t starts a segment (its id differs from token t - 1's)."""
  change_BL = segment_ids_BL[:, 1:] != segment_ids_BL[:, :-1]
  return jnp.pad(change_BL, ((0, 0), (1, 0)))


def reset_at_starts(log_decay_BLH, segment_ids_BL, heads, impl):
  """The log decay with the state reset at every document start of a packed row:
  token t then sees only tokens of its own document (decay gating, as Mamba-2's
  seq_idx does), so no kernel needs a separate document path."""
  starts_BL1 = document_starts(segment_ids_BL)[..., None]
  if log_decay_BLH is None:
    log_decay_BLH = jnp.zeros(segment_ids_BL.shape + (heads,), jnp.float32)
  return jnp.where(starts_BL1, RESET_LOG_DECAY[impl], log_decay_BLH)


def linear_attention(q_BLHK, k_BLGK, v_BLGK, *, impl, causal=True, log_decay=None,
                     feature_map="identity", normalize=False, chunk_size=64,
                     segment_ids_BL=None):
  """The `kind="linear"` entry of kernels.attention; see the module docstring.
  segment_ids_BL: the state restarts where the segment id changes (packed documents)."""
  check_linear_args(q_BLHK, k_BLGK, log_decay, feature_map, causal, chunk_size)
  if segment_ids_BL is not None and impl in RESET_LOG_DECAY:
    log_decay = reset_at_starts(log_decay, segment_ids_BL, q_BLHK.shape[2], impl)
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
