"""Prism's estimator on inputs with known spectral structure.

q and k are built with our own RoPE (models.layers), so a slash planted in the
fastest dims and a block-level pattern planted in the slowest dims land in the
bands kernels.estimators.frequency_bands names. Recall is measured against the
block attention mass of dense softmax attention.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import estimators
from models.layers import apply_rope, rope_tables

LENGTH, DIM, BLOCK, THETA = 1024, 128, 32, 10000.0
NUM_BLOCKS = LENGTH // BLOCK
REACH = np.tril(np.ones((NUM_BLOCKS, NUM_BLOCKS), bool))


def _rope(x_LK, positions_L):
  """Our rotate-half RoPE of one head's vectors at the given positions."""
  cos, sin = rope_tables(LENGTH, DIM, THETA, positions_BL=jnp.asarray(positions_L)[None])
  x_BLHK = jnp.asarray(x_LK, jnp.float32)[None, :, None]
  return np.asarray(apply_rope(x_BLHK, cos, sin), np.float64)[0, :, 0]


def _content(rng, pairs, rows=1):
  """[rows, K] unit-RMS random vectors on the given rotate-half pairs (i, i + K/2) only."""
  pairs = np.asarray(pairs)
  x = np.zeros((rows, DIM))
  x[:, pairs] = rng.standard_normal((rows, len(pairs)))
  x[:, pairs + DIM // 2] = rng.standard_normal((rows, len(pairs)))
  return x / math.sqrt(2 * len(pairs))


def _block_mass(q_LHK, k_LGK):
  """float64 [H, nQ, nK]: each query block's mean causal softmax mass per key block."""
  heads, groups = q_LHK.shape[1], k_LGK.shape[1]
  causal = np.tril(np.ones((LENGTH, LENGTH), bool))
  mass = np.zeros((heads, NUM_BLOCKS, NUM_BLOCKS))
  for h in range(heads):
    logits = q_LHK[:, h] @ k_LGK[:, h // (heads // groups)].T / math.sqrt(DIM)
    logits = np.where(causal, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    mass[h] = probs.reshape(NUM_BLOCKS, BLOCK, NUM_BLOCKS, BLOCK).sum((1, 3)) / BLOCK
  return mass


def _recall(mask_HQK, mass_HQK, rows):
  """Mean over heads and the given query blocks of the true mass the mask keeps."""
  return float(np.mean(np.sum(mask_HQK * mass_HQK, -1)[:, rows]))


def _jnp(x_LHK):
  return jnp.asarray(x_LHK[None], jnp.float32)


def _plain_pooled_scores(q, k):
  """[H, nQ, nK] one full-width mean-pooled score (SpargeAttn's), -inf where unreachable."""
  pool_q = estimators.pool_blocks(q, BLOCK)
  pool_k = estimators.repeat_heads(estimators.pool_blocks(k, BLOCK), q.shape[2])
  scores = np.einsum("hqk,hnk->hqn", np.asarray(pool_q)[0], np.asarray(pool_k)[0])
  return np.where(REACH, scores, -np.inf)


@functools.partial(jax.jit, static_argnames="topp")
def _prism_jit(q, k, topp):
  kw = dict(block_q=BLOCK, block_k=BLOCK)
  return estimators.prism_scores(q, k, **kw), estimators.prism_mask(q, k, topp=topp, **kw)


def _prism(q, k, topp=0.95):
  """(band probabilities {"high", "low"}, mask) of batch row 0, each [H, nQ, nK]."""
  probs, mask = _prism_jit(q, k, topp)
  return {name: np.asarray(p)[0] for name, p in probs.items()}, np.asarray(mask)[0]


def _hit_rate(scores_HQK, target_HQ, rows):
  """Fraction of (head, row) whose highest-scored key block is the target block."""
  return float(np.mean(np.argmax(scores_HQK, -1)[:, rows] == target_HQ[:, rows]))


def _slash_inputs(offsets_H=(4, 9), seed=0):
  """Head h's queries attend to the key offsets_H[h] blocks back, through the 16
  fastest pairs only (amplitude 14: a logit ~17 at the slash). Those turn 3.7 to
  32 rad inside a 32-token block, so pooling cancels them; a block-level random
  "semantic" distractor on the 16 slowest pairs survives pooling and is mild per
  token (logits ~0.3)."""
  rng = np.random.default_rng(seed)
  positions = np.arange(LENGTH)
  slash = 14.0 * np.tile(_content(rng, range(16)), (LENGTH, 1))
  def distractor():
    return _rope(np.repeat(6.0 * _content(rng, range(48, 64), NUM_BLOCKS), BLOCK, 0), positions)
  k = _rope(slash, positions) + distractor() + 0.1 * rng.standard_normal((LENGTH, DIM))
  q = [_rope(slash, positions - offset * BLOCK) + distractor()
       + 0.1 * rng.standard_normal((LENGTH, DIM)) for offset in offsets_H]
  return np.stack(q, 1), k[:, None]


def _forced(mask_HQK):
  """A band's top-p set plus what prism always adds: the diagonal and the sink."""
  mask_HQK = (np.asarray(mask_HQK) | np.eye(NUM_BLOCKS, dtype=bool)) & REACH
  mask_HQK[..., 0] = True
  return mask_HQK


@functools.cache
def _slash_setup():
  offsets_H = np.array([4, 9])
  q_LHK, k_LGK = _slash_inputs(offsets_H)
  mass_HQK = _block_mass(q_LHK, k_LGK)
  rows = np.arange(offsets_H.max() + 1, NUM_BLOCKS)  # the slash is neither sink nor diagonal
  # Key block offset back; rows before it (not in `rows`) wrap to a harmless index.
  slash_HQ = (np.arange(NUM_BLOCKS)[None] - offsets_H[:, None]) % NUM_BLOCKS
  return _jnp(q_LHK), _jnp(k_LGK), mass_HQK, rows, slash_HQ


def test_high_band_recovers_slash_that_mean_pooling_cancels():
  q, k, mass_HQK, rows, slash_HQ = _slash_setup()
  # The construction: the slash block is the true top block and holds most of the mass.
  assert _hit_rate(mass_HQK, slash_HQ, rows) == 1.0
  slash_mass_HQ = np.take_along_axis(mass_HQK, slash_HQ[..., None], -1)[..., 0]
  assert slash_mass_HQ[:, rows].mean() > 0.8

  probs, mask_HQK = _prism(q, k, topp=0.95)  # the reference's default
  assert _hit_rate(probs["high"], slash_HQ, rows) == 1.0
  # The low band and one full-width pooled score rank the slash top in few rows.
  assert _hit_rate(probs["low"], slash_HQ, rows) < 0.3
  assert _hit_rate(_plain_pooled_scores(q, k), slash_HQ, rows) < 0.3
  kept_HQ = np.take_along_axis(mask_HQK, slash_HQ[..., None], -1)[..., 0]
  assert kept_HQ[:, rows].all()
  prism_recall = _recall(mask_HQK, mass_HQK, rows)
  assert prism_recall > 0.99
  low_only = _forced(estimators.select_blocks(jnp.asarray(probs["low"]), topp=0.95))
  assert _recall(low_only, mass_HQK, rows) < prism_recall - 0.1


def test_prism_beats_plain_pooling_at_a_tight_budget():
  q, k, mass_HQK, rows, _ = _slash_setup()
  _, mask_HQK = _prism(q, k, topp=0.5)
  density = mask_HQK[:, REACH].mean()
  prism_recall = _recall(mask_HQK, mass_HQK, rows)
  assert density < 0.6 and prism_recall > 0.9
  # Plain mean pooling (sparge's top-k), given at least prism's budget, misses slash mass.
  sparge_HQK = np.asarray(jax.jit(lambda q, k: estimators.sparge_mask(
      q, k, block_q=BLOCK, block_k=BLOCK, topk=density + 0.05))(q, k))[0]
  assert sparge_HQK[:, REACH].mean() >= density
  assert _recall(sparge_HQK, mass_HQK, rows) < prism_recall - 0.15


def test_low_band_carries_block_level_pattern():
  """Query block i of head h retrieves key block target[h, i] (neither sink nor
  diagonal) through the 16 slowest pairs only (turning < 0.001 rad per token):
  pooling keeps them, so the low band ranks the target top."""
  rng = np.random.default_rng(1)
  positions = np.arange(LENGTH)
  keys_NK = 12.0 * _content(rng, range(48, 64), NUM_BLOCKS)
  k = _rope(np.repeat(keys_NK, BLOCK, 0), positions)[:, None]
  target_HQ = np.stack([np.r_[0, 0, [rng.integers(1, i) for i in range(2, NUM_BLOCKS)]]
                        for _ in range(2)])
  q = np.stack([_rope(np.repeat(keys_NK[t], BLOCK, 0), positions) for t in target_HQ], 1)
  q = q + 0.1 * rng.standard_normal(q.shape)
  k = k + 0.1 * rng.standard_normal(k.shape)
  mass_HQK = _block_mass(q, k)
  rows = np.arange(2, NUM_BLOCKS)
  assert _hit_rate(mass_HQK, target_HQ, rows) == 1.0

  q, k = _jnp(q), _jnp(k)
  probs, mask_HQK = _prism(q, k, topp=0.95)
  assert _hit_rate(probs["low"], target_HQ, rows) == 1.0
  assert _hit_rate(_plain_pooled_scores(q, k), target_HQ, rows) == 1.0
  # The high band holds only noise: its top block is the target by chance alone.
  assert _hit_rate(probs["high"], target_HQ, rows) < 0.3
  kept_HQ = np.take_along_axis(mask_HQK, target_HQ[..., None], -1)[..., 0]
  assert kept_HQ[:, rows].all()
  assert _recall(mask_HQK, mass_HQK, rows) > 0.95


def _two_block_qk():
  """q, k [1, 8, 1, 8]: two blocks of 4 tokens, constant within a block up to a
  +-5 token alternation that pooling cancels (so unpooled RMS would differ).

  q block 0: 2 on the high dims (0, 1, 4, 5), 1 elsewhere; q block 1: 0 and 1.
  k block 0: 0.1 on the high dims, 0.3 elsewhere; k block 1: its negation.
  """
  high = np.isin(np.arange(8), [0, 1, 4, 5])
  q_blocks = np.stack([np.where(high, 2.0, 1.0), np.where(high, 0.0, 1.0)])
  k_block = np.where(high, 0.1, 0.3)
  k_blocks = np.stack([k_block, -k_block])
  wiggle = 5.0 * (-1.0) ** np.arange(8)[:, None]
  q = np.repeat(q_blocks, 4, 0) + wiggle
  k = np.repeat(k_blocks, 4, 0) + wiggle
  return (jnp.asarray(x[None, :, None], jnp.float32) for x in (q, k))


_two_block_scores = jax.jit(functools.partial(estimators.prism_scores, block_q=4, block_k=4))


def test_temperature_equals_hand_computed_value():
  q, k = _two_block_qk()
  pool_q, pool_k = estimators.pool_blocks(q, 4), estimators.pool_blocks(k, 4)
  high, low = estimators.frequency_bands(8, *estimators.band_dims(8))  # widths 4 and 6
  # rms over both blocks and all dims of the pooled vectors (by hand):
  #   q: sqrt(24/16), q_high: sqrt(16/8), q_low (dims 1,2,3,5,6,7): sqrt(16/12);
  #   k: sqrt(0.4/8), k_high: 0.1, k_low: sqrt(0.38/6).
  t_high = math.sqrt(4 / 8) * math.sqrt(2 / 1.5) * 0.1 / math.sqrt(0.05)
  t_low = math.sqrt(6 / 8) * math.sqrt((4 / 3) / 1.5) * math.sqrt((0.38 / 6) / 0.05)
  assert t_high == pytest.approx(math.sqrt(2 / 15)) and t_low == pytest.approx(math.sqrt(38 / 45))
  np.testing.assert_allclose(estimators.band_temperature(pool_q, pool_k, high), [[t_high]],
                             rtol=1e-5)
  np.testing.assert_allclose(estimators.band_temperature(pool_q, pool_k, low), [[t_low]],
                             rtol=1e-5)
  # Logits q_b.k_b / (sqrt(d_b) t). Query block 1 has no high band (uniform), and its
  # low band scores key block 0 at +1.2 and block 1 at -1.2.
  probs = _two_block_scores(q, k)
  logit = 1.2 / (math.sqrt(6) * t_low)
  np.testing.assert_allclose(probs["high"][0, 0, 1], [0.5, 0.5], rtol=1e-5)
  np.testing.assert_allclose(probs["low"][0, 0, 1], [1 / (1 + math.exp(-2 * logit)),
                                                    1 / (1 + math.exp(2 * logit))], rtol=1e-5)
  np.testing.assert_allclose(probs["low"][0, 0, 0], [1.0, 0.0])  # block-causal


def test_all_zero_band_scores_uniform_not_nan():
  q, k = _two_block_qk()
  k = k.at[..., jnp.array([0, 1, 4, 5])].set(0.0)  # the high band of k vanishes: t = 0
  probs = _two_block_scores(q, k)
  np.testing.assert_allclose(probs["high"][0, 0], [[1.0, 0.0], [0.5, 0.5]])


@pytest.mark.parametrize("topp,expected", [
    (0.5, [0, 1, 0, 0, 0]),    # the top block alone reaches 0.5
    (0.7, [0, 1, 0, 1, 0]),    # 0.5 < 0.7: the crossing block (0.25) is kept
    (0.75, [0, 1, 0, 1, 0]),   # mass exactly 0.75 after two blocks: no third
    (0.8, [1, 1, 0, 1, 0]),
    (0.9, [1, 1, 1, 1, 0]),    # tied 0.0625s: the lower index goes first
    (1.0, [1, 1, 1, 1, 1])])
def test_top_p_keeps_the_sorted_prefix_through_the_crossing_block(topp, expected):
  probs = jnp.array([[0.125, 0.5, 0.0625, 0.25, 0.0625]])
  keep = estimators.select_blocks(probs, topp=topp)
  np.testing.assert_array_equal(keep[0], np.array(expected, bool))


def test_bands_follow_our_rope_frequencies():
  """The high band is the fastest-rotating pairs of models.layers' RoPE, the low
  band the slowest, for any widths."""
  cos, sin = rope_tables(2, DIM, THETA)
  freq_F = np.arctan2(np.asarray(sin[1]), np.asarray(cos[1]))  # radians per token
  by_speed = np.argsort(-freq_F)
  for widths in [estimators.band_dims(DIM), (16, 32), (96, 64)]:
    high, low = (np.asarray(b) for b in estimators.frequency_bands(DIM, *widths))
    fast, slow = set(by_speed[:widths[0] // 2]), set(by_speed[-(widths[1] // 2):])
    assert set(high) == fast | {i + DIM // 2 for i in fast}
    assert set(low) == slow | {i + DIM // 2 for i in slow}


def test_gqa_scores_each_query_head_against_its_kv_head():
  rng = np.random.default_rng(5)
  q = jnp.asarray(rng.standard_normal((1, 128, 4, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 128, 2, 16)), jnp.float32)
  # The band probabilities decide the mask; they are the cheaper thing to compile.
  scores = jax.jit(functools.partial(estimators.prism_scores, block_q=16, block_k=16))
  grouped, repeated = scores(q, k), scores(q, jnp.repeat(k, 2, axis=2))
  for band in ("high", "low"):
    np.testing.assert_allclose(grouped[band], repeated[band], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("params", [dict(low_freq_dims=3), dict(low_freq_dims=0),
                                    dict(high_freq_dims=18)])
def test_band_widths_are_checked(params):
  q = jnp.zeros((1, 32, 1, 16))
  with pytest.raises(ValueError, match="must be even and in"):
    estimators.prism_mask(q, q, block_q=16, block_k=16, **params)


def test_default_bands_are_even_for_any_even_head_dim():
  """Half and three quarters of the head, each rounded down to even: a head dim of 6 (a
  width-6 model with one head) gets bands of 2 and 4 instead of an invalid 3."""
  assert estimators.band_dims(128) == (64, 96)
  assert estimators.band_dims(6) == (2, 4)
  assert estimators.band_dims(10) == (4, 6)
  from experiments import validation
  from tests.helpers import micro_config
  validation.validate(micro_config(**{"model.width": 6, "model.heads": 1,
                                      "model.kv_heads": 1, "attention.kind": "spectral",
                                      "attention.block_q": 16, "attention.block_k": 16}))
