"""The attention-kind registry: one KindSpec per kind, registered once.

Everything that depends on the kind reads its spec: the dispatch
(`kernels.attention`), the model layers (models.attention, models.transformer),
the FLOP count (models.flops) and config validation (models.layer_kinds).
Adding a kind is one module (its implementations and FLOP count) and one
`register(KindSpec(...))` line; the built-in kinds are in kernels/builtin_kinds.py.

Imports no JAX: the FLOP count and sweep dry runs read this registry, so an
implementation may be named as "module:function" and is imported on first call.
"""
import collections.abc
import contextlib
import dataclasses
import importlib
from typing import Callable, Optional

IMPLS = ("pallas", "xla", "reference")
LAYERS = ("attention", "linear")  # models.attention.Attention | models.linear_attention

# Block-mask estimators and the parameters each takes, with defaults (None / 0: off).
ESTIMATOR_PARAMS = {
    "static": {"window_blocks": None, "sink_blocks": 0},
    "sparge": {"topk": None, "topp": None, "sim_threshold": None, "max_blocks": None},
    # prism band widths, None: the reference's 64 and 96 of 128 (K/2 and 3K/4).
    "prism": {"topp": 0.95, "high_freq_dims": None, "low_freq_dims": None,
              "max_blocks": None},
}
ESTIMATORS = tuple(ESTIMATOR_PARAMS)
BLOCK_PARAMS = {"block_q": 128, "block_k": 128}
# The Pallas kernels' compute tiles, each a multiple or a divisor of its mask block
# (None: the block; the backward's None: the forward's); other impls ignore them.
TILE_PARAMS = {"fwd_block_q": None, "fwd_block_k": None, "bwd_block_q": None,
               "bwd_block_k": None}
# Options of the flash kernels (Pallas only; other impls ignore them): the tiles, and
# fused_bwd, FlashAttention-2's one-kernel backward (kernels.fused_bwd_gpu / _tpu).
FLASH_PARAMS = {**TILE_PARAMS, "fused_bwd": False}
# SpargeAttn's stage 2 (kernels.pv_skip), taken by every block kind: skip a kept
# tile's P.V when its scores sit more than -pv_threshold below the running max.
STAGE2_PARAMS = {"pv_threshold": None}


def estimator_params(*estimators):
  """Block sizes, stage 2 and every parameter of these estimators, with defaults."""
  params = {**BLOCK_PARAMS, **FLASH_PARAMS, **STAGE2_PARAMS}
  for name in estimators:
    params.update({k: v for k, v in ESTIMATOR_PARAMS[name].items() if k not in params})
  return params


@dataclasses.dataclass(frozen=True)
class KindSpec:
  """name: the `attention.kind` value.
  impls: {impl: fn(q, k, v, *, impl, causal, **params) or "module:function"}.
  flops: (cfg, head_dim, density) -> forward FLOPs per token of the attention core
    (all heads; density is the logged kept fraction, None for a full count).
  params: keyword parameters beyond `causal` -> defaults; the model passes the
    config keys of these names (None values left out), the dispatch rejects others.
  estimators: block-mask estimators it takes (the first is the default; with more
    than one, `attention.estimator` picks).
  estimate: fn(q, k, *, causal, **params) -> (density [], kernel params) or
    "module:function": run once per layer and step, it reports the density and
    hands the kernel what it computed (e.g. the block mask); None: no density.
  layer: the model layer around the core, one of LAYERS.
  validate: optional fn(params) raising ValueError for bad values.
  segments: its impls take `segment_ids_BL` (int [B, L]; document masking of packed
    batches: a token attends only to keys of its own segment). Without it, a packed
    batch (data.packing = "segments") is refused with the fix.
  """
  name: str
  impls: dict
  flops: Callable
  params: dict = dataclasses.field(default_factory=dict)
  estimators: tuple = ()
  estimate: Optional[object] = None
  layer: str = "attention"
  validate: Optional[Callable] = None
  segments: bool = False

  def __post_init__(self):
    if not self.impls or set(self.impls) - set(IMPLS):
      raise ValueError(f"kind {self.name!r}: impls must be a non-empty subset of {IMPLS}.")
    if self.layer not in LAYERS:
      raise ValueError(f"kind {self.name!r}: layer must be one of {LAYERS}.")

  def impl(self, name):
    return _load(self.impls[name])

  def estimate_fn(self):
    return None if self.estimate is None else _load(self.estimate)


def _load(ref):
  if not isinstance(ref, str):
    return ref
  module, attr = ref.split(":")
  return getattr(importlib.import_module(module), attr)


_REGISTRY = {}


def register(spec):
  """Adds (or replaces) a kind; returns the spec."""
  _REGISTRY[spec.name] = spec
  return spec


def unregister(name):
  _REGISTRY.pop(name, None)


@contextlib.contextmanager
def registered(spec):
  """`spec` registered inside a with block (e.g. a test's), the previous one after."""
  previous = _REGISTRY.get(spec.name)
  register(spec)
  try:
    yield spec
  finally:
    unregister(spec.name)
    if previous is not None:
      register(previous)


def names():
  return tuple(_REGISTRY)


def get(name):
  """The spec of `name`; ValueError listing the registered kinds otherwise."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown attention kind {name!r}; choose one of {names()}.")
  return _REGISTRY[name]


class _Names(collections.abc.Sequence):
  """Registered kind names (those whose spec passes `keep`), read at each use, so
  kinds registered after an importer bound the name are included."""

  def __init__(self, keep=lambda spec: True):
    self._keep = keep

  def _names(self):
    return tuple(name for name, spec in _REGISTRY.items() if self._keep(spec))

  def __getitem__(self, i):
    return self._names()[i]

  def __len__(self):
    return len(self._names())

  def __repr__(self):
    return repr(self._names())


class _Params(collections.abc.Mapping):
  """kind -> tuple of its parameter names (live, like _Names)."""

  def __getitem__(self, kind):
    return tuple(get(kind).params) if kind in _REGISTRY else {}[kind]

  def __iter__(self):
    return iter(names())

  def __len__(self):
    return len(_REGISTRY)


KINDS = _Names()
BLOCK_KINDS = _Names(lambda spec: bool(spec.estimators))  # kinds that tile into blocks
KIND_PARAMS = _Params()

from kernels import builtin_kinds  # noqa: E402,F401  (registers dense, block_sparse, ...)
