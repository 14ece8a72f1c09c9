"""Linear attention at lengths that are no multiple of the chunk (padded inside, the
output sliced): XLA and Pallas (interpret mode) paths against the quadratic
reference with GQA, forward and gradients."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import attention
from kernels import linear_reference

BASE_SEED = int.from_bytes(os.urandom(3), "little")
HEADS, KV_HEADS, HEAD_DIM, CHUNK = 4, 2, 8, 64


def _entry(impl):
  def run(q, k, v, g, **options):
    return attention(q, k, v, kind="linear", impl=impl, log_decay=g, chunk_size=CHUNK,
                     **options)
  return run


# On CPU impl="pallas" is the interpreted cuda variant (kernels.platform). The tpu
# variant shares its padding code and is tested at ragged lengths in test_linear.py.
IMPLS = {"xla": _entry("xla"), "pallas_cuda": _entry("pallas")}


def _grads(fn, seed, length, **options):
  keys = jax.random.split(jax.random.PRNGKey(seed), 5)
  q = jnp.abs(jax.random.normal(keys[0], (1, length, HEADS, HEAD_DIM))) + 0.1
  k = jnp.abs(jax.random.normal(keys[1], (1, length, KV_HEADS, HEAD_DIM))) + 0.1
  v = jax.random.normal(keys[2], k.shape)
  g = -0.2 * jax.random.uniform(keys[3], q.shape[:3], minval=0.5, maxval=1.5)
  cotangent = jax.random.normal(keys[4], q.shape)

  def loss(q, k, v, g):
    o = fn(q, k, v, g, **options)
    return jnp.sum(o * cotangent), o
  (_, o), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2, 3), has_aux=True))(q, k, v, g)
  return o, grads


def _rel(out, ref):
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  return np.linalg.norm(out - ref) / np.linalg.norm(ref)


@pytest.mark.parametrize("length", [77, 200, 1000])
def test_any_length_matches_reference(length):
  # Normalised elu1 features at the shortest length (a padded normaliser column too).
  options = dict(feature_map="elu1", normalize=True) if length == 77 else {}
  seed = BASE_SEED + length
  ref, ref_grads = _grads(linear_reference.quadratic_linear_attention, seed, length,
                          **options)
  for impl in sorted(IMPLS):
    out, grads = _grads(IMPLS[impl], seed, length, **options)
    where = f"{impl}, L={length}, seed {seed}"
    assert out.shape == ref.shape and _rel(out, ref) < 1e-5, f"output; {where}"
    for name, grad, ref_grad in zip("qkvg", grads, ref_grads):
      assert _rel(grad, ref_grad) < 1e-5, f"d{name}: {_rel(grad, ref_grad):.2e}; {where}"
