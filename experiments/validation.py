"""Config checks that need no workdir: a bad value fails here, naming the key, the
value and a valid alternative, before anything is written.

Each valid set is imported from the module that uses it, so the checks cannot
drift from what the model, kernels and optimizer accept.
"""
import math
import os
import re

import kernels
from experiments import packing, teacher as teacher_lib
from experiments.optimizer import SCHEDULES
from kernels import estimators, flash_lists, padding, pv_skip, sparse
from kernels.kinds import (BLOCK_PARAMS, ESTIMATOR_PARAMS, FLASH_PARAMS, STAGE2_PARAMS,
                           TILE_PARAMS)
from kernels.linear_reference import FEATURE_MAPS
from kernels.sparse import ESTIMATORS
from models import thresholds
from models.attention import SPARSE_KINDS, kind_params, layer_kinds
from models.layout import PARAMETRIZATIONS, head_dim as head_dim_of
from models.parametrization import DEPTH_SCALINGS, check as check_parametrization
from models.transformer import DTYPES

WANDB_MODES = ("offline", "online", "disabled")


def _get(cfg, key):
  node = cfg
  for part in key.split("."):
    node = node[part]
  return node


def _at_least(cfg, low, *keys):
  for key in keys:
    value = _get(cfg, key)
    if value < low:
      raise ValueError(f"{key} {value!r} is too small; it must be >= {low}.")


def _positive(cfg, *keys):
  for key in keys:
    value = _get(cfg, key)
    if not value > 0:
      raise ValueError(f"{key} {value!r} is not positive; it must be > 0.")


def _in_range(cfg, key, low, high, *, open_low=False, open_high=False):
  value = _get(cfg, key)
  too_low = value <= low if open_low else value < low
  too_high = value >= high if open_high else value > high
  if too_low or too_high:
    interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    raise ValueError(f"{key} {value!r} is out of range; it must be in {interval}.")


def _one_of(cfg, key, choices):
  value = _get(cfg, key)
  if value not in choices:
    raise ValueError(f"{key} {value!r} is not valid; choose from {tuple(choices)}.")


def _choices(values, limit=8):
  """'[1, 2, 4, ...]': the first few of a list of valid values."""
  values = [str(v) for v in values]
  return "[" + ", ".join(values[:limit] + (["..."] if len(values) > limit else [])) + "]"


def _divisors(n):
  return [d for d in range(1, n + 1) if n % d == 0]


def _check_heads(m):
  if m.heads % m.kv_heads:  # also rejects kv_heads > heads
    raise ValueError(
        f"model.kv_heads {m.kv_heads} does not divide model.heads {m.heads} (grouped-query "
        f"attention shares each kv head among heads // kv_heads query heads); choose "
        f"kv_heads from {_choices(_divisors(m.heads))}.")
  if m.head_dim == 0:
    if m.width % m.heads:
      raise ValueError(
          f"model.width {m.width} is not divisible by model.heads {m.heads} (head_dim = "
          f"width // heads); choose heads from {_choices(_divisors(m.width))} or set "
          "model.head_dim.")
    if (m.width // m.heads) % 2:
      even = [h for h in _divisors(m.width) if (m.width // h) % 2 == 0]
      raise ValueError(
          f"head_dim = model.width {m.width} // model.heads {m.heads} = {m.width // m.heads} "
          f"is odd and RoPE rotates pairs of dims; choose heads from {_choices(even)} or "
          "set model.head_dim to an even number.")
  elif m.head_dim % 2:
    raise ValueError(f"model.head_dim {m.head_dim} is odd and RoPE rotates pairs of dims; "
                     f"use an even one, e.g. model.head_dim={m.head_dim + 1}.")


def _check_model(cfg):
  m = cfg.model
  _at_least(cfg, 1, "model.width", "model.depth", "model.heads", "model.kv_heads",
            "model.mlp_width", "model.vocab_size")
  _at_least(cfg, 0, "model.head_dim")
  _check_heads(m)
  _one_of(cfg, "model.parametrization", PARAMETRIZATIONS)
  if m.parametrization == "mup":
    _at_least(cfg, 1, "model.mup_base_width")
  _one_of(cfg, "model.depth_scaling", DEPTH_SCALINGS)
  if m.parametrization == "umup":
    check_parametrization(m)  # the umup_* keys (> 0) and depth_scaling "none"
  if m.depth_scaling != "none":
    _at_least(cfg, 1, "model.depth_base")
  _one_of(cfg, "model.compute_dtype", tuple(DTYPES))
  _positive(cfg, "model.rope_theta")


def _check_attention(cfg):
  kinds = layer_kinds(cfg)  # attention.kind / attention.pattern: its messages name the key
  _one_of(cfg, "attention.impl", kernels.IMPLS)
  _one_of(cfg, "attention.estimator", ESTIMATORS)
  _one_of(cfg, "attention.feature_map", FEATURE_MAPS)
  _at_least(cfg, 1, "attention.block_q", "attention.block_k", "attention.chunk_size")
  # Any seq_len: the kernels pad to the block multiple inside (kernels/padding.py).
  _check_tiles(cfg)
  _check_sparse_training(cfg, kinds)
  _check_estimators(cfg, kinds)


def _check_tiles(cfg):
  """Compute tiles: each a multiple of 8 and a multiple or a divisor of its block,
  at most flash_lists.MAX_SUB_BLOCKS blocks per tile; stage 2's forward runs on the
  blocks (its skip rule is per block)."""
  a = cfg.attention
  if not isinstance(a.get("fused_bwd", False), bool):
    raise ValueError(f"attention.fused_bwd {a.fused_bwd!r} must be True or False.")
  blocks = {"q": a.block_q, "k": a.block_k}
  fwd = {side: a.get(f"fwd_block_{side}") or blocks[side] for side in blocks}
  for phase, default in (("fwd", blocks), ("bwd", fwd)):
    tiles = {}
    for side, block in blocks.items():
      key, tile = f"{phase}_block_{side}", a.get(f"{phase}_block_{side}")
      if tile is not None and (not isinstance(tile, int) or tile < 8 or tile % 8
                               or (tile % block and block % tile)):
        raise ValueError(f"attention.{key} {tile!r} must be a multiple of 8 that is a "
                         f"multiple or a divisor of attention.block_{side} {block}; or "
                         "None (the block).")
      tiles[side] = tile or default[side]
    inside = math.prod(max(1, tiles[side] // blocks[side]) for side in blocks)
    if inside > flash_lists.MAX_SUB_BLOCKS:
      raise ValueError(f"attention.{phase}_block_q/_k ({tiles['q']}, {tiles['k']}) hold "
                       f"{inside} blocks ({a.block_q}, {a.block_k}) per tile; at most "
                       f"{flash_lists.MAX_SUB_BLOCKS}: use smaller tiles or larger blocks.")
  if fwd != blocks:
    stage2 = _stage2_setting(a)
    if stage2:
      raise ValueError(f"attention.fwd_block_q/_k ({fwd['q']}, {fwd['k']}) differ from the "
                       f"blocks ({a.block_q}, {a.block_k}), but stage 2 ({stage2}) decides "
                       "per mask block: unset the forward tiles or stage 2.")


def _stage2_setting(a):
  """The setting that turns SpargeAttn's stage 2 on, or None."""
  if a.get("pv_threshold") is not None:
    return "attention.pv_threshold"
  if a.get("thresholds"):
    for i, entry in enumerate(thresholds.load(a.thresholds)["layers"]):
      if entry is not None and entry["params"].get("pv_threshold") is not None:
        return f"attention.thresholds {a.thresholds!r}: layer {i}'s pv_threshold"
  return None


def _check_sparse_training(cfg, kinds):
  """Stage 2, calibrated thresholds, distillation and compute tiles act only on
  block kinds."""
  a, sparse = cfg.attention, [k for k in kinds if k in SPARSE_KINDS]
  if a.get("pv_threshold") is not None:
    try:
      pv_skip.check_pv_threshold(a.pv_threshold)  # its message says what the value means
    except ValueError as e:
      raise ValueError(_keyed(e)) from None
  distill = a.get("distill_weight", 0.0)
  if not (isinstance(distill, (int, float)) and math.isfinite(distill) and distill >= 0):
    raise ValueError(f"attention.distill_weight {distill!r} must be a finite number >= 0.")
  teacher = a.get("distill_teacher", "")
  if teacher:  # logit distillation: any student kind; its message names the key
    teacher_lib.config(cfg)
    if not os.path.isdir(os.path.join(teacher, "checkpoints")):
      raise ValueError(f"attention.distill_teacher {teacher!r} has no checkpoints/; name "
                       "a trained run (its latest params are the frozen teacher).")
  tiles = [f"attention.{key}" for key in TILE_PARAMS if a.get(key) is not None]
  for key, on in (("attention.distill_weight", distill > 0 and not teacher),
                  ("attention.pv_threshold", a.get("pv_threshold") is not None),
                  ("attention.thresholds", bool(a.get("thresholds"))),
                  (tiles[0] if tiles else "", bool(tiles))):
    if on and not sparse:
      raise ValueError(f"{key} acts on block-sparse layers (kinds {sorted(SPARSE_KINDS)}) "
                       f"but the model has none ({sorted(set(kinds))}); unset it or make "
                       "attention.kind / attention.pattern sparse.")
  if a.get("thresholds"):
    thresholds.check(a.thresholds, depth=cfg.model.depth, kinds_per_layer=kinds,
                     estimator=a.estimator, block_q=a.block_q, block_k=a.block_k)


# The kernels' messages name an estimator or stage 2 parameter bare (`topk`); its
# config key is attention.<name>.
_PARAM_NAMES = re.compile(r"(?<![\w.])(%s)\b" % "|".join(sorted(
    {name for table in (*ESTIMATOR_PARAMS.values(), STAGE2_PARAMS) for name in table},
    key=len, reverse=True)))


def _keyed(error):
  return _PARAM_NAMES.sub(r"attention.\1", str(error))


def _check_estimators(cfg, kinds):
  """Each block layer's estimator parameters as the kernels check them when the model
  is traced (kernels.sparse, kernels.estimators), here before anything is written and
  naming the config keys. A layer's calibrated params (attention.thresholds) are
  named by the file and layer they come from."""
  a, seen = cfg.attention, set()
  for layer, kind in enumerate(kinds):
    spec = kernels.kinds.get(kind)
    if not spec.estimators:
      continue
    calibrated = thresholds.layer_params(a.get("thresholds"), layer)
    params = {**kind_params(a, kind), **calibrated}
    # Which estimator runs: as kernels.sparse.estimate_block_sparse / _spectral pick it.
    estimator = (params.pop("estimator", None) or spec.params.get("estimator")
                 or spec.estimators[0])
    block_q, block_k = (params.get(n, spec.params.get(n, d)) for n, d in BLOCK_PARAMS.items())
    mask = {n: v for n, v in params.items()
            if n not in BLOCK_PARAMS and n not in FLASH_PARAMS and n not in STAGE2_PARAMS}
    key = (estimator, block_q, block_k, tuple(sorted(mask.items())), bool(calibrated))
    if key in seen:
      continue
    seen.add(key)
    head_dim = head_dim_of(cfg.model)
    try:
      # kernels.sparse's own check (private: it runs at trace time), so this cannot drift.
      sparse._check_params(estimator, head_dim, padding.num_blocks(cfg.seq_len, block_q),
                           padding.num_blocks(cfg.seq_len, block_k), block_q, block_k, mask)
      if estimator == "prism":
        estimators.band_dims(head_dim, mask.get("high_freq_dims"), mask.get("low_freq_dims"))
    except ValueError as e:
      if calibrated:
        raise ValueError(f"attention.thresholds={a.thresholds!r}: layer {layer}'s params "
                         f"with the config's: {e}") from None
      message = _keyed(e)
      if "estimator" in spec.params:  # the config picks it
        message = re.sub(r"(?<![\w.-])estimator (?=')", "attention.estimator ", message)
      raise ValueError(f"{message.rstrip('.')} ({kind} layers).") from None


def _check_packing(cfg):
  if packing.resolve(cfg.data) != "segments":
    return
  unsupported = sorted({k for k in layer_kinds(cfg) if not kernels.kinds.get(k).segments})
  if unsupported:
    raise ValueError(
        f"data.packing {cfg.data.packing!r} masks attention at document boundaries, but "
        f"attention kind(s) {unsupported} do not support segment ids (KindSpec.segments); "
        "set --config.data.packing=concat.")


def _check_optimizer(cfg):
  _positive(cfg, "optimizer.lr", "optimizer.grad_clip")
  _one_of(cfg, "optimizer.schedule", SCHEDULES)
  _at_least(cfg, 0, "optimizer.warmup_steps", "optimizer.weight_decay", "optimizer.eps")
  _in_range(cfg, "optimizer.min_lr_ratio", 0, 1)
  _in_range(cfg, "optimizer.decay_fraction", 0, 1, open_low=True)
  _in_range(cfg, "optimizer.b1", 0, 1, open_high=True)
  _in_range(cfg, "optimizer.b2", 0, 1, open_high=True)


def validate(cfg):
  _at_least(cfg, 1, "steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
            "eval_batches", "keep_checkpoints")
  _at_least(cfg, 2, "seq_len")  # windows are seq_len + 1 tokens: inputs and shifted targets
  _check_model(cfg)
  _check_attention(cfg)
  _check_packing(cfg)
  _check_optimizer(cfg)
  _in_range(cfg, "data.eval_fraction", 0, 1, open_low=True, open_high=True)
  _at_least(cfg, 0, "data.max_bytes")
  _one_of(cfg, "wandb.mode", WANDB_MODES)
  source = cfg.get("init_from", "")
  if source and not os.path.isdir(os.path.join(source, "checkpoints")):
    raise ValueError(f"init_from {source!r} is not a run directory with checkpoints/; "
                     "name a trained run (its latest params start this run) or set ''.")


def check_workdir(path):
  """A run directory that exists as a directory, or can be created: fails before
  anything is written, naming the path that is in the way."""
  if not path:
    raise ValueError("--workdir is empty; pass a directory (it is created if missing).")
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"--workdir {path} is a file; pass a directory (it is created if missing).")
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f"--workdir {path} cannot be created: {existing} is a file; "
                     "pass a directory under an existing directory.")
  if not os.access(existing, os.W_OK | os.X_OK):
    where = "" if existing == os.path.abspath(path) else " cannot be created"
    raise ValueError(f"--workdir {path}{where}: {existing} is not writable; pass a directory "
                     "you can write to.")
