"""Figures against training FLOPs C that show what the law extrapolates to: the loss against
compute (every run, with the law's compute-optimal loss, Kaplan L(C) or the frontier curve,
and the irreducible loss) and the compute-optimal allocation N_opt(C), D_opt(C) and
D_opt/N_opt with measured optima. Both shade the FLOP range the law was fitted on
(`fitted_range`) and draw the law solid inside it and dashed where it extrapolates, with its
bootstrap interval band.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from sweeps import allocation  # noqa: E402
from sweeps.laws import frontier, kaplan  # noqa: E402
from sweeps.plot_isoflop import budgets  # noqa: E402
from sweeps.plot_text import (FORMS, LABEL, _finite_interval, _info_box, _symbol,  # noqa: E402
                              interval_note, num, title)


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
