"""Block-sparse flash attention (Pallas, interpret mode) against the jnp
reference with the block mask expanded to tokens."""
import functools

import jax.numpy as jnp
import numpy as np
import pytest

from kernels import block_mask as bm
from kernels.block_sparse import block_sparse_attention
from kernels.dense import reference_attention
from tests.kernels.flash_checks import assert_matches_reference, fresh_seed, random_qkvo


def make_mask(seed, shape, block_q, block_k, pattern):
  """bool [Bm, Hm, nQ, nK]: random tiles, plus a row that keeps only its last
  (diagonal) key block and an empty row; or every tile for pattern 'full'."""
  if pattern == "full":
    return np.ones(shape, bool)
  mask = np.random.default_rng(seed).random(shape) < 0.4
  last = shape[2] - 1
  mask[0, 0, last, :] = False
  mask[0, 0, last, ((last + 1) * block_q - 1) // block_k] = True
  mask[-1, -1, 1, :] = False
  return mask


# (platform, dtype, causal, batch, seq_len, heads, kv_heads, head_dim, block_q,
#  block_k, mask_batch, mask_heads, pattern)
CASES = [
    ("cuda", jnp.float32, True, 2, 160, 4, 2, 32, 32, 32, 2, 4, "random"),
    ("tpu", jnp.float32, True, 1, 96, 2, 1, 32, 32, 16, 1, 2, "random"),
    ("tpu", jnp.bfloat16, False, 2, 96, 2, 2, 64, 32, 32, 1, 1, "random"),
    ("cuda", jnp.bfloat16, True, 1, 128, 4, 1, 32, 32, 32, 1, 4, "full"),
]


@pytest.mark.parametrize("platform,dtype,causal,batch,seq_len,heads,kv_heads,head_dim,"
                         "block_q,block_k,mask_batch,mask_heads,pattern", CASES)
def test_block_sparse_matches_reference(platform, dtype, causal, batch, seq_len, heads,
                                        kv_heads, head_dim, block_q, block_k,
                                        mask_batch, mask_heads, pattern):
  seed = fresh_seed()
  q, k, v, do = random_qkvo(seed, batch, seq_len, heads, kv_heads, head_dim, dtype)
  shape = (mask_batch, mask_heads, seq_len // block_q, seq_len // block_k)
  mask = bm.from_mask(jnp.asarray(make_mask(seed, shape, block_q, block_k, pattern)),
                      block_q=block_q, block_k=block_k, causal=causal)
  kernel = functools.partial(block_sparse_attention, block_mask=mask, causal=causal,
                             interpret=True, platform=platform)
  reference = functools.partial(
      reference_attention, causal=causal,
      mask_BHQK=bm.expand_to_tokens(mask.mask_BHQK, block_q, block_k))
  assert_matches_reference(kernel, reference, q, k, v, do, seed)


def test_mask_with_wrong_heads_is_rejected():
  q = jnp.zeros((1, 64, 4, 32))
  mask = bm.from_mask(jnp.ones((1, 2, 2, 2), bool), block_q=32, block_k=32)
  with pytest.raises(ValueError, match=r"block mask shape .*query heads"):
    block_sparse_attention(q, q, q, mask, interpret=True)


def test_seq_len_not_multiple_of_block_names_the_fix():
  q = jnp.zeros((1, 1000, 2, 32))
  mask = bm.from_mask(jnp.ones((1, 2, 8, 8), bool), block_q=128, block_k=128)
  with pytest.raises(ValueError, match=r"seq_len 1000 is not a multiple of block_q 128.*pad"):
    block_sparse_attention(q, q, q, mask, interpret=True)
