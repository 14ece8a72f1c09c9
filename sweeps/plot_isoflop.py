"""The IsoFLOP figure and the per-budget grouping it is built on. `budgets` splits the runs
into FLOP budgets and, per budget, evaluates the law along the runs' actual (N, D) (its
`Law.budget_curve` hook: the Approach 3 loss, or the isoflop law's fitted parabola), with
the fitted minimum and whether the budget's sizes bracket it; `isoflop_figure` draws loss
against N and against D per budget. The budget colours, legend and colour bar live here too, and the allocation and
residual figures reuse them so that a budget has one colour across all plots.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from sweeps import points as points_lib  # noqa: E402
from sweeps.laws import base  # noqa: E402
from sweeps.plot_text import LABEL, info_text, law_of, sci, title  # noqa: E402

MAX_LEGEND_BUDGETS = 12  # more budgets than this: a colour bar of log10 C instead of a legend


def budget_colors(n: int):
  return plt.cm.viridis(np.linspace(0.0, 0.85, max(n, 1)))


def colors_for(entries):
  """One colour per budget: evenly spaced for a legend; by log10 C for a colour bar."""
  if len(entries) <= MAX_LEGEND_BUDGETS:
    return budget_colors(len(entries))
  z = np.log10([e["C"] for e in entries])
  return plt.cm.viridis(0.85 * (z - z.min()) / max(z.max() - z.min(), 1e-12))


def budgets(fit_obj: dict, points, grid: int = 200) -> list[dict]:
  """Per FLOP budget (ascending C): its runs, the law's curve along the runs' actual (N, D),
  the fitted minimum, and whether that minimum is bracketed by the budget's sizes.

  The curve's D(n) is interpolated log-linearly between the budget's own runs
  (points.tokens_along_budget), so a run that trained on more or fewer tokens than C/6N is
  plotted (and the law evaluated) where it is.
  """
  along = base.resolve(law_of(fit_obj).budget_curve)
  params = {**fit_obj.get("params", {}), **(fit_obj.get("derived") or {})}
  bucket = points_lib.buckets(points.C)
  flagged = _unbracketed_in_diagnostics(fit_obj)
  out = []
  for b in range(int(bucket.max()) + 1):
    sel = bucket == b
    n_runs, d_runs = points.N[sel], points.D[sel]
    c = float(np.exp(np.mean(np.log(points.C[sel]))))
    uniq = np.unique(n_runs)
    d_of = points_lib.tokens_along_budget(n_runs, d_runs)
    entry = {"C": c, "mask": sel, "N": n_runs, "D": d_runs, "loss": points.loss[sel],
             "curve": None, "vertex": None, "bracketed": None}
    if along is not None:
      n = np.geomspace(uniq[0], uniq[-1], grid) if len(uniq) >= 2 else None
      entry.update(along(fit_obj, params, entry, n, None if n is None else d_of(n), d_of))
    if any(abs(np.log10(u) - np.log10(c)) <= points_lib.BUCKET_DECADES for u in flagged):
      entry["bracketed"] = False
    out.append(entry)
  return out


def budget_optima(fit_obj: dict, points) -> dict:
  """The budgets' fitted minima (Law.optima of a law with per-budget minima): C, N_opt, the
  tokens the budget's runs trained on at that size (C/6N_opt when D = C/6N), and loss."""
  found = [e for e in budgets(fit_obj, points) if e["vertex"] is not None]
  n, d, loss = (np.asarray([e["vertex"][k] for e in found], float) for k in (0, 1, 2))
  return {"C": np.asarray([e["C"] for e in found], float), "N": n, "D": d, "loss": loss,
          "label": "per-budget parabola minima", "big": True}


def _unbracketed_in_diagnostics(fit_obj: dict) -> list[float]:
  """FLOPs of the budgets a diagnostic names as not bracketing their minimum."""
  out = []
  for d in fit_obj.get("diagnostics") or []:
    if isinstance(d, dict) and "unbracketed" in str(d.get("code", "")):
      try:
        c = float(d.get("C"))
      except (TypeError, ValueError):
        continue
      if np.isfinite(c) and c > 0:
        out.append(c)
  return out


def budget_label(c: float) -> str:
  return f"C = {sci(c)} FLOPs"


def _budget_legend(ax, entries, colors, extra=(), **kwargs):
  handles = []
  for entry, color in zip(entries, colors):
    hollow = entry["bracketed"] is False
    label = budget_label(entry["C"]) + (" (not bracketed)" if hollow else "")
    handles.append(Line2D([], [], color=color, marker="o", ls=":" if hollow else "-",
                          mfc="white" if hollow else color, label=label))
  return ax.legend(handles=handles + list(extra), **kwargs)


def _budget_colorbar(fig, ax, entries):
  c = np.log10([e["C"] for e in entries])
  mappable = plt.cm.ScalarMappable(plt.Normalize(c.min(), c.max()),
                                   plt.cm.colors.LinearSegmentedColormap.from_list(
                                       "budgets", budget_colors(256)))
  fig.colorbar(mappable, ax=ax, label="log10 training FLOPs C")



def isoflop_figure(fit_obj: dict, points):
  """Loss against actual N (left) and actual tokens D (right) per FLOP budget, with the fitted
  curve and minimum per budget; a third column holds the legend and the law."""
  entries = budgets(fit_obj, points)
  colors = colors_for(entries)
  fig, (ax_n, ax_d, ax_info) = plt.subplots(
      1, 3, figsize=(13.5, 5.2), gridspec_kw={"width_ratios": [1, 1, 0.62]}, layout="constrained")
  for entry, color in zip(entries, colors):
    hollow = entry["bracketed"] is False
    for ax, key, k in ((ax_n, "N", 0), (ax_d, "D", 1)):
      ax.scatter(entry[key], entry["loss"], s=30, zorder=3, color=color,
                 facecolors="white" if hollow else color, linewidths=1.3)
      if entry["curve"] is not None:
        ax.plot(entry["curve"][k], entry["curve"][2], color=color, lw=1.6,
                ls=":" if hollow else "-", zorder=2)
      if entry["vertex"] is not None:
        ax.scatter([entry["vertex"][k]], [entry["vertex"][2]], marker="*", s=220, zorder=4,
                   color=color if not hollow else "white", edgecolors="black", linewidths=0.9)
  ax_n.set(xscale="log", xlabel=LABEL["N"] + " (actual, per run)", ylabel=LABEL["loss"],
           title="IsoFLOP profiles: loss vs model size")
  ax_d.set(xscale="log", xlabel=LABEL["D"] + " (actual, per run)", ylabel=LABEL["loss"],
           title="IsoFLOP profiles: loss vs tokens")
  ax_d.sharey(ax_n)
  for ax in (ax_n, ax_d):  # minor-tick labels of a 1-2 decade log axis overlap
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  curve_what = law_of(fit_obj).budget_curve_label
  extra = [Line2D([], [], color="0.3", lw=1.6, label=f"fit: {curve_what}"),
           Line2D([], [], ls="", marker="*", ms=13, mfc="0.6", mec="black",
                  label="fitted minimum per budget")]
  if any(e["bracketed"] is False for e in entries):
    extra.append(Line2D([], [], ls=":", color="0.3", marker="o", mfc="white",
                        label="minimum not bracketed by the sizes run"))
  ax_info.axis("off")
  if len(entries) <= MAX_LEGEND_BUDGETS:
    _budget_legend(ax_info, entries, colors, extra, loc="upper left", frameon=False,
                   borderaxespad=0.0, title="FLOP budgets", alignment="left")
  else:
    _budget_colorbar(fig, ax_d, entries)
    ax_info.legend(handles=extra, loc="upper left", frameon=False, borderaxespad=0.0)
  ax_info.text(0.0, 0.0, info_text(fit_obj), transform=ax_info.transAxes, va="bottom",
               ha="left", fontsize=8.5)
  fig.suptitle(title(fit_obj, "IsoFLOP curves"), fontsize=12)
  return fig
