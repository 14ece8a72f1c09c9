"""Launches a sweep: every run of a definition into its own directory of a store.

  python -m sweeps.launch --sweep=sweeps/defs/NAME.py[:arg] --store=DIR \
      [--launcher=local|slurm] [--parallel=K] [--rerun=failed,preempted,stale] [--dry_run]

Idempotent: done (and diverged) runs are skipped; failed, preempted and stale runs
(recorded process gone, or no heartbeat for --stale_minutes) resume from their
checkpoints; runs live elsewhere are left alone. --dry_run prints the plan without
starting JAX. Exit status 0 when every run ended done or diverged.
"""
import os
import sys
import time

from absl import app, flags, logging

from experiments import logs
from sweeps import define
from sweeps import plan as plan_lib
from sweeps import progress as progress_lib
from sweeps import rundir
from sweeps import flags as sweep_flags

_SWEEP = flags.DEFINE_string("sweep", None, "Definition file and argument: sweeps/defs/NAME.py[:arg].")
_STORE = sweep_flags.STORE
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "slurm"], "Where runs execute.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs at a time (local processes, or the Slurm array's limit).")
_RERUN = flags.DEFINE_string("rerun", ",".join(rundir.DEFAULT_RERUN),
                             f"States to relaunch besides new runs, from {rundir.RERUNNABLE} ('' = only new).")
_DRY_RUN = flags.DEFINE_boolean("dry_run", False, "Print the plan (ids, params, tokens, FLOPs) and exit.")
_STALE = flags.DEFINE_float("stale_minutes", 10.0, "A running run without a heartbeat this long is stale.")
_PIN = flags.DEFINE_boolean("pin", True, "local: pin each run to its share of the CPUs.")
_PARTITION = flags.DEFINE_string("partition", None, "slurm: partition.")
_ACCOUNT = flags.DEFINE_string("account", None, "slurm: account.")
_NODES = flags.DEFINE_integer("nodes", 1, "slurm: nodes per run (one task per node).")
_GPUS = flags.DEFINE_integer("gpus_per_node", 0, "slurm: GPUs per node of a run.")
_CPUS = flags.DEFINE_integer("cpus_per_run", 1, "slurm: CPUs per task.")
_TIME = flags.DEFINE_integer("time_minutes", 60, "slurm: time limit of one attempt (requeued after).")
_POLL = flags.DEFINE_float("poll_seconds", 5.0, "slurm: how often to look at the queue.")


def wait_for_slurm(jobs, runs, run_dirs, states, progress, stale_after, poll):
  from sweeps import slurm
  pending = {r.run_id: j.job_id for r, j in zip(runs, jobs)}
  while pending:
    for run_id, job_id in list(pending.items()):
      scheduled = slurm.job_state(job_id)
      if scheduled is None:
        del pending[run_id]
      state = rundir.state(run_dirs[run_id], stale_after, slurm.job_state)
      states[run_id] = "failed" if scheduled is None and state in ("running", "stale") else state
    progress.update(states)
    if pending:
      time.sleep(poll)
  return states


def launch(spec, store, launcher="local", parallel=1, rerun=rundir.DEFAULT_RERUN,
           dry_run=False, stale_minutes=10.0, out=sys.stdout, **options):
  """Plans and runs a sweep (spec: 'sweeps/defs/NAME.py[:arg]' or a define.Sweep); returns
  {run_id: final state} (dry run: the current states)."""
  sweep = spec if isinstance(spec, define.Sweep) else plan_lib.load_sweep(spec)
  if parallel < 1:
    raise ValueError(f"--parallel must be >= 1, got {parallel}.")
  runs = plan_lib.adopt(plan_lib.plan(sweep), store)
  run_dirs = {r.run_id: os.path.join(store, r.run_id) for r in runs}
  stale_after = 60.0 * stale_minutes
  job_state = None
  if launcher == "slurm" and not dry_run:
    from sweeps import slurm
    job_state = slurm.job_state
  states = {r.run_id: rundir.state(run_dirs[r.run_id], stale_after, job_state) for r in runs}
  from sweeps import design
  problems = design.check(runs)
  for problem in problems:
    logging.warning(f"[{sweep.name}] design: {problem}")
  if dry_run:
    print(plan_lib.format_plan(runs), file=out)
    for problem in problems:
      print(f"design: {problem}", file=out)
    print("states: " + ", ".join(f"{s} {list(states.values()).count(s)}"
                                 for s in sorted(set(states.values()))), file=out)
    return states
  todo = [r for r in runs if states[r.run_id] == "new" or states[r.run_id] in rerun]
  os.makedirs(store, exist_ok=True)
  progress = progress_lib.Progress(sweep.name, runs, run_dirs, slots=parallel)
  logging.info(f"[{sweep.name}] {len(runs)} runs: launching {len(todo)} ({launcher}), "
               f"{len(runs) - len(todo)} already done or live")
  for r in todo:
    states[r.run_id] = "queued"
  if launcher == "local":
    from sweeps import local
    local.run(sweep, todo, run_dirs, states, parallel, progress, pin=options.get("pin", True))
  elif todo:
    from sweeps import slurm
    executor = slurm.make_executor(
        store, partition=options.get("partition"), gpus_per_run=options.get("gpus_per_node", 0),
        nodes=options.get("nodes", 1), time_minutes=options.get("time_minutes", 60),
        account=options.get("account"), cpus_per_run=options.get("cpus_per_run", 1),
        parallel=parallel, name=sweep.name)
    jobs = slurm.submit(sweep, todo, run_dirs, executor)
    logging.info(f"[{sweep.name}] submitted array job {jobs[0].job_id.split('_')[0]}")
    wait_for_slurm(jobs, todo, run_dirs, states, progress, stale_after,
                   options.get("poll_seconds", 5.0))
  progress.update(states, force=True)
  progress.report(states)
  return states


def flag_options():
  """launch()'s launcher options from the flags (sweeps.verify shares them)."""
  return dict(pin=_PIN.value, partition=_PARTITION.value, account=_ACCOUNT.value,
              nodes=_NODES.value, gpus_per_node=_GPUS.value, cpus_per_run=_CPUS.value,
              time_minutes=_TIME.value, poll_seconds=_POLL.value)


def main(argv):
  logs.setup()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}", exitcode=logs.EXIT_BAD_INPUT)
  if not _SWEEP.value or not _STORE.value:
    raise app.UsageError("--sweep=sweeps/defs/NAME.py[:arg] and --store=DIR are required",
                         exitcode=logs.EXIT_BAD_INPUT)

  def body():
    states = launch(_SWEEP.value, _STORE.value, _LAUNCHER.value, _PARALLEL.value,
                    rundir.parse_rerun(_RERUN.value), _DRY_RUN.value, _STALE.value,
                    **flag_options())
    return 0 if _DRY_RUN.value or all(s in rundir.FINISHED for s in states.values()) else 1
  return logs.guard(body)


if __name__ == "__main__":
  app.run(main, flags_parser=logs.parse_flags)
