"""Block-mask estimators: geometry, selection rules against numpy oracles, properties."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import estimators
from kernels.block_mask_lib import expand_to_tokens
from kernels.dense import reference_attention


def _qk(seed, batch=1, length=128, heads=2, kv_heads=1, head_dim=16):
  kq, kk = jax.random.split(jax.random.PRNGKey(seed))
  q = jax.random.normal(kq, (batch, length, heads, head_dim))
  k = jax.random.normal(kk, (batch, length, kv_heads, head_dim))
  return q, k


def _mask(q, k, estimator, **params):
  """The estimator's bool mask as numpy (jitted: one compile per parameter set)."""
  fn = {"sparge": estimators.sparge_mask, "prism": estimators.prism_mask}[estimator]
  return np.asarray(jax.jit(lambda q, k: fn(q, k, **params))(q, k))


def test_static_mask_window_and_sink():
  mask = np.asarray(estimators.static_mask(6, 6, 16, 16, window_blocks=2, sink_blocks=1))
  expected = np.zeros((6, 6), bool)
  for i in range(6):
    expected[i, max(0, i - 1):i + 1] = True
    expected[i, 0] = True
  np.testing.assert_array_equal(mask, expected)


def test_static_mask_non_causal_window_is_symmetric():
  mask = np.asarray(estimators.static_mask(5, 5, 8, 8, causal=False, window_blocks=2))
  i, j = np.indices((5, 5))
  np.testing.assert_array_equal(mask, np.abs(i - j) < 2)


def test_static_mask_unequal_blocks_keeps_whole_diagonal_span():
  # Query blocks of 32 span two key blocks of 16: both are the diagonal.
  mask = np.asarray(estimators.static_mask(3, 6, 32, 16, window_blocks=1))
  expected = np.zeros((3, 6), bool)
  for i in range(3):
    expected[i, 2 * i:2 * i + 2] = True
  np.testing.assert_array_equal(mask, expected)


def test_self_similarity_matches_pairwise_mean():
  x = jax.random.normal(jax.random.PRNGKey(3), (1, 32, 1, 8))
  sim = np.asarray(estimators.self_similarity(x, 16))[0, 0]
  xs = np.asarray(x)[0, :, 0]
  for b in range(2):
    unit = xs[16 * b:16 * (b + 1)]
    unit = unit / np.linalg.norm(unit, axis=-1, keepdims=True)
    np.testing.assert_allclose(sim[b], np.mean(unit @ unit.T), rtol=1e-5)


def _select_oracle(probs_row, count, topp):
  order = np.argsort(-probs_row, kind="stable")
  keep = np.zeros(probs_row.shape, bool)
  mass = 0.0
  for rank, j in enumerate(order):
    if (count is not None and rank < count) or (topp is not None and mass < topp):
      keep[j] = True
    mass += probs_row[j]
  return keep


def _softmax_oracle(logits, valid):
  logits = np.where(valid, logits, -np.inf)
  e = np.exp(logits - logits.max())
  return e / e.sum()


def _pool(x_LK, block):
  return x_LK.reshape(-1, block, x_LK.shape[-1]).mean(1)


def _sparge_oracle(q, k, block_q, block_k, topk, topp):
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  batch, length, heads, dim = q.shape
  groups = heads // k.shape[2]
  nq, nk = length // block_q, length // block_k
  out = np.zeros((batch, heads, nq, nk), bool)
  for b in range(batch):
    for h in range(heads):
      pq, pk = _pool(q[b, :, h], block_q), _pool(k[b, :, h // groups], block_k)
      for i in range(nq):
        reach = np.arange(nk) * block_k <= (i + 1) * block_q - 1
        probs = _softmax_oracle(pq[i] @ pk.T / math.sqrt(dim), reach)
        count = None if topk is None else max(1, math.floor(topk * reach.sum() + 1e-6))
        keep = _select_oracle(probs, count, topp)
        keep[0] = True
        keep[(i * block_q) // block_k:((i + 1) * block_q - 1) // block_k + 1] = True
        out[b, h, i] = keep & reach
  return out


def _prism_oracle(q, k, block, topp, high_freq_dims, low_freq_dims):
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  batch, length, heads, dim = q.shape
  half, hh, hl = dim // 2, high_freq_dims // 2, low_freq_dims // 2
  high = np.r_[0:hh, half:half + hh]
  low = np.r_[half - hl:half, dim - hl:dim]
  n = length // block
  reach = np.tril(np.ones((n, n), bool))
  rms = lambda x: np.sqrt(np.mean(x * x))
  out = np.zeros((batch, heads, n, n), bool)
  for b in range(batch):
    for h in range(heads):
      pq, pk = _pool(q[b, :, h], block), _pool(k[b, :, h], block)
      for band in (high, low):
        t = math.sqrt(len(band) / dim) * rms(pq[:, band]) / rms(pq) * rms(pk[:, band]) / rms(pk)
        logits = pq[:, band] @ pk[:, band].T / (math.sqrt(len(band)) * t)
        for i in range(n):
          out[b, h, i] |= _select_oracle(_softmax_oracle(logits[i], reach[i]), None, topp)
      out[b, h] |= np.eye(n, dtype=bool)
      out[b, h, :, 0] = True
      out[b, h] &= reach
  return out


@pytest.mark.parametrize("topk,topp,block_q,block_k", [
    (0.3, None, 16, 32), (0.2, 0.5, 32, 16)])
def test_sparge_matches_oracle(topk, topp, block_q, block_k):
  q, k = _qk(seed=11 + block_q + block_k, batch=2, heads=4, kv_heads=2)
  mask = _mask(q, k, "sparge", block_q=block_q, block_k=block_k, topk=topk, topp=topp)
  np.testing.assert_array_equal(mask,
                                _sparge_oracle(q, k, block_q, block_k, topk, topp))


@pytest.mark.parametrize("high_freq_dims,low_freq_dims", [(4, None), (None, 4)])
def test_prism_matches_oracle(high_freq_dims, low_freq_dims):
  q, k = _qk(seed=21, batch=2, heads=2, kv_heads=2)
  mask = _mask(q, k, "prism", block_q=16, block_k=16, topp=0.6,
               high_freq_dims=high_freq_dims, low_freq_dims=low_freq_dims)
  np.testing.assert_array_equal(mask, _prism_oracle(q, k, 16, 0.6, high_freq_dims or 8,
                                                    low_freq_dims or 12))


def test_frequency_bands_take_low_indices_of_each_half_as_high_band():
  high, low = estimators.frequency_bands(8, 4, 4)
  assert list(high) == [0, 1, 4, 5] and list(low) == [2, 3, 6, 7]
  # The reference's default widths (half and three quarters) overlap in mid dims.
  assert estimators.band_dims(128) == (64, 96)
  high, low = estimators.frequency_bands(8, *estimators.band_dims(8))
  assert list(high) == [0, 1, 4, 5] and list(low) == [1, 2, 3, 5, 6, 7]


@pytest.mark.parametrize("estimator", ["sparge", "prism"])
def test_density_monotone_in_topp(estimator):
  q, k = _qk(seed=41, heads=4, kv_heads=2)
  masks = [_mask(q, k, estimator, block_q=16, block_k=16, topp=p) for p in (0.05, 0.7, 1.0)]
  densities = [m.sum() / (m.shape[0] * m.shape[1] * 36) for m in masks]  # 36 causal blocks
  assert densities == sorted(densities) and densities[0] < densities[-1] == 1.0
  for smaller, larger in zip(masks, masks[1:]):
    assert not np.any(smaller & ~larger)
  # Even the sparsest mask keeps the sink column and the diagonal.
  sparsest = masks[0]
  assert sparsest[..., 0].all() and sparsest[..., np.arange(8), np.arange(8)].all()


def test_sparge_topk_and_topp_is_the_union():
  q, k = _qk(seed=51)
  kw = dict(block_q=16, block_k=16)
  both = _mask(q, k, "sparge", topk=0.25, topp=0.5, **kw)
  union = _mask(q, k, "sparge", topk=0.25, **kw) | _mask(q, k, "sparge", topp=0.5, **kw)
  np.testing.assert_array_equal(both, union)


def test_sparge_self_similarity_guard_keeps_dissimilar_blocks():
  # Every block is nearly constant (self-similar) except key block 2 and query
  # block 5, which are noise: that column and that row must be fully kept.
  rng = np.random.default_rng(61)
  base = rng.standard_normal((8, 1, 16))
  x = np.repeat(base, 16, axis=0) + 0.01 * rng.standard_normal((128, 1, 16))
  k = x.copy()
  k[32:48] = rng.standard_normal((16, 1, 16))
  q = x.copy()
  q[80:96] = rng.standard_normal((16, 1, 16))
  q, k = jnp.asarray(q[None], jnp.float32), jnp.asarray(k[None], jnp.float32)
  kw = dict(block_q=16, block_k=16, topk=0.01)
  guarded = _mask(q, k, "sparge", sim_threshold=0.5, **kw)[0, 0]
  reach = np.tril(np.ones((8, 8), bool))
  assert guarded[2:, 2].all() and guarded[5, :6].all()
  plain = _mask(q, k, "sparge", **kw)[0, 0]
  assert not plain[5, :6].all() and not plain[3:, 2].all()
  assert not np.any(guarded & ~reach)


@pytest.mark.parametrize("estimator,params", [
    ("sparge", dict(topp=0.99, sim_threshold=0.9)), ("prism", dict(topp=0.99))])
def test_max_blocks_caps_rows_and_keeps_forced_blocks(estimator, params):
  q, k = _qk(seed=71)
  free = _mask(q, k, estimator, block_q=16, block_k=16, **params)
  capped = _mask(q, k, estimator, block_q=16, block_k=16, max_blocks=3, **params)
  assert capped.sum(-1).max() <= 3 < free.sum(-1).max()
  assert not np.any(capped & ~free)
  assert capped[..., 0].all() and capped[..., np.arange(8), np.arange(8)].all()


def _rotate_half(x_LK, positions, theta=10000.0):
  half = x_LK.shape[-1] // 2
  angle = positions[:, None] * theta ** (-2 * np.arange(half) / x_LK.shape[-1])
  x1, x2 = x_LK[:, :half], x_LK[:, half:]
  return np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle),
                         x2 * np.cos(angle) + x1 * np.sin(angle)], -1)


def test_prism_catches_high_frequency_slash_that_mean_pooling_misses():
  """Queries attend to the key 5 blocks back through the fastest RoPE dims only.

  Those dims rotate within a block, so the mean-pooled score hardly sees them,
  while a slow-dim "distractor" makes key blocks 1-2 dominate the pooled
  scores. Prism's high band scores that slash on its own and keeps it.
  """
  length, dim, block, offset_blocks = 512, 64, 32, 5
  rng = np.random.default_rng(81)
  positions = np.arange(length, dtype=np.float64)
  fast = np.zeros(dim)
  fast[:6] = 4.5
  slow = np.zeros(dim)
  slow[20:32] = slow[52:] = 1.0
  q = _rotate_half(np.tile(fast, (length, 1)), positions - offset_blocks * block) + slow
  k = _rotate_half(np.tile(fast, (length, 1)), positions)
  k += np.where(((positions // block) == 1) | ((positions // block) == 2), 2.0, 0.0)[:, None] * slow
  q += 0.3 * rng.standard_normal(q.shape)
  k += 0.3 * rng.standard_normal(k.shape)
  v = rng.standard_normal(k.shape)
  q, k, v = (jnp.asarray(x[None, :, None], jnp.float32) for x in (q, k, v))

  @jax.jit
  def masked_attention(mask_BHQK):
    return reference_attention(q, k, v, mask_BHQK=expand_to_tokens(mask_BHQK, block, block))

  dense = np.asarray(masked_attention(jnp.ones((1, 1, 16, 16), bool)))
  rows = np.arange(offset_blocks + 3, length // block)  # slash block is no distractor
  results = {}
  for estimator in ("sparge", "prism"):
    mask = _mask(q, k, estimator, block_q=block, block_k=block, topp=0.9)
    hit = mask[0, 0, rows, rows - offset_blocks].mean()
    out = np.asarray(masked_attention(jnp.asarray(mask)))
    results[estimator] = (hit, np.linalg.norm(out - dense) / np.linalg.norm(dense))
  assert results["prism"][0] == 1.0 and results["sparge"][0] == 0.0, results
  assert results["prism"][1] < 0.1 < results["sparge"][1], results
