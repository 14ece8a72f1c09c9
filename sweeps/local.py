"""Local launcher: K concurrent `python -m experiments.train` processes on this machine.

The machine's cores are divided among the K slots: each trainer gets
cores // K intra-op threads (XLA, OpenMP, BLAS) and, with pinning, its own
cores, so concurrent runs do not oversubscribe the CPU. Trainers stay in the
launcher's process group (a signal to the group reaches them all) and write
their stdout/stderr to stdout.log / stderr.log in their run directories.
"""
import os
import signal
import subprocess
import time

from sweeps import plan as plan_lib
from sweeps import rundir

COMPILE_CACHE = ".jax_cache"  # in the store; not a run directory (no run markers)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def slot_cpus(parallel, cpus=None):
  """The CPU ids each of the K slots gets (slots share CPUs when K > cores)."""
  cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
  per_slot = max(1, len(cpus) // parallel)
  return [cpus[(i * per_slot) % len(cpus):][:per_slot] for i in range(parallel)]


def thread_env(threads, base=None):
  env = dict(os.environ if base is None else base)
  eigen = "true" if threads > 1 else "false"
  xla = f"--xla_cpu_multi_thread_eigen={eigen} intra_op_parallelism_threads={threads}"
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla}".strip()
  env.update({var: str(threads) for var in THREAD_VARS})
  env["PYTHONUNBUFFERED"] = "1"
  return env


def cache_env(env, run_dir):
  """JAX's persistent compilation cache, shared by the store's runs (unless the caller set
  one): runs of one shape differ only in constants such as the LR, so init and eval
  programs compile once per shape, not once per run. A cached executable is the one XLA
  would build, so results do not change."""
  env.setdefault("JAX_COMPILATION_CACHE_DIR",
                 os.path.join(os.path.dirname(os.path.abspath(run_dir)), COMPILE_CACHE))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  return env


class _Slot:
  def __init__(self, run, proc, logs, index):
    self.run, self.proc, self.logs, self.index = run, proc, logs, index


def _start(sweep, run, run_dir, cpus, index, pin):
  os.makedirs(run_dir, exist_ok=True)
  command = plan_lib.train_command(sweep, run, run_dir)
  logs = [open(os.path.join(run_dir, name), "a") for name in ("stdout.log", "stderr.log")]
  header = f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n"
  for log in logs:
    log.write(header)
    log.flush()
  preexec = (lambda: os.sched_setaffinity(0, cpus)) if pin else None
  env = cache_env(thread_env(len(cpus)), run_dir)
  proc = subprocess.Popen(command, cwd=plan_lib.REPO, env=env,
                          stdout=logs[0], stderr=logs[1], preexec_fn=preexec)
  rundir.write_launch(run_dir, launcher="local", pid=proc.pid, command=command, cpus=cpus)
  return _Slot(run, proc, logs, index)


def _finish(slot, run_dir):
  for log in slot.logs:
    log.close()
  state = rundir.state(run_dir)
  if slot.proc.returncode != 0 and state in ("running", "stale", "new"):
    return "failed"  # killed before it could record an outcome
  return state


def run(sweep, runs, run_dirs, states, parallel, progress, pin=True, poll=0.5):
  """Runs `runs` (those to launch) K at a time; updates `states`; returns it.

  SIGTERM/SIGINT to the launcher forwards SIGTERM to the trainers (they checkpoint
  and end preempted) and stops launching."""
  cpu_sets = slot_cpus(parallel)
  queue, active, free = list(runs), [], list(range(parallel))
  stopping = []

  def stop(signum, _frame):
    stopping.append(signum)
    for slot in active:
      if slot.proc.poll() is None:
        slot.proc.send_signal(signal.SIGTERM)

  previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    while active or (queue and not stopping):
      while queue and free and not stopping:
        run_ = queue.pop(0)
        index = free.pop(0)
        active.append(_start(sweep, run_, run_dirs[run_.run_id], cpu_sets[index], index, pin))
        states[run_.run_id] = "running"
      for slot in list(active):
        if slot.proc.poll() is not None:
          active.remove(slot)
          free.append(slot.index)
          states[slot.run.run_id] = _finish(slot, run_dirs[slot.run.run_id])
      progress.update(states)
      time.sleep(poll)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  if stopping:
    raise KeyboardInterrupt(f"stopped by signal {stopping[0]}; relaunch to resume")
  return states
