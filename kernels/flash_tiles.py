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


def dot_tn(a_KM, b_KN):
  """a.T @ b in float32: [K, M] x [K, N] -> [M, N]."""
  return lax.dot_general(a_KM, b_KN, (((0,), (0,)), ((), ())),
                         precision=_precision(a_KM.dtype),
                         preferred_element_type=jnp.float32)


def causal_allowed(q_block, k_block, block_q, block_k):
  """bool [bq, bk]: query position >= key position inside tile (q_block, k_block)."""
  q_pos = q_block * block_q + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 0)
  k_pos = k_block * block_k + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
  return q_pos >= k_pos


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


def probabilities(q, k, lse, scale, allowed):
  """Recomputed softmax tile p = exp(q k^T * scale - lse); lse: [bq, 1]."""
  p = jnp.exp(dot_nt(q, k) * scale - lse)
  if allowed is not None:
    p = jnp.where(allowed, p, 0.0)
  return p


def score_grad(p, do, v, delta):
  """dS = P * (dO V^T - delta) with delta = rowsum(dO * O): [bq, 1]."""
  return p * (dot_nt(do, v) - delta)


def dq_step(q, k, v, do, lse, delta, dq_acc, scale, allowed):
  p = probabilities(q, k, lse, scale, allowed)
  ds = score_grad(p, do, v, delta)
  return dq_acc + dot_nn(ds.astype(k.dtype), k)


def dkv_step(q, k, v, do, lse, delta, dk_acc, dv_acc, scale, allowed):
  p = probabilities(q, k, lse, scale, allowed)
  dv_acc = dv_acc + dot_tn(p.astype(do.dtype), do)
  ds = score_grad(p, do, v, delta)
  return dk_acc + dot_tn(ds.astype(q.dtype), q), dv_acc


def block_delta(do_BLHK, o_BLHK):
  """delta[b, h, l] = sum_k dO * O in float32 (the softmax-gradient row term)."""
  prod = do_BLHK.astype(jnp.float32) * o_BLHK.astype(jnp.float32)
  return jnp.transpose(jnp.sum(prod, axis=-1), (0, 2, 1))

