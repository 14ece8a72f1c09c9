"""Times the Chinchilla Approach 3 fit: the 4,500-start grid on 240 points, and bootstrap
refits. Prints a table; the first call of each includes XLA compilation.

  python benchmarks/fit.py [--resamples=1000] [--repeats=2] [--full_grid=50] [--csv=FILE]

--full_grid=R also refits R resamples from the whole 4,500-start grid and prints both sets of
95% intervals side by side: the warm-started bootstrap (each resample refit from the full
fit's best distinct local minima) must match the full-grid refit.
"""
import os
import time

from absl import app, flags
import numpy as np

from sweeps import fitting, points, synthetic
from sweeps.laws import chinchilla

_RESAMPLES = flags.DEFINE_integer("resamples", 1000, "Bootstrap refits to time.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repeats of the grid fit.")
_FULL = flags.DEFINE_integer("full_grid", 0, "Resamples to refit from the full grid too.")
_CSV = flags.DEFINE_string("csv", None, "Fit this CSV (columns N, D, loss) instead of the "
                           "synthetic design drawn from Besiroglu et al.'s published law.")


def _timed(fn):
  """(result, wall seconds, process CPU seconds); on a shared machine CPU time / cores is the
  wall time the fit would take with the cores to itself."""
  start, cpu = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - start, time.process_time() - cpu


def main(argv):
  del argv
  import pandas as pd
  frame = pd.read_csv(_CSV.value) if _CSV.value else synthetic.isoflop_design(seed=0)
  pts = points.from_frame(frame, points.CSV_COLUMNS)
  rows = []
  for i in range(_REPEATS.value):
    result, *seconds = _timed(lambda: chinchilla.fit(pts))
    rows.append((f"grid fit, 4,500 starts, {len(pts)} points" + (" (incl. compile)" if i == 0
                                                                  else ""), *seconds))
  weights_RN = fitting.run_weights(pts.run_id, _RESAMPLES.value, seed=0)
  samples, *seconds = _timed(lambda: chinchilla.bootstrap(pts, None, result, weights_RN))
  rows.append((f"bootstrap, {_RESAMPLES.value} refits x {chinchilla.BOOTSTRAP_STARTS} starts",
               *seconds))
  failed = int(np.sum(~np.isfinite(samples["alpha"])))
  print(f"CPU cores visible: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f} "
        "(shared machine: other jobs compete for the cores)")
  print(f"{'what':<52}{'wall s':>10}{'CPU s':>10}")
  for name, wall, cpu in rows:
    print(f"{name:<52}{wall:>10.1f}{cpu:>10.1f}")
  p = result["params"]
  print(f"fit: E={p['E']:.3f} A={p['A']:.1f} B={p['B']:.1f} alpha={p['alpha']:.4f} "
        f"beta={p['beta']:.4f} objective={result['objective']:.6g}; bootstrap failures: "
        f"{failed}; alpha 95% interval "
        f"[{np.nanpercentile(samples['alpha'], 2.5):.4f}, "
        f"{np.nanpercentile(samples['alpha'], 97.5):.4f}]")
  if _FULL.value:
    compare_full_grid(pts, result, _FULL.value)


def compare_full_grid(pts, result, resamples):
  """95% intervals: warm-started bootstrap vs every resample refit from the 4,500 starts."""
  from sweeps import lbfgs
  weights_RN = fitting.run_weights(pts.run_id, resamples, seed=1)
  warm, *t_warm = _timed(lambda: chinchilla.bootstrap(pts, None, result, weights_RN))
  data, n_pad = chinchilla._data(pts)
  padded_RN = np.zeros((resamples, n_pad))
  padded_RN[:, :len(pts)] = weights_RN
  grid = chinchilla.start_grid()
  (theta_RP, value_R, _, _), *t_full = _timed(lambda: lbfgs.search_then_polish(
      chinchilla.objective, np.broadcast_to(grid, (resamples,) + grid.shape), data, padded_RN,
      keep=chinchilla.POLISH))
  full = chinchilla._named(theta_RP)
  print(f"\n{resamples} resamples: warm start {t_warm[0]:.1f} s wall, full grid "
        f"{t_full[0]:.1f} s wall")
  print(f"{'param':<8}{'warm-start 95% interval':>28}{'full-grid 95% interval':>28}"
        f"{'max |diff| / width':>20}")
  for key in ("E", "A", "B", "alpha", "beta", "a"):
    w = np.nanpercentile(warm[key], [2.5, 97.5])
    f = np.nanpercentile(full[key], [2.5, 97.5])
    print(f"{key:<8}{f'[{w[0]:.4g}, {w[1]:.4g}]':>28}{f'[{f[0]:.4g}, {f[1]:.4g}]':>28}"
          f"{np.max(np.abs(w - f)) / (f[1] - f[0]):>20.3f}")
  same = np.mean(np.isclose(warm["alpha"], full["alpha"], rtol=1e-3, atol=1e-4))
  print(f"resamples whose warm-start alpha equals the full-grid alpha: {same:.1%}")


if __name__ == "__main__":
  app.run(main)
