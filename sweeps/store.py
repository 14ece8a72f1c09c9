"""Run store reader: a directory of run directories -> pandas DataFrames.

A run directory holds config.json, summary.json and metrics.jsonl (DESIGN.md, Public
contract). Stores are read while sweeps are still writing to them, so a half-written metrics
line, a missing summary or an unreadable config is counted and reported, never fatal.
"""
import json
import logging
import os
import warnings

import pandas as pd

from experiments.config import flatten
from experiments.metrics import read_metrics

SUMMARY_KEYS = ("status", "params", "params_non_embedding", "tokens", "flops", "final_loss",
                "eval_loss", "wall_seconds")


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def run_dirs(store: str) -> list[str]:
  """Run directories of a store (sorted by name, so loads are deterministic)."""
  if not os.path.isdir(store):
    raise ValueError(f"run store {store!r} is not a directory; pass --store=DIR with run "
                     "directories (each holding config.json, summary.json, metrics.jsonl)")
  return sorted(e.path for e in os.scandir(store)
                if e.is_dir() and os.path.exists(os.path.join(e.path, "config.json")))


def warn(message: str):
  logging.warning(message)
  warnings.warn(message, stacklevel=3)


def load(store: str) -> pd.DataFrame:
  """One row per run: dotted config columns, summary fields, and run_id (directory name).

  A run without summary.json gets status "unknown" (its summary fields are NaN); a run whose
  config.json or summary.json is not valid JSON is skipped. Both are counted in a warning.
  """
  rows, unreadable, no_summary = [], [], 0
  for path in run_dirs(store):
    run_id = os.path.basename(path)
    try:
      row = flatten(_read_json(os.path.join(path, "config.json")))
    except (OSError, ValueError):
      unreadable.append(run_id)
      continue
    summary_path = os.path.join(path, "summary.json")
    if os.path.exists(summary_path):
      try:
        summary = _read_json(summary_path)
      except (OSError, ValueError):
        unreadable.append(run_id)
        continue
      for key, value in flatten(summary).items():
        row[key] = value  # summary wins over a config key of the same name
    else:
      no_summary += 1
    row.setdefault("status", "unknown")
    row["run_id"] = run_id
    rows.append(row)
  if unreadable:
    warn(f"skipped {len(unreadable)} run(s) with unreadable config/summary JSON: "
          f"{', '.join(unreadable[:5])}{' ...' if len(unreadable) > 5 else ''}")
  if no_summary:
    warn(f"{no_summary} run(s) have no summary.json (status 'unknown')")
  frame = pd.DataFrame(rows)
  for key in SUMMARY_KEYS + ("run_id",):
    if key not in frame:
      frame[key] = pd.NA if key == "status" else float("nan")
  return frame


def curves(store: str) -> pd.DataFrame:
  """Per-step metrics in long form: run_id, step, tokens, flops, loss, eval_loss, ..."""
  frames, bad_total, bad_runs = [], 0, 0
  for path in run_dirs(store):
    metrics_path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(metrics_path):
      continue
    records, bad = read_metrics(metrics_path)
    bad_total += bad
    bad_runs += bool(bad)
    if records:
      frame = pd.DataFrame(records)
      frame.insert(0, "run_id", os.path.basename(path))
      frames.append(frame)
  if bad_total:
    warn(f"skipped {bad_total} malformed metrics line(s) in {bad_runs} run(s)")
  columns = ["run_id", "step", "tokens", "flops", "loss", "eval_loss"]
  if not frames:
    return pd.DataFrame(columns=columns)
  frame = pd.concat(frames, ignore_index=True)
  for key in columns:
    if key not in frame:
      frame[key] = float("nan")
  return frame
