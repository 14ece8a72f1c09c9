"""Fit a scaling law to a run store or a CSV and write DIR/fit.json (+ plots).

  python -m sweeps.fit --store=DIR | --csv=FILE [--law=chinchilla] [--bootstrap=N] --out=DIR
      [--columns=N:Model Size,C:Training FLOP,loss:loss] [--where=attention.kind=dense]
      [--group_by=attention.kind]
"""
import math
import os
import sys

from absl import app, flags
import pandas as pd

from sweeps import fitting, laws, points as points_lib, store as store_lib
from sweeps import flags as sweep_flags
from sweeps.jsonio import write_json_atomic

_STORE = sweep_flags.STORE
_CSV = flags.DEFINE_string("csv", None, "CSV with one row per run (or per step for envelope).")
_COLUMNS = flags.DEFINE_string(
    "columns", "", "KEY:COLUMN pairs mapping N, D, C, loss, run_id to input columns. Store "
    "defaults: N:params,D:tokens,C:flops,loss:final_loss (curves: loss:loss); CSV defaults: "
    "N:N,D:D,C:C,loss:loss. Use N:params_non_embedding to fit non-embedding parameters.")
_LAW = flags.DEFINE_enum("law", "chinchilla", sorted(laws.LAWS), "Scaling law to fit.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 0, "Bootstrap resamples of runs (0: none).")
_OUT = flags.DEFINE_string("out", None, "Output directory for fit.json and plots.")
_WHERE = flags.DEFINE_multi_string("where", [], "Row filter COLUMN=VALUE (= != < <= > >=).")
_GROUP_BY = flags.DEFINE_string("group_by", None, "Fit one law per value of this column.")
_STATUS = flags.DEFINE_string("status", "done", "Store runs to use, by summary status "
                              "(comma-separated; empty for all).")
_SEED = flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
_HOLDOUT = flags.DEFINE_float("holdout_fraction", 0.2, "Share of highest-compute runs held "
                              "out for the extrapolation check.")
_TAU = flags.DEFINE_float("tau", 0.98, "Quantile of the frontier law.")
_IRREDUCIBLE = flags.DEFINE_bool("irreducible", True, "kaplan: fit an irreducible loss term.")
_PLOTS = flags.DEFINE_bool("plots", True, "Write PNG plots next to fit.json.")


def load_table(store=None, csv=None, law="chinchilla", status="done") -> tuple:
  """(frame, default column mapping) from exactly one of store / csv."""
  if (store is None) == (csv is None):
    raise ValueError("pass exactly one of --store=DIR or --csv=FILE")
  if csv is not None:
    if not os.path.exists(csv):
      raise ValueError(f"--csv file {csv!r} does not exist")
    return pd.read_csv(csv), points_lib.CSV_COLUMNS
  runs = store_lib.load(store)
  if status and "status" in runs:
    wanted = [s.strip() for s in status.split(",") if s.strip()]
    runs = runs[runs["status"].astype(str).isin(wanted)]
  if law != "envelope":
    return runs, points_lib.STORE_COLUMNS
  # The envelope law needs every logged step: join the curves with each run's config/summary.
  curves = store_lib.curves(store)
  summary = runs.drop(columns=[c for c in curves.columns if c != "run_id" and c in runs])
  return curves.merge(summary, on="run_id", how="inner"), points_lib.CURVE_COLUMNS


def run(*, store=None, csv=None, law="chinchilla", out, columns="", where=(), group_by=None,
        status="done", options=fitting.FitOptions(), plots=True) -> dict:
  frame, defaults = load_table(store, csv, law, status)
  mapping = {**defaults, **points_lib.parse_columns(columns)}
  frame = points_lib.apply_where(frame, where)
  if law == "envelope" and mapping["run_id"] not in frame and mapping["N"] in frame:
    # A CSV of loss curves without run ids: rows of one model size form one curve.
    frame = frame.assign(**{mapping["run_id"]: frame[mapping["N"]].astype(str)})
  header = {"law": law, "source": {"store": store, "csv": csv, "where": list(where),
                                   "columns": mapping, "status": status if store else None},
            "versions": fitting.library_versions()}
  if group_by is None:
    points = points_lib.from_frame(frame, mapping)
    result = {**header, **fitting.fit_points(points, law, options)}
    plotted = {"": (result, points)}
  else:
    if group_by not in frame:
      raise ValueError(f"--group_by column {group_by!r} not found; columns: "
                       f"{', '.join(map(str, frame.columns))}")
    groups, plotted = {}, {}
    for value, rows in sorted(frame.groupby(group_by, dropna=False), key=lambda kv: str(kv[0])):
      try:
        points = points_lib.from_frame(rows, mapping)
        groups[str(value)] = fitting.fit_points(points, law, options)
      except ValueError as err:
        raise ValueError(f"{group_by}={value}: {err}") from err
      plotted[str(value)] = (groups[str(value)], points)
    result = {**header, "group_by": group_by, "groups": groups,
              "n_points": sum(g["n_points"] for g in groups.values()),
              "n_dropped": sum(g["n_dropped"] for g in groups.values())}
  write_json_atomic(os.path.join(out, "fit.json"), result)
  if plots:
    from sweeps import plot  # matplotlib only when plotting
    for name, (fit_obj, points) in plotted.items():
      plot.write_plots(out, fit_obj, points, prefix=f"{name}_" if name else "")
  return result


def format_table(result: dict) -> str:
  """Parameters (rows) by group (columns), each with its interval when bootstrapped."""
  groups = result.get("groups") or {"fit": result}
  keys = []
  for g in groups.values():
    for k in list(g["params"]) + list(g.get("derived", {})):
      if k not in keys:
        keys.append(k)
  cell = lambda g, k: _cell({**g["params"], **g.get("derived", {})}.get(k),
                            g.get("intervals", {}).get(k))
  rows = [[""] + list(groups)] + [[k] + [cell(g, k) for g in groups.values()] for k in keys]
  rows.append(["n_points"] + [str(g["n_points"]) for g in groups.values()])
  rows.append(["extrap. mean |rel err|"] + [
      _cell(g["extrapolation"].get("mean_abs_relative_error"), None) for g in groups.values()])
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def _cell(value, interval) -> str:
  if value is None:
    return "-"
  text = f"{value:.4g}"
  if interval and all(math.isfinite(x) for x in interval):
    text += f" [{interval[0]:.4g}, {interval[1]:.4g}]"
  return text


def main(argv):
  del argv
  if _OUT.value is None:
    raise app.UsageError("--out=DIR is required")
  options = fitting.FitOptions(bootstrap=_BOOTSTRAP.value, seed=_SEED.value,
                               holdout_fraction=_HOLDOUT.value, tau=_TAU.value,
                               irreducible=_IRREDUCIBLE.value)
  try:
    result = run(store=_STORE.value, csv=_CSV.value, law=_LAW.value, out=_OUT.value,
                 columns=_COLUMNS.value, where=_WHERE.value, group_by=_GROUP_BY.value,
                 status=_STATUS.value, options=options, plots=_PLOTS.value)
  except ValueError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  print(f"{_LAW.value} fit ({result['n_points']} points, {result['n_dropped']} dropped) -> "
        f"{os.path.join(_OUT.value, 'fit.json')}")
  print(format_table(result))


if __name__ == "__main__":
  app.run(main)
