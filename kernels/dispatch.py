"""The one attention entry point: `attention(q, k, v, kind=..., impl=...)`.

Each kind registers the implementations it has and the keyword parameters it
accepts; everything else is rejected with a message that names the valid
choices.
"""
import jax

from kernels import dense, linear, sparse
from kernels.flash import flash_attention

KINDS = ("dense", "block_sparse", "spectral", "linear")
IMPLS = ("auto", "pallas", "xla", "reference")

# Keyword parameters each kind accepts (beyond `causal`). Models filter their
# attention config through this table, so a kind never sees foreign keys.
KIND_PARAMS = {
    "dense": (),
    "block_sparse": ("estimator", "block_q", "block_k", "window_blocks",
                     "sink_blocks", "topk", "topp", "sim_threshold", "max_blocks"),
    "spectral": ("block_q", "block_k", "topp", "high_freq_dims", "max_blocks"),
    "linear": ("log_decay", "feature_map", "normalize", "chunk_size"),
}


def _dense(q, k, v, *, impl, causal):
  if impl == "reference":
    return dense.reference_attention(q, k, v, causal=causal)
  if impl == "xla":
    return dense.xla_attention(q, k, v, causal=causal)
  if impl == "pallas":
    return flash_attention(q, k, v, causal=causal)
  raise ValueError(
      f"attention kind 'dense' has no impl {impl!r}; use 'pallas', 'xla' or 'reference'.")


# kind -> callable(q, k, v, *, impl, causal, **params). Kernel modules add theirs.
_DISPATCH = {"dense": _dense, "block_sparse": sparse.block_sparse,
             "spectral": sparse.spectral, "linear": linear.linear_attention}


def resolve_impl(impl, kind):
  """'auto' -> pallas on GPU/TPU, the fastest correct non-interpreted path on CPU."""
  if impl not in IMPLS:
    raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLS}.")
  if impl != "auto":
    return impl
  on_accelerator = jax.default_backend() in ("gpu", "cuda", "rocm", "tpu")
  if on_accelerator and kind in _PALLAS_KINDS:
    return "pallas"
  return "xla"


_PALLAS_KINDS = {"dense", "block_sparse", "spectral", "linear"}


def _check_shapes(q, k, v):
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
        "attention expects q [B, L, H, K] and k, v [B, L, G, K]; got shapes "
        f"{q.shape}, {k.shape}, {v.shape}.")
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape; got {k.shape} and {v.shape}.")
  if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
    raise ValueError(
        f"q {q.shape} and k {k.shape} must agree on batch and head_dim.")
  if q.shape[2] % k.shape[2]:
    raise ValueError(
        f"query heads {q.shape[2]} must be a multiple of kv heads {k.shape[2]} "
        "(grouped-query attention).")


def attention(q_BLHK, k_BLGK, v_BLGK, *, kind, impl="auto", causal=True, **params):
  """Attention over [batch, seq, heads, head_dim] tensors; returns o_BLHK."""
  if kind not in KINDS:
    raise ValueError(f"unknown attention kind {kind!r}; choose one of {KINDS}.")
  if kind not in _DISPATCH:
    raise ValueError(f"attention kind {kind!r} is not available in this build.")
  unknown = sorted(set(params) - set(KIND_PARAMS[kind]))
  if unknown:
    raise ValueError(
        f"attention kind {kind!r} does not take {unknown}; it takes "
        f"{list(KIND_PARAMS[kind]) or 'no extra parameters'} (plus causal).")
  _check_shapes(q_BLHK, k_BLGK, v_BLGK)
  impl = resolve_impl(impl, kind)
  return _DISPATCH[kind](q_BLHK, k_BLGK, v_BLGK, impl=impl, causal=causal, **params)
