"""Run store reader: a directory of run directories -> pandas DataFrames.

A run directory holds config.json, summary.json and metrics.jsonl (the run-directory
contract, docs/ARCHITECTURE.md §3). Stores are read while sweeps are still writing to them,
so a half-written metrics line, a missing summary or an unreadable config is reported, never
fatal: load() skips such a run and its warning names every skipped run and why (also in
frame.attrs["skipped"]).
"""
import json
import os

import pandas as pd

from experiments import logs
from experiments.config import flatten
from experiments.metrics import read_metrics

SUMMARY_KEYS = ("status", "params", "params_non_embedding", "tokens", "flops", "final_loss",
                "eval_loss", "wall_seconds")
# Summary fields the fits read: a number, or null (the trainer writes NaN as null).
NUMERIC_KEYS = ("params", "params_non_embedding", "tokens", "flops", "final_loss",
                "eval_loss", "wall_seconds")
# Any of these marks a directory as a run, so a run that lost its config is reported, not
# dropped; other directories (.submitit, empty ones) are not runs.
RUN_MARKERS = ("config.json", "summary.json", "metrics.jsonl", "checkpoints")
# A readable name of a run's attention, to group or label by: attention.pattern's kinds
# joined by "+" (a hybrid such as "dense+linear"), else attention.kind.
ATTENTION_COLUMN = "attention_layers"


def attention_layers(row: dict):
  """ATTENTION_COLUMN's value for a flattened config row (None when it names no kind)."""
  pattern = row.get("attention.pattern") or ()
  if isinstance(pattern, (list, tuple)) and pattern:
    return "+".join(map(str, pattern))
  return row.get("attention.kind")


def _json_type(value) -> str:
  if value is None:
    return "null"
  if isinstance(value, bool):
    return "bool"
  if isinstance(value, (int, float)):
    return "number"
  return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _read_object(path: str):
  """(the JSON object in path, None) or (None, why it is not one)."""
  name = os.path.basename(path)
  try:
    with open(path) as f:
      value = json.load(f)
  except FileNotFoundError:
    return None, f"{name} missing"
  except json.JSONDecodeError as err:
    return None, f"{name} is not valid JSON (line {err.lineno} col {err.colno}: {err.msg})"
  except ValueError as err:  # e.g. not UTF-8
    return None, f"{name} is not valid JSON ({err})"
  except OSError as err:
    return None, f"{name} is unreadable ({type(err).__name__}: {err.strerror or err})"
  if not isinstance(value, dict):
    return None, f"{name} is not a JSON object (got {_json_type(value)})"
  return value, None


def _bad_field(summary: dict):
  """Why the summary's numeric fields are unusable, or None."""
  for key in NUMERIC_KEYS:
    value = summary.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
      return f"summary.json field {key!r} is not a number (got {_json_type(value)} " \
             f"{json.dumps(value)[:40]})"
  return None


def run_dirs(store: str) -> list[str]:
  """Run directories of a store, sorted by name (so loads are deterministic): those holding
  any of RUN_MARKERS, whether or not their config.json is readable."""
  if not os.path.isdir(store):
    raise ValueError(f"run store {store!r} is not a directory; pass --store=DIR with run "
                     "directories (each holding config.json, summary.json, metrics.jsonl)")
  return sorted(e.path for e in os.scandir(store)
                if e.is_dir() and not e.name.startswith(".")
                and any(os.path.exists(os.path.join(e.path, m)) for m in RUN_MARKERS))



def _listing(header: str, problems: dict) -> str:
  return header + "".join(f"\n  {run_id!r}: {why}" for run_id, why in problems.items())


def load_report(store: str) -> tuple[pd.DataFrame, dict]:
  """(load(store), {run_id: why it was skipped})."""
  rows, skipped, no_summary = [], {}, []
  for path in run_dirs(store):
    run_id = os.path.basename(path)
    config, problem = _read_object(os.path.join(path, "config.json"))
    summary = {}
    if problem is None and os.path.exists(os.path.join(path, "summary.json")):
      summary, problem = _read_object(os.path.join(path, "summary.json"))
      problem = problem or _bad_field(summary)
    elif problem is None:
      no_summary.append(run_id)
    if problem is not None:
      skipped[run_id] = problem
      continue
    row = flatten(config)
    row[ATTENTION_COLUMN] = attention_layers(row)
    for key, value in flatten(summary).items():
      row[key] = value  # summary wins over a config key of the same name
    for key in NUMERIC_KEYS:
      if key in row and row[key] is None:
        row[key] = float("nan")  # so an all-null column is float, not object
    row.setdefault("status", "unknown")
    row["run_id"] = run_id
    rows.append(row)
  if skipped:
    logs.warn(_listing(f"skipped {len(skipped)} unreadable run(s) in {store}:", skipped))
  if no_summary:
    logs.warn(f"{len(no_summary)} run(s) have no summary.json (status 'unknown'): "
         + ", ".join(no_summary))
  frame = pd.DataFrame(rows)
  for key in SUMMARY_KEYS + ("run_id",):
    if key not in frame:
      frame[key] = pd.NA if key == "status" else float("nan")
  frame.attrs.update(store=store, skipped=dict(skipped), no_summary=list(no_summary))
  return frame, skipped


def load(store: str) -> pd.DataFrame:
  """One row per run: dotted config columns, summary fields, run_id (directory name) and
  ATTENTION_COLUMN (e.g. "linear", or "dense+linear" for a per-layer pattern).

  A run without summary.json gets status "unknown" (its summary fields are NaN). A run whose
  config.json is missing, or whose config.json or summary.json is not a JSON object, or whose
  summary has a non-numeric NUMERIC_KEYS field, is skipped: the warning names each, and
  frame.attrs["skipped"] maps its run_id to the reason.
  """
  return load_report(store)[0]


def curves(store: str) -> pd.DataFrame:
  """Per-step metrics in long form: run_id, step, tokens, flops, loss, eval_loss, ..."""
  frames, bad_lines = [], {}
  for path in run_dirs(store):
    metrics_path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(metrics_path):
      continue
    records, bad = read_metrics(metrics_path)
    if bad:
      bad_lines[os.path.basename(path)] = f"{bad} malformed metrics line(s) skipped"
    if records:
      frame = pd.DataFrame(records)
      frame.insert(0, "run_id", os.path.basename(path))
      frames.append(frame)
  if bad_lines:
    logs.warn(_listing(f"skipped malformed metrics.jsonl lines in {len(bad_lines)} run(s) of "
                  f"{store}:", bad_lines))
  columns = ["run_id", "step", "tokens", "flops", "loss", "eval_loss"]
  if not frames:
    return pd.DataFrame(columns=columns)
  frame = pd.concat(frames, ignore_index=True)
  for key in columns:
    if key not in frame:
      frame[key] = float("nan")
  return frame
