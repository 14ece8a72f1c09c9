"""A live sweep progress line on stderr: done / running / failed / queued and an ETA.

ETA: a running run's remaining steps at its own pace (summary.json's step and
wall_seconds); a run not started yet takes the seconds per step of the observed
run nearest in FLOPs per step, scaled by the FLOP ratio; the sum is shared by
the parallel slots.
"""
import collections
import math
import sys
import time

from sweeps import rundir

GROUPS = {"done": "done", "diverged": "diverged", "running": "running", "failed": "failed",
          "preempted": "failed", "stale": "failed", "queued": "queued", "new": "queued"}


def _clock(seconds):
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  def __init__(self, name, runs, run_dirs, slots=1, stream=None, every=10.0):
    self.name, self.runs, self.run_dirs, self.slots = name, runs, run_dirs, max(1, slots)
    self.stream = stream or sys.stderr
    self.tty = self.stream.isatty()
    self.every = 1.0 if self.tty else every
    self.start = time.time()
    self._last_print, self._last_text = 0.0, ""

  def _eta(self, states):
    pace, todo = {}, []
    for r in self.runs:
      if states[r.run_id] in ("done", "diverged", "failed", "preempted"):
        continue
      s = rundir.summary(self.run_dirs[r.run_id])
      flops_per_step = r.flops / r.cfg.steps
      if s.get("step") and s.get("wall_seconds"):
        pace[flops_per_step] = s["wall_seconds"] / s["step"]
        todo.append((r.cfg.steps - s["step"], flops_per_step))
      else:
        todo.append((r.cfg.steps, flops_per_step))
    if not todo:
      return 0.0
    if not pace:
      return None
    seconds = 0.0
    for steps, fps in todo:
      near = min(pace, key=lambda f: abs(math.log(f / fps)))
      seconds += steps * pace[near] * (fps / near if fps > near else 1.0)
    return seconds / min(self.slots, len(todo))

  def line(self, states):
    counts = collections.Counter(GROUPS.get(s, "failed") for s in states.values())
    eta = self._eta(states)
    parts = [f"{k} {counts[k]}" for k in ("done", "running", "failed", "diverged", "queued")]
    return (f"[{self.name}] {len(self.runs)} runs: {', '.join(parts)} | "
            f"elapsed {_clock(time.time() - self.start)} "
            f"ETA {'?' if eta is None else _clock(eta)}")

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
