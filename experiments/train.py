"""Trains one run into a run directory.

  python -m experiments.train --config=experiments/configs/lm.py:tiny --workdir=DIR \
      [--config.key=value ...]

Relaunching on the same workdir resumes from the latest checkpoint (metrics
after it are rewritten); a finished run is left as it is. The run itself, in
phases, is experiments/loop.py.

  --compile_only [--num_fake_devices=8]: compile the train step for the
      configured mesh and print per-device memory; nothing is trained or written.
  --coordinator_address/--num_processes/--process_id: join a multi-process job
      (detected from Slurm / TPU-pod variables when not given).
"""
import sys
import traceback

import jax
import jax.numpy as jnp

import models
import parallel
from parallel import context as parallel_context
from experiments import config as config_lib, logs, state as state_lib
from experiments.loop import EXIT_BAD_INPUT, EXIT_CODES, STATUSES, RunFailed, run  # noqa: F401
from experiments.validation import validate


def compile_only(cfg):
  """Lowers and compiles the train step on the configured mesh from abstract state
  (no params are created) and prints per-device memory; returns the numbers."""
  validate(cfg)
  mesh = parallel.make_mesh(cfg.mesh)
  program = state_lib.build(cfg, mesh)
  batch = jax.ShapeDtypeStruct((cfg.batch_size, cfg.seq_len + 1), jnp.int32,
                               sharding=program.batch_sharding)
  compiled = program.train_step.lower(program.abstract_state, batch).compile()
  stats = compiled.memory_analysis()
  state = program.abstract_state
  report = {
      "params": (parallel.total_bytes(state["params"]),
                 parallel.per_device_bytes(state["params"])),
      "optimizer state": (parallel.total_bytes(state["opt_state"]),
                          parallel.per_device_bytes(state["opt_state"])),
      "temporaries": (None, stats.temp_size_in_bytes),
      "arguments (XLA)": (None, stats.argument_size_in_bytes),
      "outputs (XLA)": (None, stats.output_size_in_bytes),
  }
  shape = ", ".join(f"{a}={n}" for a, n in mesh.shape.items())
  params_m = models.count_params(cfg)["total"] / 1e6
  context = parallel_context.from_config(cfg.mesh, mesh.shape["sequence"])
  scheme = "" if mesh.shape["sequence"] == 1 else (
      f", context {context.mode}" + (f" x{context.head_chunks} head chunks"
                                     if context.chunked else ""))
  print(f"compile-only: {params_m:,.1f}M params on mesh ({shape}){scheme}, {mesh.size} "
        f"{jax.default_backend()} devices")
  print(f"{'':>16} {'total MiB':>12} {'per device MiB':>15}")
  for name, (total, per_device) in report.items():
    total_text = "" if total is None else f"{total / 2**20:.1f}"
    print(f"{name:>16} {total_text:>12} {per_device / 2**20:>15.1f}")
  return report


# --- command line -----------------------------------------------------------
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and variant, e.g. experiments/configs/lm.py:tiny.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if it exists).")
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Compile the train step for the configured mesh, print "
    "per-device memory, and exit (no training, nothing written).")
_FAKE_DEVICES = flags.DEFINE_integer(
    "num_fake_devices", 0, "Use this many fake CPU devices (to plan a mesh without one).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 in a multi-process job.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")


def main(argv):
  del argv
  logs.setup()
  if _CONFIG.value is None or not (_WORKDIR.value or _COMPILE_ONLY.value):
    raise app.UsageError("--config=FILE.py[:variant] and --workdir=DIR (or --compile_only) "
                         "are required", exitcode=EXIT_BAD_INPUT)

  def body():
    parallel.initialize(num_cpu_devices=_FAKE_DEVICES.value,
                        coordinator_address=_COORDINATOR.value,
                        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    if _COMPILE_ONLY.value:
      compile_only(_CONFIG.value)
      return 0
    try:
      summary = run(_CONFIG.value, _WORKDIR.value)
    except RunFailed as e:
      traceback.print_exception(e.__cause__)
      print(f"error: {e} (status failed, exit {EXIT_CODES['failed']})", file=sys.stderr)
      return EXIT_CODES["failed"]
    logging.info(f"{_WORKDIR.value}: status {summary['status']}, final loss "
                 f"{summary.get('final_loss')}, eval loss {summary.get('eval_loss')}")
    return EXIT_CODES.get(summary["status"], 0)
  return logs.guard(body)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
