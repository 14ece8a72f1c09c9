"""Standard-JSON output written atomically (fit.json, prescriptions)."""
import math
import os

from experiments import metrics


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
  """Standard JSON (NaN -> null) via the run directory's atomic writer (temp + rename)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  metrics.write_json_atomic(path, strict_json(obj))
