"""The run directory's records: metrics.jsonl (log of record), summary.json, wandb mirror."""
import hashlib
import json
import os
import sys
import tempfile
import time

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


def write_json_atomic(path, obj):
  """Write to a temp file in the same directory, then rename over `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True, default=float)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_json(path, default=None):
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return default


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
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".jsonl")
  with os.fdopen(fd, "w") as f:
    for r in kept:
      f.write(json.dumps(r) + "\n")
  os.replace(tmp, path)


class MetricsWriter:
  """Appends one JSON line per logged step and mirrors it to wandb."""

  def __init__(self, workdir, *, enabled, wandb_cfg=None, config=None):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS)
    self._wandb = None
    self._file = open(self.path, "a") if enabled else None
    if enabled and wandb_cfg is not None and wandb_cfg.mode != "disabled":
      os.environ.setdefault("WANDB_SILENT", "true")
      import wandb
      run_id = "chx-" + hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:10]
      self._wandb = wandb.init(
          project=wandb_cfg.project, entity=wandb_cfg.entity, mode=wandb_cfg.mode,
          dir=workdir, config=config, id=run_id, resume="allow",
          name=os.path.basename(os.path.abspath(workdir)))

  def write(self, record):
    if not self.enabled:
      return
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._wandb is not None:
      self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

  def close(self):
    if self._file is not None:
      self._file.close()
    if self._wandb is not None:
      self._wandb.finish()


def progress_line(step, steps, loss, tokens_per_sec, elapsed_steps, elapsed_seconds):
  rate = elapsed_steps / max(elapsed_seconds, 1e-9)
  eta = int((steps - step) / rate) if rate > 0 else 0
  print(f"step {step}/{steps}  loss {loss:.4f}  {tokens_per_sec:,.0f} tok/s  "
        f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}",
        file=sys.stderr, flush=True)


def now():
  return time.time()
