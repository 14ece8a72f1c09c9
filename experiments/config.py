"""Config helpers shared by the trainer and the sweeps: load, validate, override.

Configs are Python files exposing `get_config(arg)` (`lm.py:tiny`). Override
keys are dotted paths; an unknown key fails with the closest valid keys before
anything runs or is written.
"""
import difflib
import importlib.util
import json
import os

from absl import flags
from ml_collections import config_dict
from ml_collections.config_flags import config_path, tuple_parser

from experiments import logs


def load(spec):
  """'path/to/file.py:arg' -> ConfigDict."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"config file {path!r} does not exist (from --config={spec}).")
  module_spec = importlib.util.spec_from_file_location("_chinchax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def leaf_keys(cfg, prefix=""):
  """All dotted paths to leaves (ConfigDicts are descended, other values are leaves)."""
  keys = []
  for name, value in cfg.items():
    path = f"{prefix}{name}"
    if isinstance(value, config_dict.ConfigDict):
      keys.extend(leaf_keys(value, path + "."))
    else:
      keys.append(path)
  return keys


def unknown_key_message(key, valid):
  close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
  if not close:
    tail = key.rsplit(".", 1)[-1]
    close = [k for k in valid if k.rsplit(".", 1)[-1] == tail][:3]
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  return f"unknown config key {key!r}.{hint} Valid keys: {', '.join(sorted(valid))}."


def check_keys(cfg, keys):
  valid = leaf_keys(cfg)
  for key in keys:
    if key not in valid:
      raise ValueError(unknown_key_message(key, valid))


def override(cfg, overrides):
  """A copy of cfg with {dotted_key: value} applied (keys validated first)."""
  check_keys(cfg, overrides)
  out = cfg.copy_and_resolve_references()
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
      node = node[p]
    if isinstance(value, list):
      value = tuple(value)
    try:
      node[leaf] = value
    except TypeError as e:
      raise ValueError(f"config key {key!r}: cannot set {value!r}: {e}") from None
  return out


def argv_override_keys(argv, flag="config"):
  """Dotted keys of `--config.KEY=...` / `--config.KEY ...` arguments in argv."""
  keys = []
  for arg in argv:
    if arg.startswith(f"--{flag}."):
      keys.append(arg[len(flag) + 3:].split("=", 1)[0])
  return keys


# The parsers ml_collections' config flags apply to a field of each type (its
# _FIELD_TYPE_TO_PARSER), so a value passes here iff absl would accept it.
_PARSERS = {int: flags.IntegerParser(), float: flags.FloatParser(),
            bool: flags.BooleanParser(), str: flags.ArgumentParser(),
            tuple: tuple_parser.TupleParser()}
_EXAMPLES = {int: 1, float: 0.5, bool: True, str: "x", tuple: ("a", "b")}


def _flag_text(value):
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, tuple):
    return f'"{value!r}"'
  return str(value)


def check_override_values(cfg, argv, flag="config"):
  """Each `--config.KEY=VALUE` / `--config.KEY VALUE` in argv names a key of cfg and
  VALUE parses as that field's type (placeholders carry one), else ValueError with
  an example; run before absl parses the flags (whose errors are tracebacks)."""
  check_keys(cfg, argv_override_keys(argv, flag))
  prefix = f"--{flag}."
  for i, arg in enumerate(argv):
    if arg == "--":
      break  # absl reads no flags after it
    if not arg.startswith(prefix):
      continue
    key, eq, value = arg[len(prefix):].partition("=")
    field_type = config_path.get_type(key, cfg)
    if not eq:
      if field_type is bool:
        continue  # bare `--config.KEY` sets a bool; absl takes no value after it
      if i + 1 >= len(argv):
        raise ValueError(f"{prefix}{key}: no value given (e.g. {prefix}{key}=VALUE).")
      value = argv[i + 1]
    parser = _PARSERS.get(field_type)
    if parser is None:
      continue  # other types: ml_collections' own parser decides
    try:
      parser.parse(value)
    except ValueError as e:
      current = config_path.get_value(key, cfg)
      example = current if current not in (None, ()) else _EXAMPLES[field_type]
      why = f" ({e})" if field_type is tuple else ""
      raise ValueError(f"{prefix}{key}: {value!r} is not a valid {field_type.__name__}{why} "
                       f"(e.g. {prefix}{key}={_flag_text(example)}).") from None


def parse_flags(argv, flag="config"):
  """An absl `flags_parser` for CLIs with a config_flags `--config`: ml_collections
  runs the config file once and applies the --config.KEY overrides. A bad override
  fails there as a traceback naming only the last path part, so it is re-explained
  (the config re-read, on this path only) in one line naming the closest valid keys
  or an example value; exit 2, before anything is made."""
  try:
    rest = flags.FLAGS(argv)
    if flags.FLAGS[flag].value is not None:
      flags.FLAGS[flag].value.keys()  # a file that failed to load raises on first use
    return rest
  except (flags.Error, AttributeError, KeyError, OSError) as e:
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    spec = argv_config_spec(argv, flag)
    if spec:
      try:
        check_override_values(load(spec), argv, flag)
      except Exception as ours:  # noqa: BLE001 - any failure here is the message
        message = str(ours)
    logs.exit_bad_input(message)  # as logs.parse_flags, the other CLIs' parser


def argv_config_spec(argv, flag="config"):
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{flag}="):
      return arg.split("=", 1)[1]
    if arg == f"--{flag}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def to_dict(cfg):
  return json.loads(cfg.to_json_best_effort())


def to_json(cfg):
  return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def flatten(d, prefix=""):
  """{'a': {'b': 1}} -> {'a.b': 1} (tuples/lists are leaves)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def fingerprint(cfg_dict):
  """The config's identity: sha1 of its canonical JSON (sorted keys). A run
  directory records it in summary.json and in every checkpoint; sweep run ids end
  in its first 6 hex digits."""
  import hashlib
  return hashlib.sha1(json.dumps(cfg_dict, sort_keys=True).encode()).hexdigest()
