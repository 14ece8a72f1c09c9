"""The trainer's progress display: log lines off a terminal, a rich bar on one."""
import io
import logging

import pytest
from rich import console as console_lib

from experiments import progress


class TtyStream(io.StringIO):
  def isatty(self):
    return True


def test_log_lines_keep_the_grepped_format(caplog):
  p = progress.TrainProgress(steps=400, start_step=0, stream=io.StringIO())
  assert not p.tty
  with caplog.at_level(logging.INFO, logger="absl"):
    p.update(10, 1.23456, 12345.4, now=1000.0)  # compilation inside: no pace yet
    p.update(20, 1.1, 20000.0, now=1010.0)      # 1 s per step since step 10
    p.update(400, 0.9, 20000.0, now=1390.0)
    p.close()
  assert [r.getMessage() for r in caplog.records] == [
      "step 10/400  loss 1.2346  12,345 tok/s  ETA ?",
      "step 20/400  loss 1.1000  20,000 tok/s  ETA 0:06:20",
      "step 400/400  loss 0.9000  20,000 tok/s  ETA 0:00:00"]
  assert {r.levelno for r in caplog.records} == {logging.INFO}


def test_eta_leaves_out_the_first_interval_after_a_restart():
  p = progress.TrainProgress(steps=1000, start_step=500, stream=io.StringIO())
  assert p.eta(550, now=0.0) is None  # before any update
  p.update(550, 2.0, 1.0, now=100.0)  # 50 steps in 100 s, mostly compiling
  assert p.eta(550, now=100.0) is None
  assert p.eta(650, now=110.0) == pytest.approx(350 * 0.1)
  assert p.eta(1000, now=150.0) == 0.0


@pytest.mark.parametrize("make", [
    lambda out: {"console": console_lib.Console(file=out, force_terminal=True, width=120)},
    lambda out: {"stream": TtyStream()}], ids=["console", "tty_stream"])
def test_rich_bar_on_a_terminal(make, caplog):
  out = io.StringIO()
  kwargs = make(out)
  p = progress.TrainProgress(steps=400, start_step=0, **kwargs)
  assert p.tty
  with caplog.at_level(logging.INFO, logger="absl"):
    p.update(10, 1.5, 1000.0)
    p.update(200, 1.25, 2000.0)
    p.close()
  assert not caplog.records  # the bar, not log lines
  text = out.getvalue() if "console" in kwargs else kwargs["stream"].getvalue()
  assert "200/400" in text and "loss 1.2500" in text and "2,000 tok/s" in text
  assert "ETA 0:00:00" in text  # 190 steps took ~0 s: ~0 s to go


def test_the_bar_starts_at_the_first_update():
  p = progress.TrainProgress(steps=10, start_step=0, stream=TtyStream())
  assert not p._started  # the bar (and its refresh thread) starts at the first update
  p.close()
