"""Standard-JSON output written atomically (fit.json, prescriptions): the run
directory's one record encoding (experiments.metrics.to_strict: NaN/inf -> null,
flagged under "nonfinite")."""
import os

from experiments import metrics

strict_json = metrics.to_strict


def write_json_atomic(path: str, obj) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  metrics.write_json_atomic(path, obj)
