"""The threshold search behind experiments.calibrate: options and their checks, the
grids, and the sweeps that score every setting from per-tile statistics."""
import dataclasses
import math
import os

from absl import logging
import jax
import jax.numpy as jnp

from experiments import block_stats, probe
from kernels import kinds
from models import layout

KINDS = {"block_sparse": "sparge", "spectral": "prism"}  # calibratable kind -> estimator
PARAM_KEYS = {"sparge": ("topk", "topp", "sim_threshold"), "prism": ("topp", "high_freq_dims")}
SPARGE_TOPK = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SPARGE_TOPP = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
SPARGE_SIM = (None, 0.5, 0.8)
PRISM_TOPP = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995, 1.0)
LAMBDAS = (-0.25, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0, -8.0, -12.0, -16.0)  # most aggressive first
DEFAULT_TOPK = 0.35  # SpargeAttn's maintainers' recommendation when a config has none


class TargetNotMet(ValueError):
  """Some layer meets the target on held-out data at no grid setting (exit 2)."""


@dataclasses.dataclass
class Options:
  run: str
  kind: str = "block_sparse"
  target_error: float = 0.01
  calib_batches: int = 2
  heldout_batches: int = 2
  seq_len: int = None
  batch_size: int = None
  block_q: int = None
  block_k: int = None
  pv: bool = False
  out: str = None
  grid: tuple = None   # settings to search (default: grid(estimator, head_dim))


def _has_checkpoint(run_dir):
  directory = os.path.join(run_dir, "checkpoints")
  return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def check(opts):
  """(opts with defaults filled, estimator, target layers); ValueError naming the fix."""
  t = opts.target_error
  if not isinstance(t, (int, float)) or math.isnan(t) or not 0 < t < 1:
    raise ValueError(f"--target_error must be in (0, 1), e.g. 0.01 (1% relative L1 error); "
                     f"got {t!r}.")
  if opts.kind not in KINDS:
    known = f"; {opts.kind!r} is a block kind without a calibratable estimator" if (
        opts.kind in kinds.BLOCK_KINDS) else f"; {opts.kind!r} is not a block kind"
    raise ValueError(f"--kind must be one of {sorted(KINDS)} (estimators "
                     f"{sorted(KINDS.values())}){known}.")
  for name in ("calib_batches", "heldout_batches"):
    if getattr(opts, name) < 1:
      raise ValueError(f"--{name} must be >= 1; got {getattr(opts, name)}.")
  cfg = probe.load_config(opts.run)
  if not _has_checkpoint(opts.run):
    raise ValueError(f"{opts.run!r} has no checkpoint yet; train it first (python -m "
                     "experiments.train ...) or wait for its first checkpoint.")
  block_q = opts.block_q or cfg.attention.get("block_q") or 64
  block_k = opts.block_k or cfg.attention.get("block_k") or 64
  seq_len = opts.seq_len or cfg.seq_len
  for name, block in (("block_q", block_q), ("block_k", block_k)):
    if block <= 0 or seq_len % block:
      raise ValueError(f"--{name}={block} must divide seq_len {seq_len}; pass --{name} "
                       "(or --seq_len) so that it does.")
  layers = target_layers(cfg, opts.kind)
  if not layers:
    raise ValueError(f"{opts.run!r} has no {opts.kind} or dense softmax attention layer "
                     f"(layers: {layout.pattern_kinds(cfg)}); nothing to calibrate.")
  opts = dataclasses.replace(opts, block_q=block_q, block_k=block_k, seq_len=seq_len)
  return opts, KINDS[opts.kind], layers


def target_layers(cfg, kind):
  """The layers of `kind`; in a run without any, every dense softmax layer (a dense
  model converted to the sparse kind). Other layers stay as they are (null)."""
  layer_kinds = layout.pattern_kinds(cfg)
  own = [i for i, k in enumerate(layer_kinds) if k == kind]
  if own:
    return own
  return [i for i, k in enumerate(layer_kinds)
          if k in kinds.KINDS and kinds.get(k).layer == "attention"
          and not kinds.get(k).estimators]


def default_params(cfg, estimator):
  """The uncalibrated setting: the config's values, else the kind's defaults."""
  a = cfg.attention
  params = {key: a.get(key) for key in PARAM_KEYS[estimator]}
  if estimator == "sparge" and params["topk"] is None and params["topp"] is None:
    params["topk"] = DEFAULT_TOPK
  if estimator == "prism" and params["topp"] is None:
    params["topp"] = kinds.ESTIMATOR_PARAMS["prism"]["topp"]
  params["pv_threshold"] = a.get("pv_threshold")
  return params


def grid(estimator, head_dim):
  """Every setting searched: dicts over PARAM_KEYS[estimator] + pv_threshold (None)."""
  points = []
  if estimator == "sparge":
    fractions = [(k, None) for k in SPARGE_TOPK] + [(None, p) for p in SPARGE_TOPP]
    for topk, topp in fractions:
      for sim in SPARGE_SIM:
        if topk == 1.0 and sim is not None:
          continue  # already keeps every block
        points.append({"topk": topk, "topp": topp, "sim_threshold": sim})
  else:
    bands = [None] + [hf for hf in (head_dim // 4, 3 * head_dim // 4)
                      if hf % 2 == 0 and 0 < hf < head_dim and hf != head_dim // 2]
    points = [{"topp": p, "high_freq_dims": hf} for p in PRISM_TOPP for hf in bands
              if not (p >= 1.0 and hf is not None)]
  return tuple({**p, "pv_threshold": None} for p in points)


def summarize(rows):
  """Per-batch sums -> {"error", "density", "skipped"} over all batches."""
  total = lambda name: sum(float(r[name]) for r in rows)  # noqa: E731
  return {"error": total("l1") / max(total("dense"), 1e-30),
          "density": total("density") / len(rows),
          "skipped": total("skipped") / max(total("kept"), 1.0)}


def mask_key(params):
  """A setting's estimator part, hashable (stage 2 does not change the mask)."""
  return tuple((n, v) for n, v in params.items() if n != "pv_threshold")


def _plan(layer_settings, keys):
  """(index [S] into keys, pv [S]) of one layer's settings."""
  index = jnp.array([keys.index(mask_key(p)) for p in layer_settings], jnp.int32)
  pv = jnp.array([-jnp.inf if p.get("pv_threshold") is None else p["pv_threshold"]
                  for p in layer_settings], jnp.float32)
  return index, pv


def all_keys(*settings):
  """The distinct mask keys of these settings, in order: estimated together for every
  layer and batch, so the estimator compiles once per run."""
  return tuple(dict.fromkeys(mask_key(p) for p in settings))


def layer_masks(layer_inputs, estimator, keys, opts):
  """(masks [U, B, H, nQ, nK], densities [U]) of one layer's inputs for all keys."""
  q, k, _, seg = layer_inputs
  return block_stats.estimate_masks(q, k, seg, estimator=estimator, settings=keys,
                                    block_q=opts.block_q, block_k=opts.block_k)


def sweep(run, windows, settings, estimator, opts, keys):
  """{layer: [summary per setting]}; settings: {layer: [params]} whose masks are among
  keys. Per batch and layer: one capture, one tile-statistics pass, one estimate."""
  plans = {i: _plan(s, keys) for i, s in settings.items()}
  rows = {i: [] for i in settings}
  for window in windows:
    captured = probe.capture(run, window)
    for i, (index, pv) in plans.items():
      q, k, v, seg = captured[i]
      stats = block_stats.tile_stats(q, k, v, seg, block_q=opts.block_q, block_k=opts.block_k)
      masks, density = layer_masks(captured[i], estimator, keys, opts)
      e = block_stats.errors_many(stats, masks, index, pv)
      rows[i].append({**e, "dense": stats.l1_dense, "density": density[index]})
    rows = jax.device_get(rows)
  out = {}
  for i, batch_rows in rows.items():
    out[i] = [summarize([{n: r[n] if n == "dense" else r[n][j] for n in r}
                         for r in batch_rows]) for j in range(len(settings[i]))]
  return out


def _active(params):
  return sum(v is not None for v in params.values())


def _first_passing(order, held, target):
  """The first index of `order` whose held-out error meets the target, or None."""
  return next((j for j in order if held[j]["error"] <= target), None)


def pick_masks(run, calib_windows, heldout_windows, layers, estimator, grid_points, opts,
               keys):
  """({layer: pick}, failed layers): per layer the lowest-density setting within the
  target on the calibration batches that the held-out batches confirm."""
  settings = {i: list(grid_points) for i in layers}
  calib = sweep(run, calib_windows, settings, estimator, opts, keys)
  held = sweep(run, heldout_windows, settings, estimator, opts, keys)
  chosen, failed = {}, []
  for i in layers:
    c, h = calib[i], held[i]
    # Ties (e.g. several settings that keep every block): the lower error, then the
    # setting with fewer active thresholds.
    order = sorted((j for j in range(len(c)) if c[j]["error"] <= opts.target_error),
                   key=lambda j: (c[j]["density"], c[j]["error"], _active(grid_points[j])))
    j = _first_passing(order, h, opts.target_error)
    if j is None:
      failed.append(i)
      j = min(range(len(c)), key=lambda j: h[j]["error"])
    elif order and j != order[0]:
      logging.info(f"layer {i}: calibration pick {grid_points[order[0]]} misses the target "
                   f"on held-out data ({h[order[0]]['error']:.4f}); took the next denser "
                   f"setting that meets it, {grid_points[j]}")
    chosen[i] = {"params": dict(grid_points[j]), "calib_error": c[j]["error"],
                 "calib_density": c[j]["density"]}
  return chosen, failed


def pick_lambdas(run, calib_windows, heldout_windows, layers, estimator, chosen, opts, keys):
  """Stage 2: per layer the most aggressive lambda (closest to 0) that keeps the chosen
  mask within the target on calibration and held-out batches; none keeps it off."""
  settings = {i: [{**chosen[i]["params"], "pv_threshold": lam} for lam in LAMBDAS]
              for i in layers}
  calib = sweep(run, calib_windows, settings, estimator, opts, keys)
  held = sweep(run, heldout_windows, settings, estimator, opts, keys)
  out = {}
  for i in layers:
    order = [j for j, s in enumerate(calib[i]) if s["error"] <= opts.target_error]
    j = _first_passing(order, held[i], opts.target_error)
    if j is None:
      logging.info(f"layer {i}: no lambda in {LAMBDAS} keeps the error within the target; "
                   "stage 2 stays off")
      out[i] = chosen[i]
      continue
    out[i] = {**chosen[i], "params": settings[i][j], "calib_error": calib[i][j]["error"]}
  return out
