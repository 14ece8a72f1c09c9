"""PNG plots of a fit, drawn as a paper's figures (matplotlib, Agg).

- `loss_vs_compute`: every run's loss against its training FLOPs, coloured by N, with the
  law's loss curve (the compute-optimal loss for allocating laws, with its interval band,
  dashed where it extrapolates beyond the fitted runs).
- the law's own figures (`Law.figures`), e.g. `isoflop` (chinchilla, isoflop): one colour per
  FLOP budget; loss against the runs' actual N and, beside it, against their actual tokens D;
  the law's curve per budget (`Law.budget_curve`) and its minimum; budgets whose minimum is
  not bracketed are drawn hollow and dotted.
- `allocation` (laws that allocate): N_opt(C), D_opt(C) and D_opt/N_opt with interval bands;
  the fitted data range is shaded and the extrapolated part dashed.
- `residuals`: the fit's residuals against training FLOPs with a zero line, drawn by the
  law's `Law.residuals` hook (by index without one).

Nothing here names a law: what a figure shows of one comes from its `sweeps.laws.Law`.

Every figure carries the law's form, its fitted parameters with their intervals and the
fit's quality. Each `*_figure` function returns the figure unsaved (tests inspect them);
`write_plots` saves them all and returns the paths.

Layout: this module is the entry point (`figures`, `write_plots`, the style and DPI) and
re-exports the figure functions and helpers; `plot_text` holds the labels, number formatting
and info text, `plot_isoflop` the per-budget grouping, budget colours and the IsoFLOP figure,
`plot_allocation` the loss-vs-compute and allocation figures, `plot_residuals` the residuals.
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sweeps import REPO, laws  # noqa: E402
from sweeps.laws import base, frontier  # noqa: E402,F401  (plot.frontier: a re-export)
from sweeps.plot_allocation import (allocation_figure, fitted_range,  # noqa: E402,F401
                                    loss_vs_compute_figure)
from sweeps.plot_isoflop import (MAX_LEGEND_BUDGETS, budget_colors, budget_label,  # noqa: E402,F401
                                 budgets, colors_for, isoflop_figure)
from sweeps.plot_residuals import residuals_figure  # noqa: E402
from sweeps.plot_text import (LABEL, diagnostic_lines, info_text,  # noqa: E402,F401
                              interval_note, num, param_lines, quality_text, sci, title)

DPI = 120
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 9,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.25,
         "grid.linewidth": 0.6}



def repo_path(path: str) -> str:
  """A notebook parameter's path (CHINCHAX_STORE, CHINCHAX_CSV), absolute: a relative one
  is read from the repository root, where the README's commands run and write, whatever
  the working directory (Jupyter starts a notebook in notebooks/)."""
  return os.path.normpath(os.path.join(REPO, os.path.expanduser(path)))


def beside(source: str) -> str:
  """The figures directory of a store or CSV, beside it: runs/attn -> runs/attn-figures,
  refits/runs.csv -> refits/runs-figures (created). Notebooks write their PNGs there, so a
  store holds only run directories and a CSV's folder only what its owner put there."""
  stem = os.path.normpath(os.path.abspath(source))
  if stem.endswith(".csv"):
    stem = stem[:-len(".csv")]
  path = stem + "-figures"
  os.makedirs(path, exist_ok=True)
  return path


def figures(fit_obj: dict, points) -> list:
  """(file name, figure) for every plot that applies to the fit's law, in write order."""
  law = laws.get(fit_obj["law"])
  out = [("loss_vs_compute.png", loss_vs_compute_figure)]
  out += [(name, base.resolve(make)) for name, make in law.figures]
  if law.allocates:
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
