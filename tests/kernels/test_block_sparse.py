"""Block-sparse and spectral attention: xla vs reference vs dense, dispatch, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import attention, attention_density, block_mask
from kernels import dense
from kernels.gathered import gathered_attention
from tests.kernels.flash_checks import compile_fast

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _inputs(seed, batch, length, heads, kv_heads, head_dim, dtype):
  kq, kk, kv, kc = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(kq, (batch, length, heads, head_dim), dtype)
  k = jax.random.normal(kk, (batch, length, kv_heads, head_dim), dtype)
  v = jax.random.normal(kv, (batch, length, kv_heads, head_dim), dtype)
  cotangent = jax.random.normal(kc, q.shape, jnp.float32)
  return q, k, v, cotangent


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _forward_and_grads(fn, q, k, v, cotangent):
  """jit of (o, dq, dk, dv): the output and its vjp with a random cotangent (compiled
  without XLA's CPU optimisations: these checks are compile-bound)."""
  def run(q, k, v):
    o, vjp = jax.vjp(fn, q, k, v)
    return (o, *vjp(cotangent.astype(o.dtype)))
  return compile_fast(run, q, k, v)


def _assert_close(got, want, tol):
  for name, g, w in zip(("o", "dq", "dk", "dv"), got, want):
    assert g.dtype == w.dtype, name
    assert _rel(g, w) < tol, (name, _rel(g, w))


# (seed, dtype, causal, batch, length, heads, kv_heads, kind, params)
XLA_CASES = [
    (1, jnp.float32, True, 2, 96, 4, 2, "block_sparse",
     dict(window_blocks=2, sink_blocks=1, block_q=16, block_k=16)),
    (3, jnp.float32, True, 1, 96, 2, 1, "block_sparse",
     dict(estimator="sparge", topk=0.3, block_q=32, block_k=16)),
    (4, jnp.bfloat16, True, 2, 160, 2, 1, "block_sparse",
     dict(estimator="sparge", topk=0.2, topp=0.5, max_blocks=3, block_q=16, block_k=32)),
    (5, jnp.float32, False, 1, 128, 4, 2, "spectral",
     dict(topp=0.5, max_blocks=3, block_q=16, block_k=32)),
]


@pytest.mark.parametrize("case", XLA_CASES, ids=lambda c: f"{c[7]}-{c[0]}")
def test_xla_matches_reference_forward_and_grads(case):
  seed, dtype, causal, batch, length, heads, kv_heads, kind, params = case
  q, k, v, cotangent = _inputs(seed, batch, length, heads, kv_heads, 16, dtype)
  run = {impl: _forward_and_grads(
      lambda q, k, v, impl=impl: attention(q, k, v, kind=kind, impl=impl, causal=causal,
                                           **params), q, k, v, cotangent)
         for impl in ("xla", "reference")}
  _assert_close(run["xla"], run["reference"], TOL[dtype])
  full = dense.reference_attention(q, k, v, causal=causal)
  assert _rel(run["xla"][0], full) > 0.05  # the mask really dropped blocks


@pytest.mark.parametrize("kind,params", [
    ("block_sparse", dict(window_blocks=100)),
    ("block_sparse", dict(estimator="sparge", topp=1.0)),
    ("spectral", dict(topp=1.0))])
def test_every_block_kept_equals_dense_causal(kind, params):
  q, k, v, cotangent = _inputs(11, 2, 64, 4, 2, 16, jnp.float32)
  got = _forward_and_grads(
      lambda q, k, v: attention(q, k, v, kind=kind, impl="xla", block_q=16, block_k=16,
                                **params), q, k, v, cotangent)
  want = _forward_and_grads(lambda q, k, v: dense.xla_attention(q, k, v), q, k, v, cotangent)
  _assert_close(got, want, TOL[jnp.float32])


@pytest.mark.parametrize("causal", [False])
def test_gathered_attention_over_all_blocks_equals_dense(causal):
  q, k, v, cotangent = _inputs(12, 1, 48, 2, 1, 8, jnp.float32)
  index_11QN = jnp.broadcast_to(jnp.arange(3), (1, 1, 6, 3))
  count_11Q = jnp.full((1, 1, 6), 3)
  got = _forward_and_grads(
      lambda q, k, v: gathered_attention(q, k, v, index_11QN, count_11Q, block_q=8,
                                         block_k=16, causal=causal), q, k, v, cotangent)
  want = _forward_and_grads(lambda q, k, v: dense.xla_attention(q, k, v, causal=causal),
                            q, k, v, cotangent)
  _assert_close(got, want, TOL[jnp.float32])


@pytest.mark.parametrize("dtype", [jnp.float32])
def test_static_window_equals_naive_sliding_window(dtype):
  block, window, length = 16, 3, 128
  q, k, v, cotangent = _inputs(13, 1, length, 2, 1, 16, dtype)
  query_block = np.arange(length)[:, None] // block
  key_block = np.arange(length)[None, :] // block
  mask = jnp.asarray((query_block - key_block < window) | (key_block == 0))[None, None]
  got = _forward_and_grads(
      lambda q, k, v: attention(q, k, v, kind="block_sparse", impl="xla", block_q=block,
                                block_k=block, window_blocks=window, sink_blocks=1),
      q, k, v, cotangent)
  want = _forward_and_grads(
      lambda q, k, v: dense.reference_attention(q, k, v, mask_BHQK=mask), q, k, v, cotangent)
  _assert_close(got, want, TOL[dtype])


def test_xla_static_window_does_work_proportional_to_kept_blocks():
  q, k, v, _ = _inputs(14, 1, 512, 2, 2, 16, jnp.float32)

  def flops(fn):
    return jax.jit(fn).lower(q, k, v).compile().cost_analysis()["flops"]
  sparse_flops = flops(lambda q, k, v: attention(
      q, k, v, kind="block_sparse", impl="xla", block_q=32, block_k=32, window_blocks=2))
  dense_flops = flops(lambda q, k, v: dense.xla_attention(q, k, v))
  assert sparse_flops < 0.25 * dense_flops, (sparse_flops, dense_flops)


def test_attention_density():
  q, k, _, _ = _inputs(15, 2, 96, 4, 2, 16, jnp.float32)
  density = jax.jit(lambda q, k: attention_density(
      q, k, kind="block_sparse", block_q=16, block_k=16, window_blocks=2))(q, k)
  np.testing.assert_allclose(density, 11 / 21, rtol=1e-6)  # 6 blocks: 1 + 2*5 of 21
  assert float(attention_density(q, k, kind="dense")) == 1.0
  spectral = attention_density(q, k, kind="spectral", block_q=16, block_k=16, topp=0.5)
  mask = block_mask(q, k, estimator="prism", block_q=16, block_k=16, topp=0.5)
  assert float(spectral) == float(mask.density) < 1.0
  assert mask.mask_BHQK.shape == (2, 4, 6, 6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(kind="block_sparse", estimator="dense"), "takes estimator 'static' or 'sparge'"),
    (dict(kind="block_sparse", estimator="prism"), "attention kind 'spectral'"),
    (dict(kind="block_sparse", topk=0.3), "does not use topk=0.3"),
    (dict(kind="block_sparse", estimator="sparge"), "needs topk"),
    (dict(kind="block_sparse", estimator="sparge", topk=1.5), "topk must be a fraction"),
    (dict(kind="block_sparse", window_blocks=0), "window_blocks must be"),
    (dict(kind="spectral", max_blocks=0), "max_blocks must be an int >= 1"),
    (dict(kind="spectral", high_freq_dims=3), "high_freq_dims must be even"),
    (dict(kind="spectral", block_q=16, block_k=16, impl="triton"), "unknown attention impl"),
])
def test_errors_name_the_constraint(kwargs, message):
  q, k, v, _ = _inputs(16, 1, 96, 2, 1, 16, jnp.float32)
  kwargs = {"block_q": 16, "block_k": 16, "impl": "xla", **kwargs}
  with pytest.raises(ValueError, match=message):
    attention(q, k, v, **kwargs)


# A static mask (one list for all heads) and a dynamic per-head one; sparge
# masks reach the kernel through the same per-head path as prism's.
PALLAS_CASES = [
    ("block_sparse", dict(window_blocks=2, sink_blocks=1)),
    ("spectral", dict(topp=0.6)),
]


@pytest.mark.parametrize("kind,params", PALLAS_CASES)
def test_pallas_matches_reference(kind, params):
  pytest.importorskip("kernels.block_sparse")
  q, k, v, cotangent = _inputs(17, 1, 64, 2, 1, 16, jnp.float32)
  run = {impl: _forward_and_grads(
      lambda q, k, v, impl=impl: attention(q, k, v, kind=kind, impl=impl, block_q=16,
                                           block_k=16, **params), q, k, v, cotangent)
         for impl in ("pallas", "reference")}
  _assert_close(run["pallas"], run["reference"], TOL[jnp.float32])
