"""The residuals figure: the fit's residuals against training FLOPs C with a zero line, in
the units of what each law fitted (log loss for Approach 3 and Kaplan, loss for the frontier,
log N_opt for the isoflop and envelope laws), coloured by FLOP budget like the IsoFLOP
figure, with the RMS in the title. Each law picks how its residuals are drawn (Law.residuals
names one of the hooks below); residuals that cannot be matched to points, or of a law
without a hook, are drawn by index, in fit.json order.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sweeps import points as points_lib  # noqa: E402
from sweeps.laws import base, kaplan  # noqa: E402
from sweeps.plot_isoflop import (MAX_LEGEND_BUDGETS, _budget_colorbar, budget_label,  # noqa: E402
                                 budgets, colors_for)
from sweeps.plot_text import LABEL, law_of, title  # noqa: E402


def _kaplan_groups(fit_obj, points):
  """The residuals of a Kaplan fit are per variable, on that variable's loss frontier: the
  points each belongs to (None when they cannot be matched)."""
  sel = kaplan._selections(points, np.ones((1, len(points))))
  idx = [(v, np.flatnonzero(s[0] > 0)) for v, (_, s) in sel.items()]
  if sum(len(i) for _, i in idx) != len(fit_obj["residuals"]):
    return None
  return idx


def _per_point(ax, points, res, style):
  """One residual per point, against its C, coloured by budget."""
  if len(res) != len(points):
    return
  bucket = points_lib.buckets(points.C)
  for b, (entry, color) in enumerate(zip(style["entries"], style["colors"])):
    ax.scatter(points.C[bucket == b], res[bucket == b], s=22, color=color,
               label=budget_label(entry["C"]) if style["legend"] else None)


def log_loss_per_point(ax, fit_obj, points, res, style) -> str:
  _per_point(ax, points, res, style)
  return "log L_pred − log L_obs\n(≈ relative loss error)"


def loss_per_point(ax, fit_obj, points, res, style) -> str:
  _per_point(ax, points, res, style)
  return "L_obs − L_frontier (nats/token)"


def per_budget_optimum(ax, fit_obj, points, res, style) -> str:
  """One residual per budget whose parabola minimum the fit used, at the budget's C."""
  fitted = fit_obj.get("budgets") or {}
  c_g = np.asarray(fitted.get("C") or [], float)
  n_opt = np.asarray([np.nan if v is None else v for v in fitted.get("N_opt") or []], float)
  used = np.flatnonzero(np.isfinite(n_opt))
  if len(used) == len(res):
    entries_c = np.log10([e["C"] for e in style["entries"]])
    for i, g in enumerate(used):
      b = int(np.argmin(np.abs(entries_c - np.log10(c_g[g]))))
      ax.scatter([c_g[g]], [res[i]], s=50, color=style["colors"][b], edgecolors="black",
                 zorder=3, label=budget_label(c_g[g]) if style["legend"] else None)
  return "log N_opt,law − log N_opt,parabola\n(≈ relative error of N_opt)"


def envelope_grid(ax, fit_obj, points, res, style) -> str:
  env_c = np.asarray((fit_obj.get("envelope") or {}).get("C") or [], float)
  if len(env_c) == len(res):
    ax.scatter(env_c, res, s=10, color="tab:purple", label="envelope FLOP grid")
  return "log N_opt,law − log N_opt,envelope\n(≈ relative error of N_opt)"


def kaplan_frontiers(ax, fit_obj, points, res, style) -> str:
  groups = _kaplan_groups(fit_obj, points)
  if groups is not None:
    start = 0
    for (variable, idx), marker in zip(groups, ("o", "s", "^")):
      ax.scatter(points.C[idx], res[start:start + len(idx)], s=26, marker=marker,
                 label=f"L({variable}), on its frontier")
      start += len(idx)
  return "log L_pred − log L_obs\n(≈ relative loss error)"


def residuals_figure(fit_obj: dict, points):
  res = np.asarray([np.nan if v is None else v for v in fit_obj.get("residuals") or []], float)
  fig, ax = plt.subplots(figsize=(8.5, 4.6), layout="constrained")
  ax.axhline(0, color="black", lw=0.9, zorder=1)
  entries = budgets({"law": "plain"}, points)  # colours per budget
  style = {"entries": entries, "colors": colors_for(entries),
           "legend": len(entries) <= MAX_LEGEND_BUDGETS}
  draw = base.resolve(law_of(fit_obj).residuals)
  ylabel = draw(ax, fit_obj, points, res, style) if draw else "residual"
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
  elif not style["legend"] and ax.collections:
    _budget_colorbar(fig, ax, entries)
  return fig
