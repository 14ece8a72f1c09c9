"""Block-sparse and spectral attention: block masks, their density, the dispatch.

Kinds (specs in kernels.builtin_kinds):
  block_sparse: estimator "static" (causal + sliding window + sink blocks) or
                "sparge" (pooled block scores, top-k and/or top-p, self-similarity guard)
  spectral:     the "prism" estimator (per-frequency-band pooled scores)
Implementations:
  reference  dense reference attention with the block mask expanded to tokens.
  xla        gathers each query block's kept key blocks (kernels.gathered), so the
             work is proportional to a STATIC bound N on kept blocks per row:
               static masks: N is exact (the mask is known at trace time);
               sparge with topk only and no sim_threshold: N = floor(topk nK) + sink + diagonal;
               otherwise: N = max_blocks when given (the estimator then keeps at most
               max_blocks per row: diagonal, sink, guards, then the best scored).
             Without a bound (N = nK) nothing can be skipped and it runs the masked
             dense computation instead.
  pallas     kernels.block_sparse.block_sparse_attention (the block-sparse flash kernel);
             fwd_block_q/fwd_block_k/bwd_block_q/bwd_block_k set its compute tiles
             apart from the mask's blocks and fused_bwd its one-kernel backward
             (kinds.FLASH_PARAMS; the other impls ignore them).

Estimated once: a model layer calls its kind's `estimate` (estimate_block_sparse,
estimate_spectral), logs the density (kept fraction of causally reachable blocks)
and passes the data-dependent mask to the kernel as `mask_BHQK`; a static mask is
a trace-time constant, so the kernel rebuilds it instead (exact list bounds).

Any sequence length: masks have ceil(L / block) blocks per axis (the last may be
partial); `_sparse_attention` pads q, k, v and the mask to a multiple of both blocks
and the compute tiles (kernels.padding), runs every impl on the padded problem and
slices the output.
"""
import functools
import math

import jax
import jax.numpy as jnp

from kernels import block_mask_lib
from kernels import dense, estimators, kinds, padding, pv_skip
from kernels.gathered import gathered_attention
from kernels.kinds import ESTIMATOR_PARAMS, ESTIMATORS  # noqa: F401  (importers use these)


def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


def _check_fraction(name, value):
  if value is not None and not (isinstance(value, (int, float)) and 0 < value <= 1):
    raise ValueError(f"{name} must be a fraction in (0, 1] or None; got {value!r}.")


def _check_geometry(q, k, block_q, block_k):
  for name, block in (("block_q", block_q), ("block_k", block_k)):
    if not _is_int(block) or block <= 0:
      raise ValueError(f"{name} must be a positive int; got {block!r}.")
  if q.shape[1] != k.shape[1]:
    raise ValueError(
        f"block-sparse attention needs equal query and key lengths; got {q.shape[1]} "
        f"and {k.shape[1]}.")


def _diagonal_width(num_q, block_q, block_k):
  """Most key blocks overlapping one query block (each row keeps them all)."""
  return max(((i + 1) * block_q - 1) // block_k - (i * block_q) // block_k + 1
             for i in range(num_q))


def _check_params(estimator, head_dim, num_q, num_k, block_q, block_k, params):
  """Validates estimator parameters; returns them with defaults filled in."""
  if estimator not in ESTIMATORS:
    raise ValueError(f"unknown block-mask estimator {estimator!r}; choose one of {ESTIMATORS}.")
  own = ESTIMATOR_PARAMS[estimator]
  # A parameter of another estimator is tolerated at its "off" values (None or
  # a default), so one attention config can hold every key.
  neutral = {}
  for table in ESTIMATOR_PARAMS.values():
    for name, value in table.items():
      neutral.setdefault(name, {None}).add(value)
  for name, value in params.items():
    if name not in neutral:
      raise ValueError(f"unknown block-mask parameter {name!r}; known: {sorted(neutral)}.")
    if name not in own and value not in neutral[name]:
      raise ValueError(
          f"estimator {estimator!r} does not use {name}={value!r}; it takes {sorted(own)}.")
  p = {**own, **{name: value for name, value in params.items() if name in own}}
  if estimator == "static":
    w, s = p["window_blocks"], p["sink_blocks"]
    if w is not None and (not _is_int(w) or w < 1):
      raise ValueError(f"window_blocks must be an int >= 1 or None; got {w!r}.")
    if not _is_int(s) or s < 0:
      raise ValueError(f"sink_blocks must be an int >= 0; got {s!r}.")
    return p
  _check_fraction("topp", p["topp"])
  if estimator == "sparge":
    _check_fraction("topk", p["topk"])
    if p["topk"] is None and p["topp"] is None:
      raise ValueError("estimator 'sparge' needs topk (e.g. 0.35) and/or topp (e.g. 0.98).")
    t = p["sim_threshold"]
    if t is not None and not (isinstance(t, (int, float)) and -1 <= t <= 1):
      raise ValueError(f"sim_threshold must be a cosine similarity in [-1, 1] or None; got {t!r}.")
  if estimator == "prism":
    if p["topp"] is None:
      raise ValueError("estimator 'prism' needs topp (default 0.95).")
    given = p["high_freq_dims"]
    hf = estimators.default_high_freq_dims(head_dim) if given is None else given
    if head_dim % 2 or not _is_int(hf) or hf % 2 or not 0 < hf < head_dim:
      raise ValueError(
          f"high_freq_dims must be even and in (0, head_dim={head_dim}) with an even "
          f"head_dim (two rotate-half bands); got {hf!r}"
          + (" (the default for this head_dim)." if given is None else "."))
  m = p["max_blocks"]
  if m is not None:
    diagonal_width = _diagonal_width(num_q, block_q, block_k)
    if not _is_int(m) or m < diagonal_width:
      raise ValueError(
          f"max_blocks must be an int >= {diagonal_width} (the diagonal key blocks of a "
          f"query block) or None; got {m!r}.")
  return p


def _segment_blocks(segment_ids_BL, block_q, block_k):
  if segment_ids_BL is None:
    return None
  return block_mask_lib.segment_block_mask(segment_ids_BL, block_q, block_k)


def _estimate(q, k, estimator, block_q, block_k, causal, params, segment_ids_BL=None):
  """(mask_BHQK, is_static); a static mask is [1, 1, nQ, nK] and concrete. With
  segment ids the mask keeps only blocks that share a document ([B, ...], dynamic)."""
  head_dim = q.shape[3]
  num_q, num_k = padding.num_blocks(q.shape[1], block_q), padding.num_blocks(k.shape[1], block_k)
  p = _check_params(estimator, head_dim, num_q, num_k, block_q, block_k, params)
  allowed = _segment_blocks(segment_ids_BL, block_q, block_k)
  if estimator == "static":
    if allowed is not None:  # the window is relative; sinks: each document's first blocks
      window_QK = estimators.static_mask(num_q, num_k, block_q, block_k, causal=causal,
                                         window_blocks=p["window_blocks"])
      if p["window_blocks"] is None or not p["sink_blocks"]:
        return window_QK[None, None] & allowed, False
      reachable = allowed & estimators.reachable_blocks(num_q, num_k, block_q, block_k, causal)
      sink = reachable & (jnp.cumsum(reachable, axis=-1) <= p["sink_blocks"])
      return (window_QK | sink) & reachable, False
    mask_QK = estimators.static_mask(num_q, num_k, block_q, block_k, causal=causal, **p)
    return mask_QK[None, None], True
  make = estimators.sparge_mask if estimator == "sparge" else estimators.prism_mask
  mask = make(q, k, block_q=block_q, block_k=block_k, causal=causal, allowed_BXQK=allowed, **p)
  return mask, False


def block_mask(q_BLHK, k_BLGK, *, estimator, block_q=128, block_k=128, causal=True,
               segment_ids_BL=None, **params):
  """The BlockMask an estimator picks for these q, k (mask heads = query heads).

  Any seq_len: mask_BHQK is [B, H, ceil(L/bq), ceil(L/bk)], the last blocks
  partial. `.density` is the kept fraction of causally reachable blocks. Jitted, so
  eager calls compile once per shape and parameter set. With segment_ids_BL it
  never keeps a block pair that shares no document.
  """
  _check_geometry(q_BLHK, k_BLGK, block_q, block_k)
  return _block_mask(q_BLHK, k_BLGK, segment_ids_BL, estimator=estimator, block_q=block_q,
                     block_k=block_k, causal=causal, params=tuple(sorted(params.items())))


@functools.partial(jax.jit, static_argnames=("estimator", "block_q", "block_k", "causal",
                                             "params"))
def _block_mask(q_BLHK, k_BLGK, segment_ids_BL, *, estimator, block_q, block_k, causal,
                params):
  mask, _ = _estimate(q_BLHK, k_BLGK, estimator, block_q, block_k, causal, dict(params),
                      segment_ids_BL)
  batch, num_heads = q_BLHK.shape[0], q_BLHK.shape[2]
  mask_BHQK = jnp.broadcast_to(mask, (batch, num_heads) + mask.shape[2:])
  return block_mask_lib.from_mask(mask_BHQK, block_q=block_q, block_k=block_k, causal=causal)


def _static_bound(estimator, num_q, num_k, block_q, block_k, params):
  """Static upper bound on kept key blocks per query block (nK when unknown)."""
  if params.get("max_blocks") is not None:
    return min(params["max_blocks"], num_k)
  if estimator == "sparge" and params.get("topp") is None and params.get("sim_threshold") is None:
    diagonal_width = _diagonal_width(num_q, block_q, block_k)
    return min(num_k, max(1, math.floor(params["topk"] * num_k + 1e-6)) + 1 + diagonal_width)
  return num_k


def _list_bound(mask, is_static, estimator, block_q, block_k, causal, head_dim, params):
  """Static bound on kept key blocks per row (exact for a static mask)."""
  num_q, num_k = mask.shape[-2:]
  if is_static:
    with jax.ensure_compile_time_eval():
      return int(jnp.max(block_mask_lib.active_lists(mask)[1]))
  if estimator == "static":  # a static mask cut to documents keeps at most its rows
    p = _check_params(estimator, head_dim, num_q, num_k, block_q, block_k, params)
    static = estimators.static_mask(num_q, num_k, block_q, block_k, causal=causal, **p)
    return int(static.sum(axis=-1).max())
  return _static_bound(estimator, num_q, num_k, block_q, block_k, params)


def _sparse_attention(q, k, v, *, impl, causal, estimator, block_q, block_k, mask_BHQK=None,
                      segment_ids_BL=None, pv_threshold=None, return_skipped=False,
                      **params):
  _check_geometry(q, k, block_q, block_k)
  flash = {n: params.pop(n) for n in kinds.FLASH_PARAMS if n in params}
  flash = {n: v for n, v in flash.items() if v not in (None, False)} if impl == "pallas" else {}
  tiles = [flash[n] for n in kinds.TILE_PARAMS if n in flash]
  if impl not in ("pallas", "xla", "reference"):
    raise ValueError(f"block-sparse attention has impls 'pallas', 'xla', 'reference'; got {impl!r}.")
  pv_threshold = pv_skip.check_pv_threshold(pv_threshold)
  length = q.shape[1]
  real_blocks = (padding.num_blocks(length, block_q), padding.num_blocks(length, block_k))
  if mask_BHQK is not None:  # estimated once by the caller (see the module docstring)
    if tuple(mask_BHQK.shape[-2:]) != real_blocks:
      raise ValueError(
          f"mask_BHQK has blocks {tuple(mask_BHQK.shape[-2:])}; expected {real_blocks} = "
          f"ceil(seq_len {length} / ({block_q}, {block_k})), as the estimators give.")
    mask, is_static = mask_BHQK, False
    allowed = _segment_blocks(segment_ids_BL, block_q, block_k)
    mask = mask if allowed is None else mask & allowed
  else:
    # A static mask is [1, 1, nQ, nK]: one list shared by every batch row and head.
    mask, is_static = _estimate(q, k, estimator, block_q, block_k, causal, params,
                                segment_ids_BL)
  run = functools.partial(_run_mask, impl=impl, is_static=is_static, estimator=estimator,
                          block_q=block_q, block_k=block_k, causal=causal,
                          pv_threshold=pv_threshold, return_skipped=return_skipped,
                          params=params, flash=flash)
  padded = padding.padded_length(length, block_q, block_k, *tiles)
  if padded == length:
    return run(q, k, v, mask, segment_ids_BL)
  # Ragged length: the mask was chosen on the real tokens; run on the padded ones.
  own_segment = padding.needs_own_segment(causal, segment_ids_BL, pv_threshold)
  q, k, v, seg = padding.pad_inputs(q, k, v, segment_ids_BL, padded, own_segment=own_segment)
  mask = padding.pad_blocks(mask, padded // block_q, padded // block_k)
  out = run(q, k, v, mask, seg)
  if not return_skipped:
    return out[:, :length]
  o_BLHK, skipped_BHQK = out
  return o_BLHK[:, :length], padding.slice_blocks(skipped_BHQK, *real_blocks)


def _run_mask(q, k, v, mask, segment_ids_BL, *, impl, is_static, estimator, block_q,
              block_k, causal, pv_threshold, return_skipped, params, flash):
  """Runs `impl` on a block mask whose blocks tile q's length exactly."""
  seg = {} if segment_ids_BL is None else {"segment_ids_BL": segment_ids_BL}
  stage2 = {} if pv_threshold is None else {"pv_threshold": pv_threshold}
  bound = _list_bound(mask, is_static, estimator, block_q, block_k, causal, q.shape[3], params)
  if impl == "pallas":
    # Imported here so the XLA/reference paths work without the kernel module.
    from kernels.block_sparse import block_sparse_attention
    lists = block_mask_lib.from_mask(mask, block_q=block_q, block_k=block_k, causal=causal)
    if return_skipped:
      stage2["return_skipped"] = True
    # The estimator's static bound shrinks the TPU grid to the kept blocks (splash).
    shrink = {"max_blocks": bound} if bound < mask.shape[-1] else {}
    return block_sparse_attention(q, k, v, lists, causal=causal, **seg, **stage2, **shrink,
                                  **flash)
  if impl == "reference" or bound >= mask.shape[-1]:
    return _masked_dense(q, k, v, mask, block_q, block_k, causal, segment_ids_BL,
                         pv_threshold, return_skipped)
  index_XYQN, count_XYQ = block_mask_lib.active_lists(mask)
  return gathered_attention(q, k, v, index_XYQN[..., :bound], count_XYQ,
                            block_q=block_q, block_k=block_k, causal=causal, **seg,
                            **stage2, return_skipped=return_skipped)


def _masked_dense(q, k, v, mask, block_q, block_k, causal, segment_ids_BL, pv_threshold,
                  return_skipped):
  """The reference: dense attention with the block mask expanded to tokens."""
  if pv_threshold is not None:
    o, skipped = pv_skip.reference_attention(
        q, k, v, mask, block_q=block_q, block_k=block_k, causal=causal,
        segment_ids_BL=segment_ids_BL, pv_threshold=pv_threshold)
    return (o, skipped) if return_skipped else o
  mask_BHQK = block_mask_lib.expand_to_tokens(mask, block_q, block_k)
  if segment_ids_BL is not None:
    mask_BHQK = mask_BHQK & block_mask_lib.segment_mask_tokens(segment_ids_BL)
  o = dense.reference_attention(q, k, v, causal=causal, mask_BHQK=mask_BHQK)
  if not return_skipped:
    return o
  batch, num_heads = q.shape[0], q.shape[2]
  return o, jnp.zeros((batch, num_heads) + mask.shape[2:], bool)


def block_sparse(q, k, v, *, impl, causal, estimator="static", block_q=128, block_k=128,
                 **params):
  """Dispatch for attention kind 'block_sparse' (estimator 'static' or 'sparge';
  kernels.attention rejects others)."""
  return _sparse_attention(q, k, v, impl=impl, causal=causal, estimator=estimator,
                           block_q=block_q, block_k=block_k, **params)


def spectral(q, k, v, *, impl, causal, block_q=128, block_k=128, **params):
  """Dispatch for attention kind 'spectral' (the prism estimator)."""
  return _sparse_attention(q, k, v, impl=impl, causal=causal, estimator="prism",
                           block_q=block_q, block_k=block_k, **params)


def _estimate_once(q, k, causal, estimator, params, segment_ids_BL):
  mask_params = {n: v for n, v in params.items()
                 if n not in kinds.STAGE2_PARAMS and n not in kinds.FLASH_PARAMS}
  mask = block_mask(q, k, estimator=estimator, causal=causal, segment_ids_BL=segment_ids_BL,
                    **mask_params)
  if estimator == "static" and segment_ids_BL is None:
    return mask.density, params
  return mask.density, {**params, "mask_BHQK": mask.mask_BHQK}


def estimate_block_sparse(q_BLHK, k_BLGK, *, causal=True, segment_ids_BL=None, **params):
  """(density, kernel params) for kind 'block_sparse' (its KindSpec.estimate)."""
  estimator = params.get("estimator", "static")
  rest = {n: v for n, v in params.items() if n != "estimator"}
  density, rest = _estimate_once(q_BLHK, k_BLGK, causal, estimator, rest, segment_ids_BL)
  return density, {**params, **rest}


def estimate_spectral(q_BLHK, k_BLGK, *, causal=True, segment_ids_BL=None, **params):
  """(density, kernel params) for kind 'spectral' (its KindSpec.estimate)."""
  return _estimate_once(q_BLHK, k_BLGK, causal, "prism", params, segment_ids_BL)


def attention_density(q_BLHK, k_BLGK, *, kind, causal=True, **params):
  """float32 []: kept fraction of reachable blocks for `kind` (1.0 without an estimator)."""
  estimate = kinds.get(kind).estimate_fn()
  if estimate is None:
    return jnp.float32(1.0)
  return estimate(q_BLHK, k_BLGK, causal=causal, **params)[0]
