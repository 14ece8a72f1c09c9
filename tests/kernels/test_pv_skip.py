"""SpargeAttn stage 2 (kernels.pv_skip) on the XLA and reference paths and in the model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels import block_mask_lib, dense, pv_skip
from tests.kernels.flash_checks import compile_fast


def _inputs(seed, B=2, L=64, H=4, G=2, K=16, sharp=3.0):
  """Peaked attention (q, k scaled up), so a real share of tiles is negligible."""
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (sharp * jax.random.normal(kq, (B, L, H, K)),
          sharp * jax.random.normal(kk, (B, L, G, K)), jax.random.normal(kv, (B, L, G, K)))


def _rel(a, b):
  return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


# Ragged: block_q != block_k, GQA, topk with a static bound (gathered) and without.
PARAMS = [dict(estimator="sparge", topk=0.5, block_q=16, block_k=8),
          dict(estimator="sparge", topp=0.9, block_q=8, block_k=16, max_blocks=8),
          dict(estimator="static", window_blocks=2, sink_blocks=1, block_q=8, block_k=8)]


@pytest.mark.parametrize("params", PARAMS)
def test_minus_inf_is_stage_one_exactly(params):
  q, k, v = _inputs(0)
  for impl in ("xla", "reference"):
    base = kernels.attention(q, k, v, kind="block_sparse", impl=impl, **params)
    off, skipped = kernels.attention(q, k, v, kind="block_sparse", impl=impl,
                                     pv_threshold=-float("inf"), return_skipped=True, **params)
    np.testing.assert_array_equal(np.asarray(off), np.asarray(base))
    assert not bool(skipped.any())
    grad = lambda lam: jax.grad(lambda q, k, v: jnp.sum(kernels.attention(  # noqa: E731
        q, k, v, kind="block_sparse", impl=impl, pv_threshold=lam, **params) ** 2),
        (0, 1, 2))(q, k, v)
    for a, b in zip(grad(-float("inf")), grad(None)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("params", PARAMS)
def test_finite_threshold_matches_the_oracle(params):
  """xla (gathered or masked dense) == pv_skip.reference_attention, forward and grads,
  with documents that start mid-block, at a length no block divides (padded inside)."""
  q, k, v = _inputs(1, L=76)
  seg_BL = jnp.asarray(np.repeat([[0, 1, 2], [0, 0, 1]], [21, 20, 35], axis=1), jnp.int32)
  lam = -2.0
  f = lambda impl: lambda q, k, v: kernels.attention(  # noqa: E731
      q, k, v, kind="block_sparse", impl=impl, pv_threshold=lam, return_skipped=True,
      segment_ids_BL=seg_BL, **params)
  loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(f(impl)(q, k, v)[0]))  # noqa: E731
  # One program, compiled without XLA's CPU optimisations (eager dispatch compiled every
  # op on its own; these checks only need correct numbers).
  (o_x, s_x), (o_r, s_r), grads_x, grads_r = compile_fast(lambda q, k, v: (
      f("xla")(q, k, v), f("reference")(q, k, v), jax.grad(loss("xla"), (0, 1, 2))(q, k, v),
      jax.grad(loss("reference"), (0, 1, 2))(q, k, v)), q, k, v)
  np.testing.assert_array_equal(np.asarray(s_x), np.asarray(s_r))
  assert 0 < int(s_r.sum()) < int(s_r.size), "the inputs should skip some tiles, not all"
  assert _rel(o_x, o_r) < 1e-5
  for gx, gr in zip(grads_x, grads_r):
    assert _rel(gx, gr) < 1e-5


def test_oracle_follows_the_rule_by_loop():
  """The vectorised oracle's skip map equals an explicit per-tile loop of the rule."""
  q, k, v = _inputs(2, B=1, L=64, H=2, G=1)
  bq, bk, lam = 16, 8, -1.5
  mask = jax.random.bernoulli(jax.random.PRNGKey(3), 0.8, (1, 2, 4, 8))
  _, skipped = pv_skip.reference_attention(q, k, v, mask, block_q=bq, block_k=bk,
                                           pv_threshold=lam)
  logits = np.einsum("bqhk,bshk->bhqs", np.asarray(q), np.repeat(np.asarray(k), 2, 2)) / 4.0
  expect = np.zeros(skipped.shape, bool)
  for h in range(2):
    for i in range(4):
      m_run = np.full(bq, -np.inf)
      for j in range(8):
        rows, cols = np.arange(i * bq, (i + 1) * bq), np.arange(j * bk, (j + 1) * bk)
        if not mask[0, h, i, j]:
          continue
        visible = rows[:, None] >= cols[None, :]
        s = np.where(visible, logits[0, h][np.ix_(rows, cols)], -np.inf)
        m_local = s.max(axis=1)
        m_run = np.maximum(m_run, m_local)
        seen = np.isfinite(m_local)
        gap = np.where(seen, m_local - np.where(seen, m_run, 0.0), -np.inf)
        expect[0, h, i, j] = seen.any() and bool(np.all(~seen | (gap < lam)))
  np.testing.assert_array_equal(np.asarray(skipped), expect)


def test_error_shrinks_with_lambda_and_skipping_grows():
  q, k, v = _inputs(4, L=128, sharp=4.0)
  params = dict(estimator="sparge", topk=0.6, block_q=16, block_k=16)
  lams = (-1.0, -4.0, -16.0)
  stage1, runs = compile_fast(lambda q, k, v: (  # one program, as above
      kernels.attention(q, k, v, kind="block_sparse", impl="xla", **params),
      [kernels.attention(q, k, v, kind="block_sparse", impl="xla", pv_threshold=lam,
                         return_skipped=True, **params) for lam in lams]), q, k, v)
  errors, skips = [], []
  for o, s in runs:
    errors.append(float(jnp.abs(o - stage1).sum() / jnp.abs(stage1).sum()))
    skips.append(float(pv_skip.skipped_density(s, block_q=16, block_k=16)))
  assert errors == sorted(errors, reverse=True) and skips == sorted(skips, reverse=True)
  assert skips[0] > 0.01 and errors[-1] < 1e-6


def test_skipped_density_counts_reachable_tiles():
  skipped = jnp.zeros((2, 3, 4, 4), bool).at[0, 0, 3, 0].set(True).at[1, 2, 2, 1].set(True)
  reachable = block_mask_lib.causal_blocks(4, 4, 16, 16).sum()  # 10
  assert float(pv_skip.skipped_density(skipped, block_q=16, block_k=16)) == pytest.approx(
      2 / (6 * reachable))


@pytest.mark.parametrize("bad", [0.5, float("nan"), "x", True])
def test_bad_threshold_is_refused(bad):
  q, k, v = _inputs(0, L=32)
  with pytest.raises(ValueError, match="pv_threshold"):
    kernels.attention(q, k, v, kind="block_sparse", impl="xla", pv_threshold=bad,
                      block_q=16, block_k=16)


def test_dense_reference_agrees_without_stage_two():
  q, k, v = _inputs(5, L=64)
  mask = jax.random.bernoulli(jax.random.PRNGKey(6), 0.7, (2, 4, 4, 4))
  o, _ = pv_skip.reference_attention(q, k, v, mask, block_q=16, block_k=16)
  expect = dense.reference_attention(
      q, k, v, mask_BHQK=block_mask_lib.expand_to_tokens(mask, 16, 16))
  assert _rel(o, expect) < 1e-6
