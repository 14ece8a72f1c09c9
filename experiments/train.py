"""Trains one run into a run directory.

  python -m experiments.train --config=experiments/configs/lm.py:tiny --workdir=DIR \
      [--config.key=value ...]

Relaunching on the same workdir resumes from the latest checkpoint (metrics
after it are rewritten); a finished run is left as it is.

  --compile_only [--num_fake_devices=8]: compile the train step for the
      configured mesh and print per-device memory; nothing is trained or written.
  --coordinator_address/--num_processes/--process_id: join a multi-process job
      (detected from Slurm / TPU-pod variables when not given).
"""
import os
import platform
import signal
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import models
import parallel
from experiments import checkpoint, config as config_lib, data as data_lib, metrics, state as state_lib
from experiments import identity
from experiments.validation import check_workdir, validate

STATUSES = ("running", "done", "failed", "diverged", "preempted")
# Exit codes: 0 done or preempted (relaunch resumes), 1 an unexpected crash before
# training started, 2 bad input (nothing written), 3 diverged, 4 failed.
EXIT_CODES = {"done": 0, "preempted": 0, "diverged": 3, "failed": 4}
EXIT_BAD_INPUT = 2


class RunFailed(RuntimeError):
  """Training raised; summary.json says failed, with the error."""


def versions():
  import flax, grain, optax, orbax.checkpoint as ocp
  return {"python": platform.python_version(), "jax": jax.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax": ocp.__version__, "grain": getattr(grain, "__version__", "?")}


class _Preemption:
  """SIGTERM (Slurm preemption, kill): checkpoint at the next step, then stop."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, *_):
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _log(message):
  print(message, file=sys.stderr, flush=True)


def _resume_point(workdir, start, previous, is_writer, flops_guess):
  """(flops, wall_seconds) at checkpoint `start`, from the metrics record written
  at that step (metrics after it are dropped: the resumed run rewrites them), so
  work redone after a kill is counted once."""
  if not is_writer:
    return flops_guess, 0.0
  path = os.path.join(workdir, metrics.METRICS)
  metrics.truncate_metrics(path, start)
  kept, _ = metrics.read_metrics(path)
  if not (start and kept and kept[-1]["step"] == start):
    return flops_guess, 0.0
  last = kept[-1]
  # Records from before wall_seconds was logged: the old summary's (an upper bound).
  wall = last.get("wall_seconds", previous.get("wall_seconds") or 0.0)
  return last.get("flops") or flops_guess, wall or 0.0


def run(cfg, workdir):
  """Trains to cfg.steps (or resumes); returns the summary dict.

  Bad input raises ValueError before anything is written. Once training starts,
  every outcome is recorded in summary.json: done, preempted, diverged (a
  non-finite loss or gradient at any step) or failed (with the error)."""
  validate(cfg)
  check_workdir(workdir)
  is_writer = jax.process_index() == 0
  data = data_lib.build(cfg, jax.process_index(), jax.process_count())
  mesh = parallel.make_mesh(cfg.mesh)
  program = state_lib.build(cfg, mesh)
  # Trace the step abstractly (no compile): values only the kernels check (block-mask
  # parameters) fail here, before the workdir exists.
  jax.eval_shape(program.train_step, program.abstract_state, jax.ShapeDtypeStruct(
      (cfg.batch_size, cfg.seq_len + 1), jnp.int32, sharding=program.batch_sharding))
  counts = models.count_params(cfg)
  flops_per_token = models.flops_per_token(cfg)
  cfg_dict = config_lib.to_dict(cfg)
  fingerprint = config_lib.fingerprint(cfg_dict)
  os.makedirs(workdir, exist_ok=True)
  summary_path = os.path.join(workdir, metrics.SUMMARY)
  previous = metrics.read_json(summary_path, {})
  ckpt = checkpoint.Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 every=cfg.checkpoint_every, keep=cfg.keep_checkpoints)
  try:
    note = identity.check(workdir, cfg_dict, ckpt.stored_config(), previous,
                          trained=bool(ckpt.steps()), write=is_writer)
  except BaseException:
    ckpt.close()
    raise
  if note:
    _log(note)
  latest = ckpt.latest_step() or 0
  if latest >= cfg.steps and previous.get("status") == "done":
    ckpt.close()
    _log(f"{workdir}: already done ({latest} steps).")
    return previous

  tokens_per_step = cfg.batch_size * cfg.seq_len
  summary = {
      "status": "running", "step": previous.get("step", 0), "steps": cfg.steps,
      "config_hash": fingerprint,
      "params": counts["total"], "params_non_embedding": counts["non_embedding"],
      "flops_per_token": flops_per_token, "tokens": previous.get("tokens", 0),
      "flops": previous.get("flops", 0),
      "final_loss": previous.get("final_loss"), "eval_loss": previous.get("eval_loss"),
      "wall_seconds": previous.get("wall_seconds", 0.0), "versions": versions(),
      "attention_kinds": models.layer_kinds(cfg), **data.summary,
  }

  def save_summary(**updates):
    if updates.get("status") == "running":
      summary.pop("error", None)  # a relaunch after a failure
    summary.update(updates, heartbeat=time.time())
    if is_writer:
      metrics.write_json_atomic(summary_path, summary)

  train_iter = data.train_iterator()
  writer = None
  preemption = _Preemption()
  try:
    start, state = ckpt.restore_latest(program.abstract_state, train_iter, _log)
    if state is None:
      state = program.init()
    flops_total, base_wall = _resume_point(
        workdir, start, previous, is_writer, start * tokens_per_step * flops_per_token)
    eval_batches = [state_lib.global_batch(program, b) for b in data.eval_iterable()]
    writer = metrics.MetricsWriter(workdir, enabled=is_writer, wandb_cfg=cfg.wandb,
                                   config=cfg_dict)
    save_summary(status="running", step=start, tokens=start * tokens_per_step,
                 flops=flops_total, wall_seconds=base_wall)
    wall0, last_time, last_step = time.time(), time.time(), start
    for step in range(start + 1, cfg.steps + 1):
      batch = state_lib.global_batch(program, next(train_iter))
      state, step_metrics = program.train_step(state, batch)
      # One scalar per step: divergence stops at the step it happens, not the next log.
      finite = bool(step_metrics["finite"])
      is_eval = step % cfg.eval_every == 0 or step == cfg.steps
      is_ckpt = step % cfg.checkpoint_every == 0 or step == cfg.steps or preemption.requested
      if finite and step % cfg.log_every and not is_eval and not is_ckpt:
        continue
      m = jax.device_get(step_metrics)
      now = time.time()
      tokens_per_sec = (step - last_step) * tokens_per_step / max(now - last_time, 1e-9)
      density = float(m["attn_density"]) if "attn_density" in m else None
      # Sparse kinds: the interval since the last record is charged at the density
      # measured now (the count for the kind actually used, not the dense bound).
      flops_total += (step - last_step) * tokens_per_step * models.flops_per_token(cfg, density)
      record = {"step": step, "tokens": step * tokens_per_step, "flops": flops_total,
                "loss": float(m["loss"]), "lr": float(m["lr"]),
                "grad_norm": float(m["grad_norm"]), "tokens_per_sec": tokens_per_sec,
                "wall_seconds": base_wall + now - wall0}
      if density is not None:
        record["attn_density"] = density
      if not finite:
        writer.write(record)
        save_summary(status="diverged", step=step, final_loss=record["loss"],
                     error=f"non-finite loss {record['loss']} / grad norm "
                           f"{record['grad_norm']} at step {step}",
                     wall_seconds=record["wall_seconds"])
        _log(f"step {step}: loss {record['loss']}, grad norm {record['grad_norm']}; "
             f"stopping (status diverged, exit {EXIT_CODES['diverged']}).")
        ckpt.close()
        return summary
      if is_eval:
        losses = [program.eval_step(state["params"], b) for b in eval_batches]
        record["eval_loss"] = float(np.mean(jax.device_get(losses)))
      writer.write(record)
      metrics.progress_line(step, cfg.steps, record["loss"], tokens_per_sec,
                            step - start, time.time() - wall0)
      if is_ckpt:
        ckpt.save(step, state, train_iter, {"fingerprint": fingerprint, "config": cfg_dict},
                  force=True)
      save_summary(step=step, tokens=record["tokens"], flops=record["flops"],
                   attn_density=record.get("attn_density"),
                   final_loss=record["loss"],
                   eval_loss=record.get("eval_loss", summary["eval_loss"]),
                   wall_seconds=record["wall_seconds"])
      last_time, last_step = time.time(), step
      if preemption.requested and step < cfg.steps:
        ckpt.close()
        save_summary(status="preempted")
        return summary
    ckpt.close()
    save_summary(status="done")
    return summary
  except checkpoint.NoRestorableCheckpoint as e:
    save_summary(status="failed", error=str(e))
    _log(f"error: {e}")
    return summary
  except Exception as e:
    save_summary(status="failed", error=f"{type(e).__name__}: {e}")
    raise RunFailed(f"{workdir}: {type(e).__name__}: {e}") from e
  except BaseException as e:  # KeyboardInterrupt, SystemExit: recorded, not wrapped
    save_summary(status="failed", error=f"{type(e).__name__}: {e}")
    raise
  finally:
    preemption.restore()
    if writer is not None:
      writer.close()


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
  print(f"compile-only: {params_m:,.1f}M params on mesh ({shape}), {mesh.size} "
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


def parse_flags(argv):
  """Rejects unknown --config.KEY overrides (naming the closest keys) and values
  that do not parse as their field's type, before absl parses them, so a typo
  fails cleanly and nothing is created."""
  spec = config_lib.argv_config_spec(argv)
  if spec and config_lib.argv_override_keys(argv):
    try:
      config_lib.check_override_values(config_lib.load(spec), argv)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(EXIT_BAD_INPUT)
  return flags.FLAGS(argv)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
  if _CONFIG.value is None or not (_WORKDIR.value or _COMPILE_ONLY.value):
    print("usage: python -m experiments.train --config=experiments/configs/lm.py:tiny "
          "--workdir=DIR [--config.KEY=VALUE ...] [--compile_only [--num_fake_devices=N]]",
          file=sys.stderr)
    return EXIT_BAD_INPUT
  try:
    parallel.initialize(num_cpu_devices=_FAKE_DEVICES.value,
                        coordinator_address=_COORDINATOR.value,
                        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    if _COMPILE_ONLY.value:
      compile_only(_CONFIG.value)
      return 0
    summary = run(_CONFIG.value, _WORKDIR.value)
  except RunFailed as e:
    traceback.print_exception(e.__cause__)
    print(f"error: {e} (status failed, exit {EXIT_CODES['failed']})", file=sys.stderr)
    return EXIT_CODES["failed"]
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  status = summary["status"]
  print(f"{_WORKDIR.value}: status {status}, final loss "
        f"{summary.get('final_loss')}, eval loss {summary.get('eval_loss')}", file=sys.stderr)
  return EXIT_CODES.get(status, 0)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
