"""Learning-rate transfer: where the loss-minimising LR sits at each width (or depth).

  python -m sweeps.transfer --store=DIR [--axis=auto|width|depth] [--out=DIR]
      [--column=eval_loss] [--tolerance_steps=1]

Reads an LR-grid store (experiments/reproduce/mup_transfer.py) and, for each arm
(parametrization, plus "+completep" under CompleteP's depth scaling) and each width (or depth):

- the grid optimum: the LR (a power of 2 on the grid) with the lowest loss. Bracketed only
  when a finite, worse point lies on each side; an optimum on a grid edge says the grid
  is too narrow, not where the optimum is.
- a refined optimum: the vertex of the parabola through the grid optimum and its two
  neighbours in log2 LR (Everett et al. 2024 fit such curves); only when bracketed.
- the margin: how much higher the better neighbour's loss is. A margin within the
  seed-to-seed noise of one run says the grid cannot place that optimum to one step.

An arm transfers when every optimum is bracketed and the grid optima span at most
--tolerance_steps grid steps (factors of 2) across the axis; `drift` is the least-squares
slope of log2 refined LR against log2 width (Adam under sp: about -1). Diverged runs count
as worse than any finite loss; failed or missing runs are reported, not guessed.
Writes OUT/transfer.json and OUT/transfer.png (one panel per arm: loss against log2 LR, one
curve per width, the optimum starred, hollow where not bracketed). OUT defaults to STORE.
"""
import math
import os

from absl import app, flags
import numpy as np

from experiments import logs
from experiments.metrics import write_json_atomic
from sweeps import flags as sweep_flags
from sweeps import store as store_lib

AXES = {"width": "model.width", "depth": "model.depth"}
LR_KEY = "optimizer.lr"

FLAGS = flags.FLAGS


def define_flags():
  """The CLI's flags, defined only when it runs: absl flags are process-wide and
  sweeps.fit owns another --out."""
  flags.DEFINE_enum("axis", "auto", ["auto", *AXES], "What varies across curves: auto "
                    "picks the one of width / depth that takes more than one value.")
  flags.DEFINE_string("out", None, "Directory for transfer.json and transfer.png "
                      "(default: the store).")
  flags.DEFINE_string("column", "eval_loss", "Summary column to minimise.")
  flags.DEFINE_integer("tolerance_steps", 1, "Largest spread of the grid optima, in grid "
                       "steps, that still counts as transfer.")


def arm_of(row):
  arm = str(row.get("model.parametrization", "sp"))
  scaling = row.get("model.depth_scaling", "none")
  return arm if scaling in (None, "none") or not isinstance(scaling, str) else f"{arm}+{scaling}"


def pick_axis(frame, axis="auto"):
  if axis != "auto":
    return axis
  varying = [a for a, key in AXES.items() if key in frame and frame[key].nunique() > 1]
  if len(varying) != 1:
    raise ValueError(f"--axis=auto: expected exactly one of width / depth to vary across the "
                     f"store's runs, found {varying or 'neither'}; pass --axis=width|depth.")
  return varying[0]


def grid_points(frame, axis_key, column):
  """{arm: {axis value: [(log2 lr, loss or inf if diverged)]}} and the runs left out."""
  out, missing = {}, []
  for _, row in frame.iterrows():
    status, loss = row.get("status"), row.get(column)
    if status == "diverged" or (status == "done" and not np.isfinite(loss)):
      loss = math.inf
    elif status != "done":
      missing.append(f"{row['run_id']} ({status})")
      continue
    curve = out.setdefault(arm_of(row), {}).setdefault(int(row[axis_key]), [])
    curve.append((math.log2(float(row[LR_KEY])), float(loss)))
  return {a: {v: sorted(c) for v, c in sorted(cs.items())} for a, cs in sorted(out.items())}, \
      missing


def optimum(curve):
  """{log2_lr, loss, bracketed, refined_log2_lr} for one curve [(log2 lr, loss)] (sorted)."""
  losses = [loss for _, loss in curve]
  if not any(math.isfinite(loss) for loss in losses):
    return {"log2_lr": None, "loss": None, "bracketed": False, "refined_log2_lr": None,
            "margin": None}
  i = int(np.argmin(losses))
  bracketed = 0 < i < len(curve) - 1
  refined = None
  if bracketed:
    (x0, y0), (x1, y1), (x2, y2) = curve[i - 1:i + 2]
    if math.isfinite(y0) and math.isfinite(y2):
      a, b, _ = np.polyfit([x0, x1, x2], [y0, y1, y2], 2)
      refined = float(np.clip(-b / (2 * a), x0, x2)) if a > 0 else x1
    else:
      refined = x1  # a diverged neighbour: the edge of stability, no parabola
  # How much worse the better grid neighbour is: with one seed per point, a margin
  # within the seed noise means the grid cannot place the optimum this precisely.
  neighbours = [losses[j] for j in (i - 1, i + 1) if 0 <= j < len(curve)]
  margin = (min(neighbours) - losses[i]) if neighbours else None
  return {"log2_lr": curve[i][0], "loss": curve[i][1], "bracketed": bracketed,
          "refined_log2_lr": refined, "margin": margin}


def _drift(axis_values, refined):
  pairs = [(math.log2(v), r) for v, r in zip(axis_values, refined) if r is not None]
  if len(pairs) < 2:
    return None
  x, y = np.array(pairs).T
  return float(np.polyfit(x, y, 1)[0])


def analyse(points, tolerance_steps=1):
  """Per arm: its optima per axis value, the spread in grid steps, drift and verdict."""
  arms, problems = {}, []
  for arm, curves in points.items():
    optima = {v: optimum(c) for v, c in curves.items()}
    grid = [o["log2_lr"] for o in optima.values() if o["log2_lr"] is not None]
    spread = (max(grid) - min(grid)) if grid else None
    unbracketed = [v for v, o in optima.items() if not o["bracketed"]]
    for v in unbracketed:
      problems.append(f"{arm} at {v}: optimum on the grid edge (or no finite loss): "
                      "widen the LR grid there")
    for v, c in curves.items():
      if len(c) < 3:
        problems.append(f"{arm} at {v}: only {len(c)} LR point(s)")
    transfers = spread is not None and not unbracketed and spread <= tolerance_steps
    arms[arm] = {"optima": optima, "spread_steps": spread, "transfers": bool(transfers),
                 "drift": _drift(list(optima), [o["refined_log2_lr"] for o in optima.values()]),
                 "bracketed": not unbracketed}
  return {"arms": arms, "problems": problems, "tolerance_steps": tolerance_steps}


def verdict(info):
  if info["transfers"]:
    return "transfers"
  return "does not transfer" if info["bracketed"] else "undetermined (unbracketed optimum)"


def _lr(e):
  return "-" if e is None else f"2^{e:+.1f} ({2.0 ** e:.3g})"


def format_table(result, axis):
  lines = [f"{'arm':<16} {axis:>6} {'grid optimum LR':>22} {'refined LR':>22} {'loss':>8} "
           f"{'margin':>7}"]
  for arm, info in result["arms"].items():
    for v, o in info["optima"].items():
      mark = "" if o["bracketed"] else "  (edge: not bracketed)"
      loss = "-" if o["loss"] is None else f"{o['loss']:.4f}"
      margin = "-" if o["margin"] is None else f"{o['margin']:.4f}"
      lines.append(f"{arm:<16} {v:>6} {_lr(o['log2_lr']):>22} {_lr(o['refined_log2_lr']):>22} "
                   f"{loss:>8} {margin:>7}{mark}")
  lines.append("")
  for arm, info in result["arms"].items():
    drift = "-" if info["drift"] is None else f"{info['drift']:+.2f}"
    spread = "-" if info["spread_steps"] is None else f"{info['spread_steps']:.0f}"
    lines.append(f"{arm}: optimum spread {spread} grid step(s) across {axis}s, drift "
                 f"{drift} log2 LR per doubling: {verdict(info)} (tolerance "
                 f"{result['tolerance_steps']} step)")
  return "\n".join(lines)


def figure(points, result, axis, column):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from sweeps import plot
  arms = list(points)
  with plt.rc_context(plot.STYLE):
    fig, axes = plt.subplots(1, len(arms), figsize=(4.2 * len(arms), 3.8), squeeze=False,
                             sharey=True)
    finite = [loss for cs in points.values() for c in cs.values() for _, loss in c
              if math.isfinite(loss)]
    low = min(finite) if finite else 0.0
    top = min(max(finite), low + 1.5) if finite else 1.0
    bottom = low - 0.05 * (top - low)
    for ax, arm in zip(axes[0], arms):
      curves, info = points[arm], result["arms"][arm]
      colors = plt.cm.viridis(np.linspace(0, 0.9, len(curves)))
      for color, (v, curve) in zip(colors, curves.items()):
        x = [e for e, _ in curve]
        y = [loss if math.isfinite(loss) else np.nan for _, loss in curve]
        ax.plot(x, y, "o-", color=color, ms=3.5, lw=1.4, label=f"{axis} {v}")
        o = info["optima"][v]
        if o["log2_lr"] is not None:
          ax.plot([o["log2_lr"]], [o["loss"]], "*", ms=13, mec=color,
                  mfc=color if o["bracketed"] else "none")
      spread = info["spread_steps"]
      ax.set_title(f"{arm}: {verdict(info).split(' (')[0]}\noptimum spread "
                   f"{'-' if spread is None else f'{spread:.0f}'} step(s)")
      ax.set_xlabel("log2 learning rate")
      ax.set_ylim(bottom, top)
      ax.legend(loc="best")
    axes[0][0].set_ylabel(column.replace("_", " "))
    fig.tight_layout()
  return fig


def run(store, axis="auto", out=None, column="eval_loss", tolerance_steps=1):
  frame = store_lib.load(store)
  for key in (LR_KEY, column):
    if key not in frame:
      raise ValueError(f"store {store!r} has no {key!r} column: is it an LR-grid store "
                       "(experiments/reproduce/mup_transfer.py)?")
  axis = pick_axis(frame, axis)
  points, missing = grid_points(frame, AXES[axis], column)
  if not points:
    raise ValueError(f"store {store!r}: no finished runs to analyse")
  if missing:
    logs.warn(f"{len(missing)} run(s) not finished, left out: " + ", ".join(missing))
  result = analyse(points, tolerance_steps)
  result.update(axis=axis, column=column, store=store, missing=missing)
  out = out or store
  os.makedirs(out, exist_ok=True)
  files = [os.path.join(out, "transfer.json"), os.path.join(out, "transfer.png")]
  write_json_atomic(files[0], result)
  fig = figure(points, result, axis, column)
  fig.savefig(files[1] + ".tmp.png", dpi=120)
  os.replace(files[1] + ".tmp.png", files[1])
  result["files"] = files
  return result


def main(argv):
  del argv
  logs.setup()
  if sweep_flags.STORE.value is None:
    raise app.UsageError("--store=DIR is required", exitcode=logs.EXIT_BAD_INPUT)

  def body():
    result = run(sweep_flags.STORE.value, FLAGS.axis, FLAGS.out, FLAGS.column,
                 FLAGS.tolerance_steps)
    print(format_table(result, result["axis"]))
    for problem in result["problems"]:
      print(f"WARNING: {problem}")
    print("wrote:\n" + "\n".join(f"  {path}" for path in result["files"]))
    return 0
  return logs.guard(body)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=logs.parse_flags)
