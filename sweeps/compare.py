"""One scaling law per group (attention kind), compared side by side.

The comparison a paper of efficient attention reports (Shen et al. 2024): every kind trained
on one isoFLOP design, one law per kind, then exponents, compute-optimal allocation and the
loss at a common budget next to each other, and where two kinds' compute-optimal loss curves
L_opt(C) cross. The notebook (notebooks/attention_scaling.ipynb) and a reproduction's printed
report both call this module, so the numbers they show are made in one place.

  fits = fit_groups(store)                  # {law: grouped fit object, as sweeps.fit writes}
  table = law_table(fits, common_budget(fits))
  print(format_report(fits))                # table, diagnostics, crossings

A group that cannot be fitted (too few runs, no bracketed budget) is recorded under the
law's `failed` ({group: {reason, n_runs}}, sweeps.fit.run) and shows as a row of quality
"failed" with its reason, while the other groups are compared as usual. No matplotlib here:
plots are sweeps.plot's.
"""
import itertools
import math
import os

import numpy as np
import pandas as pd

from sweeps import allocation, diagnostics, fit as fit_lib, fitting
from sweeps import laws as laws_lib, points as points_lib, store as store_lib

DEFAULT_LAWS = ("chinchilla", "isoflop")
FAILED = "failed"  # the quality of a group whose fit raised
SCAN_POINTS = 400  # log-spaced budgets scanned for crossings before root refinement
# format_table's default columns: (table column, header); those absent from the table are
# left out. Every value column has `<column>_lo` / `<column>_hi` beside it in the table.
TABLE_COLUMNS = (("E", "E"), ("A", "A"), ("B", "B"), ("alpha", "alpha"), ("beta", "beta"),
                 ("a", "a (A3)"), ("b", "b (A3)"), ("a_isoflop", "a (A2)"),
                 ("b_isoflop", "b (A2)"), ("N_opt", "N_opt"), ("loss", "loss"),
                 ("loss_isoflop", "loss (A2)"), ("loss_exp_isoflop", "L_opt ∝ C^x (A2)"))
AT_BUDGET = ("N_opt", "D_opt", "loss")  # table columns evaluated at the common budget


def group_points(store, group_by=store_lib.ATTENTION_COLUMN, *, law="chinchilla", where=(),
                 columns="", status="done") -> tuple:
  """({group: sweeps.points.Points}, {group: why its rows make no points}) of the store's
  runs as sweeps.fit reads them for `law` (same columns, filters and status)."""
  frame, defaults = fit_lib.load_table(store, None, law, status)
  mapping = {**defaults, **points_lib.parse_columns(columns)}
  return fit_lib.split_groups(points_lib.apply_where(frame, where), mapping, group_by)


def fit_groups(store, group_by=store_lib.ATTENTION_COLUMN, laws=DEFAULT_LAWS, bootstrap=200,
               out=None, where=(), *, columns="", status="done", seed=0, options=None,
               plots=True) -> dict:
  """{law: fit object} with one fit per group: sweeps.fit.run with group_by, i.e. what
  `python -m sweeps.fit --group_by` writes (law, source, group_by, groups, failed, quality,
  n_points, ...); a group that cannot be fitted is under `failed` ({group: {"reason",
  "n_runs"}}), not an exception for all.

  out: writes out/<law>/fit.json (usable by sweeps.prescribe --fit=... --group=NAME) and,
  with plots, each group's figures as out/<law>/<group>_*.png; None writes nothing.
  options: a fitting.FitOptions (default: FitOptions(bootstrap=bootstrap, seed=seed))."""
  options = options or fitting.FitOptions(bootstrap=bootstrap, seed=seed)
  return {law: fit_lib.run(store=store, law=law, out=None if out is None else
                           os.path.join(out, law), columns=columns, where=where,
                           group_by=group_by, status=status, options=options, plots=plots,
                           require_fit=False)
          for law in laws}


def group_names(fits: dict) -> list:
  """Every group any law saw (fitted or failed), sorted."""
  names = set()
  for result in fits.values():
    names |= set(result.get("groups", {})) | set(result.get("failed", {}))
  return sorted(names)


def common_budget(fits: dict) -> float:
  """The largest FLOP budget every fitted group reached: the smallest, over laws and groups,
  of each group's largest training FLOPs. A loss compared there is an interpolation for all."""
  tops = [g["data_range"]["C"][1] for result in fits.values()
          for g in result.get("groups", {}).values() if g.get("data_range")]
  if not tops:
    raise ValueError("no group was fitted, so there is no common budget; see each law's "
                     "`failed` reasons")
  return float(min(tops))


def fitted_span(fits: dict) -> tuple:
  """(smallest, largest) training FLOPs over every fitted group."""
  ranges = [g["data_range"]["C"] for result in fits.values()
            for g in result.get("groups", {}).values() if g.get("data_range")]
  if not ranges:
    raise ValueError("no group was fitted")
  return float(min(r[0] for r in ranges)), float(max(r[1] for r in ranges))


def _suffix(law: str, primary: str) -> str:
  return "" if law == primary else f"_{law}"


def law_table(fits: dict, budget=None) -> pd.DataFrame:
  """One row per group (index: the group_by values). Columns, for the first law of `fits`
  (the primary, Approach 3 by default) as named, for every other law suffixed `_<law>`
  (a_isoflop): its parameters and derived values, and for a law that allocates N_opt, D_opt
  and loss at the common `budget` (default common_budget); each value with `<col>_lo`,
  `<col>_hi` (the bootstrap interval; NaN without one). Per law: `quality_<law>` (ok, warn,
  degenerate, or "failed"), `diagnostics_<law>` (the codes above info, comma-separated),
  `reason_<law>` (why a fit failed, else ""), `n_runs_<law>`. `quality`: the worst over the
  laws ("failed" worst). table.attrs["budget"] holds the budget."""
  if not fits:
    raise ValueError("no fits to tabulate")
  budget = common_budget(fits) if budget is None else float(budget)
  primary = next(iter(fits))
  rows = []
  for name in group_names(fits):
    row = {}
    worst = "ok"
    for law, result in fits.items():
      sfx = _suffix(law, primary)
      g = result.get("groups", {}).get(name)
      if g is None:
        failed = result.get("failed", {}).get(name)
        row[f"quality_{law}"] = FAILED
        row[f"diagnostics_{law}"] = ""
        row[f"reason_{law}"] = failed["reason"] if failed else "no runs in this group"
        row[f"n_runs_{law}"] = failed["n_runs"] if failed else 0
        worst = FAILED
        continue
      values = {**g["params"], **g.get("derived", {})}
      intervals = g.get("intervals", {})
      for key, value in values.items():
        lo, hi = intervals.get(key) or (math.nan, math.nan)
        row[key + sfx] = _float(value)
        row[f"{key}{sfx}_lo"], row[f"{key}{sfx}_hi"] = _float(lo), _float(hi)
      if laws_lib.get(law).allocates:
        with np.errstate(all="ignore"):
          alloc = allocation.allocate(g, budget)
        for key in ("N_opt", "D_opt", "loss"):
          value, lo, hi = (float(x[0]) for x in alloc[key])
          row[key + sfx], row[f"{key}{sfx}_lo"], row[f"{key}{sfx}_hi"] = value, lo, hi
      row[f"quality_{law}"] = g["quality"]
      row[f"diagnostics_{law}"] = ", ".join(
          d["code"] for d in g["diagnostics"] if d["level"] != "info")
      row[f"reason_{law}"] = ""
      row[f"n_runs_{law}"] = g.get("n_runs", g["n_points"])
      worst = max(worst, g["quality"], key=_rank)
    row["quality"] = worst
    rows.append(row)
  group_by = next((r.get("group_by") for r in fits.values() if r.get("group_by")), "group")
  table = pd.DataFrame(rows, index=pd.Index(group_names(fits), name=group_by))
  table.attrs.update(budget=budget, laws=list(fits), primary=primary)
  return table


def _rank(quality: str) -> int:
  """ok < warn < degenerate < failed."""
  return -1 if quality == "ok" else len(diagnostics.LEVELS) if quality == FAILED else \
      diagnostics.LEVELS.index(quality)


def _float(x) -> float:
  return math.nan if x is None else float(x)


def num(value) -> str:
  """3 significant digits, compact: 0.342, 480, 1.23e9."""
  if value is None or not math.isfinite(value):
    return "-"
  if value == 0 or 1e-3 <= abs(value) < 1e4:
    return f"{float(f'{value:.3g}'):g}"  # 1177 -> 1180, not 1.18e+03
  mantissa, _, exponent = f"{value:.3g}".partition("e")
  return f"{mantissa}e{int(exponent)}" if exponent else mantissa  # 0.0005 has none


def cell(table: pd.DataFrame, group, column: str) -> str:
  """'0.342 [0.301, 0.388]' (the interval when finite), '-' when absent."""
  if column not in table or pd.isna(table.at[group, column]):
    return "-"
  text = num(float(table.at[group, column]))
  lo, hi = (table.at[group, f"{column}_{end}"] if f"{column}_{end}" in table else math.nan
            for end in ("lo", "hi"))
  if all(isinstance(x, (int, float)) and math.isfinite(x) for x in (lo, hi)):
    text += f" [{num(float(lo))}, {num(float(hi))}]"
  return text


def _quality_cell(table, group, law, width=70) -> str:
  quality = table.at[group, f"quality_{law}"]
  if quality == FAILED:
    reason = str(table.at[group, f"reason_{law}"])
    return f"failed: {reason[:width] + '...' if len(reason) > width else reason}"
  codes = table.at[group, f"diagnostics_{law}"]
  return f"{quality} ({codes})" if codes else str(quality)


def _at_budget(column: str) -> bool:
  """N_opt, D_opt, loss (or a suffixed law's: loss_isoflop), not loss_exp or loss_E."""
  return column in AT_BUDGET or column.rsplit("_", 1)[0] in AT_BUDGET


def format_table(table: pd.DataFrame, columns=None) -> str:
  """A markdown table (README-quotable): one row per group, values with their intervals
  ('0.342 [0.301, 0.388]'), then the quality (and non-info diagnostic codes, or why the
  fit failed) per law. columns: (table column, header) pairs (default TABLE_COLUMNS)."""
  budget = table.attrs.get("budget")
  at = f" @ C={num(budget)}" if budget else ""
  chosen = [(c, h) for c, h in (columns or TABLE_COLUMNS) if c in table]
  header = [table.index.name or "group"] + [
      head + (at if _at_budget(column) else "") for column, head in chosen]
  laws = table.attrs.get("laws") or [c[len("quality_"):] for c in table
                                     if c.startswith("quality_")]
  header += [f"quality ({law})" for law in laws]
  escape = lambda text: str(text).replace("|", "\\|")
  lines = ["| " + " | ".join(map(escape, header)) + " |",
           "|" + "|".join(["---"] + ["---:"] * len(chosen) + ["---"] * len(laws)) + "|"]
  for group in table.index:
    cells = [str(group)] + [cell(table, group, c) for c, _ in chosen]
    cells += [_quality_cell(table, group, law) for law in laws]
    lines.append("| " + " | ".join(map(escape, cells)) + " |")
  return "\n".join(lines)


def _draws(fit_obj: dict, c) -> np.ndarray:
  """[R, M] compute-optimal losses of every bootstrap sample at budgets c (empty R=0)."""
  samples = (fit_obj.get("bootstrap") or {}).get("samples")
  if not samples:
    return np.zeros((0, len(c)))
  params = {k: np.asarray(v, np.float64)[:, None] for k, v in samples.items()}
  with np.errstate(all="ignore"):
    return np.asarray(allocation.law_module(fit_obj).allocation(params, c[None])[2], float)


def _sign_changes(diff) -> np.ndarray:
  """Indices i where diff changes sign between i and i + 1 (NaN never counts)."""
  s = np.sign(diff)
  return np.flatnonzero((s[:-1] * s[1:] < 0) & np.isfinite(diff[:-1]) & np.isfinite(diff[1:]))


def crossings(fits: dict, c_range, law="chinchilla", scan=SCAN_POINTS) -> list:
  """Where two groups' compute-optimal loss curves L_opt(C) of `law` cross inside c_range:
  for every pair of fitted groups, a log-spaced scan of `scan` budgets, then a root refined
  by bisection in log C. Each crossing: {"groups": (g1, g2), "C", "loss", "lower_below"
  (the group with the lower loss at budgets under C), "lower_above", "extrapolated" (C
  beyond a group's fitted FLOPs), and from the bootstrap (pairing resamples of the two
  independent fits): "C_interval" (the level's percentiles of the resamples' crossing
  nearest C) and "share_crossing" (the share of resample pairs that cross in c_range)}.
  Empty when no pair crosses in range."""
  from scipy import optimize
  result = fits[law]
  groups = result.get("groups", {})
  lo_c, hi_c = sorted(float(x) for x in c_range)
  x = np.linspace(math.log10(lo_c), math.log10(hi_c), scan)
  c = 10.0 ** x
  curve = lambda g, cc: np.asarray(allocation.allocate(groups[g], cc)["loss"][0], float)
  with np.errstate(all="ignore"):
    curves = {g: curve(g, c) for g in groups}
    draws = {g: _draws(groups[g], c) for g in groups}
  out = []
  for g1, g2 in itertools.combinations(sorted(groups), 2):
    diff = curves[g1] - curves[g2]
    for i in _sign_changes(diff):
      f = lambda xx: float(curve(g1, 10.0 ** xx)[0] - curve(g2, 10.0 ** xx)[0])
      root = optimize.brentq(f, x[i], x[i + 1], xtol=1e-10)
      c_star = 10.0 ** root
      below, above = (g1, g2) if diff[i] < 0 else (g2, g1)
      fitted_top = min(groups[g]["data_range"]["C"][1] for g in (g1, g2))
      fitted_bottom = max(groups[g]["data_range"]["C"][0] for g in (g1, g2))
      entry = {"law": law, "groups": (g1, g2), "C": c_star,
               "loss": float(curve(g1, c_star)[0]), "lower_below": below,
               "lower_above": above,
               "extrapolated": bool(c_star > fitted_top or c_star < fitted_bottom)}
      entry.update(_crossing_interval(draws[g1], draws[g2], x, root, groups[g1]))
      out.append(entry)
  return sorted(out, key=lambda e: e["C"])


def _crossing_interval(d1, d2, x, root, fit_obj) -> dict:
  r = min(len(d1), len(d2))
  if r == 0:
    return {"C_interval": [math.nan, math.nan], "share_crossing": math.nan}
  diff = d1[:r] - d2[:r]
  found = []
  for row in diff:
    idx = _sign_changes(row)
    if not len(idx):
      continue
    # Linear interpolation in log C of the change nearest the point estimate's root.
    x0, x1, y0, y1 = x[idx], x[idx + 1], row[idx], row[idx + 1]
    roots = x0 - y0 * (x1 - x0) / (y1 - y0)
    found.append(roots[np.argmin(np.abs(roots - root))])
  level = (fit_obj.get("bootstrap") or {}).get("level", 0.95)
  if not found:
    return {"C_interval": [math.nan, math.nan], "share_crossing": 0.0}
  lo, hi = np.percentile(found, [50 * (1 - level), 50 * (1 + level)])
  return {"C_interval": [float(10.0 ** lo), float(10.0 ** hi)],
          "share_crossing": len(found) / r}


def format_crossings(found: list, c_range=None) -> str:
  """One line per crossing; says so when there is none."""
  span = f" in C = {num(c_range[0])}..{num(c_range[1])}" if c_range is not None else ""
  if not found:
    return f"no two compute-optimal loss curves cross{span}"
  lines = [f"compute-optimal loss curves L_opt(C) crossing{span}:"]
  for e in found:
    lo, hi = e["C_interval"]
    interval = (f" [{num(lo)}, {num(hi)}], {e['share_crossing']:.0%} of resamples cross"
                if math.isfinite(lo) and math.isfinite(hi) else "")
    lines.append(f"  {e['groups'][0]} x {e['groups'][1]}: C = {num(e['C'])}{interval}, loss "
                 f"{e['loss']:.4g}; {e['lower_below']} lower below, {e['lower_above']} lower "
                 "above" + (" (extrapolated beyond the fitted runs)" if e["extrapolated"]
                            else ""))
  return "\n".join(lines)


def format_diagnostics(fits: dict) -> str:
  """sweeps.fit.format_diagnostics per law (failed groups with their reasons included)."""
  return "\n\n".join(f"== {law} ==\n{fit_lib.format_diagnostics(result)}"
                      for law, result in fits.items())


def format_report(fits: dict, budget=None, c_range=None, law="chinchilla",
                  beyond=1.0) -> str:
  """What a reproduction prints: the markdown table at the common budget, the diagnostics
  per law and group, and the crossings of `law`'s L_opt(C) over c_range (default: the FLOP
  span of the fitted runs, its top times `beyond`). When no group could be fitted, says so
  with each group's reason."""
  if not any(result.get("groups") for result in fits.values()):
    return "No group could be fitted by any law:\n\n" + format_diagnostics(fits)
  table = law_table(fits, budget)
  parts = [f"per-group fits ({', '.join(fits)}), loss and N_opt at the common budget "
           f"C = {num(table.attrs['budget'])} FLOPs:", format_table(table), "",
           format_diagnostics(fits)]
  if law in fits and len(fits[law].get("groups", {})) >= 2:
    if c_range is None:
      lo, hi = fitted_span(fits)
      c_range = (lo, beyond * hi)
    parts += ["", format_crossings(crossings(fits, c_range, law), c_range)]
  return "\n".join(parts)
