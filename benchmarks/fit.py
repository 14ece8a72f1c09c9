"""Times the Chinchilla Approach 3 fit: the 4,500-start grid on 240 points, and bootstrap
refits. Prints a table; the first call of each includes XLA compilation.

  python benchmarks/fit.py [--resamples=1000] [--repeats=2]
"""
import os
import time

from absl import app, flags
import numpy as np

from sweeps import fitting, points, synthetic
from sweeps.laws import chinchilla

_RESAMPLES = flags.DEFINE_integer("resamples", 1000, "Bootstrap refits to time.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repeats of the grid fit.")


def _timed(fn):
  """(result, wall seconds, process CPU seconds); on a shared machine CPU time / cores is the
  wall time the fit would take with the cores to itself."""
  start, cpu = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - start, time.process_time() - cpu


def main(argv):
  del argv
  pts = points.from_frame(synthetic.isoflop_design(seed=0), points.CSV_COLUMNS)
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


if __name__ == "__main__":
  app.run(main)
