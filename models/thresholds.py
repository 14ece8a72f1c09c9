"""Per-layer sparse-attention parameters calibrated by `python -m experiments.calibrate`.

`attention.thresholds = PATH` names a JSON file (format "chinchax.thresholds/1"):
{"kind", "estimator", "block_q", "block_k", "target_error", ...,
 "layers": [null | {"layer": i, "params": {"topk": ..., "pv_threshold": ...}, ...}]}.
Layer i of a block kind takes layers[i]["params"] over the config's parameters.
No JAX import: config validation reads it too.
"""
import functools
import json
import os

FORMAT = "chinchax.thresholds/1"
# What a calibration may set per layer: estimator thresholds and stage 2, never blocks.
LAYER_KEYS = ("topk", "topp", "sim_threshold", "high_freq_dims", "low_freq_dims",
              "max_blocks", "pv_threshold")


def _fail(path, why):
  raise ValueError(f"attention.thresholds={path!r}: {why}. Write it with "
                   "`python -m experiments.calibrate --run=RUN`, or set "
                   "--config.attention.thresholds='' to use the config's parameters.")


@functools.lru_cache(maxsize=8)
def _read(path, mtime):
  del mtime  # part of the cache key: a rewritten file is read again
  with open(path) as f:
    return json.load(f)


def load(path):
  """The validated file as a dict (cached per path and modification time)."""
  if not os.path.isfile(path):
    _fail(path, "no such file")
  try:
    data = _read(path, os.path.getmtime(path))
  except (OSError, json.JSONDecodeError) as e:
    _fail(path, f"not readable JSON ({e})")
  if not isinstance(data, dict) or data.get("format") != FORMAT:
    _fail(path, f"not a {FORMAT} file")
  layers = data.get("layers")
  if not isinstance(layers, list):
    _fail(path, "it has no 'layers' list")
  for i, entry in enumerate(layers):
    if entry is None:
      continue
    params = entry.get("params") if isinstance(entry, dict) else None
    if not isinstance(params, dict) or set(params) - set(LAYER_KEYS):
      _fail(path, f"layer {i}'s 'params' must be a dict of {LAYER_KEYS}; got {params!r}")
  return data


def check(path, *, depth, kinds_per_layer, estimator, block_q, block_k):
  """Raises ValueError unless the file fits this model (config validation)."""
  data = load(path)
  if len(data["layers"]) != depth:
    _fail(path, f"it has {len(data['layers'])} layers; the model has depth {depth}")
  for i, (entry, kind) in enumerate(zip(data["layers"], kinds_per_layer)):
    if entry is None:
      continue
    if kind != data.get("kind"):
      _fail(path, f"it was calibrated for kind {data.get('kind')!r}; layer {i} is {kind!r}")
  if data.get("kind") == "block_sparse" and data.get("estimator") != estimator:
    _fail(path, f"it was calibrated for estimator {data.get('estimator')!r}; the config "
                f"has attention.estimator={estimator!r}")
  if (data.get("block_q"), data.get("block_k")) != (block_q, block_k):
    _fail(path, f"it was calibrated with blocks ({data.get('block_q')}, "
                f"{data.get('block_k')}); the config has ({block_q}, {block_k})")


def layer_params(path, layer):
  """The calibrated params of `layer` ({} when no file or the layer has none)."""
  if not path:
    return {}
  layers = load(path)["layers"]
  entry = layers[layer] if layer < len(layers) else None
  return {} if entry is None else dict(entry["params"])
