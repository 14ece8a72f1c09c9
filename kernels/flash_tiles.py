"""Per-tile math shared by the TPU and GPU block-sparse flash kernels.

Everything here works on one (query block, key block) tile held in registers:
row statistics are columns of shape [bq, 1] so the same code lowers through
Mosaic and Triton. Scores and statistics are float32; the value/key matmuls
take the probabilities in the input dtype (the usual flash-attention trade).
"""
import jax.numpy as jnp
from jax import lax

# Finite "minus infinity" for running maxima: keeps exp(m_prev - m_next)
# finite (no inf - inf) while every masked probability is zeroed explicitly.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


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


def and_masks(a, b):
  """Elementwise AND of optional bool tiles (None: every pair visible)."""
  if a is None:
    return b
  return a if b is None else jnp.logical_and(a, b)


def is_full_tile(q_block, k_block, block_q, block_k):
  """Causal tile with every key visible to every query (no elementwise mask)."""
  return (k_block + 1) * block_k - 1 <= q_block * block_q


def forward_step(q, k, v, m_prev, l_prev, acc_prev, scale, allowed):
  """One online-softmax update. m, l: [bq, 1]; acc: [bq, K]; allowed: None or bool tile."""
  s = dot_nt(q, k) * scale
  if allowed is not None:
    s = jnp.where(allowed, s, MASK_VALUE)
  m_next = jnp.maximum(m_prev, jnp.max(s, axis=-1, keepdims=True))
  alpha = jnp.exp(m_prev - m_next)
  p = jnp.exp(s - m_next)
  if allowed is not None:
    # A row with no visible key yet has m_next == MASK_VALUE and p == 1.
    p = jnp.where(allowed, p, 0.0)
  l_next = alpha * l_prev + jnp.sum(p, axis=-1, keepdims=True)
  acc_next = alpha * acc_prev + dot_nn(p.astype(v.dtype), v)
  return m_next, l_next, acc_next


def finalize(m, l, acc):
  """Output rows and log-sum-exp; rows that saw no key give 0 and lse = -inf."""
  safe_l = jnp.where(l == 0.0, 1.0, l)
  return acc / safe_l, m + jnp.log(l)


def dq_step(q, k, v, do, lse, delta, dq_acc, scale, allowed):
  """dq += dS K with P = exp(Q K^T * scale - lse), dS = P * (dO V^T - delta).

  lse, delta: [bq, 1] columns; rows that saw no key have lse = -inf, but all
  their tiles are masked, so the where() zeroes their probabilities.
  """
  p = jnp.exp(dot_nt(q, k) * scale - lse)
  if allowed is not None:
    p = jnp.where(allowed, p, 0.0)
  ds = p * (dot_nt(do, v) - delta)
  return dq_acc + dot_nn(ds.astype(k.dtype), k)


def dkv_step(q, k, v, do, lse_row, delta_row, dk_acc, dv_acc, scale, allowed_T):
  """dk += dS^T Q, dv += P^T dO, computed on the transposed tile [bk, bq].

  Working on S^T = K Q^T keeps every matmul in NN/NT form (no transposes of
  the probability tile); lse_row, delta_row: [1, bq]; allowed_T: [bk, bq].
  """
  p_T = jnp.exp(dot_nt(k, q) * scale - lse_row)
  if allowed_T is not None:
    p_T = jnp.where(allowed_T, p_T, 0.0)
  dv_acc = dv_acc + dot_nn(p_T.astype(do.dtype), do)
  ds_T = p_T * (dot_nt(v, do) - delta_row)
  return dk_acc + dot_nn(ds_T.astype(q.dtype), q), dv_acc


def block_delta(do_BLHK, o_BLHK):
  """delta[b, h, l] = sum_k dO * O in float32 (the softmax-gradient row term)."""
  prod = do_BLHK.astype(jnp.float32) * o_BLHK.astype(jnp.float32)
  return jnp.transpose(jnp.sum(prod, axis=-1), (0, 2, 1))

