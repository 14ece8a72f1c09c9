"""Fit a scaling law to a run store or a CSV and write DIR/fit.json (+ plots).

  python -m sweeps.fit --store=DIR | --csv=FILE [--law=chinchilla] [--bootstrap=N] --out=DIR
      [--columns=N:Model Size,C:Training FLOP,loss:loss] [--where=attention.kind=dense]
      [--group_by=attention.kind] [--e_floor=auto|VALUE] [--strict]

fit.json carries `quality` (ok | warn | degenerate) and `diagnostics` ({code, level,
message}); the CLI prints them before the table, and --strict exits 3 unless quality is ok.
"""
import json
import math
import os

from absl import app, flags, logging
import numpy as np
import pandas as pd

from experiments import identity, logs
from experiments.config import flatten
from sweeps import diagnostics, fitting, laws, points as points_lib, store as store_lib
from sweeps import flags as sweep_flags
from experiments.metrics import write_json_atomic

_STORE = sweep_flags.STORE
_CSV = flags.DEFINE_string("csv", None, "CSV with one row per run (or per logged step, for a "
                           "law fitted to loss curves: envelope).")
def _pairs(columns):
  return ",".join(f"{k}:{v}" for k, v in columns.items())


_COLUMNS = flags.DEFINE_string(
    "columns", "", "KEY:COLUMN pairs mapping N, D, C, loss, run_id to input columns. Store "
    f"defaults: {_pairs(points_lib.STORE_COLUMNS)} (curves: loss:loss); CSV defaults: "
    f"{_pairs(points_lib.CSV_COLUMNS)}. Use N:params_non_embedding to fit non-embedding "
    "parameters, loss:final_loss for the last training batch's loss.")
_LAW = flags.DEFINE_string("law", "chinchilla", "Scaling law to fit, one of the registered "
                           f"sweeps.laws: {', '.join(sorted(laws.LAWS))}.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", fitting.FitOptions.bootstrap,
                                  "Bootstrap resamples of runs (0: no intervals).")
_E_FLOOR = flags.DEFINE_string("e_floor", None, "chinchilla: lower bound on E: 'auto' (the "
                               "runs' known loss floor, e.g. the synthetic corpus's entropy) "
                               "or a number in nats/token. Default: unbounded (but checked).")
_STRICT = flags.DEFINE_bool("strict", False, "Exit 3 unless every fit's quality is ok.")
_OUT = flags.DEFINE_string("out", None, "Output directory for fit.json and plots.")
_WHERE = flags.DEFINE_multi_string("where", [], "Row filter COLUMN=VALUE (= != < <= > >=).")
_GROUP_BY = flags.DEFINE_string("group_by", None, "Fit one law per value of this column.")
_STATUS = flags.DEFINE_string("status", "done", "Store runs to use, by summary status "
                              "(comma-separated; empty for all).")
_SEED = flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
_HOLDOUT = flags.DEFINE_float("holdout_fraction", 0.2, "Share of runs held out for the "
                              "extrapolation check (whole largest budgets, never split).")
_TAU = flags.DEFINE_float("tau", 0.98, "Quantile of the frontier law.")
_IRREDUCIBLE = flags.DEFINE_bool("irreducible", True, "kaplan: fit an irreducible loss term.")
_PLOTS = flags.DEFINE_bool("plots", True, "Write PNG plots next to fit.json.")
LAW_OPTIONS = ("e_floor", "tau", "irreducible")  # flags of FitOptions fields some laws read


def _known_law(name: str) -> bool:
  # Checked when flags are parsed, so a law registered after import (a plug-in) counts too.
  if name not in laws.LAWS:
    raise flags.ValidationError(f"unknown law {name!r}; choose one of {', '.join(laws.LAWS)}")
  return True


flags.register_validator("law", _known_law)


def _e_floor(text):
  """--e_floor's value: None, 'auto' or a float."""
  return text if text in (None, "auto") else float(text)


def _valid_e_floor(text) -> bool:
  # At parse time, so a bad value is a flag error (exit 2) like any other.
  try:
    _e_floor(text)
  except ValueError:
    raise flags.ValidationError("use 'auto' or a number (nats/token)") from None
  return True


flags.register_validator("e_floor", _valid_e_floor)


def load_table(store=None, csv=None, law="chinchilla", status="done") -> tuple:
  """(frame, default column mapping) from exactly one of store / csv."""
  if (store is None) == (csv is None):
    raise ValueError("pass exactly one of --store=DIR or --csv=FILE")
  if csv is not None:
    if not os.path.exists(csv):
      raise ValueError(f"--csv file {csv!r} does not exist")
    return pd.read_csv(csv), points_lib.CSV_COLUMNS
  runs, unreadable = store_lib.load_report(store)
  logging.info(f"store {store}: {len(runs)} runs read, {len(unreadable)} skipped as "
               "unreadable" + (" (see warnings above)" if unreadable else ""))
  if status and "status" in runs:
    wanted = [s.strip() for s in status.split(",") if s.strip()]
    skipped = runs[~runs["status"].astype(str).isin(wanted)]
    if len(skipped):
      logs.warn(f"using {len(runs) - len(skipped)} of {len(runs)} runs with status "
                     f"{'|'.join(wanted)}; skipped: " + ", ".join(
                         f"{r} ({s})" for r, s in zip(skipped["run_id"], skipped["status"])))
    runs = runs[runs["status"].astype(str).isin(wanted)]
  if laws.get(law).rows != laws.CURVES:
    return runs, points_lib.STORE_COLUMNS
  # A law of loss curves needs every logged step: join them with each run's config/summary.
  curves = store_lib.curves(store)
  summary = runs.drop(columns=[c for c in curves.columns if c != "run_id" and c in runs])
  return curves.merge(summary, on="run_id", how="inner"), points_lib.CURVE_COLUMNS


FIT_ERRORS = (ValueError, ArithmeticError, np.linalg.LinAlgError)  # a group that cannot fit


def split_groups(frame, mapping, group_by) -> tuple:
  """({group: Points}, {group: {"reason", "n_runs"}} of groups whose rows make no points),
  groups sorted by name; values of group_by as strings."""
  if group_by not in frame:
    raise ValueError(f"--group_by column {group_by!r} not found; columns: "
                     f"{', '.join(map(str, frame.columns))}")
  points, failed = {}, {}
  for value, rows in sorted(frame.groupby(group_by, dropna=False), key=lambda kv: str(kv[0])):
    try:
      points[str(value)] = points_lib.from_frame(rows, mapping)
    except ValueError as err:
      failed[str(value)] = {"reason": str(err), "n_runs": int(len(rows))}
  return points, failed


def _reason(err) -> str:
  return str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"


def run(*, store=None, csv=None, law="chinchilla", out, columns="", where=(), group_by=None,
        status="done", options=fitting.FitOptions(), plots=True, require_fit=True) -> dict:
  """Fits `law` (per value of group_by when given) and writes out/fit.json and the plots
  (out=None: writes nothing). A group that cannot be fitted (too few runs, no bracketed
  budget) is recorded under `failed` ({group: {reason, n_runs}}) and makes the quality at
  least warn; when no group fits it is an error, unless require_fit=False (a comparison
  that reports every group's reason): then `groups` is empty and the quality degenerate."""
  rows = laws.get(law).rows  # an unknown law fails here, before any reading
  frame, defaults = load_table(store, csv, law, status)
  mapping = {**defaults, **points_lib.parse_columns(columns)}
  frame = points_lib.apply_where(frame, where)
  if rows == laws.CURVES and mapping["run_id"] not in frame and mapping["N"] in frame:
    # A CSV of loss curves without run ids: rows of one model size form one curve.
    frame = frame.assign(**{mapping["run_id"]: frame[mapping["N"]].astype(str)})
  header = {"law": law, "source": {"store": store, "csv": csv, "where": list(where),
                                   "columns": mapping, "status": status if store else None},
            "versions": identity.library_versions(fitting.FITTING_LIBRARIES)}
  if group_by is None:
    points = points_lib.from_frame(frame, mapping)
    result = {**header, **fitting.fit_points(points, law, options),
              **base_config(store, points)}
    plotted = {"": (result, points)}
  else:
    by_group, failed = split_groups(frame, mapping, group_by)
    groups, plotted = {}, {}
    for name, points in by_group.items():
      try:
        groups[name] = {**fitting.fit_points(points, law, options),
                        **base_config(store, points)}
      except FIT_ERRORS as err:
        failed[name] = {"reason": _reason(err), "n_runs": int(len(np.unique(points.run_id)))}
        continue
      plotted[name] = (groups[name], points)
    if not groups and require_fit:
      raise ValueError(f"no {group_by} group could be fitted: " + "; ".join(
          f"{name}: {f['reason']}" for name, f in sorted(failed.items())))
    quality = diagnostics.quality([d for g in groups.values() for d in g["diagnostics"]]
                                  ) if groups else "degenerate"
    result = {**header, "group_by": group_by, "groups": groups,
              "failed": dict(sorted(failed.items())),
              "quality": "warn" if failed and quality == "ok" else quality,
              "n_points": sum(g["n_points"] for g in groups.values()),
              "n_dropped": sum(g["n_dropped"] for g in groups.values())}
  result["files"] = []
  if out is None:
    return result
  result["files"].append(os.path.join(out, "fit.json"))
  os.makedirs(out, exist_ok=True)
  if plots:
    from sweeps import plot  # matplotlib only when plotting
    for name, (fit_obj, points) in plotted.items():
      result["files"] += plot.write_plots(out, fit_obj, points, prefix=f"{name}_" if name else "")
  write_json_atomic(os.path.join(out, "fit.json"), result)
  return result


def base_config(store, points) -> dict:
  """The resolved config of the fit's largest-compute run ({dotted key: value}), so a
  prescription keeps the fitted runs' vocabulary, sequence length, attention and data."""
  if store is None:
    return {}
  largest = points.run_id[int(np.argmax(points.C))]
  path = os.path.join(store, str(largest), "config.json")
  try:
    with open(path) as f:
      return {"base_config": flatten(json.load(f)), "base_run": str(largest)}
  except (OSError, ValueError, AttributeError):
    return {}


def format_table(result: dict) -> str:
  """Parameters (rows) by group (columns), each with its interval when bootstrapped."""
  groups = result.get("groups") or {"fit": result}
  keys = []
  for g in groups.values():
    for k in list(g["params"]) + list(g.get("derived", {})):
      if k not in keys:
        keys.append(k)
  value = lambda g, k: cell({**g["params"], **g.get("derived", {})}.get(k),
                            g.get("intervals", {}).get(k))
  rows = [[""] + list(groups)] + [[k] + [value(g, k) for g in groups.values()] for k in keys]
  rows.append(["n_points"] + [str(g["n_points"]) for g in groups.values()])
  rows.append(["extrap. mean |rel err|"] + [
      cell(g["extrapolation"].get("mean_abs_relative_error"), None)
      if g["extrapolation"].get("assessed") else "not assessed" for g in groups.values()])
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def format_diagnostics(result: dict) -> str:
  """QUALITY line(s) and one line per diagnostic, worst first."""
  groups = result["groups"] if "group_by" in result else {"": result}
  lines = []
  for name, g in groups.items():
    label = f" [{result['group_by']}={name}]" if name else ""
    lines.append(f"QUALITY{label}: {g['quality'].upper()}")
    for d in sorted(g["diagnostics"], key=lambda d: -diagnostics.LEVELS.index(d["level"])):
      lines.append(f"  {d['level'].upper():<10} {d['code']}: {d['message']}")
  for name, failed in result.get("failed", {}).items():
    lines.append(f"QUALITY [{result['group_by']}={name}]: NOT FITTED ({failed['n_runs']} "
                 f"runs): {failed['reason']}")
  return "\n".join(lines)


def cell(value, interval=None) -> str:
  """A value with its interval, as every table here prints it: `0.34 [0.3, 0.39]`."""
  if value is None:
    return "-"
  text = f"{value:.4g}"
  if interval and all(math.isfinite(x) for x in interval):
    text += f" [{interval[0]:.4g}, {interval[1]:.4g}]"
  return text


def _warn_unread_options(law) -> None:
  """A law-specific flag given to a law that does not read it (Law.options) is ignored: say so."""
  for name in LAW_OPTIONS:
    if flags.FLAGS[name].present and name not in law.options:
      readers = [other for other, law_ in laws.LAWS.items() if name in law_.options]
      logs.warn(f"--{name} is ignored: the {law.name} law does not read it (laws that "
                     f"do: {', '.join(readers) or 'none'})")


def main(argv):
  del argv
  logs.setup()
  if _OUT.value is None:
    raise app.UsageError("--out=DIR is required", exitcode=logs.EXIT_BAD_INPUT)
  options = fitting.FitOptions(bootstrap=_BOOTSTRAP.value, seed=_SEED.value,
                               holdout_fraction=_HOLDOUT.value, tau=_TAU.value,
                               irreducible=_IRREDUCIBLE.value, e_floor=_e_floor(_E_FLOOR.value))
  _warn_unread_options(laws.get(_LAW.value))

  def body():
    result = run(store=_STORE.value, csv=_CSV.value, law=_LAW.value, out=_OUT.value,
                 columns=_COLUMNS.value, where=_WHERE.value, group_by=_GROUP_BY.value,
                 status=_STATUS.value, options=options, plots=_PLOTS.value)
    print(f"{_LAW.value} fit: {result['n_points']} points, {result['n_dropped']} dropped")
    print(format_diagnostics(result))
    print(format_table(result))
    print("wrote:\n" + "\n".join(f"  {path}" for path in result["files"]))
    if _STRICT.value and result["quality"] != "ok":
      logging.error(f"--strict: quality is {result['quality']}, not ok")
      return 3
    return 0
  return logs.guard(body)


if __name__ == "__main__":
  app.run(main, flags_parser=logs.parse_flags)
