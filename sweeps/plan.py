"""Resolves a sweep definition into runs: ids, resolved configs, trainer commands, sizes.

Every override key is checked against the base config before anything runs. A
run's id is `NAME-TAG-HASH`, HASH a short digest of the resolved config, so
defining the same run again maps to the same run directory (and `adopt` keeps a
store's directories across upgrades that add config keys). Imports no JAX.
"""
import dataclasses
import importlib.util
import os
import re
import sys

from experiments import config as config_lib
from models import flops
from sweeps import REPO, define  # noqa: F401  (plan.REPO: the launchers' working dir)


@dataclasses.dataclass
class Run:
  run_id: str
  config_hash: str     # the resolved config's digest (the id's suffix)
  overrides: dict      # every key the trainer is given (base + run + derived), resolved
  cfg: object          # the resolved ConfigDict
  params: int
  tokens: int
  flops: float


def load_definition(path, spec=None):
  """The module of a sweep definition file (sweeps/defs/NAME.py, experiments/reproduce/NAME.py),
  executed from its path (definitions are files, not packages); spec names it in errors."""
  if not os.path.isfile(path) and os.path.isfile(os.path.join(REPO, path)):
    path = os.path.join(REPO, path)
  if not os.path.isfile(path):
    raise ValueError(f"sweep file {path!r} does not exist (from --sweep={spec or path}); "
                     f"definitions live in {os.path.join(REPO, 'sweeps', 'defs')} and "
                     f"{os.path.join(REPO, 'experiments', 'reproduce')}.")
  module_spec = importlib.util.spec_from_file_location("_chinchax_sweep", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} has no get_sweep(arg=None) function.")
  return module


def load_sweep(spec):
  """'sweeps/defs/NAME.py[:arg]' -> Sweep (the file's get_sweep(arg))."""
  path, _, arg = spec.partition(":")
  sweep = load_definition(path, spec).get_sweep(arg or None)
  if not isinstance(sweep, define.Sweep):
    raise ValueError(f"{path}: get_sweep must return sweeps.define.Sweep, got {type(sweep)}.")
  return sweep


def config_path(sweep):
  """The sweep's --config spec with an absolute file path (runs start from the repo root)."""
  path, sep, arg = sweep.config.partition(":")
  if not os.path.isabs(path):
    path = os.path.join(REPO, path)
  return path + sep + arg


def config_hash(cfg):
  return config_lib.fingerprint(config_lib.to_dict(cfg))[:6]


def _plain(overrides):
  return {k: v for k, v in overrides.items() if k != define.TAG}


def validate(sweep, base_cfg):
  """Unknown keys in any override dict fail here, naming the run and the closest keys."""
  for where, overrides in [("base", sweep.base)] + [
      (f"run {i}", o) for i, o in enumerate(sweep.runs)]:
    try:
      config_lib.check_keys(base_cfg, _plain(overrides))
    except ValueError as e:
      raise ValueError(f"sweep {sweep.name!r}, {where} ({overrides}): {e}") from None


def resolve(sweep, base_cfg, overrides):
  """One override dict -> Run (plain overrides first, then Derived values)."""
  merged = {**_plain(sweep.base), **_plain(overrides)}  # a run's own value wins
  plain = {k: v for k, v in merged.items() if not isinstance(v, define.Derived)}
  derived = {k: v for k, v in merged.items() if isinstance(v, define.Derived)}
  cfg = config_lib.override(base_cfg, plain)
  tags = []
  for key, value in derived.items():
    tags.append(value.tag(cfg))
    plain[key] = value.value(cfg)
    cfg = config_lib.override(cfg, {key: plain[key]})
  tag = "-".join(t for t in tags + [define.auto_tag(overrides)] if t)
  run_id = define.safe_id(f"{sweep.name}-{tag}" if tag else sweep.name)
  digest = config_hash(cfg)
  tokens = cfg.steps * cfg.batch_size * cfg.seq_len
  return Run(run_id=f"{run_id}-{digest}", config_hash=digest, overrides=plain, cfg=cfg,
             params=flops.count_params(cfg)["total"], tokens=tokens,
             flops=tokens * flops.flops_per_token(cfg))


def plan(sweep):
  """All runs of the sweep, validated; duplicate runs (same resolved config) fail."""
  base_cfg = config_lib.load(config_path(sweep))
  validate(sweep, base_cfg)
  runs, seen = [], {}
  for i, overrides in enumerate(sweep.runs):
    run = resolve(sweep, base_cfg, overrides)
    if run.config_hash in seen:
      raise ValueError(f"sweep {sweep.name!r}: runs {seen[run.config_hash]} and {i} resolve "
                       f"to the same config ({run.run_id}); remove one of them.")
    seen[run.config_hash] = i
    runs.append(run)
  return runs


def _progress(run_dir):
  """Sort key: a finished run first, then the one with the most steps."""
  from experiments import metrics
  summary = metrics.read_json(os.path.join(run_dir, metrics.SUMMARY)) or {}
  return (summary.get("status") != "done", -(summary.get("step") or 0), run_dir)


def adopt(runs, store):
  """The runs, each with the id of the store's directory that already holds it.

  A run's hash covers the whole config, so a chinchax upgrade that adds config keys
  changes it. A run whose directory is absent takes over a `NAME-TAG-<old hash>`
  directory of the store (a finished one first, then the most steps) whose config.json
  equals its config, keys added since at their defaults (the trainer's own identity
  rule): relaunching an old store resumes and skips its runs instead of starting them
  again."""
  if not os.path.isdir(store):
    return runs
  names, planned = set(os.listdir(store)), {r.run_id for r in runs}
  out = []
  for run in runs:
    stem = run.run_id[:-len(run.config_hash) - 1]
    pattern = re.compile(re.escape(stem) + r"-[0-9a-f]{6}")
    old = sorted((n for n in names - planned if pattern.fullmatch(n)),
                 key=lambda n: _progress(os.path.join(store, n)))
    if run.run_id not in names and old:
      from experiments import identity, metrics
      cfg_dict = config_lib.to_dict(run.cfg)
      for name in old:
        try:
          recorded = metrics.read_json_object(os.path.join(store, name, identity.CONFIG))
        except (OSError, ValueError):
          continue
        if not identity.differences(recorded, cfg_dict):
          run = dataclasses.replace(run, run_id=name, config_hash=name[len(stem) + 1:])
          names.discard(name)
          break
    out.append(run)
  return out


def flag_value(value):
  """A value as ml_collections' config flags parse it back."""
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  if isinstance(value, float):
    return repr(value)
  return str(value)


def train_command(sweep, run, workdir, python=sys.executable):
  return [python, "-m", "experiments.train", f"--config={config_path(sweep)}",
          f"--workdir={workdir}",
          *[f"--config.{k}={flag_value(v)}" for k, v in run.overrides.items()]]


def format_plan(runs):
  lines = [f"{'run id':<48} {'params':>10} {'tokens':>10} {'FLOPs':>10} {'steps':>7}"]
  for r in runs:
    lines.append(f"{r.run_id:<48} {r.params:>10.3g} {r.tokens:>10.3g} {r.flops:>10.3g} "
                 f"{r.cfg.steps:>7}")
  total = sum(r.flops for r in runs)
  span = define.log10_span([r.flops for r in runs])
  lines.append(f"{len(runs)} runs, {total:.3g} training FLOPs in total, "
               f"spanning {span:.2f} decades of FLOPs")
  return "\n".join(lines)
