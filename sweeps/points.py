"""Turns a run table (store or CSV) into validated fitting points: N, D, C, loss per run.

Conventions: N is the parameter count the table names (record which in `n_kind`), D tokens,
C training FLOPs; D = C / 6N when only C is given and C = 6ND when only D is given. Rows are
sorted canonically, so the fit does not depend on the order of runs in the input.
"""
import dataclasses
import hashlib
import re

import numpy as np
import pandas as pd

from experiments import logs

KEYS = ("N", "D", "C", "loss", "run_id")
# The held-out eval loss by default: the last training batch's loss is one noisy batch.
STORE_COLUMNS = {"N": "params", "D": "tokens", "C": "flops", "loss": "eval_loss",
                 "run_id": "run_id"}
CURVE_COLUMNS = {"N": "params", "D": "tokens", "C": "flops", "loss": "loss", "run_id": "run_id"}
CSV_COLUMNS = {"N": "N", "D": "D", "C": "C", "loss": "loss", "run_id": "run_id"}
MIN_POINTS = 5
# Known lower bounds on the loss, read from the runs when present (synthetic corpus): the
# best achievable mean loss over a window, else the source's entropy rate.
FLOOR_COLUMNS = ("data_min_loss", "data_entropy_rate")
BUCKET_DECADES = 0.15  # a FLOP budget holds the runs within this below its largest run


@dataclasses.dataclass(frozen=True)
class Points:
  N: np.ndarray
  D: np.ndarray
  C: np.ndarray
  loss: np.ndarray
  run_id: np.ndarray  # str; several points may share a run (loss curves)
  n_dropped: int = 0
  n_kind: str = "params"  # which parameter count N is
  floor: float | None = None  # a known lower bound on the loss (nats/token), if any
  dropped: tuple = ()  # (run_id, reason) of each dropped row

  def __len__(self):
    return len(self.N)

  def subset(self, mask) -> "Points":
    return dataclasses.replace(self, N=self.N[mask], D=self.D[mask], C=self.C[mask],
                               loss=self.loss[mask], run_id=self.run_id[mask])

  def input_hash(self) -> str:
    digest = hashlib.sha256()
    for x in (self.N, self.D, self.C, self.loss):
      digest.update(np.ascontiguousarray(x, np.float64).tobytes())
    digest.update("\0".join(self.run_id).encode())
    return digest.hexdigest()[:16]


def parse_columns(spec: str) -> dict:
  """'N:Model Size,C:Training FLOP,loss:loss' -> {'N': 'Model Size', ...}."""
  mapping = {}
  for item in filter(None, (s.strip() for s in (spec or "").split(","))):
    key, sep, column = item.partition(":")
    if not sep or key.strip() not in KEYS or not column.strip():
      raise ValueError(f"bad --columns item {item!r}: use KEY:COLUMN with KEY one of {KEYS}, "
                       "e.g. --columns=N:Model Size,C:Training FLOP,loss:loss")
    mapping[key.strip()] = column.strip()
  return mapping


_WHERE = re.compile(r"^\s*([^!<>=]+?)\s*(!=|>=|<=|=|>|<)\s*(.*?)\s*$")


def apply_where(frame: pd.DataFrame, exprs) -> pd.DataFrame:
  """Keeps rows matching every `column OP value` (OP one of = != < <= > >=)."""
  for expr in exprs or ():
    match = _WHERE.match(expr)
    if not match:
      raise ValueError(f"bad --where {expr!r}: use COLUMN=VALUE (or != < <= > >=), e.g. "
                       "--where=attention.kind=dense")
    column, op, raw = match.groups()
    if column not in frame:
      raise ValueError(f"--where names unknown column {column!r}; columns: "
                       f"{', '.join(map(str, frame.columns))}")
    values = frame[column]
    number = pd.to_numeric(pd.Series([raw]), errors="coerce").iloc[0]
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.isna(number)
    value = number if numeric else raw
    if not numeric:
      values = values.astype(str)
    keep = {"=": values == value, "!=": values != value, "<": values < value,
            "<=": values <= value, ">": values > value, ">=": values >= value}[op]
    frame = frame[keep.fillna(False).astype(bool)]
  return frame



def from_frame(frame: pd.DataFrame, columns: dict, *, n_kind: str = "",
               min_points: int = MIN_POINTS) -> Points:
  """Validates and converts a table; drops unusable rows with a counted warning."""
  names = {key: columns.get(key) for key in KEYS}
  present = {key: name for key, name in names.items() if name in frame}
  missing = [k for k in ("N", "loss") if k not in present]
  if "D" not in present and "C" not in present:
    missing.append("D or C")
  if missing:
    raise ValueError(f"missing column(s) for {missing} (looked for "
                     f"{ {k: names[k] for k in ('N', 'D', 'C', 'loss')} }); available: "
                     f"{', '.join(map(str, frame.columns))}. Map them with --columns, e.g. "
                     "--columns=N:Model Size,C:Training FLOP,loss:loss")
  number = lambda key: pd.to_numeric(frame[present[key]], errors="coerce").to_numpy(float)
  n, loss = number("N"), number("loss")
  with np.errstate(divide="ignore", invalid="ignore"):
    d = number("D") if "D" in present else number("C") / (6 * n)
    c = number("C") if "C" in present else 6 * n * d
  if "run_id" in present:
    run_id = frame[present["run_id"]].astype(str).to_numpy()
  else:
    run_id = np.array([f"row{i}" for i in range(len(frame))])

  reasons = {}
  bad = np.zeros(len(frame), bool)
  for key, x in (("N", n), ("D", d), ("C", c), ("loss", loss)):
    nan = ~np.isfinite(x)
    nonpositive = np.isfinite(x) & (x <= 0)
    for why, mask in ((f"{key} missing/NaN", nan), (f"{key} <= 0", nonpositive)):
      new = mask & ~bad
      if new.any():
        reasons[why] = int(new.sum())
      bad |= mask
  dropped = []
  for key, x in (("N", n), ("D", d), ("C", c), ("loss", loss)):
    for i in np.flatnonzero(~(np.isfinite(x) & (x > 0))):
      if all(r != run_id[i] for r, _ in dropped):
        dropped.append((str(run_id[i]), f"{names[key] or key} = {x[i]}"))
  if reasons:
    logs.warn(f"dropped {int(bad.sum())} of {len(frame)} rows: "
          + ", ".join(f"{v} with {k}" for k, v in reasons.items()) + " ("
          + ", ".join(f"{r}: {why}" for r, why in dropped[:10])
          + (" ..." if len(dropped) > 10 else "") + ")")
  keep = ~bad
  if keep.sum() < min_points:
    raise ValueError(f"only {int(keep.sum())} usable row(s) (of {len(frame)}); a fit needs at "
                     f"least {min_points} with positive, finite N, D (or C) and loss")
  floor = None
  for column in FLOOR_COLUMNS:
    if column in frame:
      values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)[keep]
      if np.isfinite(values).any():
        floor = float(np.nanmin(values))
        break
  n, d, c, loss, run_id = n[keep], d[keep], c[keep], loss[keep], run_id[keep]
  order = np.lexsort((run_id, loss, d, n, c))  # canonical: input order must not matter
  return Points(N=n[order], D=d[order], C=c[order], loss=loss[order], run_id=run_id[order],
                n_dropped=int(bad.sum()), n_kind=n_kind or names["N"], floor=floor,
                dropped=tuple(dropped))


def tokens_along_budget(n_M, d_M):
  """D(n) on one FLOP budget: log-linear between its runs' sizes (mean log D per distinct
  size), constant beyond the ends. A budget's tokens at size n are its design (C over the
  FLOPs per token of size n, not C/6n when C counts every executed FLOP), so a law's
  D_opt and the plots read the tokens here rather than assume 6ND."""
  sizes = np.unique(n_M)
  nodes = np.array([np.mean(np.log(d_M[n_M == n])) for n in sizes])
  return lambda n: np.where(np.isfinite(n), np.exp(np.interp(np.log(n), np.log(sizes), nodes)),
                            np.nan)  # interp maps NaN to a finite end when there is one size


def buckets(c) -> np.ndarray:
  """FLOP-budget index per value, ascending. From the largest C down, a budget holds the
  values within BUCKET_DECADES below its largest (not chained, so continuously spread C
  still splits into narrow bins). Anchored at the top because runs spend at most their
  planned budget: block-sparse kinds are charged their measured density, which the plan
  cannot know (steps are planned at density 1), and land up to ~0.1 decades below it."""
  z = np.log10(np.asarray(c, np.float64))
  order = np.argsort(-z, kind="stable")
  labels = np.empty(len(z), int)
  label, top = -1, np.inf
  for i in order:
    if top - z[i] > BUCKET_DECADES:
      label, top = label + 1, z[i]
    labels[i] = label
  return label - labels


def run_budgets(points: Points):
  """(runs, inverse, budget per run): each run is placed by its largest C, so a run's loss
  curve and a budget's runs always stay together."""
  runs, inverse = np.unique(points.run_id, return_inverse=True)
  run_c = np.zeros(len(runs))
  np.maximum.at(run_c, inverse, points.C)
  return runs, inverse, buckets(run_c)


def holdout_split(points: Points, fraction: float = 0.2, min_points: int = 3):
  """(kept, held-out) masks holding out whole FLOP budgets, largest first, until the held-out
  set has >= `fraction` of the runs and >= `min_points` points. A budget is never split
  between the two sets. Held-out is empty when nothing would be left to fit."""
  runs, inverse, budget_U = run_budgets(points)
  want_runs = max(1, int(round(fraction * len(runs))))
  held_runs = np.zeros(len(runs), bool)
  for g in sorted(set(budget_U.tolist()), reverse=True):
    if held_runs.sum() >= want_runs and held_runs[inverse].sum() >= min_points:
      break
    held_runs |= budget_U == g
  held = held_runs[inverse]
  if held.all():
    held[:] = False
  return ~held, held
