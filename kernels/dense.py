"""Dense softmax attention: the clear reference and the XLA path.

Shapes follow `jax.nn.dot_product_attention`: q [B, L, H, K], k/v [B, L, G, K]
with H a multiple of G (grouped-query attention).
"""
import jax
import jax.numpy as jnp


def repeat_kv(x_BLGK, num_heads):
  """Expands G kv heads to H query heads (head h reads kv head h // (H // G))."""
  groups = num_heads // x_BLGK.shape[2]
  return jnp.repeat(x_BLGK, groups, axis=2)


def reference_attention(q_BLHK, k_BLGK, v_BLGK, *, causal=True, mask_BHQK=None):
  """Softmax attention written for clarity, in float32.

  `mask_BHQK` (bool, optional) is an extra token-level mask [B, H, Lq, Lk]
  combined with the causal mask; the block-sparse references expand their block
  masks to it. Rows with no allowed key return zeros.
  """
  out_dtype = q_BLHK.dtype
  num_heads, head_dim = q_BLHK.shape[2], q_BLHK.shape[3]
  q = q_BLHK.astype(jnp.float32)
  k = repeat_kv(k_BLGK, num_heads).astype(jnp.float32)
  v = repeat_kv(v_BLGK, num_heads).astype(jnp.float32)
  logits_BHQK = jnp.einsum("bqhk,bshk->bhqs", q, k) / jnp.sqrt(head_dim)
  q_len, k_len = q.shape[1], k.shape[1]
  allowed_QK = jnp.ones((q_len, k_len), bool)
  if causal:
    allowed_QK = jnp.tril(allowed_QK)
  allowed = allowed_QK[None, None]
  if mask_BHQK is not None:
    allowed = allowed & mask_BHQK
  logits_BHQK = jnp.where(allowed, logits_BHQK, -jnp.inf)
  row_max = jnp.max(logits_BHQK, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  weights = jnp.exp(logits_BHQK - row_max) * allowed
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  probs_BHQK = weights / jnp.where(denom == 0, 1.0, denom)
  out_BLHK = jnp.einsum("bhqs,bshk->bqhk", probs_BHQK, v)
  return out_BLHK.astype(out_dtype)


def xla_attention(q_BLHK, k_BLGK, v_BLGK, *, causal=True, segment_ids_BL=None):
  """XLA's fused attention (GQA-aware); the fast dense path on CPU. segment_ids_BL:
  a token attends only to keys of its own segment (packed documents)."""
  mask = None
  if segment_ids_BL is not None:
    mask = segment_ids_BL[:, None, :, None] == segment_ids_BL[:, None, None, :]
  return jax.nn.dot_product_attention(
      q_BLHK, k_BLGK, v_BLGK, mask=mask, is_causal=causal, implementation="xla")
