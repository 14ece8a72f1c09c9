"""The one attention entry point: `attention(q, k, v, kind=..., impl=...)`.

Each kind's implementations and keyword parameters come from its spec in the
registry (kernels.kinds); anything else is rejected with a message that names
the valid choices.
"""
import jax

from kernels import block_mask_lib, dense, kinds
from kernels.flash import flash_attention

IMPLS = ("auto",) + kinds.IMPLS


def dense_attention(q, k, v, *, impl, causal, segment_ids_BL=None, fused_bwd=False):
  """The implementations of kind 'dense'. fused_bwd: the Pallas kernel's one-kernel
  backward (kernels.fused_bwd_gpu / _tpu); the other impls ignore it."""
  if impl == "reference":
    mask = None if segment_ids_BL is None else block_mask_lib.segment_mask_tokens(segment_ids_BL)
    return dense.reference_attention(q, k, v, causal=causal, mask_BHQK=mask)
  if impl == "xla":
    return dense.xla_attention(q, k, v, causal=causal, segment_ids_BL=segment_ids_BL)
  options = {"fused_bwd": True} if fused_bwd else {}
  if segment_ids_BL is None:  # the kernel call of every earlier run, unchanged
    return flash_attention(q, k, v, causal=causal, **options)
  return flash_attention(q, k, v, causal=causal, segment_ids_BL=segment_ids_BL, **options)


def resolve_impl(impl, kind):
  """'auto' -> pallas on GPU/TPU, the fastest correct non-interpreted path on CPU."""
  if impl not in IMPLS:
    raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLS}.")
  available = kinds.get(kind).impls
  if impl == "auto":
    on_accelerator = jax.default_backend() in ("gpu", "cuda", "rocm", "tpu")
    preferred = ("pallas", "xla") if on_accelerator else ("xla",)
    impl = next((i for i in preferred if i in available), next(iter(available)))
  if impl not in available:
    raise ValueError(
        f"attention kind {kind!r} has no impl {impl!r}; use one of {tuple(available)}.")
  return impl


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


def check_params(spec, params, extra=()):
  """Rejects parameters the kind does not take (`extra`: also allowed names)."""
  unknown = sorted(set(params) - set(spec.params) - set(extra))
  if unknown:
    raise ValueError(
        f"attention kind {spec.name!r} does not take {unknown}; it takes "
        f"{list(spec.params) or 'no extra parameters'} (plus causal).")
  estimator = params.get("estimator")
  if estimator is not None and estimator not in spec.estimators:
    owners = [name for name in kinds.KINDS if estimator in kinds.get(name).estimators]
    hint = f" (the {estimator} estimator is attention kind {owners[0]!r})" if owners else ""
    raise ValueError(
        f"attention kind {spec.name!r} takes estimator {' or '.join(map(repr, spec.estimators))}"
        f"; got {estimator!r}{hint}.")
  if spec.validate is not None:
    spec.validate(params)


def check_segments(spec, q_BLHK, segment_ids_BL):
  if not spec.segments:
    raise ValueError(
        f"attention kind {spec.name!r} does not support document masking (segment_ids_BL); "
        "train it with --config.data.packing=concat, or give its KindSpec segments=True "
        "once its impls take segment_ids_BL.")
  if segment_ids_BL.shape != q_BLHK.shape[:2]:
    raise ValueError(f"segment_ids_BL has shape {segment_ids_BL.shape}; expected [B, L] = "
                     f"{q_BLHK.shape[:2]} (one segment id per token).")


def attention(q_BLHK, k_BLGK, v_BLGK, *, kind, impl="auto", causal=True, segment_ids_BL=None,
              **params):
  """Attention over [batch, seq, heads, head_dim] tensors; returns o_BLHK.

  A kind with an estimator also takes what its `estimate` returned for these
  q, k (e.g. `mask_BHQK`), so the mask is computed once per layer and step, and
  `return_skipped=True`: then it returns (o_BLHK, skipped_BHQK), the tiles whose
  P.V product stage 2 skipped (kernels.pv_skip; all False without pv_threshold).
  segment_ids_BL (int [B, L], optional): document masking of a packed batch, a
  token attends only to keys with its segment id (kinds registered segments=True).
  """
  spec = kinds.get(kind)
  check_params(spec, params, extra=("mask_BHQK", "return_skipped") if spec.estimate else ())
  _check_shapes(q_BLHK, k_BLGK, v_BLGK)
  impl = resolve_impl(impl, kind)
  if segment_ids_BL is not None:
    check_segments(spec, q_BLHK, segment_ids_BL)
    params = dict(params, segment_ids_BL=segment_ids_BL)
  return spec.impl(impl)(q_BLHK, k_BLGK, v_BLGK, impl=impl, causal=causal, **params)
