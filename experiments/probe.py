"""A trained run, opened for probing: its config, model and latest checkpoint, data
windows, and each attention layer's captured inputs (q, k, v, segment ids).

  run = probe.open_run("runs/small-dense")            # read-only: nothing is written
  for tokens_BL in probe.batches(run.cfg, "eval", 2):  # held-out windows
    layers = probe.capture(run, tokens_BL)           # [(q_BLHK, k_BLGK, v_BLGK, seg) | None]

Used by the threshold calibration (experiments.calibrate) and the recall benchmark
(benchmarks/sparse_recall.py). Bad input raises ValueError naming the fix.
"""
import dataclasses
import json
import logging as std_logging
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from ml_collections import config_dict

import parallel
from experiments import config as config_lib, data as data_lib, packing
from experiments import state as state_lib
from models import attention as attention_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = os.path.join(_ROOT, "experiments", "configs", "lm.py") + ":tiny"


@dataclasses.dataclass
class Run:
  path: str
  cfg: config_dict.ConfigDict
  step: int
  model: nnx.Module     # with capture set on every softmax attention layer
  capture_fn: object    # jitted (state, tokens, extra) -> per-layer inputs
  state: object


def _tuples(value):
  """JSON lists back to the tuples ConfigDict fields hold (pattern, mesh rules)."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def _merge(defaults, stored):
  out = dict(defaults)
  for key, value in stored.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      out[key] = _merge(out[key], value)
    else:
      out[key] = value
  return out


def load_config(run_dir):
  """The run's config.json over today's defaults (keys added since it was written
  take their defaults), as a ConfigDict."""
  path = os.path.join(run_dir, "config.json")
  if not os.path.isdir(run_dir):
    raise ValueError(f"run directory {run_dir!r} does not exist; pass --run=DIR of a run "
                     "trained with `python -m experiments.train`.")
  if not os.path.isfile(path):
    raise ValueError(f"{run_dir!r} has no config.json, so it is not a run directory; pass "
                     "--run=DIR of a run trained with `python -m experiments.train`.")
  with open(path) as f:
    try:
      stored = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); the run's config is damaged.") from None
  defaults = config_lib.to_dict(config_lib.load(DEFAULTS))
  return config_dict.ConfigDict(_tuples(_merge(defaults, stored)))


def _restore(run_dir, abstract_state):
  """(step, state) of the newest checkpoint that restores; read-only (a damaged step is
  skipped here, never moved)."""
  directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
  if not os.path.isdir(directory):
    raise ValueError(f"{run_dir!r} has no checkpoints/ yet; train it first (or wait for "
                     "its first checkpoint).")
  # Quiet orbax's notes on a read-only manager; restore the absl logger's own level
  # (often unset), not get_verbosity()'s effective one, or a caller's log capture breaks.
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.setLevel(std_logging.ERROR)
  manager, failures = None, []
  try:
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        read_only=True, create=False))
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
        return step, restored["state"]
      except Exception as e:  # noqa: BLE001 - any damage: try the previous step
        failures.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
  finally:
    if manager is not None:
      manager.close()
    absl_logger.setLevel(level)
  why = f" ({'; '.join(failures)})" if failures else ""
  raise ValueError(f"no checkpoint in {directory} restores{why}; train the run first "
                   "(or wait for its first checkpoint).")


def open_run(run_dir, seq_len=None):
  """Loads config + latest checkpoint; seq_len overrides the run's (data windows)."""
  cfg = load_config(run_dir)
  if seq_len:
    cfg.seq_len = int(seq_len)
  # One device: probing is inference on a few batches (and the shapes stay unsharded).
  one = {"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1}
  program = state_lib.build(cfg, parallel.make_mesh(one, jax.devices()[:1]))
  step, state = _restore(run_dir, program.abstract_state)
  model = nnx.merge(program.graphdef, nnx.State(state["params"]))
  for _, module in nnx.iter_modules(model):
    if isinstance(module, attention_lib.Attention):
      module.capture = True
  graphdef, model_state = nnx.split(model)

  @jax.jit
  def capture_fn(model_state, tokens_BL, extra):
    m = nnx.merge(graphdef, model_state)
    m(tokens_BL, **extra)
    return _per_layer(nnx.pop(m, attention_lib.Captured), cfg.model.depth)

  return Run(run_dir, cfg, int(step), model, capture_fn, model_state)


def _per_layer(captured, depth):
  """[(q, k, v, segment ids or None) or None] by block index."""
  layers = [None] * depth
  for path, value in nnx.to_flat_state(captured):
    index = next(p for p in path if isinstance(p, int))
    value = value.get_value() if hasattr(value, "get_value") else value.value
    layers[index] = value[0] if isinstance(value, tuple) and len(value) == 1 else value
  return layers


def batches(cfg, split, count, batch_size=None, skip=0):
  """`count` batches [B, seq_len + 1] of int32 windows: split "eval" reads the held-out
  stream in order (after `skip` batches); "train" takes evenly spaced training windows
  (a fixed set, independent of the run's shuffling)."""
  batch_size = batch_size or cfg.batch_size
  data = data_lib.build(cfg)
  source = data.eval_source if split == "eval" else data.train_source
  need = count * batch_size
  if split == "eval":
    first = skip * batch_size
    if first + need > len(source):
      raise ValueError(f"the held-out stream has {len(source)} windows of "
                       f"{cfg.seq_len + 1} tokens; {first + need} are needed. Use fewer "
                       "batches, a smaller batch or a shorter seq_len.")
    index = np.arange(first, first + need)
  else:
    if need > len(source):
      raise ValueError(f"the training stream has {len(source)} windows; {need} needed.")
    index = np.linspace(0, len(source) - 1, need).astype(int)
  windows = np.stack([data_lib.tokenize_bytes(source[int(i)]) for i in index])
  return [windows[b * batch_size:(b + 1) * batch_size] for b in range(count)]


def capture(run, window_BL):
  """Per layer (q_BLHK, k_BLGK, v_BLGK, segment_ids_BL or None) in float32, None for
  layers without softmax attention. window_BL: [B, L + 1] (the last token is a target)."""
  tokens_BL = jnp.asarray(window_BL[:, :-1])
  extra = packing.model_inputs(tokens_BL, packing.separator_id(run.cfg))
  layers = run.capture_fn(run.state, tokens_BL, extra)
  out = []
  for layer in layers:
    if layer is None:
      out.append(None)
      continue
    q, k, v, seg = layer
    out.append((q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), seg))
  return out


# Public: experiments.loop starts a fine-tuning run (config.init_from) from it.
restore_state = _restore
