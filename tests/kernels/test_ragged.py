"""Any sequence length: every kind's Pallas (interpret) and XLA paths against a plain
reference at lengths no block divides, with GQA, forward and gradients
(kernels.padding pads inside, masks the tail and slices the output).

The linear kind is tested at these lengths in test_linear_ragged.py.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import attention, block_mask, block_mask_lib, estimators, padding, sparse
from kernels.dense import reference_attention
from kernels.flash import flash_attention
from tests.kernels.flash_checks import (assert_matches_reference, compile_fast, fresh_seed,
                                        random_qkvo, rel_err)

# (L, causal, block_q, block_k): unequal blocks at 77 and 200, so the padded length
# (their lcm multiple) adds an all-padding block; 77 also runs non-causal.
GEOMETRY = {77: (False, 64, 32), 200: (True, 32, 64), 1000: (True, 256, 256)}
KINDS = {
    "dense": {},
    "sparge": dict(kind="block_sparse", estimator="sparge", topk=0.5, sim_threshold=0.2,
                   max_blocks=3),
    "prism": dict(kind="spectral", topp=0.8, max_blocks=3),
}
ESTIMATE = {"block_sparse": sparse.estimate_block_sparse, "spectral": sparse.estimate_spectral}


def _kind_params(name, length):
  causal, block_q, block_k = GEOMETRY[length]
  params = dict(KINDS[name])
  kind = params.pop("kind", "dense")
  if kind != "dense":
    params.update(block_q=block_q, block_k=block_k)
  return kind, causal, params


def _token_mask(kind, params, q, k, causal):
  """The estimated block mask at token resolution and real length, and the params
  that hand it to the kernel (as a model layer does)."""
  if kind == "dense":
    return None, params
  _, params = ESTIMATE[kind](q, k, causal=causal, **params)
  mask_BHQK = params["mask_BHQK"]
  real_blocks = tuple(padding.num_blocks(q.shape[1], params[b]) for b in ("block_q", "block_k"))
  assert mask_BHQK.shape[-2:] == real_blocks  # ceil(L / block): no all-padding block
  tokens_BHQK = block_mask_lib.expand_to_tokens(mask_BHQK, params["block_q"],
                                                params["block_k"], q.shape[1])
  return tokens_BHQK, params


@pytest.mark.parametrize("length", sorted(GEOMETRY))
@pytest.mark.parametrize("impl", ["pallas", "xla"])
@pytest.mark.parametrize("name", sorted(KINDS))  # a static mask: the stage-2 test
def test_any_length_matches_reference(name, impl, length):
  seed = fresh_seed()
  kind, causal, params = _kind_params(name, length)
  q, k, v, do = random_qkvo(seed, 1, length, 2, 1, 16, jnp.float32)
  mask_BHQK, params = _token_mask(kind, params, q, k, causal)
  kernel = functools.partial(attention, kind=kind, impl=impl, causal=causal, **params)
  reference = functools.partial(reference_attention, causal=causal, mask_BHQK=mask_BHQK)
  assert_matches_reference(kernel, reference, q, k, v, do, seed)


def test_pool_blocks_averages_real_tokens_only():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 77, 2, 8))
  pooled = jax.jit(estimators.pool_blocks, static_argnums=1)(x, 32)
  assert pooled.shape == (1, 2, 3, 8)
  np.testing.assert_allclose(pooled[0, :, 2], np.mean(x[0, 64:], axis=0), rtol=1e-5)
  sim = jax.jit(estimators.self_similarity, static_argnums=1)(jnp.ones((1, 77, 2, 8)), 32)
  np.testing.assert_allclose(sim, 1.0, rtol=1e-6)  # padding would pull the tail below 1


def test_density_counts_real_blocks():
  """L = 77 with 32-token blocks: 3 blocks, the last partial; a window of 1 keeps the
  3 diagonal blocks of the 6 causally reachable ones."""
  q = jnp.zeros((1, 77, 2, 16))
  mask = block_mask(q, q[:, :, :1], estimator="static", block_q=32, block_k=32,
                    window_blocks=1)
  assert mask.mask_BHQK.shape[-2:] == (3, 3)
  np.testing.assert_allclose(mask.density, 3 / 6)


def test_stage2_and_segments_at_ragged_length():
  """Stage 2 and document masking with padding: the Pallas and XLA paths agree with
  the reference impl, skipped maps are at the real block geometry, and dense
  flash masks segments as the dense reference does."""
  length, block = 200, 16
  q, k, v, _ = random_qkvo(fresh_seed(), 1, length, 2, 1, 16, jnp.float32)
  # A strong sink at each document's start makes later tiles negligible (stage 2 skips).
  pos_L = jnp.arange(length)
  sink_L = (pos_L < block) | ((pos_L >= 90) & (pos_L < 112))
  q, k = q.at[..., 0].add(6.0), k.at[..., 0].add(6.0 * sink_L[None, :, None])
  seg = {"segment_ids_BL": (pos_L >= 90).astype(jnp.int32)[None]}
  params = dict(estimator="static", window_blocks=6, sink_blocks=1, block_q=block,
                block_k=block, pv_threshold=-2.0, **seg)
  _, params = sparse.estimate_block_sparse(q, k, **params)
  run = functools.partial(attention, kind="block_sparse", return_skipped=True, **params)

  # Forward only: the pad/slice gradients are checked above, stage 2's in test_pv_skip*.
  runs = {impl: compile_fast(lambda q, k, v, impl=impl: run(q, k, v, impl=impl), q, k, v)
          for impl in ("reference", "xla", "pallas")}
  o_ref, skipped_ref = runs["reference"]
  assert skipped_ref.shape == (1, 2, 13, 13)
  # The partial last query block skips too: padded rows are their own document.
  assert bool(jnp.any(skipped_ref[..., -1, :]))
  for impl in ("xla", "pallas"):
    o, skipped = runs[impl]
    np.testing.assert_array_equal(skipped, skipped_ref)
    assert rel_err(o, o_ref) < 1e-5, impl
  o_dense = compile_fast(lambda q, k, v: attention(q, k, v, kind="dense", impl="pallas",
                                                   **seg), q, k, v)
  mask = block_mask_lib.segment_mask_tokens(seg["segment_ids_BL"])
  np.testing.assert_allclose(o_dense, reference_attention(q, k, v, mask_BHQK=mask), atol=2e-5)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_ragged_flash_lowers_for_accelerators(platform):
  """The padded problem lowers through Mosaic and Triton (jax.export, forward and
  gradient), causal and with the padding's own segment (non-causal)."""
  q = jax.ShapeDtypeStruct((1, 1000, 4, 64), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, 1000, 2, 64), jnp.bfloat16)
  checks = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  for causal in (True, False):
    attn = functools.partial(flash_attention, causal=causal, interpret=False,
                             platform=platform)
    grad = jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32)),
                    argnums=(0, 1, 2))
    exported = jax.export.export(jax.jit(grad), platforms=[platform],
                                 disabled_checks=checks)(q, kv, kv)
    assert [o.shape for o in exported.out_avals] == [q.shape, kv.shape, kv.shape]
