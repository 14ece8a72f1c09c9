"""PNG plots of a fit, drawn as a paper's figures (matplotlib, Agg).

- `loss_vs_compute`: every run's loss against its training FLOPs, coloured by N, with the
  law's loss curve (the compute-optimal loss for allocating laws, with its interval band,
  dashed where it extrapolates beyond the fitted runs).
- `isoflop` (chinchilla, isoflop): one colour per FLOP budget; loss against the runs' actual
  N and, beside it, against their actual tokens D; the fitted curve per budget (the isoflop
  parabola, or Approach 3 evaluated along the budget's own (N, D) runs) and its minimum;
  budgets whose minimum is not bracketed are drawn hollow and dotted.
- `allocation` (chinchilla, isoflop, envelope): N_opt(C), D_opt(C) and D_opt/N_opt with
  interval bands; the fitted data range is shaded and the extrapolated part dashed.
- `residuals`: the fit's residuals against training FLOPs with a zero line, by budget.

Every figure carries the law's form, its fitted parameters with their intervals and the
fit's quality. Each `*_figure` function returns the figure unsaved (tests inspect them);
`write_plots` saves them all and returns the paths.
"""
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from sweeps import allocation  # noqa: E402
from sweeps.laws import chinchilla, frontier, isoflop, kaplan  # noqa: E402

DPI = 120
MAX_LEGEND_BUDGETS = 12  # more budgets than this: a colour bar of log10 C instead of a legend
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 9,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.25,
         "grid.linewidth": 0.6}

FORMS = {
    "chinchilla": [r"$L(N, D) = E + A/N^{\alpha} + B/D^{\beta}$",
                   r"$N_{opt} = G\,(C/6)^{a},\ D_{opt} = G^{-1}(C/6)^{b}$"],
    "isoflop": [r"$N_{opt} = N_{coef}\,C^{a},\ D_{opt} = D_{coef}\,C^{b}$",
                r"$L_{opt} = loss_{coef}\,C^{loss_{exp}}$"],
    "envelope": [r"$N_{opt} = N_{coef}\,C^{a},\ D_{opt} = D_{coef}\,C^{b}$",
                 r"$L_{opt} = loss_{coef}\,C^{loss_{exp}}$"],
    "kaplan": [r"$L(X) = E_X + (X_c/X)^{\alpha_X},\ X \in \{N, D, C\}$"],
    "frontier": [r"$L_q(C) = floor + span\,\sigma(-k(\log_{10}C - z_0))$"],
}
LABEL = {"N": "parameters N", "D": "tokens D", "C": "training FLOPs C",
         "loss": "loss (nats/token)"}


# ---------------------------------------------------------------------------------- text

def sci(x) -> str:
  """1.0e12-style (no '+', no leading zeros in the exponent); 'n/a' when not finite."""
  if x is None or not np.isfinite(x):
    return "n/a"
  mantissa, exponent = f"{x:.1e}".split("e")
  return f"{mantissa}e{int(exponent)}"


def num(x) -> str:
  """A parameter value to 3 significant figures: 0.400, 995, 3590, 2.1e19, 1.2e-5."""
  if x is None or not isinstance(x, (int, float, np.floating)) or not np.isfinite(x):
    return "n/a"
  if x != 0 and not 1e-3 <= abs(x) < 1e5:
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
  if x == 0:
    return "0"
  if abs(x) >= 1000:
    return f"{x:.0f}" if abs(x) < 1e4 else f"{round(x, -2):.0f}"
  return f"{x:#.3g}".rstrip(".")


def _finite_interval(interval):
  if not interval or len(interval) != 2:
    return None
  try:
    lo, hi = (float(v) for v in interval)
  except (TypeError, ValueError):
    return None
  return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def _symbol(key: str) -> str:
  return key.replace("alpha", "α").replace("beta", "β")


def param_lines(fit_obj: dict) -> list[str]:
  """'α = 0.391 [0.340, 0.451]' per parameter and derived quantity (no interval when the fit
  has none or it is not finite)."""
  intervals = fit_obj.get("intervals") or {}
  values = {**fit_obj.get("params", {}), **(fit_obj.get("derived") or {})}
  lines = []
  for key, value in values.items():
    text = f"{_symbol(key)} = {num(value)}"
    interval = _finite_interval(intervals.get(key))
    if interval:
      text += f"  [{num(interval[0])}, {num(interval[1])}]"
    lines.append(text)
  return lines


def interval_note(fit_obj: dict) -> str:
  boot = fit_obj.get("bootstrap") or {}
  if not boot.get("resamples"):
    return "no intervals (fit without bootstrap)"
  note = f"[ ]: {boot.get('level', 0.95):.0%} bootstrap intervals, {boot['resamples']} resamples"
  if boot.get("failed"):
    note += f" ({boot['failed']} failed)"
  return note


def quality_text(fit_obj: dict) -> str:
  quality = fit_obj.get("quality")
  return f"quality: {quality}" if quality else ""


def diagnostic_lines(fit_obj: dict, limit: int = 4) -> list[str]:
  """Codes of the diagnostics that are not merely informational (fit.json has the text)."""
  found = [d for d in fit_obj.get("diagnostics") or []
           if isinstance(d, dict) and d.get("level", "warn") not in ("info", "ok")]
  codes = [str(d.get("code", "?")) for d in found]
  lines = [f"! {c}" for c in codes[:limit]]
  if len(codes) > limit:
    lines.append(f"! … {len(codes) - limit} more (see fit.json)")
  return lines


def title(fit_obj: dict, what: str) -> str:
  parts = [f"{fit_obj['law']}: {what}", f"{fit_obj.get('n_runs', '?')} runs"]
  if fit_obj.get("quality"):
    parts.append(quality_text(fit_obj))
  return " · ".join(parts)


def info_text(fit_obj: dict) -> str:
  """The law's form, its parameters with intervals, and the fit's quality and diagnostics."""
  lines = list(FORMS.get(fit_obj["law"], [fit_obj["law"]]))
  lines += [""] + param_lines(fit_obj) + [interval_note(fit_obj)]
  extra = [quality_text(fit_obj)] if fit_obj.get("quality") else []
  extra += diagnostic_lines(fit_obj)
  if extra:
    lines += [""] + extra
  return "\n".join(lines)


def _info_box(ax, fit_obj, loc="upper right", fontsize=8.5):
  x, ha = (0.98, "right") if "right" in loc else (0.02, "left")
  y, va = (0.98, "top") if "upper" in loc else (0.02, "bottom")
  ax.text(x, y, info_text(fit_obj), transform=ax.transAxes, ha=ha, va=va, fontsize=fontsize,
          bbox={"boxstyle": "round,pad=0.4", "facecolor": "white", "alpha": 0.85,
                "edgecolor": "0.7"}, zorder=10)


# ------------------------------------------------------------------------------- budgets

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


# ------------------------------------------------------------------------------- figures

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


def _draw_band_split(ax, c, value, lo, hi, c_lo, c_hi, color="black", label=None):
  """Solid inside the fitted data range [c_lo, c_hi], dashed outside; interval band."""
  inside = (c >= c_lo) & (c <= c_hi)
  ax.plot(np.where(inside, c, np.nan), value, color=color, lw=2, label=label)
  ax.plot(np.where(inside, np.nan, c), value, color=color, lw=2, ls="--",
          label=f"{label}, extrapolated" if label else None)
  if np.isfinite(lo).any():
    ax.fill_between(c, lo, hi, color=color, alpha=0.15, lw=0)


def _plain_log_y(ax):
  """Log y scale labelled 2, 3, 20, 30 rather than 2x10^0."""
  ax.set_yscale("log")
  axis = ax.yaxis
  axis.set_major_formatter(ticker.LogFormatter(labelOnlyBase=False))
  axis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))


def fitted_range(fit_obj: dict, points):
  """(C_lo, C_hi, label): the FLOP range the law was fitted on. An isoflop law sees only the
  budgets whose minimum it found, so its range is theirs, not every run's."""
  if fit_obj["law"] == "isoflop":
    fitted = fit_obj.get("budgets") or {}
    c = np.asarray(fitted.get("C") or [], float)
    n = np.asarray([np.nan if v is None else v for v in fitted.get("N_opt") or []], float)
    if len(c) == len(n) and np.isfinite(n).sum() >= 1:
      used = c[np.isfinite(n)]
      return float(used.min()), float(used.max()), "FLOP range of the fitted budgets"
  return float(points.C.min()), float(points.C.max()), "fitted runs' FLOP range"


def _data_range(ax, c_lo, c_hi, label=None):
  ax.axvspan(c_lo, c_hi, color="tab:blue", alpha=0.07, lw=0, label=label)
  for c in (c_lo, c_hi):
    ax.axvline(c, color="tab:blue", lw=0.8, alpha=0.6)


def loss_vs_compute_figure(fit_obj: dict, points):
  law = fit_obj["law"]
  params = {**fit_obj.get("params", {}), **(fit_obj.get("derived") or {})}
  c_lo, c_hi, range_label = fitted_range(fit_obj, points)
  fig, ax = plt.subplots(figsize=(8.5, 5.5), layout="constrained")
  norm = plt.Normalize(np.log10(points.N).min(), np.log10(points.N).max())
  runs, inverse = np.unique(points.run_id, return_inverse=True)
  if len(runs) < len(points):  # loss curves: one line per run
    for u in range(len(runs)):
      sel = np.flatnonzero(inverse == u)
      sel = sel[np.argsort(points.C[sel])]
      ax.plot(points.C[sel], points.loss[sel], lw=0.8, alpha=0.7,
              color=plt.cm.viridis(norm(np.log10(points.N[sel][-1]))))
  sc = ax.scatter(points.C, points.loss, c=np.log10(points.N), norm=norm, s=14, cmap="viridis",
                  zorder=3, label="runs")
  fig.colorbar(sc, ax=ax, label="log10 parameters N")
  c = np.geomspace(min(c_lo, points.C.min()) / 3, max(c_hi, points.C.max()) * 30, 300)
  if law in allocation.ALLOCATING:
    value, lo, hi = allocation.allocate(fit_obj, c)["loss"]
    _draw_band_split(ax, c, value, lo, hi, c_lo, c_hi, color="tab:red",
                     label="loss at the compute-optimal N")
  elif law == "kaplan":
    _draw_band_split(ax, c, kaplan.predict(params, "C", c), c * np.nan, c * np.nan, c_lo, c_hi,
                     color="tab:red", label="Kaplan L(C)")
  elif law == "frontier":
    _draw_band_split(ax, c, frontier.curve(params, c), c * np.nan, c * np.nan, c_lo, c_hi,
                     color="tab:red", label=f"frontier, τ = {fit_obj.get('tau')}")
  if law == "isoflop":
    fitted = fit_obj.get("budgets") or {}
    ax.scatter(fitted.get("C", []), np.asarray(fitted.get("loss_min", []), float), marker="*",
               s=180, color="tab:red", edgecolors="black", zorder=4,
               label="per-budget parabola minima")
  floor_key = {"chinchilla": "E", "kaplan": "E_C", "frontier": "floor"}.get(law, "loss_E")
  floor = params.get(floor_key)
  if floor is not None and np.isfinite(floor) and 0.3 * points.loss.min() <= floor \
      <= points.loss.max():  # off scale (a degenerate fit) it is in the text box only
    ax.axhline(floor, color="0.4", ls=":", lw=1.2,
               label=("asymptote" if law == "frontier" else "irreducible loss")
               + f" {_symbol(floor_key)} = {num(floor)}")
  ax.axvspan(c_lo, c_hi, color="tab:blue", alpha=0.05, lw=0, label=range_label)
  ax.set(xscale="log", xlabel=LABEL["C"], ylabel=LABEL["loss"],
         title=title(fit_obj, "loss vs compute"))
  if points.loss.max() > 3 * points.loss.min():  # several-fold range: log axis, plain labels
    _plain_log_y(ax)
  ax.legend(loc="lower left")
  _info_box(ax, fit_obj)
  return fig


def allocation_figure(fit_obj: dict, points):
  """N_opt(C), D_opt(C) and tokens per parameter, with bands; data range shaded."""
  law = fit_obj["law"]
  c_lo, c_hi, range_label = fitted_range(fit_obj, points)
  c = np.geomspace(min(c_lo, points.C.min()) / 10, max(c_hi, points.C.max()) * 1000, 300)
  alloc = allocation.allocate(fit_obj, c)
  intervals = fit_obj.get("intervals") or {}
  params = {**fit_obj.get("params", {}), **(fit_obj.get("derived") or {})}
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), layout="constrained")
  measured = None
  if law == "isoflop":
    fitted = fit_obj.get("budgets") or {}
    # The vertices of the isoflop figure: N_opt of each budget's parabola, and the tokens the
    # budget's runs actually trained on at that size (equal to C/6N_opt when D = C/6N).
    found = [e for e in budgets(fit_obj, points) if e["vertex"] is not None]
    mc = np.asarray([e["C"] for e in found], float)
    mn, md = (np.asarray([e["vertex"][k] for e in found], float) for k in (0, 1))
    measured = (mc, mn, md, "per-budget parabola minima")
  elif law == "envelope":
    env = fit_obj.get("envelope") or {}
    mc = np.asarray(env.get("C") or [], float)
    mn = np.asarray([np.nan if v is None else v for v in env.get("N_opt") or []], float)
    measured = (mc, mn, None, "envelope minimisers")
  exponent = {"N_opt": "a", "D_opt": "b"}
  for i, (ax, key, ylabel) in enumerate(zip(
      axes, ("N_opt", "D_opt", "tokens_per_param"),
      ("compute-optimal " + LABEL["N"], "compute-optimal " + LABEL["D"],
       "tokens per parameter D_opt / N_opt"))):
    value, lo, hi = alloc[key]
    _data_range(ax, c_lo, c_hi, label=range_label if i == 0 else None)
    _draw_band_split(ax, c, value, lo, hi, c_lo, c_hi, label="fitted law" if i == 0 else None)
    if measured is not None:
      y = {"N_opt": measured[1], "D_opt": measured[2]}.get(key)
      if key == "tokens_per_param" and measured[2] is not None:
        y = measured[2] / measured[1]
      if y is not None:
        ok = np.isfinite(y)
        ax.scatter(measured[0][ok], y[ok], s=40 if law == "isoflop" else 8, zorder=4,
                   color="tab:orange", edgecolors="black" if law == "isoflop" else "none",
                   label=measured[3])
    if key in exponent:
      e = exponent[key]
      text = rf"${key[0]}_{{opt}} \propto C^{{{e}}}$,  {e} = {num(params.get(e))}"
      interval = _finite_interval(intervals.get(e))
      if interval:
        text += f"  [{num(interval[0])}, {num(interval[1])}]"
      ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=9.5,
              bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "ec": "0.7"})
    ax.set(xscale="log", yscale="log", xlabel=LABEL["C"], ylabel=ylabel)
    if key == "tokens_per_param":
      _plain_log_y(ax)
  handles, labels = axes[0].get_legend_handles_labels()
  more_h, more_l = axes[2].get_legend_handles_labels()
  if np.isfinite(alloc["N_opt"][1]).any():
    handles.append(plt.Rectangle((0, 0), 1, 1, color="black", alpha=0.15))
    labels.append(interval_note(fit_obj).replace("[ ]: ", ""))
  axes[0].legend(handles + [h for h, l in zip(more_h, more_l) if l not in labels],
                 labels + [l for l in more_l if l not in labels], loc="lower right",
                 fontsize=8)
  form = FORMS.get(law, [])
  suffix = f" · {form[1 if law == 'chinchilla' else 0]}" if form else ""
  fig.suptitle(title(fit_obj, "compute-optimal allocation") + suffix, fontsize=12)
  return fig


def _kaplan_groups(fit_obj, points):
  """The residuals of a Kaplan fit are per variable, on that variable's loss frontier: the
  points each belongs to (None when they cannot be matched)."""
  sel = kaplan._selections(points, np.ones((1, len(points))))
  idx = [(v, np.flatnonzero(s[0] > 0)) for v, (_, s) in sel.items()]
  if sum(len(i) for _, i in idx) != len(fit_obj["residuals"]):
    return None
  return idx


def residuals_figure(fit_obj: dict, points):
  law = fit_obj["law"]
  res = np.asarray([np.nan if v is None else v for v in fit_obj.get("residuals") or []], float)
  fig, ax = plt.subplots(figsize=(8.5, 4.6), layout="constrained")
  ax.axhline(0, color="black", lw=0.9, zorder=1)
  entries = budgets({"law": "plain"}, points)  # colours per budget
  colors = colors_for(entries)
  bucket = isoflop.buckets(points.C)
  ylabel = "residual"
  legend_budgets = len(entries) <= MAX_LEGEND_BUDGETS
  if law == "chinchilla" and len(res) == len(points):
    for b, (entry, color) in enumerate(zip(entries, colors)):
      ax.scatter(points.C[bucket == b], res[bucket == b], s=22, color=color,
                 label=budget_label(entry["C"]) if legend_budgets else None)
    ylabel = "log L_pred − log L_obs\n(≈ relative loss error)"
  elif law == "frontier" and len(res) == len(points):
    for b, (entry, color) in enumerate(zip(entries, colors)):
      ax.scatter(points.C[bucket == b], res[bucket == b], s=22, color=color,
                 label=budget_label(entry["C"]) if legend_budgets else None)
    ylabel = "L_obs − L_frontier (nats/token)"
  elif law == "isoflop":
    fitted = fit_obj.get("budgets") or {}
    c_g = np.asarray(fitted.get("C") or [], float)
    n_opt = np.asarray([np.nan if v is None else v for v in fitted.get("N_opt") or []], float)
    used = np.isfinite(n_opt)
    if used.sum() == len(res):
      for g in np.flatnonzero(used):
        b = int(np.argmin(np.abs(np.log10([e["C"] for e in entries]) - np.log10(c_g[g]))))
        ax.scatter([c_g[g]], [res[list(np.flatnonzero(used)).index(g)]], s=50,
                   color=colors[b], edgecolors="black", zorder=3,
                   label=budget_label(c_g[g]) if legend_budgets else None)
    ylabel = "log N_opt,law − log N_opt,parabola\n(≈ relative error of N_opt)"
  elif law == "envelope":
    env_c = np.asarray((fit_obj.get("envelope") or {}).get("C") or [], float)
    if len(env_c) == len(res):
      ax.scatter(env_c, res, s=10, color="tab:purple", label="envelope FLOP grid")
    ylabel = "log N_opt,law − log N_opt,envelope\n(≈ relative error of N_opt)"
  elif law == "kaplan":
    groups = _kaplan_groups(fit_obj, points)
    if groups is not None:
      start = 0
      for (variable, idx), marker in zip(groups, ("o", "s", "^")):
        ax.scatter(points.C[idx], res[start:start + len(idx)], s=26, marker=marker,
                   label=f"L({variable}), on its frontier")
        start += len(idx)
    ylabel = "log L_pred − log L_obs\n(≈ relative loss error)"
  if not ax.collections:  # residuals we cannot place: by index, as the fit wrote them
    ax.plot(res, "o", ms=4)
    ax.set_xlabel("residual index (fit.json order)")
  else:
    ax.set_xscale("log")
    ax.set_xlabel(LABEL["C"])
  ax.set_ylabel(ylabel)
  finite = res[np.isfinite(res)]
  rms = f"RMS {np.sqrt(np.mean(finite ** 2)):.3g}" if finite.size else "no residuals"
  ax.set_title(title(fit_obj, f"residuals ({rms})"))
  if ax.get_legend_handles_labels()[0]:
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
  elif not legend_budgets and ax.collections:
    _budget_colorbar(fig, ax, entries)
  return fig


def figures(fit_obj: dict, points) -> list:
  """(file name, figure) for every plot that applies to the fit's law, in write order."""
  law = fit_obj["law"]
  out = [("loss_vs_compute.png", loss_vs_compute_figure)]
  if law in ("chinchilla", "isoflop"):
    out.append(("isoflop.png", isoflop_figure))
  if law in allocation.ALLOCATING:
    out.append(("allocation.png", allocation_figure))
  out.append(("residuals.png", residuals_figure))
  return out


def write_plots(out: str, fit_obj: dict, points, prefix: str = "") -> list[str]:
  """Writes the plots that apply to the fit's law; returns their paths in write order."""
  os.makedirs(out, exist_ok=True)
  paths = []
  with plt.rc_context(STYLE):
    for name, make in figures(fit_obj, points):
      fig = make(fit_obj, points)
      path = os.path.join(out, f"{prefix}{name}")
      fig.savefig(path, dpi=DPI)
      plt.close(fig)
      paths.append(path)
  return paths
