"""Dense flash attention (Pallas, interpret mode) against the jnp reference."""
import functools

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import pallas as pl

from kernels import attention
from kernels.dense import reference_attention
from kernels.flash import flash_attention
from tests.kernels.flash_checks import (assert_matches_reference, compile_fast, fresh_seed,
                                      random_qkvo)


def test_interpret_mode_poisons_unwritten_blocks():
  """The tests rely on interpret mode leaving unwritten output tiles as NaN."""
  def write_first_block_only(x_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      o_ref[...] = x_ref[...]

  out = pl.pallas_call(
      write_first_block_only, out_shape=jax.ShapeDtypeStruct((16, 8), jnp.float32),
      grid=(2,), in_specs=[pl.BlockSpec((8, 8), lambda i: (i, 0))],
      out_specs=pl.BlockSpec((8, 8), lambda i: (i, 0)), interpret=True,
  )(jnp.ones((16, 8), jnp.float32))
  assert bool(jnp.all(out[:8] == 1.0)) and bool(jnp.all(jnp.isnan(out[8:])))


# (platform, dtype, causal, batch, seq_len, heads, kv_heads, head_dim, block_q, block_k)
CASES = [
    ("cuda", jnp.float32, True, 2, 96, 4, 2, 32, 32, 16),
    ("tpu", jnp.float32, True, 1, 160, 3, 1, 16, 16, 32),
    ("cuda", jnp.bfloat16, False, 2, 96, 2, 1, 64, 32, 32),
    ("tpu", jnp.bfloat16, False, 1, 128, 4, 2, 32, 64, 32),
]


@pytest.mark.parametrize(
    "platform,dtype,causal,batch,seq_len,heads,kv_heads,head_dim,block_q,block_k", CASES)
def test_flash_matches_reference(platform, dtype, causal, batch, seq_len, heads,
                                 kv_heads, head_dim, block_q, block_k):
  seed = fresh_seed()
  q, k, v, do = random_qkvo(seed, batch, seq_len, heads, kv_heads, head_dim, dtype)
  kernel = functools.partial(flash_attention, causal=causal, block_q=block_q,
                             block_k=block_k, interpret=True, platform=platform)
  reference = functools.partial(reference_attention, causal=causal)
  assert_matches_reference(kernel, reference, q, k, v, do, seed)


def test_attention_entry_point_dispatches_dense_pallas():
  seed = fresh_seed()
  q, k, v, _ = random_qkvo(seed, 1, 32, 1, 1, 16, jnp.float32)
  out = compile_fast(lambda q, k, v: attention(q, k, v, kind="dense", impl="pallas"),
                     q, k, v)
  ref = reference_attention(q, k, v)
  assert float(jnp.max(jnp.abs(out - ref))) < 1e-5, seed


def test_compiled_gpu_blocks_must_be_powers_of_two():
  q = jax.ShapeDtypeStruct((1, 96, 2, 32), jnp.float32)
  with pytest.raises(ValueError, match=r"block_q 48 does not fit the 'cuda'.*choose block_q in \[16, 32\]"):
    jax.eval_shape(functools.partial(flash_attention, block_q=48, block_k=32,
                                     interpret=False, platform="cuda"), q, q, q)
