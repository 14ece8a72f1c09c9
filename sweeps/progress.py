"""A live sweep progress line on stderr: done / running / failed / queued and an ETA.

The ETA divides the training FLOPs still to do by the FLOP rate achieved since
the launcher started (running runs count their partial FLOPs from summary.json).
"""
import collections
import sys
import time

from sweeps import rundir

GROUPS = {"done": "done", "diverged": "diverged", "running": "running", "failed": "failed",
          "preempted": "failed", "stale": "failed", "queued": "queued", "new": "queued"}


def _clock(seconds):
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  def __init__(self, name, runs, run_dirs, stream=None, every=10.0):
    self.name, self.runs, self.run_dirs = name, runs, run_dirs
    self.stream = stream or sys.stderr
    self.tty = self.stream.isatty()
    self.every = 1.0 if self.tty else every
    self.start = time.time()
    self.flops0 = {r.run_id: self._flops_so_far(r) for r in runs}
    self._last_print, self._last_text = 0.0, ""

  def _flops_so_far(self, run):
    return min(float(rundir.summary(self.run_dirs[run.run_id]).get("flops") or 0), run.flops)

  def line(self, states):
    counts = collections.Counter(GROUPS.get(s, "failed") for s in states.values())
    done_now = {r.run_id: self._flops_so_far(r) for r in self.runs
                if states[r.run_id] in ("running", "done", "diverged", "failed", "preempted")}
    gained = sum(done_now.get(r.run_id, self.flops0[r.run_id]) - self.flops0[r.run_id]
                 for r in self.runs)
    remaining = sum(r.flops - done_now.get(r.run_id, self.flops0[r.run_id]) for r in self.runs
                    if states[r.run_id] not in ("done", "diverged", "failed", "preempted"))
    elapsed = time.time() - self.start
    rate = gained / elapsed if elapsed > 0 else 0.0
    eta = _clock(remaining / rate) if rate > 0 else "?"
    parts = [f"{k} {counts[k]}" for k in ("done", "running", "failed", "diverged", "queued")]
    return (f"[{self.name}] {len(self.runs)} runs: {', '.join(parts)} | "
            f"elapsed {_clock(elapsed)} ETA {eta}")

  def update(self, states, force=False):
    now = time.time()
    if not force and now - self._last_print < self.every:
      return
    text = self.line(states)
    if self.tty:
      self.stream.write("\r\033[K" + text + ("\n" if force else ""))
    elif force or text.split("|")[0] != self._last_text.split("|")[0] or \
        now - self._last_print >= 6 * self.every:
      self.stream.write(text + "\n")
    self.stream.flush()
    self._last_print, self._last_text = now, text

  def report(self, states):
    """The closing table: one line per run."""
    lines = [f"{'run id':<48} {'state':<10} {'final loss':>10} {'eval loss':>10} {'wall s':>8}"]
    for r in self.runs:
      s = rundir.summary(self.run_dirs[r.run_id])
      fmt = lambda v: f"{v:.4g}" if isinstance(v, (int, float)) else "-"  # noqa: E731
      lines.append(f"{r.run_id:<48} {states[r.run_id]:<10} {fmt(s.get('final_loss')):>10} "
                   f"{fmt(s.get('eval_loss')):>10} {fmt(s.get('wall_seconds')):>8}")
    self.stream.write("\n".join(lines) + "\n")
    self.stream.flush()
