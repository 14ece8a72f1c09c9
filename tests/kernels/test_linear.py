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
  case = CASES[case_name]
  q, k, v, g, cotangent = _inputs(seed, case, dtype)
  up = lambda x: None if x is None else x.astype(jnp.float32)
  options = dict(feature_map=case["feature_map"], normalize=case["normalize"])
  return {name: _value_and_grads(fn, up(q), up(k), up(v), up(g), cotangent, **options)
          for name, fn in REFERENCES.items()}


# The Pallas paths' float32 log-decay gradient: on strong_decay_gqa its error over 16 seeds
# was median 6e-6, max 1.2e-5 against either reference (xla: 1.3e-7), so 1e-5 failed fresh
# seeds now and then. Its own bound is measured, not a loosened blanket one; the other
# gradients stay at 1e-5 (theirs: max 1.1e-7).
PALLAS_DG_TOL = 3e-5


def _check(impl, case_name, dtype, tol, seed):
  case = CASES[case_name]
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
      bound = PALLAS_DG_TOL if (impl.startswith("pallas") and name == "g"
                                and dtype == jnp.float32) else tol
      assert err < bound, f"d{name}: rel err {err:.2e}; {where}"


def _pairs(cases):
  return [(impl, case) for case in cases for impl in sorted(IMPLS)
          if impl != "pallas_cuda" or case in CUDA_CASES]


@pytest.mark.parametrize("impl, case_name", _pairs(sorted(CASES)))
def test_float32_matches_references(impl, case_name):
  _check(impl, case_name, jnp.float32, 1e-5, BASE_SEED + sorted(CASES).index(case_name))


@pytest.mark.parametrize("impl, case_name", _pairs(["strong_decay_gqa", "elu1_normalize_gqa"]))
def test_bfloat16_matches_references(impl, case_name):
  # The tpu variant feeds the MXU bf16 operands (f32 accumulation); on the normalised
  # elu1 case its error over 30 seeds was median 1.5e-2, max 2.1e-2 (xla: 3e-3), so
  # 2e-2 fails some fresh seeds. Its own bound is measured, not a loosened blanket one.
  tol = 3e-2 if (impl, case_name) == ("pallas_tpu", "elu1_normalize_gqa") else 2e-2
  _check(impl, case_name, jnp.bfloat16, tol, BASE_SEED + 100 + sorted(CASES).index(case_name))


def test_entry_point_dispatches_each_impl():
  case = CASES["relu_shorter_than_chunk"]
  q, k, v, g, _ = _inputs(BASE_SEED + 200, case)
  options = dict(log_decay=g, feature_map="relu", chunk_size=case["chunk"])
  ref = linear_reference.quadratic_linear_attention(q, k, v, g, feature_map="relu")
  for impl in ("reference", "xla", "pallas"):
    out = jax.jit(lambda q, k, v: attention(q, k, v, kind="linear", impl=impl, **options))(q, k, v)
    assert _rel(out, ref) < 1e-5, f"impl {impl}, seed {BASE_SEED + 200}"


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_pallas_writes_every_output_block(platform):
  """Outputs (and on cuda the per-chunk states) start as NaN (aliased buffers); a block
  the kernels skip stays NaN."""
  case = CASES["strong_decay_gqa"]
  q, k, v, g, _ = _inputs(BASE_SEED + 300, case)
  fq, fk, vv, b = linear_pallas.kernel_layout(q, k, v, g, feature_map="identity",
                                               chunk_size=8, normalize=True)
  forward = jax.jit(functools.partial(linear_kernels.forward_call, chunk_size=8,
                                      platform=platform, interpret=True),
                    static_argnames="poison")
  clean = forward(fq, fk, vv, b)
  poisoned = forward(fq, fk, vv, b, poison=True)
  assert np.isfinite(np.asarray(poisoned)).all()
  np.testing.assert_array_equal(np.asarray(poisoned), np.asarray(clean))


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
