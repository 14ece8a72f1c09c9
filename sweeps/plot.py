"""PNG plots of a fit (matplotlib, Agg): loss vs compute with the fitted law and frontier,
IsoFLOP curves, N_opt(C) and D_opt(C) with interval bands, residuals."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sweeps import allocation  # noqa: E402
from sweeps.laws import chinchilla, frontier, isoflop, kaplan  # noqa: E402


def _save(fig, out, name) -> str:
  path = os.path.join(out, name)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def loss_vs_compute(ax, fit_obj, points):
  sc = ax.scatter(points.C, points.loss, c=np.log10(points.N), s=10, cmap="viridis")
  ax.figure.colorbar(sc, ax=ax, label="log10 N")
  c = np.geomspace(points.C.min(), points.C.max() * 10, 200)
  params = {**fit_obj["params"], **fit_obj.get("derived", {})}
  law = fit_obj["law"]
  if law in allocation.ALLOCATING:
    ax.plot(c, allocation.allocate(fit_obj, c)["loss"][0], "k-", label=f"{law}: loss at C-optimal N")
  elif law == "kaplan":
    ax.plot(c, kaplan.predict(params, "C", c), "k-", label="kaplan L(C)")
  elif law == "frontier":
    ax.plot(c, frontier.curve(params, c), "r-", label=f"frontier (tau={fit_obj['tau']})")
  ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="loss")
  ax.legend(fontsize=8)


def isoflop_curves(ax, fit_obj, points):
  """Runs per FLOP budget against N, with the law's curve for that budget."""
  bucket = isoflop.buckets(points.C)
  colors = plt.cm.plasma(np.linspace(0, 0.9, bucket.max() + 1))
  params = fit_obj["params"]
  for g in range(bucket.max() + 1):
    sel = bucket == g
    ax.scatter(points.N[sel], points.loss[sel], s=8, color=colors[g])
    n = np.geomspace(points.N[sel].min(), points.N[sel].max(), 100)
    c = np.exp(np.mean(np.log(points.C[sel])))
    if fit_obj["law"] == "chinchilla":
      ax.plot(n, chinchilla.predict(params, n, c / (6 * n)), color=colors[g], lw=1)
    elif fit_obj["law"] == "isoflop" and g < len(fit_obj["budgets"]["parabola"]):
      p0, p1, p2 = fit_obj["budgets"]["parabola"][g]
      if np.isfinite(p2):
        ax.plot(n, p0 + p1 * np.log(n) + p2 * np.log(n) ** 2, color=colors[g], lw=1)
  ax.set(xscale="log", xlabel="parameters N", ylabel="loss", title="IsoFLOP slices")


def allocation_bands(axes, fit_obj, points):
  c = np.geomspace(points.C.min(), points.C.max() * 100, 100)
  alloc = allocation.allocate(fit_obj, c)
  for ax, key in zip(axes, ("N_opt", "D_opt")):
    value, lo, hi = alloc[key]
    ax.plot(c, value, "k-", label=key)
    if np.isfinite(lo).any():
      ax.fill_between(c, lo, hi, alpha=0.3, label=f"{fit_obj['bootstrap']['level']:.0%} interval")
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel=key)
    ax.legend(fontsize=8)


def write_plots(out: str, fit_obj: dict, points, prefix: str = "") -> list[str]:
  """Writes the plots that apply to the fit's law; returns their paths."""
  os.makedirs(out, exist_ok=True)
  paths = []
  fig, ax = plt.subplots(figsize=(6, 4.5))
  loss_vs_compute(ax, fit_obj, points)
  paths.append(_save(fig, out, f"{prefix}loss_vs_compute.png"))
  if fit_obj["law"] in ("chinchilla", "isoflop"):
    fig, ax = plt.subplots(figsize=(6, 4.5))
    isoflop_curves(ax, fit_obj, points)
    paths.append(_save(fig, out, f"{prefix}isoflop.png"))
  if fit_obj["law"] in allocation.ALLOCATING:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    allocation_bands(axes, fit_obj, points)
    paths.append(_save(fig, out, f"{prefix}allocation.png"))
  fig, ax = plt.subplots(figsize=(6, 3.5))
  residuals = np.asarray(fit_obj["residuals"], np.float64)
  ax.plot(residuals, ".", ms=3)
  ax.axhline(0, color="k", lw=0.5)
  ax.set(xlabel="point (sorted by C)", ylabel="residual", title=f"{fit_obj['law']} residuals")
  paths.append(_save(fig, out, f"{prefix}residuals.png"))
  return paths
