"""Chunked linear attention (XLA path and Pallas kernel in interpret mode) against
the token recurrence and the quadratic masked form: forward and gradients."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import attention
from kernels import linear
from kernels import linear_chunk
from kernels import linear_kernels
from kernels import linear_pallas
from kernels import linear_reference

# Fresh inputs on every run; the seed is in every failure message.
BASE_SEED = int.from_bytes(os.urandom(3), "little")

REFERENCES = {
    "recurrent": linear_reference.recurrent_linear_attention,
    "quadratic": linear_reference.quadratic_linear_attention,
}


def _xla(q, k, v, g, *, feature_map, normalize, chunk_size):
  return linear.xla_linear_attention(q, k, v, g, feature_map=feature_map,
                                     normalize=normalize, chunk_size=chunk_size)


def _pallas(platform):
  def run(q, k, v, g, *, feature_map, normalize, chunk_size):
    return linear_pallas.pallas_linear_attention(
        q, k, v, g, feature_map=feature_map, normalize=normalize, chunk_size=chunk_size,
        platform=platform, interpret=True)
  return run


IMPLS = {"xla": _xla, "pallas_tpu": _pallas("tpu"), "pallas_cuda": _pallas("cuda")}

# name -> shapes and options. Normalised cases use positive q, k: the row
# normaliser of sign-indefinite scores can cross zero, which no tolerance survives.
CASES = {
    "no_decay_ragged": dict(length=40, chunk=16, heads=2, kv_heads=2, head_dim=8,
                            feature_map="identity", decay=None, normalize=False),
    "strong_decay_gqa": dict(length=32, chunk=16, heads=2, kv_heads=1, head_dim=8,
                             feature_map="identity", decay=-5.0, normalize=False),
    "elu1_normalize_gqa": dict(length=29, chunk=8, heads=4, kv_heads=2, head_dim=8,
                               feature_map="elu1", decay=-0.3, normalize=True),
    "relu_shorter_than_chunk": dict(length=5, chunk=16, heads=2, kv_heads=2, head_dim=8,
                                    feature_map="relu", decay=-0.2, normalize=False),
    "squared_normalize": dict(length=20, chunk=8, heads=2, kv_heads=1, head_dim=4,
                              feature_map="squared", decay=-0.5, normalize=True),
}
# The cuda variant shares the chunk math and differs only in how it walks the
# chunks, so multi-chunk cases with GQA and padding cover it (interpret mode is
# slow for its in-kernel loop).
CUDA_CASES = ("strong_decay_gqa", "no_decay_ragged")
# Run with SMALL_TILES, so that a small case has several state tiles: K = 16 squared
# has F = 136, on tpu 2 tiles of 128 (and dq's values 2 V tiles), on cuda 9 of 16.
TILED_CASES = {
    "squared_normalize_tiled": dict(length=24, chunk=8, heads=2, kv_heads=1, head_dim=16,
                                    feature_map="squared", decay=-0.5, normalize=True),
}
ALL_CASES = {**CASES, **TILED_CASES}
# The smallest tiles each platform allows (16-wide Triton dots, 128-lane tpu blocks),
# so the tests also hold compiled on a GPU or TPU.
SMALL_TILES = {"cuda": ("MAX_TILE", 16), "tpu": ("TPU_MAX_TILE", 128)}


def _inputs(seed, case, dtype=jnp.float32, batch=2):
  keys = jax.random.split(jax.random.PRNGKey(seed), 5)
  q = jax.random.normal(keys[0], (batch, case["length"], case["heads"], case["head_dim"]))
  k = jax.random.normal(keys[1], (batch, case["length"], case["kv_heads"], case["head_dim"]))
  v = jax.random.normal(keys[2], k.shape)
  if case["normalize"]:
    q, k = jnp.abs(q) + 0.1, jnp.abs(k) + 0.1
  g = None
  if case["decay"] is not None:
    g = case["decay"] * jax.random.uniform(keys[3], q.shape[:3], minval=0.8, maxval=1.2)
  cotangent = jax.random.normal(keys[4], q.shape)
  cast = lambda x: None if x is None else x.astype(dtype)
  return cast(q), cast(k), cast(v), cast(g), cotangent


def _rel(out, ref):
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  return np.linalg.norm(out - ref) / np.linalg.norm(ref)


def _value_and_grads(fn, q, k, v, g, cotangent, **options):
  def loss(q, k, v, g):
    o = fn(q, k, v, g, **options)
    return jnp.sum(o.astype(jnp.float32) * cotangent), o
  argnums = (0, 1, 2) if g is None else (0, 1, 2, 3)
  (_, o), grads = jax.jit(jax.value_and_grad(loss, argnums=argnums, has_aux=True))(q, k, v, g)
  return o, dict(zip("qkvg", grads))


@functools.lru_cache(maxsize=None)
def _reference_results(case_name, dtype, seed):
  """Both references on the same (possibly bf16-rounded) inputs, in float32; shared
  by the implementations under test."""
  case = ALL_CASES[case_name]
  q, k, v, g, cotangent = _inputs(seed, case, dtype)
  up = lambda x: None if x is None else x.astype(jnp.float32)
  options = dict(feature_map=case["feature_map"], normalize=case["normalize"])
  return {name: _value_and_grads(fn, up(q), up(k), up(v), up(g), cotangent, **options)
          for name, fn in REFERENCES.items()}


def _check(impl, case_name, dtype, tol, seed):
  case = ALL_CASES[case_name]
  q, k, v, g, cotangent = _inputs(seed, case, dtype)
  options = dict(feature_map=case["feature_map"], normalize=case["normalize"])
  out, grads = _value_and_grads(IMPLS[impl], q, k, v, g, cotangent,
                                chunk_size=case["chunk"], **options)
  assert out.dtype == dtype and out.shape == q.shape
  for ref_name, (ref, ref_grads) in _reference_results(case_name, dtype, seed).items():
    where = f"{impl} vs {ref_name}, case {case_name}, {jnp.dtype(dtype).name}, seed {seed}"
    assert _rel(out, ref) < tol, f"output: rel err {_rel(out, ref):.2e}; {where}"
    for name, grad in grads.items():
      err = _rel(grad, ref_grads[name])
      assert err < tol, f"d{name}: rel err {err:.2e}; {where}"


def _pairs(cases):
  return [(impl, case) for case in cases for impl in sorted(IMPLS)
          if impl != "pallas_cuda" or case in CUDA_CASES]


@pytest.mark.parametrize("impl, case_name", _pairs(sorted(CASES)))
def test_float32_matches_references(impl, case_name):
  _check(impl, case_name, jnp.float32, 1e-5, BASE_SEED + sorted(CASES).index(case_name))


@pytest.mark.parametrize("impl, case_name", _pairs(["strong_decay_gqa", "elu1_normalize_gqa"]))
def test_bfloat16_matches_references(impl, case_name):
  # The tpu variant feeds the MXU bf16 operands (f32 accumulation); on the normalised
  # elu1 case the worst of its output and gradient errors over 30 seeds was median
  # 1.2e-2, max 1.4e-2 (xla: 3e-3). Its normaliser's row sums are float32; as a bf16
  # ones column of v they reached 2.1e-2 and needed a bound of their own.
  _check(impl, case_name, jnp.bfloat16, 2e-2, BASE_SEED + 100 + sorted(CASES).index(case_name))


def test_entry_point_dispatches_each_impl():
  case = CASES["relu_shorter_than_chunk"]
  q, k, v, g, _ = _inputs(BASE_SEED + 200, case)
  options = dict(log_decay=g, feature_map="relu", chunk_size=case["chunk"])
  ref = linear_reference.quadratic_linear_attention(q, k, v, g, feature_map="relu")
  for impl in ("reference", "xla", "pallas"):
    out = jax.jit(lambda q, k, v: attention(q, k, v, kind="linear", impl=impl, **options))(q, k, v)
    assert _rel(out, ref) < 1e-5, f"impl {impl}, seed {BASE_SEED + 200}"


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_tiled_state_matches_references(platform, monkeypatch):
  """Several state tiles along F (and along V in dq's call), the normaliser's
  accumulators and the rank-one term of its cotangent, forward and gradients."""
  monkeypatch.setattr(linear_chunk, *SMALL_TILES[platform])
  _check(f"pallas_{platform}", "squared_normalize_tiled", jnp.float32, 1e-5, BASE_SEED + 500)


def _strictly_past(q_BHLF, k_BGLF, v_BGLV, g_BHL, rank1=None):
  """forward_call's definition in jnp, float32: o_t and r_t, sums over s < t of
  e(t, s) (q_t . k_s + qa_t ka_s) v_s and of e(t, s) (q_t . k_s + qa_t ka_s)."""
  heads, length = g_BHL.shape[1:]
  expand = lambda x: jnp.repeat(x, heads // x.shape[1], axis=1)
  q, k, v = (expand(x) for x in (q_BHLF, k_BGLF, v_BGLV))
  decay_BHTS = jnp.exp(linear_reference.segment_sums(jnp.moveaxis(g_BHL, 1, 2)))
  past_TS = jnp.tril(jnp.ones((length, length), bool), -1)
  scores_BHTS = jnp.einsum("bhtf,bhsf->bhts", q, k)
  if rank1 is not None:
    scores_BHTS += expand(rank1[0])[..., :, None] * expand(rank1[1])[..., None, :]
  weights_BHTS = jnp.where(past_TS, scores_BHTS * decay_BHTS, 0.0)
  return jnp.einsum("bhts,bhsv->bhtv", weights_BHTS, v), jnp.sum(weights_BHTS, -1)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_forward_call_on_tiles_writes_every_block(platform, monkeypatch):
  """The kernel against its definition with several tiles on F and V: plain, with the
  normaliser, with a rank-one term. Every output, the intermediate ones too, starts as
  NaN (aliased buffers), so a block the kernels skip shows."""
  monkeypatch.setattr(linear_chunk, *SMALL_TILES[platform])
  features, values = {"tpu": (256, 256), "cuda": (48, 32)}[platform]
  seed = BASE_SEED + 300
  keys = jax.random.split(jax.random.PRNGKey(seed), 6)
  q = jax.random.normal(keys[0], (1, 2, 24, features))
  k = jax.random.normal(keys[1], (1, 1, 24, features))
  v = jax.random.normal(keys[2], (1, 1, 24, values))
  g = -jax.random.uniform(keys[3], (1, 2, 24), minval=0.05, maxval=5.0)
  rank1 = (jax.random.normal(keys[4], (1, 2, 24)), jax.random.normal(keys[5], (1, 1, 24)))
  forward = jax.jit(functools.partial(linear_kernels.forward_call, chunk_size=8,
                                      platform=platform, interpret=True, poison=True),
                    static_argnames="normaliser")
  ref_o, ref_r = _strictly_past(q, k, v, g)
  o, r = forward(q, k, v, g, normaliser=True)
  checks = {"o": (forward(q, k, v, g), ref_o), "o with r": (o, ref_o), "r": (r, ref_r),
            "o with rank1": (forward(q, k, v, g, rank1=rank1),
                             _strictly_past(q, k, v, g, rank1)[0])}
  for name, (out, ref) in checks.items():
    assert _rel(out, ref) < 1e-5, f"{name}: rel err {_rel(out, ref):.2e}; seed {seed}"


def test_compensated_decays_keep_near_diagonal_digits():
  """(b_i - b_j) + (lo_i - lo_j), as the kernels form it, is the segment sum to an eps
  of itself; a plain float32 cumsum's b_i - b_j is off by ~eps |b| (~50 eps of g_i
  here), which made the log-decay gradient ~50x less accurate."""
  seed = BASE_SEED + 600
  g = -5.0 * jax.random.uniform(jax.random.PRNGKey(seed), (1, 2, 128), minval=0.8, maxval=1.2)
  b, lo = linear_chunk.compensated_cumsum(g, 64)
  g64 = np.asarray(g, np.float64)
  within = np.arange(128) % 64 != 0  # token i and i - 1 in one chunk: the segment is g_i
  compensated = (b[..., 1:] - b[..., :-1]) + (lo[..., 1:] - lo[..., :-1])
  plain = b[..., 1:] - b[..., :-1]
  err = lambda d: (np.abs(np.asarray(d, np.float64) - g64[..., 1:]) / -g64[..., 1:])[
      ..., within[1:]].max()
  eps = float(jnp.finfo(jnp.float32).eps)
  assert err(compensated) < 2 * eps, f"{err(compensated):.1e}; seed {seed}"
  assert err(plain) > 8 * eps  # the case is hard for the plain cumsum


def test_tile_sizes():
  """Padded dims keep their tile; tpu splits only past TPU_MAX_TILE, into 128-lane tiles."""
  assert linear_chunk.tile_size(129, "cuda") == 64
  assert linear_chunk.tile_size(8, "cuda") == 16
  assert linear_chunk.tile_size(2048, "tpu") == 2048
  assert linear_chunk.tile_size(8256, "tpu") == 1664  # 5 tiles, 8320 in all
  for dim in (8, 129, 2048, 2049, 8256, 33000):
    for platform in ("cuda", "tpu"):
      tile = linear_chunk.tile_size(dim, platform)
      padded = linear_chunk.pad_to_tiles(jnp.zeros((1, dim)), platform).shape[-1]
      lanes = tile if platform == "cuda" else 128 * (padded // tile)  # < a lane per tile
      assert padded % tile == 0 and padded - dim < lanes
      assert linear_chunk.tile_size(padded, platform) == tile, (dim, platform)


def _small():
  q = jnp.ones((1, 6, 2, 4))
  kv = jnp.ones((1, 6, 1, 4))
  return q, kv, kv


@pytest.mark.parametrize("params, message", [
    (dict(log_decay=jnp.full((1, 6, 2), 0.5)), "must be <= 0"),
    (dict(log_decay=jnp.zeros((1, 6, 1))), "log_decay must have shape"),
    (dict(feature_map="cosine"), "unknown feature_map"),
    (dict(causal=False), "causal only"),
    (dict(chunk_size=0), "chunk_size"),
])
def test_invalid_arguments_raise(params, message):
  q, k, v = _small()
  for impl in ("reference", "xla", "pallas"):
    with pytest.raises(ValueError, match=message):
      attention(q, k, v, kind="linear", impl=impl, **params)


def test_positive_decay_is_not_checked_under_jit():
  """Under jit the values are unknown; the check must not break tracing."""
  q, k, v = _small()
  fn = jax.jit(lambda g: attention(q, k, v, kind="linear", impl="xla", log_decay=g))
  assert fn(jnp.full((1, 6, 2), -0.1)).shape == q.shape


def test_zero_normaliser_gives_zeros_not_nan():
  """relu features of an all-negative query overlap no key: the row is 0, not NaN."""
  q, k, v = _small()
  q = -q
  for impl in ("reference", "xla", "pallas"):
    fn = jax.jit(lambda q, k, v: attention(q, k, v, kind="linear", impl=impl,
                                           feature_map="relu", normalize=True))
    out = fn(q, k, v)
    assert np.isfinite(np.asarray(out)).all() and not np.asarray(out).any(), impl


def test_squared_features_are_symmetric_and_exact():
  """K(K+1)/2 features whose dot products are (q . k)^2."""
  keys = jax.random.split(jax.random.PRNGKey(BASE_SEED + 400))
  q, k = jax.random.normal(keys[0], (6, 5)), jax.random.normal(keys[1], (7, 5))
  fq, fk = (linear_reference.squared_features(x) for x in (q, k))
  assert fq.shape == (6, 15)
  np.testing.assert_allclose(fq @ fk.T, (q @ k.T) ** 2, rtol=1e-5, atol=1e-5)
