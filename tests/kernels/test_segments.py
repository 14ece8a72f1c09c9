"""Document masking: attention on a packed batch equals attention on each document alone.

For every kind and impl (through kernels.attention, as the model calls it): the packed
row's output and its q/k/v gradients equal those of each document run separately;
block-mask estimators never keep a block pair that shares no document; linear attention
restarts its state (and the model's conv) at document starts; RoPE positions restart.
The Pallas kernels' own segment tests (tiles, platforms, export) are in
test_segments_pallas.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import attention, block_mask_lib, sparse
from tests.kernels.flash_checks import compile_fast

B, L, H, G, K, BLOCK = 2, 32, 4, 2, 16, 8
# Block-aligned documents (block kinds see the same block geometry alone and packed);
# the dense and linear kinds also get documents that start mid-block.
ALIGNED = [[8, 16, 8], [24, 8]]
RAGGED = [[5, 14, 13], [3, 29]]

CASES = [
    ("dense", {}, ("reference", "xla", "pallas"), RAGGED),
    ("block_sparse", {"estimator": "static", "window_blocks": 2, "sink_blocks": 1},
     ("reference", "xla", "pallas"), ALIGNED),
    ("block_sparse", {"estimator": "sparge", "topk": 0.5, "topp": 0.6, "max_blocks": 3},
     ("reference", "xla", "pallas"), ALIGNED),
    # prism's temperatures pool over the whole row, so topp=1 (every allowed block) makes
    # alone == packed exact; its selection is covered by the estimator test below.
    ("spectral", {"topp": 1.0}, ("reference", "xla", "pallas"), ALIGNED),
    ("linear", {"chunk_size": 8, "feature_map": "elu1", "normalize": True},
     ("reference", "xla", "pallas"), RAGGED),
]


def _segment_ids(lengths_per_row):
  return jnp.array([np.repeat(np.arange(1, len(r) + 1), r) for r in lengths_per_row],
                   jnp.int32)


def _inputs(seed):
  ks = jax.random.split(jax.random.key(seed), 5)
  q = jax.random.normal(ks[0], (B, L, H, K), jnp.float32)
  k = jax.random.normal(ks[1], (B, L, G, K), jnp.float32)
  v = jax.random.normal(ks[2], (B, L, G, K), jnp.float32)
  decay = -jax.nn.softplus(jax.random.normal(ks[3], (B, L, H)))
  w = jax.random.normal(ks[4], (B, L, H, K), jnp.float32)
  return q, k, v, decay, w


def _block(kind, params):
  out = dict(params)
  if kind in ("block_sparse", "spectral"):
    out.update(block_q=BLOCK, block_k=BLOCK)
  return out


def _run(kind, impl, params, q, k, v, decay, seg=None):
  extra = {"log_decay": decay} if kind == "linear" else {}
  if seg is not None:
    extra["segment_ids_BL"] = seg
  if kind in ("block_sparse", "spectral") and params.get("estimator", "prism") != "static":
    estimate = (sparse.estimate_spectral if kind == "spectral" else sparse.estimate_block_sparse)
    _, params = estimate(q, k, causal=True, **params,
                         **({} if seg is None else {"segment_ids_BL": seg}))
  return attention(q, k, v, kind=kind, impl=impl, causal=True, **params, **extra)


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))


RUNS = [(kind, params, impl, docs) for kind, params, impls, docs in CASES for impl in impls]


@pytest.mark.parametrize("kind,params,impl,docs", RUNS, ids=[
    f"{r[0]}-{r[1].get('estimator', '')}-{r[2]}".replace("--", "-") for r in RUNS])
def test_packed_attention_equals_each_document_alone(kind, params, impl, docs):
  """Each document alone is run at the start of its own row (the rest of the row is
  later, so causal attention never reads it): one batched call for all documents."""
  params = _block(kind, params)
  q, k, v, decay, w = _inputs(len(kind) + len(params))
  seg = _segment_ids(docs)
  spans = [(b, start, n) for b, lengths in enumerate(docs)
           for start, n in zip(np.cumsum([0] + lengths[:-1]), lengths)]

  def alone_rows(x, fill=0.0):
    rows = [jnp.pad(x[b, s:s + n], [(0, L - n)] + [(0, 0)] * (x.ndim - 2),
                    constant_values=fill) for b, s, n in spans]
    return jnp.stack(rows)

  w_alone = jnp.stack([jnp.pad(w[b, s:s + n], [(0, L - n), (0, 0), (0, 0)]) for b, s, n in spans])
  decay_alone = alone_rows(decay)

  def loss(run, w_):
    return lambda *a: jnp.sum(run(*a) * w_)

  packed = lambda q_, k_, v_: _run(kind, impl, params, q_, k_, v_, decay, seg)  # noqa: E731
  alone = lambda q_, k_, v_: _run(kind, impl, params, q_, k_, v_, decay_alone)  # noqa: E731
  # Both sides in one program, compiled without XLA's CPU optimisations: eager dispatch
  # of the references and compiling interpret-mode kernels are the slow parts.
  side = lambda run, w_, *a: (run(*a), jax.grad(loss(run, w_), (0, 1, 2))(*a))  # noqa: E731
  (o, grads), (o_alone, grads_alone) = compile_fast(
      lambda a, b: (side(packed, w, *a), side(alone, w_alone, *b)),
      (q, k, v), tuple(alone_rows(x) for x in (q, k, v)))
  tol = 2e-5 if impl != "pallas" else 5e-5
  for row, (b, s, n) in enumerate(spans):
    assert _rel(o[b, s:s + n], o_alone[row, :n]) < tol, (b, s)
    for name, g, g_alone in zip("qkv", grads, grads_alone):
      assert _rel(g[b, s:s + n], g_alone[row, :n]) < tol, (b, s, name)


@pytest.mark.parametrize("estimator,params", [
    ("static", {"window_blocks": 3, "sink_blocks": 1}),
    ("sparge", {"topk": 0.3, "topp": 0.9, "sim_threshold": 0.2}),
    ("prism", {"topp": 0.8})])
def test_estimators_never_keep_a_block_pair_that_shares_no_document(estimator, params):
  q, k, _, _, _ = _inputs(7)
  seg = _segment_ids(RAGGED)  # documents start mid-block: shared blocks are partial
  mask = sparse.block_mask(q, k, estimator=estimator, block_q=BLOCK, block_k=BLOCK,
                           segment_ids_BL=seg, **params).mask_BHQK
  allowed = block_mask_lib.segment_block_mask(seg, BLOCK, BLOCK)
  assert not bool(jnp.any(mask & ~allowed))
  # ... and every query block keeps at least its own diagonal block.
  assert bool(jnp.all(jnp.diagonal(mask, axis1=-2, axis2=-1)))


@pytest.mark.parametrize("estimator,params", [
    ("static", {"window_blocks": 3, "sink_blocks": 1}), ("sparge", {"topk": 0.2})])
def test_a_packed_document_keeps_the_sink_of_its_own_first_block(estimator, params):
  ks = jax.random.split(jax.random.key(3), 2)
  q = jax.random.normal(ks[0], (1, 64, H, K))
  k = jax.random.normal(ks[1], (1, 64, G, K))
  seg = _segment_ids([[8, 56]])  # document 2 is key blocks 1..7
  m = sparse.block_mask(q, k, estimator=estimator, block_q=BLOCK, block_k=BLOCK,
                        segment_ids_BL=seg, **params).mask_BHQK
  assert bool(jnp.all(m[0, :, 7, 1])) and not bool(jnp.any(m[0, :, 7, 0]))
  if estimator == "static":  # window 5..7 plus the sink 1, nothing between
    assert not bool(jnp.any(m[0, :, 7, 2:5]))


def test_segment_block_mask_is_exact_for_packed_and_a_superset_otherwise():
  seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 3], [3, 1, 1, 1, 2, 2, 3, 3]])
  mask = np.asarray(block_mask_lib.segment_block_mask(seg, 2, 2)[:, 0])
  tokens = np.asarray(seg)
  for b in range(2):
    for i in range(4):
      for j in range(4):
        shares = bool(set(tokens[b, 2 * i:2 * i + 2]) & set(tokens[b, 2 * j:2 * j + 2]))
        if b == 0:
          assert mask[b, i, j] == shares
        else:
          assert mask[b, i, j] or not shares


def test_a_kind_without_segment_support_is_refused_with_the_fix():
  from kernels import kinds
  kinds.register(kinds.KindSpec("noseg_toy", impls={"xla": lambda q, k, v, **_: q},
                                flops=lambda *a: 0.0))
  try:
    q, k, v, _, _ = _inputs(0)
    with pytest.raises(ValueError, match="does not support document masking.*packing=concat"):
      attention(q, k, v, kind="noseg_toy", impl="xla", segment_ids_BL=_segment_ids(RAGGED))
    with pytest.raises(ValueError, match=r"segment_ids_BL has shape \(2, 3\)"):
      attention(q, k, v, kind="dense", impl="xla", segment_ids_BL=jnp.zeros((2, 3), int))
  finally:
    kinds.unregister("noseg_toy")
