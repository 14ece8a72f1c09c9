"""Coordinate check: per-group activation RMS at init and after 5 Adam steps.

Width: sp, mup and umup at widths 64..512 (depth 2, mup_base_width 64; umup at its own
global LR, coord_check.LR). Depth: mup at width 64 with depth_scaling none and completep
at depths 2..16 (depth_base 2). Prints one table and writes a PNG (one panel per group,
RMS after the steps against width or depth). Under mup and umup every row stays put
across widths, under sp the logits and hidden outputs grow; under completep the final
residual stream stays put across depths, under none it grows.

  .venv/bin/python benchmarks/coord_check.py --out=coord_check.png
"""
import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from experiments import coord_check  # noqa: E402

_WIDTHS = flags.DEFINE_list("widths", ["64", "128", "256", "512"], "Widths (depth 2).")
_DEPTHS = flags.DEFINE_list("depths", ["2", "4", "8", "16"], "Depths (width 64).")
_STEPS = flags.DEFINE_integer("steps", 5, "Adam steps before the second measurement.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Sequences per step.")
_SEQ = flags.DEFINE_integer("seq_len", 32, "Tokens per sequence.")
_OUT = flags.DEFINE_string("out", "coord_check.png", "Where the PNG goes.")


def _rows():
  """(sweep, setting, size, {"t0": groups, "tN": groups}) for every run."""
  size = {"batch_size": _BATCH.value, "seq_len": _SEQ.value}
  runs = [("width", p, int(w), coord_check.coord_config(int(w), 2, p, **size))
          for p in ("sp", "mup", "umup") for w in _WIDTHS.value]
  runs += [("depth", s, int(d), coord_check.coord_config(64, int(d), "mup", s, **size))
           for s in ("none", "completep") for d in _DEPTHS.value]
  rows = []
  for sweep, setting, n, cfg in runs:
    logging.info("coord check: %s %s %d", sweep, setting, n)
    out = coord_check.measure(cfg, steps=_STEPS.value)
    rows.append((sweep, setting, n, {t: coord_check.group_rms(v) for t, v in out.items()}))
  return rows


def _table(rows):
  t_last = f"t{_STEPS.value}"
  head = ["sweep", "setting", "size"] + [f"{g}@{t}" for t in ("t0", t_last)
                                         for g in coord_check.GROUPS]
  lines = [" ".join(f"{h:>15}" if i > 2 else f"{h:>9}" for i, h in enumerate(head))]
  for sweep, setting, n, groups in rows:
    cells = [f"{sweep:>9}", f"{setting:>9}", f"{n:>9}"]
    cells += [f"{groups[t][g]:>15.4g}" for t in ("t0", t_last) for g in coord_check.GROUPS]
    lines.append(" ".join(cells))
  return "\n".join(lines)


def _plot(rows, path):
  t_last = f"t{_STEPS.value}"
  groups = coord_check.GROUPS
  fig, axes = plt.subplots(2, len(groups), figsize=(3.2 * len(groups), 6.4), squeeze=False)
  for r, sweep in enumerate(("width", "depth")):
    settings = dict.fromkeys(s for w, s, _, _ in rows if w == sweep)
    for c, group in enumerate(groups):
      ax = axes[r][c]
      for k, setting in enumerate(settings):
        pts = [(n, g) for w, s, n, g in rows if w == sweep and s == setting]
        sizes = [n for n, _ in pts]
        ax.plot(sizes, [g[t_last][group] for _, g in pts], "o-", color=f"C{k}",
                label=f"{setting} {t_last}")
        ax.plot(sizes, [g["t0"][group] for _, g in pts], "x:", color=f"C{k}",
                label=f"{setting} t0")
      ax.set_xscale("log", base=2)
      ax.set(yscale="log", xlabel=sweep, title=f"{group} RMS")
      ax.set_xticks(sizes, [str(n) for n in sizes])
      ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
      if c == 0:
        ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  rows = _rows()
  print(_table(rows))
  _plot(rows, _OUT.value)
  logging.info("wrote %s", _OUT.value)


if __name__ == "__main__":
  app.run(main)
