"""The run directory's records: metrics.jsonl (log of record), summary.json, wandb mirror."""
import hashlib
import json
import math
import os
import tempfile

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
NONFINITE = "nonfinite"  # records: which null fields were NaN/inf


def _plain(obj, path, nonfinite):
  """obj with numpy scalars/arrays as Python values and NaN/inf as None; the dotted
  path of each non-finite float is recorded in `nonfinite` ("nan", "inf", "-inf")."""
  if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
    obj = obj.tolist()  # numpy scalars and arrays
  if isinstance(obj, float):
    if math.isfinite(obj):
      return obj
    nonfinite[path] = "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return None
  if isinstance(obj, dict):
    return {k: _plain(v, f"{path}.{k}" if path else str(k), nonfinite) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_plain(v, f"{path}.{i}" if path else str(i), nonfinite) for i, v in enumerate(obj)]
  return obj


def to_strict(obj):
  """The one encoding of every record the project writes: standard JSON (strict
  readers, jq, JavaScript), NaN/inf stored as null, and a top-level "nonfinite"
  {dotted key: "nan"|"inf"|"-inf"} saying which nulls were non-finite numbers."""
  nonfinite = {}
  out = _plain(obj, "", nonfinite)
  if isinstance(out, dict):
    out.pop(NONFINITE, None)
    if nonfinite:
      out[NONFINITE] = nonfinite
  return out


def dumps(obj, **kwargs):
  return json.dumps(to_strict(obj), allow_nan=False, **kwargs)


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_text_atomic(path, text):
  """Write to a temp file in the same directory, then rename over `path`. mkstemp
  creates 0600; the file gets the mode open() would give (0666 less the umask),
  so a shared store stays readable to colleagues."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  try:
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json_atomic(path, obj):
  write_text_atomic(path, dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path, default=None):
  """The JSON object at path, or default when it is missing, unreadable or not an object."""
  try:
    return read_json_object(path)
  except (FileNotFoundError, ValueError):
    return default


def read_json_object(path):
  """Raises FileNotFoundError, or ValueError saying what is wrong with the file."""
  try:
    with open(path) as f:
      obj = json.load(f)
  except FileNotFoundError:
    raise
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not readable JSON ({e})") from None
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a JSON {type(obj).__name__}, not an object")
  return obj


def read_metrics(path):
  """Parsed metrics lines; malformed/truncated lines are skipped and counted."""
  records, bad = [], 0
  if not os.path.exists(path):
    return records, bad
  with open(path, errors="replace") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        if isinstance(record, dict) and "step" in record:
          records.append(record)
          continue
      except json.JSONDecodeError:
        pass
      bad += 1
  return records, bad


def truncate_metrics(path, last_step):
  """Keeps the lines with step <= last_step (a resumed run rewrites the rest)."""
  records, _ = read_metrics(path)
  kept = [r for r in records if r["step"] <= last_step]
  write_text_atomic(path, "".join(dumps(r) + "\n" for r in kept))


WANDB_TRUE = ("1", "true", "yes")


def wandb_init_args(wandb_cfg, workdir, config=None, environ=None):
  """wandb.init keyword arguments, or None when wandb is off.

  Precedence: wandb's standard environment variables (WANDB_MODE, WANDB_DISABLED,
  WANDB_PROJECT, WANDB_ENTITY, WANDB_DIR, WANDB_RUN_ID, WANDB_NAME) over the
  config's `wandb.*` defaults. wandb.init's own arguments beat the environment,
  so a key is passed only when its variable is unset."""
  env = os.environ if environ is None else environ
  mode = env.get("WANDB_MODE") or wandb_cfg.mode
  if env.get("WANDB_DISABLED", "").lower() in WANDB_TRUE or mode == "disabled":
    return None
  workdir = os.path.abspath(workdir)
  defaults = {
      "project": ("WANDB_PROJECT", wandb_cfg.project),
      "entity": ("WANDB_ENTITY", wandb_cfg.entity),
      "dir": ("WANDB_DIR", workdir),
      # One wandb run per run directory, resumed across relaunches.
      "id": ("WANDB_RUN_ID", "chx-" + hashlib.sha1(workdir.encode()).hexdigest()[:10]),
      "name": ("WANDB_NAME", os.path.basename(workdir)),
  }
  args = {key: value for key, (var, value) in defaults.items() if not env.get(var)}
  return {**args, "mode": mode, "config": config, "resume": "allow"}


class MetricsWriter:
  """Appends one JSON line per logged step and mirrors it to wandb."""

  def __init__(self, workdir, *, enabled, wandb_cfg=None, config=None):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS)
    self._wandb = None
    self._file = open(self.path, "a") if enabled else None
    init_args = wandb_init_args(wandb_cfg, workdir, config) if wandb_cfg is not None else None
    if enabled and init_args is not None:
      os.environ.setdefault("WANDB_SILENT", "true")
      import wandb
      self._wandb = wandb.init(**init_args)

  def write(self, record):
    if not self.enabled:
      return
    self._file.write(dumps(record) + "\n")
    self._file.flush()
    if self._wandb is not None:
      self._wandb.log({k: v for k, v in record.items() if k not in ("step", NONFINITE)},
                      step=record["step"])

  def close(self):
    if self._file is not None:
      self._file.close()
    if self._wandb is not None:
      self._wandb.finish()

