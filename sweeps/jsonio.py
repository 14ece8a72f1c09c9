"""Standard-JSON output written atomically (fit.json, prescriptions)."""
import json
import math
import os
import tempfile


def strict_json(obj):
  """NaN/inf -> null, so fit.json is standard JSON (readable by jq, JavaScript, ...)."""
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: strict_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [strict_json(v) for v in obj]
  return obj


def write_json_atomic(path: str, obj) -> None:
  """Temp file in the same directory, then rename: readers never see a half-written file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".fit.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(strict_json(obj), f, indent=1, allow_nan=False)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
