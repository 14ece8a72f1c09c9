"""Figures against training FLOPs C that show what the law extrapolates to: the loss against
compute (every run, with the law's `Law.loss_curve` — its compute-optimal loss, Kaplan L(C)
or the frontier — and its `Law.asymptote`) and the compute-optimal allocation N_opt(C),
D_opt(C) and D_opt/N_opt with measured optima (`Law.optima`). Both shade the FLOP range the
law was fitted on (`fitted_range`) and draw the law solid inside it and dashed where it
extrapolates, with its bootstrap interval band.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from sweeps import allocation  # noqa: E402
from sweeps.laws import base  # noqa: E402
from sweeps.plot_text import (LABEL, _finite_interval, _info_box, _symbol,  # noqa: E402
                              interval_note, law_of, num, title)


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
  """(C_lo, C_hi, label): the FLOP range the law was fitted on (Law.fitted_range, e.g. an
  isoflop law's budgets whose minimum it found), else every run's."""
  hook = base.resolve(law_of(fit_obj).fitted_range)
  found = hook(fit_obj, points) if hook else None
  return found or (float(points.C.min()), float(points.C.max()), "fitted runs' FLOP range")


def _loss_curve(fit_obj: dict, c):
  """(value, lo, hi, label) of the law on loss_vs_compute, or None."""
  law = law_of(fit_obj)
  if law.loss_curve is not None:
    return base.resolve(law.loss_curve)(fit_obj, c)
  if law.allocates:
    return (*allocation.allocate(fit_obj, c)["loss"], "loss at the compute-optimal N")
  return None


def _optima(fit_obj: dict, points):
  hook = base.resolve(law_of(fit_obj).optima)
  return hook(fit_obj, points) if hook else None


def _data_range(ax, c_lo, c_hi, label=None):
  ax.axvspan(c_lo, c_hi, color="tab:blue", alpha=0.07, lw=0, label=label)
  for c in (c_lo, c_hi):
    ax.axvline(c, color="tab:blue", lw=0.8, alpha=0.6)


def loss_vs_compute_figure(fit_obj: dict, points):
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
  curve = _loss_curve(fit_obj, c)
  if curve is not None:
    value, lo, hi, label = curve
    _draw_band_split(ax, c, value, lo, hi, c_lo, c_hi, color="tab:red", label=label)
  optima = _optima(fit_obj, points)
  if optima is not None and optima.get("loss") is not None:
    ax.scatter(optima["C"], optima["loss"], marker="*", s=180, color="tab:red",
               edgecolors="black", zorder=4, label=optima["label"])
  floor_key, floor_label = law_of(fit_obj).asymptote
  floor = params.get(floor_key)
  if floor is not None and np.isfinite(floor) and 0.3 * points.loss.min() <= floor \
      <= points.loss.max():  # off scale (a degenerate fit) it is in the text box only
    ax.axhline(floor, color="0.4", ls=":", lw=1.2,
               label=f"{floor_label} {_symbol(floor_key)} = {num(floor)}")
  ax.axvspan(c_lo, c_hi, color="tab:blue", alpha=0.05, lw=0, label=range_label)
  ax.set(xscale="log", xlabel=LABEL["C"], ylabel=LABEL["loss"],
         title=title(fit_obj, "loss vs compute"))
  if points.loss.max() > 3 * points.loss.min():  # several-fold range: log axis, plain labels
    _plain_log_y(ax)
  ax.legend(loc="lower left")
  _info_box(ax, fit_obj)
  return fig


def _measured(ax, key, optima):
  """The law's measured optima (Law.optima) on the N_opt, D_opt or D/N panel."""
  n, d = optima["N"], optima.get("D")
  y = {"N_opt": n, "D_opt": d, "tokens_per_param": None if d is None else d / n}[key]
  if y is None:
    return
  ok = np.isfinite(y)
  big = optima.get("big", False)
  ax.scatter(optima["C"][ok], y[ok], s=40 if big else 8, zorder=4, color="tab:orange",
             edgecolors="black" if big else "none", label=optima["label"])


def _exponent_note(ax, key, fit_obj):
  """'N_opt ∝ C^a, a = 0.5 [lo, hi]' in the panel's corner."""
  e = {"N_opt": "a", "D_opt": "b"}[key]
  params = {**fit_obj.get("params", {}), **(fit_obj.get("derived") or {})}
  text = rf"${key[0]}_{{opt}} \propto C^{{{e}}}$,  {e} = {num(params.get(e))}"
  interval = _finite_interval((fit_obj.get("intervals") or {}).get(e))
  if interval:
    text += f"  [{num(interval[0])}, {num(interval[1])}]"
  ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=9.5,
          bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "ec": "0.7"})


def _allocation_legend(axes, fit_obj, alloc):
  handles, labels = axes[0].get_legend_handles_labels()
  more_h, more_l = axes[2].get_legend_handles_labels()
  if np.isfinite(alloc["N_opt"][1]).any():
    handles.append(plt.Rectangle((0, 0), 1, 1, color="black", alpha=0.15))
    labels.append(interval_note(fit_obj).replace("[ ]: ", ""))
  axes[0].legend(handles + [h for h, l in zip(more_h, more_l) if l not in labels],
                 labels + [l for l in more_l if l not in labels], loc="lower right",
                 fontsize=8)


def allocation_figure(fit_obj: dict, points):
  """N_opt(C), D_opt(C) and tokens per parameter, with bands; data range shaded."""
  c_lo, c_hi, range_label = fitted_range(fit_obj, points)
  c = np.geomspace(min(c_lo, points.C.min()) / 10, max(c_hi, points.C.max()) * 1000, 300)
  alloc = allocation.allocate(fit_obj, c)
  optima = _optima(fit_obj, points)
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), layout="constrained")
  for i, (ax, key, ylabel) in enumerate(zip(
      axes, ("N_opt", "D_opt", "tokens_per_param"),
      ("compute-optimal " + LABEL["N"], "compute-optimal " + LABEL["D"],
       "tokens per parameter D_opt / N_opt"))):
    value, lo, hi = alloc[key]
    _data_range(ax, c_lo, c_hi, label=range_label if i == 0 else None)
    _draw_band_split(ax, c, value, lo, hi, c_lo, c_hi, label="fitted law" if i == 0 else None)
    if optima is not None:
      _measured(ax, key, optima)
    if key != "tokens_per_param":
      _exponent_note(ax, key, fit_obj)
    ax.set(xscale="log", yscale="log", xlabel=LABEL["C"], ylabel=ylabel)
    if key == "tokens_per_param":
      _plain_log_y(ax)
  _allocation_legend(axes, fit_obj, alloc)
  # The form line of the allocation itself, where the law writes one.
  form = [f for f in law_of(fit_obj).form if "N_{opt}" in f]
  fig.suptitle(title(fit_obj, "compute-optimal allocation")
               + (f" · {form[0]}" if form else ""), fontsize=12)
  return fig
