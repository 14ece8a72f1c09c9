"""The IsoFLOP figure and the per-budget grouping it is built on. `budgets` splits the runs
into FLOP budgets and, per budget, evaluates the law along the runs' actual (N, D) (the
Approach 3 loss, or the isoflop law's fitted parabola), finds the fitted minimum and whether
the budget's sizes bracket it; `isoflop_figure` draws loss against N and against D per
budget. The budget colours, legend and colour bar live here too, and the allocation and
residual figures reuse them so that a budget has one colour across all plots.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from sweeps.laws import chinchilla, isoflop  # noqa: E402
from sweeps.plot_text import LABEL, info_text, sci, title  # noqa: E402

MAX_LEGEND_BUDGETS = 12  # more budgets than this: a colour bar of log10 C instead of a legend


def budget_colors(n: int):
  return plt.cm.viridis(np.linspace(0.0, 0.85, max(n, 1)))


def colors_for(entries):
  """One colour per budget: evenly spaced for a legend; by log10 C for a colour bar."""
  if len(entries) <= MAX_LEGEND_BUDGETS:
    return budget_colors(len(entries))
  z = np.log10([e["C"] for e in entries])
  return plt.cm.viridis(0.85 * (z - z.min()) / max(z.max() - z.min(), 1e-12))


def _log_interp(x_new, x, y):
  """y(x_new) interpolated linearly in log x, log y (constant beyond the ends)."""
  return np.exp(np.interp(np.log(x_new), np.log(x), np.log(y)))


def _fit_budget_index(fit_obj: dict, c: float):
  """Index of the fit_obj['budgets'] entry at FLOPs c (same bucket), or None."""
  budget_c = np.asarray((fit_obj.get("budgets") or {}).get("C") or [], np.float64)
  if not budget_c.size:
    return None
  gap = np.abs(np.log10(budget_c) - np.log10(c))
  g = int(np.argmin(gap))
  return g if gap[g] <= isoflop.BUCKET_DECADES else None


def _flag(values, g):
  if values is None or g is None or g >= len(values) or values[g] is None:
    return None
  return bool(values[g])


def budgets(fit_obj: dict, points, grid: int = 200) -> list[dict]:
  """Per FLOP budget (ascending C): its runs, the law's curve along the runs' actual (N, D),
  the fitted minimum, and whether that minimum is bracketed by the budget's sizes.

  The curve's D(n) is interpolated log-linearly between the budget's own runs, so a run that
  trained on more or fewer tokens than C/6N is plotted (and the law evaluated) where it is.
  """
  law = fit_obj["law"]
  params = {**fit_obj.get("params", {}), **(fit_obj.get("derived") or {})}
  fitted = fit_obj.get("budgets") or {}
  bucket = isoflop.buckets(points.C)
  flagged = _unbracketed_in_diagnostics(fit_obj)
  out = []
  for b in range(int(bucket.max()) + 1):
    sel = bucket == b
    n_runs, d_runs = points.N[sel], points.D[sel]
    c = float(np.exp(np.mean(np.log(points.C[sel]))))
    uniq = np.unique(n_runs)
    # Mean log D per distinct N: repeated runs of one size give one interpolation node.
    d_nodes = np.array([np.exp(np.mean(np.log(d_runs[n_runs == n]))) for n in uniq])
    entry = {"C": c, "mask": sel, "N": n_runs, "D": d_runs, "loss": points.loss[sel],
             "curve": None, "vertex": None, "bracketed": None}
    g = _fit_budget_index(fit_obj, c) if law == "isoflop" else None
    if len(uniq) >= 2:
      n = np.geomspace(uniq[0], uniq[-1], grid)
      d = _log_interp(n, uniq, d_nodes)
      if law == "chinchilla":
        loss = chinchilla.predict(params, n, d)
        if np.isfinite(loss).any():
          i = int(np.nanargmin(loss))
          entry["vertex"] = (n[i], d[i], loss[i])
          entry["bracketed"] = 0 < i < grid - 1
          entry["curve"] = (n, d, loss)
      elif law == "isoflop" and g is not None and g < len(fitted.get("parabola") or []):
        p0, p1, p2 = (float("nan") if v is None else v for v in fitted["parabola"][g])
        if np.isfinite(p2):
          x = np.log(n)
          entry["curve"] = (n, d, p0 + p1 * x + p2 * x ** 2)
    if law == "isoflop" and g is not None:
      n_opt = (fitted.get("N_opt") or [None] * (g + 1))[g]
      l_min = (fitted.get("loss_min") or [None] * (g + 1))[g]
      ok = n_opt is not None and l_min is not None and np.isfinite(n_opt) and np.isfinite(l_min)
      if ok:
        entry["vertex"] = (n_opt, float(_log_interp(n_opt, uniq, d_nodes)), l_min)
      flag = _flag(fitted.get("bracketed"), g)
      entry["bracketed"] = ok if flag is None else flag and ok
    if any(abs(np.log10(u) - np.log10(c)) <= isoflop.BUCKET_DECADES for u in flagged):
      entry["bracketed"] = False
    out.append(entry)
  return out


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
  curve_what = {"chinchilla": "L(N, D) along each budget's runs",
                "isoflop": "parabola in log N per budget"}.get(fit_obj["law"], "fit")
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
