"""A live sweep progress display: done / running / failed / diverged / queued and an ETA.

On a TTY: one rich bar over runs finished / total with the counts, elapsed and
ETA. Elsewhere: an INFO log line (`[name] N runs: done 3, running 2, ... |
elapsed 0:01:02 ETA 0:04:05`) when the counts change, and every 6 * `every` s.

ETA: a per-run pace model, wall seconds ≈ overhead + s_per_step * steps +
s_per_flop * FLOPs, fitted by least squares on every measured point: each run's
first metrics record (overhead and little else) and its latest summary.json
(step, wall_seconds). The first records separate the overhead (compilation,
data, eval) from the pace even while every finished run has the same FLOPs (an
isoFLOP sweep's first budget); the per-step term is the dispatch cost that makes
tiny models with many steps slower than their FLOPs say. A running run seen at
two steps goes on at its own seconds per step; one seen once, or not started,
takes the model. The runs left are then list-scheduled over the parallel slots
in launch order (a sum shared by the slots would miss a long last run).

The estimate this replaces used the seconds per step (wall_seconds / step) of
the observed run nearest in FLOPs per step: that pace holds the compilation, so
each newly started run's first summaries inflated it several times (and the
ETA with it) until its steps diluted the compile; it was only scaled up with
FLOPs, so a big run's pace stood for every smaller one; and it ignored finished
runs, so while the running ones compiled it had nothing ('?'). On a replay of
the quickstart it ranged 0.4x..22x of the true time left (tests/sweeps).
"""
import collections
import heapq
import json
import math
import os
import sys
import time

from absl import logging
import numpy as np
from rich import console as console_lib
from rich import markup
from rich import progress as rich_progress

from experiments import metrics
from experiments import progress as train_progress
from sweeps import rundir

GROUPS = {"done": "done", "diverged": "diverged", "running": "running", "failed": "failed",
          "preempted": "failed", "stale": "failed", "queued": "queued", "new": "queued"}
COUNTED = ("done", "running", "failed", "diverged", "queued")
TO_RUN = ("running", "queued", "new")  # what the ETA waits for
_clock = train_progress.clock


# Term sets tried, per-FLOP ones first; among equal fits the first wins, so one point
# gives the proportional model (seconds per FLOP only).
_TERM_SETS = ((2,), (0, 2), (1, 2), (0, 1, 2), (0,), (1,), (0, 1))


def fit_pace(points):
  """(overhead s, s per step, s per FLOP), all >= 0, fitting wall ≈ overhead +
  s_per_step * steps + s_per_flop * flops to (steps, flops, wall) points by least
  squares on relative residuals (a 10 s run counts as much as a 10 min one).
  Non-negative by trying each set of terms (three terms: eight sets)."""
  points = [p for p in points if p[1] > 0 and p[2] > 0]
  if not points:
    return None
  steps, flops, wall = np.array(points, dtype=float).T
  columns = np.stack([1.0 / wall, steps / wall, flops / wall], axis=1)
  best, best_residual = None, math.inf
  for terms in _TERM_SETS:
    rows = columns[:, terms]
    if np.linalg.matrix_rank(rows) < len(terms):
      continue
    x, *_ = np.linalg.lstsq(rows, np.ones_like(wall), rcond=None)
    residual = float(np.sum((rows @ x - 1.0) ** 2))
    if np.all(x >= 0) and residual < best_residual - 1e-9:
      best, best_residual = np.zeros(3), residual
      best[list(terms)] = x
  return tuple(float(v) for v in best)


def makespan(running, queued, slots):
  """Seconds until all end: `running` (seconds left each) hold slots; `queued`
  (seconds each, in launch order) take the first slot to come free."""
  free = sorted(running) + [0.0] * max(0, slots - len(running))
  heapq.heapify(free)
  for seconds in queued:
    heapq.heappush(free, heapq.heappop(free) + seconds)
  return max(free) if free else 0.0


class PaceModel:
  """The runs' (step, wall_seconds) points, kept across updates, and the ETA."""

  def __init__(self, runs, slots):
    self.runs, self.slots = runs, slots
    self.first, self.latest = {}, {}  # run_id -> (step, wall_seconds)

  def observe(self, run_id, record, first=False):
    """A summary (or, with first, the run's first metrics record) seen now."""
    step, wall = record.get("step") or 0, record.get("wall_seconds") or 0.0
    if step <= 0 or wall <= 0:
      return
    known = self.first.get(run_id)
    if first or known is None or step < known[0] or wall < known[1]:  # new, or restarted
      self.first[run_id] = (step, wall)
    if not first:
      self.latest[run_id] = (step, wall)

  def _points(self):
    points = []
    for r in self.runs:
      for seen in {self.first.get(r.run_id), self.latest.get(r.run_id)} - {None}:
        points.append((seen[0], r.flops * seen[0] / r.cfg.steps, seen[1]))
    return points

  def eta(self, states):
    """Seconds until the runs still to run end; None before anything is measured."""
    todo = [r for r in self.runs if states[r.run_id] in TO_RUN]
    if not todo:
      return 0.0
    fit = fit_pace(self._points())
    if fit is None:
      return None
    overhead, per_step, per_flop = fit
    running, queued = [], []
    for r in todo:
      first, latest = self.first.get(r.run_id), self.latest.get(r.run_id)
      if states[r.run_id] == "running" and latest is not None:
        if latest[0] > first[0]:  # its own seconds per step, compilation excluded
          pace = (latest[1] - first[1]) / (latest[0] - first[0])
        else:
          pace = per_step + per_flop * r.flops / r.cfg.steps
        running.append(max(0, r.cfg.steps - latest[0]) * pace)
      elif states[r.run_id] == "running":
        running.append(overhead + per_step * r.cfg.steps + per_flop * r.flops)  # no summary yet
      else:
        queued.append(overhead + per_step * r.cfg.steps + per_flop * r.flops)
    return makespan(running, queued, max(self.slots, len(running)))


class Progress:
  def __init__(self, name, runs, run_dirs, slots=1, stream=None, every=10.0, console=None):
    self.name, self.runs, self.run_dirs, self.slots = name, runs, run_dirs, max(1, slots)
    self.stream = stream or (console.file if console is not None else sys.stderr)
    self.tty = console is not None or train_progress.is_tty(self.stream)
    self.every = 1.0 if self.tty else every
    self.start = time.time()
    self.model, self._settled, self._first_read = PaceModel(runs, self.slots), set(), set()
    self._last_print, self._last_log, self._last_counts = 0.0, 0.0, None
    self._bar = None
    if self.tty:
      self._bar = rich_progress.Progress(
          rich_progress.TextColumn(markup.escape(f"[{name}]")),
          rich_progress.BarColumn(bar_width=None), rich_progress.MofNCompleteColumn(),
          rich_progress.TextColumn("{task.fields[counts]}"), rich_progress.TimeElapsedColumn(),
          train_progress.EtaColumn(), console=console or console_lib.Console(file=self.stream),
          expand=True)  # the bar takes what the text leaves: one line on 80 columns
      self._task = self._bar.add_task(name, total=len(runs), counts="", eta=None, eta_at=None)
      self._live = False

  def eta(self, states):
    """Reads the summaries of runs still to run, and once those of runs that ended."""
    for r in self.runs:
      if states[r.run_id] in TO_RUN or r.run_id not in self._settled:
        if r.run_id not in self._first_read:
          self._read_first(r.run_id)
        self.model.observe(r.run_id, rundir.summary(self.run_dirs[r.run_id]))
      if states[r.run_id] in TO_RUN:
        self._settled.discard(r.run_id)
      else:
        self._settled.add(r.run_id)
    return self.model.eta(states)

  def _read_first(self, run_id):
    """The first metrics record: a point near the start, overhead and little else,
    whether or not this display saw the run running."""
    try:
      with open(os.path.join(self.run_dirs[run_id], metrics.METRICS)) as f:
        record = json.loads(f.readline())
    except (OSError, ValueError):
      return
    if isinstance(record, dict) and record.get("wall_seconds"):
      self.model.observe(run_id, record, first=True)
      self._first_read.add(run_id)

  def _counts(self, states):
    counts = collections.Counter(GROUPS.get(s, "failed") for s in states.values())
    return [(k, counts[k]) for k in COUNTED]

  def line(self, states):
    return self._line(states, self.eta(states))

  def _line(self, states, eta):
    parts = ", ".join(f"{k} {n}" for k, n in self._counts(states))
    return (f"[{self.name}] {len(self.runs)} runs: {parts} | "
            f"elapsed {_clock(time.time() - self.start)} ETA {_clock(eta)}")

  def update(self, states, force=False):
    now = time.time()
    if not force and now - self._last_print < self.every:
      return
    self._last_print = now
    eta, counts = self.eta(states), self._counts(states)
    if self._bar is not None:
      self._render(states, counts, eta, stop=force)
    elif force or counts != self._last_counts or now - self._last_log >= 6 * self.every:
      logging.info(self._line(states, eta))
      self._last_log, self._last_counts = now, counts

  def _render(self, states, counts, eta, stop):
    if not self._live:  # started on the first update: no thread at construction
      self._bar.start()
      self._live = True
    ended = sum(n for k, n in counts if k not in ("running", "queued"))
    self._bar.update(self._task, completed=ended, eta=eta, eta_at=time.time(),
                     counts=", ".join(f"{k} {n}" for k, n in counts if n or k == "done"))
    if stop:  # the closing update: what follows (the report) is plain output
      self.close()

  def close(self):
    if self._bar is not None and self._live:
      self._bar.stop()
      self._live = False

  def report(self, states):
    """The closing table: one line per run."""
    self.close()
    lines = [f"{'run id':<48} {'state':<10} {'final loss':>10} {'eval loss':>10} {'wall s':>8}"]
    for r in self.runs:
      s = rundir.summary(self.run_dirs[r.run_id])
      fmt = lambda v: f"{v:.4g}" if isinstance(v, (int, float)) else "-"  # noqa: E731
      lines.append(f"{r.run_id:<48} {states[r.run_id]:<10} {fmt(s.get('final_loss')):>10} "
                   f"{fmt(s.get('eval_loss')):>10} {fmt(s.get('wall_seconds')):>8}")
    self.stream.write("\n".join(lines) + "\n")
    self.stream.flush()
