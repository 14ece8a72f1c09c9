"""Which config a run directory belongs to, so a relaunch never mixes two.

config.json is the readable record; the durable identity is the config's
fingerprint, kept also in summary.json and in every checkpoint (with the whole
config). A relaunch with a different config is refused; keys added to the config
since the run was written count as equal at their defaults (so an upgrade does not
orphan old runs). When config.json is
missing or unreadable but the run has trained (checkpoints exist), the
fingerprint from the checkpoints (else summary.json) decides: the same config
resumes and config.json is rewritten; a different one, or no record at all, is
refused. A damaged config.json is moved aside, never overwritten.
"""
import importlib.metadata
import os
import platform
import time

from experiments import config as config_lib, metrics

CONFIG = "config.json"
DISTRIBUTIONS = {"orbax": "orbax-checkpoint"}  # short name -> installed distribution


def library_versions(names):
  """{"python": ..., name: installed version or None}: the provenance records carry."""
  out = {"python": platform.python_version()}
  for name in names:
    try:
      out[name] = importlib.metadata.version(DISTRIBUTIONS.get(name, name))
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


class ConfigMismatch(ValueError):
  """The workdir holds a run of another config (or one that cannot be verified)."""


_ABSENT = object()


def _defaults():
  from experiments.configs import lm  # here: the config file imports parallel
  return config_lib.flatten(config_lib.to_dict(lm.base()))


def differences(old, new):
  """Keys whose values differ. A key the old record lacks and the new config holds at
  today's default is no difference: it was added to the config since the run was
  written, and a new key's default keeps the old behaviour."""
  old_flat, new_flat = config_lib.flatten(old), config_lib.flatten(new)
  defaults = _defaults()
  return sorted(k for k in set(old_flat) | set(new_flat)
                if old_flat.get(k, _ABSENT) != new_flat.get(k, _ABSENT)
                and not (k not in old_flat and new_flat[k] == defaults.get(k, _ABSENT)))


def _refuse(workdir, why):
  raise ConfigMismatch(f"{workdir} {why}; use a new --workdir, or relaunch with the config "
                       "this run was started with.")


def check(workdir, cfg_dict, stored, previous, *, trained, write):
  """Raises ConfigMismatch, or returns a note (str) when config.json was restored.

  stored: the newest checkpoint's {"fingerprint", "config"} record (or None);
  previous: the old summary.json dict ({} if none); trained: checkpoints exist
  (without them a relaunch starts from step 0, so nothing can mix); write: this
  process writes."""
  fingerprint = config_lib.fingerprint(cfg_dict)
  path = os.path.join(workdir, CONFIG)
  try:
    old = metrics.read_json_object(path)
    problem = None
  except FileNotFoundError:
    old, problem = None, "missing"
  except ValueError as e:
    old, problem = None, f"unreadable ({e})"
  if old is not None:
    diff = differences(old, cfg_dict)
    if diff:
      _refuse(workdir, f"holds a run with a different config (keys {diff})")
    return None
  known = (stored or {}).get("fingerprint") or previous.get("config_hash")
  if trained and known is None:
    _refuse(workdir, f"has trained state but its {CONFIG} is {problem} and nothing else "
            "records which config it ran (checkpoints from before config fingerprints)")
  # The checkpoint's own config, where it has one, decides by content (as config.json
  # would); the fingerprint alone cannot tell a changed key from an added one.
  stored_config = (stored or {}).get("config")
  differs = (differences(stored_config, cfg_dict) if stored_config is not None
             else known is not None and known != fingerprint)
  if trained and known is not None and differs:
    keys = f" (keys {differs})" if stored_config is not None else ""
    _refuse(workdir, f"has {CONFIG} {problem}, and its checkpoints were trained with a "
            f"different config{keys}")
  if not write:
    return None
  note = None
  if problem != "missing":
    aside = f"{path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(path, aside)
    note = f"{path}: {problem}; moved to {aside}"
  metrics.write_json_atomic(path, cfg_dict)
  if trained:
    same = ("whose fingerprint matches the run's checkpoints" if known == fingerprint else
            "which matches the run's checkpoints (keys added since at their defaults)")
    note = (note + "; " if note else f"{path} was missing; ") + (
        f"rewritten from this config, {same}")
  return note
