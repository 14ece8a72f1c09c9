"""The trainer's progress display: a rich bar on a terminal, log lines elsewhere.

On a TTY: one bar (step/steps, loss, tok/s, elapsed, ETA). Elsewhere (log files,
CI, a sweep's per-run stderr.log): one INFO line per update, in the text users
grep: `step 10/400  loss 1.2345  12,345 tok/s  ETA 0:01:23`.

ETA: the seconds per step measured since the first update after (re)start, so
the interval that holds the train step's compilation (and the restore) is left
out; it would inflate a short run's ETA many times. The first line says `ETA ?`.
"""
import sys
import time

from absl import logging
from rich import console as console_lib
from rich import progress as rich_progress
from rich import text as text_lib


def clock(seconds):
  """h:mm:ss; '?' for None."""
  if seconds is None:
    return "?"
  seconds = int(max(0.0, seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def line(step, steps, loss, tokens_per_sec, eta):
  return (f"step {step}/{steps}  loss {loss:.4f}  {tokens_per_sec:,.0f} tok/s  "
          f"ETA {clock(eta)}")


def is_tty(stream):
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # no isatty, or closed
    return False


class EtaColumn(rich_progress.ProgressColumn):
  """Our own estimate (the task's `eta` field, seconds at time `eta_at`), counted
  down between updates; rich's TimeRemainingColumn would use its own speed."""

  def render(self, task):
    eta, at = task.fields.get("eta"), task.fields.get("eta_at")
    if eta is not None and at is not None:
      eta -= time.time() - at
    return text_lib.Text(f"ETA {clock(eta)}", style="progress.remaining")


class TrainProgress:
  """update() at each logged step; close() at the end (stops the bar)."""

  def __init__(self, steps, start_step, stream=None, console=None):
    self.steps, self.start_step = steps, start_step
    self.tty = console is not None or is_tty(stream or sys.stderr)
    self._first = None  # (step, time) of the first update: the pace is measured from it
    self._bar = None
    if self.tty:
      console = console or console_lib.Console(file=stream or sys.stderr)
      self._bar = rich_progress.Progress(
          rich_progress.TextColumn("step"), rich_progress.BarColumn(bar_width=None),
          rich_progress.MofNCompleteColumn(),
          rich_progress.TextColumn("loss {task.fields[loss]}  {task.fields[rate]} tok/s"),
          rich_progress.TimeElapsedColumn(), EtaColumn(), console=console, expand=True)
      self._task = self._bar.add_task("train", total=steps, completed=start_step,
                                      loss="-", rate="-", eta=None, eta_at=None)
      self._started = False

  def eta(self, step, now):
    """Seconds to go at the pace since the first update; None before a second one."""
    if step >= self.steps:
      return 0.0
    if self._first is None or step <= self._first[0]:
      return None
    first_step, first_time = self._first
    return (self.steps - step) * (now - first_time) / (step - first_step)

  def update(self, step, loss, tokens_per_sec, now=None):
    now = time.time() if now is None else now
    if self._first is None:
      self._first = (step, now)
    eta = self.eta(step, now)
    if self._bar is None:
      logging.info(line(step, self.steps, loss, tokens_per_sec, eta))
      return
    if not self._started:  # started here, not in __init__: no thread before training
      self._bar.start()
      self._started = True
    self._bar.update(self._task, completed=step, loss=f"{loss:.4f}",
                     rate=f"{tokens_per_sec:,.0f}", eta=eta, eta_at=time.time())

  def close(self):
    if self._bar is not None and self._started:
      self._bar.stop()
      self._started = False
