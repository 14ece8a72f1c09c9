"""Per-tile math shared by the TPU and GPU block-sparse flash kernels.

Everything here works on one (query block, key block) tile held in registers:
row statistics are columns of shape [bq, 1] so the same code lowers through
Mosaic and Triton. Scores and statistics are float32; the value/key matmuls
take the probabilities in the input dtype (the usual flash-attention trade).

Softmax runs in base 2 (FlashAttention-2's trick): the logit scale 1/sqrt(K)
and log2(e) are folded into one constant multiplying the scores, and exp2
replaces exp, so row maxima and the lse residual are in log2 units. `scale`
arguments stay the natural 1/sqrt(K): it also scales dq and dk.

Stage 2 of SpargeAttn (kernels.pv_skip): skip_pv decides per tile, the
*_skipped steps give the backward of a tile whose P.V was dropped; its
threshold (nats) is converted to log2 units here.
"""
import math

import jax.numpy as jnp
from jax import lax

# Finite "minus infinity" for running maxima: keeps exp(m_prev - m_next)
# finite (no inf - inf) while every masked probability is zeroed explicitly.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
LOG2E = math.log2(math.e)


def _precision(dtype):
  # float32 inputs ask for full precision (no TF32 / bf16 passes on hardware).
  return lax.Precision.HIGHEST if dtype == jnp.float32 else lax.Precision.DEFAULT


def dot_nt(a_MK, b_NK):
  """a @ b.T in float32: [M, K] x [N, K] -> [M, N]."""
  return lax.dot_general(a_MK, b_NK, (((1,), (1,)), ((), ())),
                         precision=_precision(a_MK.dtype),
                         preferred_element_type=jnp.float32)


def dot_nn(a_MK, b_KN):
  """a @ b in float32: [M, K] x [K, N] -> [M, N]."""
  return lax.dot_general(a_MK, b_KN, (((1,), (0,)), ((), ())),
                         precision=_precision(a_MK.dtype),
                         preferred_element_type=jnp.float32)


def causal_allowed(q_block, k_block, block_q, block_k, keys_major=False):
  """bool tile: query position >= key position inside tile (q_block, k_block).

  [bq, bk], or [bk, bq] with keys_major (the dk/dv kernels work on S^T).
  """
  shape = (block_k, block_q) if keys_major else (block_q, block_k)
  q_axis, k_axis = (1, 0) if keys_major else (0, 1)
  q_pos = q_block * block_q + lax.broadcasted_iota(jnp.int32, shape, q_axis)
  k_pos = k_block * block_k + lax.broadcasted_iota(jnp.int32, shape, k_axis)
  return q_pos >= k_pos


def sub_block_allowed(bits, lists, keys_major=False):
  """bool tile from a tile's sub-block bitmask (kernels.flash_lists.retile): pair
  (query, key) is visible iff the bit of its sub-block is set; None without bits.

  [block_q, block_k] of `lists`, or [block_k, block_q] with keys_major.
  """
  if bits is None:
    return None
  shape = ((lists.block_k, lists.block_q) if keys_major
           else (lists.block_q, lists.block_k))
  q_axis, k_axis = (1, 0) if keys_major else (0, 1)
  row = lax.div(lax.broadcasted_iota(jnp.int32, shape, q_axis), lists.sub_q)
  col = lax.div(lax.broadcasted_iota(jnp.int32, shape, k_axis), lists.sub_k)
  bit = row * (lists.block_k // lists.sub_k) + col
  words = jnp.broadcast_to(bits, shape)
  return lax.bitwise_and(lax.shift_right_logical(words, bit), 1) == 1


def and_masks(a, b):
  """Elementwise AND of optional bool tiles (None: every pair visible)."""
  if a is None:
    return b
  return a if b is None else jnp.logical_and(a, b)


def is_full_tile(q_block, k_block, block_q, block_k):
  """Causal tile with every key visible to every query (no elementwise mask)."""
  return (k_block + 1) * block_k - 1 <= q_block * block_q


def _softmax_update(q, k, m_prev, l_prev, scale, allowed):
  """Online-softmax statistics of one tile: (m_local, m_next, alpha, p, l_next);
  the logits s and maxima m are in log2 units."""
  s = dot_nt(q, k) * (scale * LOG2E)
  if allowed is not None:
    s = jnp.where(allowed, s, MASK_VALUE)
  m_local = jnp.max(s, axis=-1, keepdims=True)
  m_next = jnp.maximum(m_prev, m_local)
  alpha = jnp.exp2(m_prev - m_next)
  p = jnp.exp2(s - m_next)
  if allowed is not None:
    # A row with no visible key yet has m_next == MASK_VALUE and p == 1.
    p = jnp.where(allowed, p, 0.0)
  l_next = alpha * l_prev + jnp.sum(p, axis=-1, keepdims=True)
  return m_local, m_next, alpha, p, l_next


def forward_step(q, k, v, m_prev, l_prev, acc_prev, scale, allowed):
  """One online-softmax update. m, l: [bq, 1]; acc: [bq, K]; allowed: None or bool tile."""
  _, m_next, alpha, p, l_next = _softmax_update(q, k, m_prev, l_prev, scale, allowed)
  acc_next = alpha * acc_prev + dot_nn(p.astype(v.dtype), v)
  return m_next, l_next, acc_next


def skip_pv(m_local, m_next, pv_threshold):
  """Scalar bool: stage 2 drops this tile's P.V (the rule of kernels.pv_skip).

  m_local, m_next: [bq, 1], log2 units; pv_threshold in nats. A row sees no
  key of the tile iff m_local is MASK_VALUE. Float max reductions: Mosaic
  reduces bool vectors through them anyway.
  """
  empty = m_local <= MASK_VALUE
  below = jnp.logical_or(empty, m_local - m_next < pv_threshold * LOG2E)
  needs_pv = jnp.max(jnp.where(below, 0.0, 1.0))
  sees_key = jnp.max(jnp.where(empty, 0.0, 1.0))
  return jnp.logical_and(needs_pv == 0.0, sees_key > 0.0)


def softmax_step_pv(q, k, m_prev, l_prev, scale, allowed, pv_threshold):
  """Stage 2's tile statistics: (m_next, l_next, alpha, p, skip). The caller
  adds pv_product(p, v) to alpha * acc unless skip; m, l are updated either way."""
  m_local, m_next, alpha, p, l_next = _softmax_update(q, k, m_prev, l_prev, scale,
                                                      allowed)
  return m_next, l_next, alpha, p, skip_pv(m_local, m_next, pv_threshold)


def pv_product(p, v):
  """The tile's P.V in float32 (probabilities in the value dtype, as in forward_step)."""
  return dot_nn(p.astype(v.dtype), v)


def skip_map_width(num_k_blocks):
  """Lanes of the kernels' skip-map rows: a power of two (Triton) >= nK."""
  return max(1, 1 << (num_k_blocks - 1).bit_length())


def cut_skip_map(skip_BHQ1W, lists):
  """bool [B, H, nQ, nK] from the kernels' padded int32 skip-map rows."""
  return skip_BHQ1W[:, :, :, 0, :lists.num_k_blocks] != 0


def mark_skipped(skipped_1N, k_block):
  """int32 [1, N] row with column k_block set to 1 (vector ops only)."""
  column = lax.broadcasted_iota(jnp.int32, skipped_1N.shape, 1)
  return jnp.where(column == k_block, 1, skipped_1N)


def finalize(m, l, acc):
  """Output rows and the base-2 log-sum-exp (the backward's residual); rows
  that saw no key give 0 and lse = -inf."""
  safe_l = jnp.where(l == 0.0, 1.0, l)
  return acc / safe_l, m + jnp.log2(l)


def _probs(a, b, lse, scale, allowed):
  """exp2(a b^T * scale * log2(e) - lse), lse in log2 units; zero where not allowed."""
  p = jnp.exp2(dot_nt(a, b) * (scale * LOG2E) - lse)
  return p if allowed is None else jnp.where(allowed, p, 0.0)


def dq_step(q, k, v, do, lse, delta, dq_acc, scale, allowed):
  """dq += dS K with P = exp2(Q K^T * scale * log2(e) - lse), dS = P * (dO V^T - delta).

  lse, delta: [bq, 1] columns; rows that saw no key have lse = -inf, but all
  their tiles are masked, so the where() zeroes their probabilities.
  """
  p = _probs(q, k, lse, scale, allowed)
  ds = p * (dot_nt(do, v) - delta)
  return dq_acc + dot_nn(ds.astype(k.dtype), k)


def dq_step_skipped(q, k, lse, delta, dq_acc, scale, allowed):
  """dq_step for a tile whose P.V stage 2 skipped: dS = -P * delta (no dO V^T)."""
  ds = _probs(q, k, lse, scale, allowed) * -delta
  return dq_acc + dot_nn(ds.astype(k.dtype), k)


def dkv_step(q, k, v, do, lse_row, delta_row, dk_acc, dv_acc, scale, allowed_T):
  """dk += dS^T Q, dv += P^T dO, computed on the transposed tile [bk, bq].

  Working on S^T = K Q^T keeps every matmul in NN/NT form (no transposes of
  the probability tile); lse_row, delta_row: [1, bq]; allowed_T: [bk, bq].
  """
  p_T = _probs(k, q, lse_row, scale, allowed_T)
  dv_acc = dv_acc + dot_nn(p_T.astype(do.dtype), do)
  ds_T = p_T * (dot_nt(v, do) - delta_row)
  return dk_acc + dot_nn(ds_T.astype(q.dtype), q), dv_acc


def dk_step_skipped(q, k, lse_row, delta_row, dk_acc, scale, allowed_T):
  """dkv_step for a skipped tile: dv gets nothing, dk += (-P * delta)^T Q."""
  ds_T = _probs(k, q, lse_row, scale, allowed_T) * -delta_row
  return dk_acc + dot_nn(ds_T.astype(q.dtype), q)


def add_grads(a, b, dtype):
  """a + b in float32, cast to dtype (the two list sets' partial gradients)."""
  return (a.astype(jnp.float32) + b.astype(jnp.float32)).astype(dtype)


def backward_passes(dq_call, dkv_call, args, lists, skipped_lists, kw, dtypes):
  """(dq, dk, dv) from a backend's dq and dk/dv kernel calls: one pass over `lists`,
  or (stage 2) the computed tiles' pass plus the skipped tiles' pass (no dv), summed
  in float32 and cast to dtypes (q's, k's, v's)."""
  if skipped_lists is None:
    return (dq_call(*args, lists, **kw), *dkv_call(*args, lists, **kw))
  f32 = dict(kw, out_dtype=jnp.float32)
  dq = add_grads(dq_call(*args, lists, **f32),
                 dq_call(*args, skipped_lists, skipped=True, **f32), dtypes[0])
  dk, dv = dkv_call(*args, lists, **f32)
  (dk_skipped,) = dkv_call(*args, skipped_lists, skipped=True, **f32)
  return dq, add_grads(dk, dk_skipped, dtypes[1]), dv.astype(dtypes[2])


def block_delta(do_BLHK, o_BLHK):
  """delta[b, h, l] = sum_k dO * O in float32 (the softmax-gradient row term)."""
  prod = do_BLHK.astype(jnp.float32) * o_BLHK.astype(jnp.float32)
  return jnp.transpose(jnp.sum(prod, axis=-1), (0, 2, 1))


def dot_tn(a_KM, b_KN):
  """a.T @ b in float32: [K, M] x [K, N] -> [M, N]."""
  return lax.dot_general(a_KM, b_KN, (((0,), (0,)), ((), ())),
                         precision=_precision(a_KM.dtype),
                         preferred_element_type=jnp.float32)


def fused_step(q, k, v, do, lse_row, delta_row, dk_acc, dv_acc, scale, allowed_T):
  """dkv_step that also returns the tile's dq term dS K (float32 [bq, K], unscaled).

  FlashAttention-2's fused backward: P and dS are computed once per tile, so 5
  matmuls (K Q^T, P^T dO, V dO^T, dS^T Q, dS K) where the separate dq and dk/dv
  steps take 7 (the dq step recomputes Q K^T and dO V^T).
  """
  p_T = _probs(k, q, lse_row, scale, allowed_T)
  dv_acc = dv_acc + dot_nn(p_T.astype(do.dtype), do)
  ds_T = (p_T * (dot_nt(v, do) - delta_row)).astype(q.dtype)
  return dk_acc + dot_nn(ds_T, q), dv_acc, dot_tn(ds_T, k)
