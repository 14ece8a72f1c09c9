"""A run directory's state as a launcher sees it (reads summary.json, never the trainer).

States: new (nothing ran), queued (submitted, not started), running, stale (says
running but its process is gone or its heartbeat stopped), and the trainer's
done | failed | diverged | preempted. `launch.json` is the launcher's own record:
host, pid and start time of the trainer process, or the Slurm job id.
"""
import os
import socket
import time

from experiments import metrics

LAUNCH = "launch.json"
FINISHED = ("done", "diverged")
RERUNNABLE = ("failed", "preempted", "stale", "diverged")
DEFAULT_RERUN = ("failed", "preempted", "stale")


def process_start_time(pid):
  """The kernel's start time of a live pid (tells it from a reused pid); None if the
  process is gone or a zombie (killed, not yet reaped)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except OSError:
    return None
  if len(fields) < 20 or fields[0] in ("Z", "X"):
    return None
  return int(fields[19])


def pid_alive(launch):
  """For a launch record on this host: is its recorded trainer process still running?"""
  pid = launch.get("pid")
  if not pid:
    return False
  started = process_start_time(pid)
  return started is not None and started == launch.get("pid_start", started)


def write_launch(run_dir, **record):
  record.setdefault("host", socket.gethostname())
  record.setdefault("time", time.time())
  if "pid" in record:
    record["pid_start"] = process_start_time(record["pid"])
  metrics.write_json_atomic(os.path.join(run_dir, LAUNCH), record)


def state(run_dir, stale_after=600.0, job_state=None):
  """The run's state; job_state(job_id) -> 'queued'|'running'|None asks the scheduler."""
  summary = metrics.read_json(os.path.join(run_dir, metrics.SUMMARY))
  launch = metrics.read_json(os.path.join(run_dir, LAUNCH)) or {}
  on_this_host = launch.get("host") == socket.gethostname()
  if launch.get("job_id") and job_state is not None:
    scheduled = job_state(launch["job_id"])
    if scheduled == "queued" and (summary is None or summary.get("status") != "running"):
      return "queued"
  if summary is None:
    if on_this_host and pid_alive(launch):
      return "running"  # still starting up: no summary yet
    return "new"
  status = summary.get("status", "failed")
  if status != "running":
    return status
  if on_this_host and launch.get("pid"):
    return "running" if pid_alive(launch) else "stale"
  if time.time() - summary.get("heartbeat", 0) > stale_after:
    return "stale"
  return "running"


def summary(run_dir):
  return metrics.read_json(os.path.join(run_dir, metrics.SUMMARY)) or {}


def parse_rerun(text):
  """'failed,stale' -> tuple; unknown names fail listing the valid ones."""
  names = tuple(n.strip() for n in text.split(",") if n.strip())
  bad = [n for n in names if n not in RERUNNABLE]
  if bad:
    raise ValueError(f"--rerun: unknown state(s) {bad}; choose from {', '.join(RERUNNABLE)} "
                     "(done runs are never rerun: delete the run directory to start over).")
  return names
