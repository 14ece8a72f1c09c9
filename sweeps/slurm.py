"""Slurm launcher: one submitit job array, one array task per run.

Each task runs `python -m experiments.train` as a child process in the run
directory. On a Slurm time limit or preemption notice (submitit's USR2) the task
asks the trainer to checkpoint (SIGTERM), waits, and requeues itself; the
requeued task resumes from the checkpoint. Multi-node runs start one task per
node; the trainer starts jax.distributed from Slurm's variables, which every
task inherits.
"""
import os
import signal
import subprocess
import sys

import submitit

from sweeps import plan as plan_lib
from sweeps import rundir


def _ignore_usr2():
  # Slurm signals every process of the step; the trainer checkpoints on SIGTERM
  # (sent by checkpoint() below) and must survive submitit's USR2.
  signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class TrainTask(submitit.helpers.Checkpointable):
  """The array task: runs one trainer command, requeues on preemption."""

  def __init__(self):
    self._proc = None

  def __getstate__(self):
    return {}  # the child process handle is not picklable and belongs to one attempt

  def __setstate__(self, state):
    self._proc = None

  def __call__(self, command, run_dir):
    rank = int(os.environ.get("SLURM_PROCID", "0"))
    suffix = "" if rank == 0 else f".task{rank}"
    with open(os.path.join(run_dir, f"stdout{suffix}.log"), "a") as out, \
        open(os.path.join(run_dir, f"stderr{suffix}.log"), "a") as err:
      self._proc = subprocess.Popen(command, cwd=plan_lib.REPO, stdout=out, stderr=err,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                    preexec_fn=_ignore_usr2)
      if rank == 0:
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job_id = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ.get(
            "SLURM_JOB_ID")
        rundir.write_launch(run_dir, launcher="slurm", job_id=job_id, pid=self._proc.pid,
                            command=command)
      code = self._proc.wait()
    status = rundir.summary(run_dir).get("status")
    if code != 0:
      raise RuntimeError(f"trainer exited with {code} (status {status}); see {run_dir}/stderr.log")
    return status

  def checkpoint(self, command, run_dir):
    if self._proc is not None and self._proc.poll() is None:
      self._proc.send_signal(signal.SIGTERM)
      self._proc.wait()
    return submitit.helpers.DelayedSubmission(TrainTask(), command, run_dir)


def job_state(job_id):
  """'queued' | 'running' for a job Slurm still knows, else None (squeue)."""
  try:
    out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True,
                         text=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return None
  states = out.stdout.split()
  if out.returncode != 0 or not states:
    return None
  return "queued" if states[0] in ("PENDING", "REQUEUED", "CONFIGURING") else "running"


def make_executor(store, *, partition, gpus_per_run, nodes, time_minutes, account,
                  cpus_per_run, parallel, name):
  executor = submitit.AutoExecutor(folder=os.path.join(store, ".submitit"),
                                   cluster="slurm")
  extra = {"requeue": True}
  if account:
    extra["account"] = account
  if gpus_per_run:
    executor.update_parameters(gpus_per_node=gpus_per_run)
  executor.update_parameters(
      name=name, nodes=nodes, tasks_per_node=1, cpus_per_task=cpus_per_run,
      timeout_min=time_minutes,
      slurm_partition=partition or None, slurm_array_parallelism=parallel,
      slurm_additional_parameters=extra,
      slurm_setup=[f"cd {plan_lib.REPO}",
                   f"export PYTHONPATH={plan_lib.REPO}${{PYTHONPATH:+:$PYTHONPATH}}"])
  return executor


def submit(sweep, runs, run_dirs, executor):
  """Submits one array job; records each task's job id in its run directory."""
  commands = [plan_lib.train_command(sweep, r, run_dirs[r.run_id], python=sys.executable)
              for r in runs]
  dirs = [run_dirs[r.run_id] for r in runs]
  for d in dirs:
    os.makedirs(d, exist_ok=True)
  jobs = executor.map_array(TrainTask(), commands, dirs)
  for job, d in zip(jobs, dirs):
    rundir.write_launch(d, launcher="slurm", job_id=job.job_id, submitted=True)
  return jobs
