"""One run, in phases: setup (validate, build, identify the run directory),
restore (the newest checkpoint that restores), the step loop (train, record,
eval, checkpoint) and finish (the outcome in summary.json).

The loop reads each step's metrics one step late: step k+1 is dispatched before
the host waits for step k's finite flag, so checking every step for divergence
does not stall the device. Steps that record (log, eval, checkpoint) are read at
once: their eval and checkpoint need that step's state.
"""
import dataclasses
import os
import signal
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import models
import parallel
from kernels import dispatch
from experiments import checkpoint, config as config_lib, data as data_lib, identity, logs
from experiments import metrics, progress as progress_lib
from experiments import state as state_lib, teacher as teacher_lib
from experiments.validation import check_workdir, validate

STATUSES = ("running", "done", "failed", "diverged", "preempted")
# Exit codes: 0 done or preempted (relaunch resumes), 1 an unexpected crash before
# training started, 2 bad input (nothing written), 3 diverged, 4 failed.
EXIT_CODES = {"done": 0, "preempted": 0, "diverged": 3, "failed": 4}
EXIT_BAD_INPUT = logs.EXIT_BAD_INPUT
# Cumulative FLOPs logged under each convention (models.flops): `flops` is the executed
# work that sweeps and fits read, `flops_chinchilla` the model FLOPs behind MFU.
FLOP_FIELDS = {"flops": "executed", "flops_chinchilla": "chinchilla"}


def counting_config(cfg):
  """cfg with attention.impl resolved ("auto": what runs on this backend), so the
  executed count is that impl's work (kernels.builtin_kinds.linear_flops reads it)."""
  impl = dispatch.resolve_impl(cfg.attention.impl, cfg.attention.kind)
  return config_lib.override(cfg, {"attention.impl": impl})


def flops_per_token(cfg, density=None, pv_skip=None, convention="executed"):
  """models.flops_per_token plus a distillation teacher's forward pass (its config is
  read from its run directory, which the models package never touches)."""
  return (models.flops_per_token(cfg, density, pv_skip, convention=convention)
          + teacher_lib.forward_flops_per_token(cfg, convention))


class RunFailed(RuntimeError):
  """Training raised; summary.json says failed, with the error."""


class _Diverged(Exception):
  def __init__(self, record):
    super().__init__(f"non-finite loss {record['loss']} / grad norm {record['grad_norm']} "
                     f"at step {record['step']}")
    self.record = record


TRAINING_LIBRARIES = ("jax", "flax", "optax", "orbax", "grain")


class Summary:
  """summary.json as the run goes: one dict, rewritten atomically by the writer."""

  def __init__(self, path, fields, enabled):
    self.path, self.fields, self.enabled = path, fields, enabled

  def update(self, **updates):
    if updates.get("status") == "running":
      self.fields.pop("error", None)  # a relaunch after a failure
    self.fields.update(updates, heartbeat=time.time())
    if self.enabled:
      metrics.write_json_atomic(self.path, self.fields)
    return self.fields


class _Preemption:
  """SIGTERM (Slurm preemption, kill): checkpoint at the next step, then stop."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, *_):
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class Setup:
  """Everything built for one run before its first step."""
  cfg: object
  workdir: str
  is_writer: bool
  data: data_lib.Data
  program: state_lib.Program
  ckpt: checkpoint.Checkpointer
  cfg_dict: dict
  fingerprint: str
  previous: dict  # the summary.json of an earlier attempt ({} if none)

  @property
  def tokens_per_step(self):
    return self.cfg.batch_size * self.cfg.seq_len


def setup(cfg, workdir):
  """Validates and builds; bad input raises ValueError before anything is written."""
  validate(cfg)
  check_workdir(workdir)
  data = data_lib.build(cfg, jax.process_index(), jax.process_count())
  program = state_lib.build(cfg, parallel.make_mesh(cfg.mesh))
  # Trace the step abstractly (no compile): values only the kernels check (block-mask
  # parameters) fail here, before the workdir exists.
  jax.eval_shape(program.train_step, program.abstract_state, jax.ShapeDtypeStruct(
      (cfg.batch_size, cfg.seq_len + 1), jnp.int32, sharding=program.batch_sharding))
  cfg_dict = config_lib.to_dict(cfg)
  os.makedirs(workdir, exist_ok=True)
  previous = metrics.read_json(os.path.join(workdir, metrics.SUMMARY), {})
  ckpt = checkpoint.Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 every=cfg.checkpoint_every, keep=cfg.keep_checkpoints)
  is_writer = jax.process_index() == 0
  try:
    note = identity.check(workdir, cfg_dict, ckpt.stored_config(), previous,
                          trained=bool(ckpt.steps()), write=is_writer)
  except BaseException:
    ckpt.close()
    raise
  if note:
    logging.warning(note)
  return Setup(cfg, workdir, is_writer, data, program, ckpt, cfg_dict,
               config_lib.fingerprint(cfg_dict), previous)


def start_summary(s):
  cfg, previous = s.cfg, s.previous
  counts = models.count_params(cfg)
  counted = counting_config(cfg)
  fields = {
      "status": "running", "step": previous.get("step", 0), "steps": cfg.steps,
      "config_hash": s.fingerprint,
      "params": counts["total"], "params_non_embedding": counts["non_embedding"],
      "flops_per_token": flops_per_token(counted), "tokens": previous.get("tokens", 0),
      **{field: previous.get(field, 0) for field in FLOP_FIELDS},
      "final_loss": previous.get("final_loss"), "eval_loss": previous.get("eval_loss"),
      "wall_seconds": previous.get("wall_seconds", 0.0), "versions": identity.library_versions(TRAINING_LIBRARIES),
      "attention_kinds": models.layer_kinds(cfg), **s.data.summary,
  }
  return Summary(os.path.join(s.workdir, metrics.SUMMARY), fields, s.is_writer)


def _init_from(run_dir, abstract_state, state):
  """state with the params of run_dir's latest checkpoint (its optimizer is not used)."""
  from experiments import probe  # here: only fine-tuning runs need it
  try:
    step, source = probe.restore_state(run_dir, abstract_state)
  except ValueError as e:
    raise ValueError(f"config.init_from={run_dir!r}: {e}") from None
  logging.info(f"initialised the params from {run_dir} (step {step}); fresh optimizer.")
  return {**state, "params": source["params"]}


def restore(s, train_iter):
  """(start step, state, flops {FLOP_FIELDS field: count}, wall_seconds) to continue
  from. flops and wall come from the metrics record written at the checkpoint's step
  (later records are dropped: the resumed run rewrites them), so work redone after a
  kill counts once."""
  start, state = s.ckpt.restore_latest(s.program.abstract_state, train_iter)
  if state is None:
    state = s.program.init()
    if s.cfg.get("init_from"):
      state = _init_from(s.cfg.init_from, s.program.abstract_state, state)
  counted = counting_config(s.cfg)
  flops = {field: start * s.tokens_per_step * flops_per_token(counted, convention=c)
           for field, c in FLOP_FIELDS.items()}
  wall = 0.0
  if s.is_writer:
    path = os.path.join(s.workdir, metrics.METRICS)
    metrics.truncate_metrics(path, start)
    kept, _ = metrics.read_metrics(path)
    if start and kept and kept[-1]["step"] == start:
      # Records from before wall_seconds was logged: the old summary's (an upper bound).
      flops = {field: kept[-1].get(field) or n for field, n in flops.items()}
      wall = kept[-1].get("wall_seconds", s.previous.get("wall_seconds")) or 0.0
  return start, state, flops, wall


class StepLoop:
  """Turns step metrics into records; evaluates and checkpoints on their steps."""

  def __init__(self, s, train_iter, summary, writer, start, flops, wall):
    self.s, self.train_iter, self.summary, self.writer = s, train_iter, summary, writer
    self.start, self.flops, self.base_wall = start, flops, wall
    self.counted = counting_config(s.cfg)
    self.wall0 = self.last_time = time.time()
    self.progress = progress_lib.TrainProgress(s.cfg.steps, start)
    self.last_step = start
    self.eval_batches = [state_lib.global_batch(s.program, b) for b in s.data.eval_iterable()]

  def records_at(self, step, preempting):
    cfg = self.s.cfg
    return (step % cfg.log_every == 0 or step % cfg.eval_every == 0 or step == cfg.steps
            or step % cfg.checkpoint_every == 0 or preempting)

  def check(self, step, step_metrics):
    """Off-record steps: only the finite flag comes to the host."""
    if not bool(step_metrics["finite"]):
      self.record(step, step_metrics, None)

  def record(self, step, step_metrics, state):
    """Writes step's record; with state, also evaluates and checkpoints as due."""
    cfg, tokens = self.s.cfg, self.s.tokens_per_step
    m = jax.device_get(step_metrics)
    now = time.time()
    density = float(m["attn_density"]) if "attn_density" in m else None
    pv_skip = float(m["attn_pv_skip"]) if "attn_pv_skip" in m else None
    # Sparse kinds: the interval since the last record is charged at the density
    # (and stage-2 skip) measured now: the count for what the kernels computed.
    self.flops = {field: n + (step - self.last_step) * tokens * flops_per_token(
        self.counted, density, pv_skip, convention=FLOP_FIELDS[field])
        for field, n in self.flops.items()}
    record = {"step": step, "tokens": step * tokens, **self.flops,
              "loss": float(m["loss"]), "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"]),
              "tokens_per_sec": (step - self.last_step) * tokens / max(now - self.last_time, 1e-9),
              "wall_seconds": self.base_wall + now - self.wall0}
    for name in ("attn_density", "attn_pv_skip", "attn_distill", "distill_kl"):
      if name in m:
        record[name] = float(m[name])
    if not bool(m["finite"]):
      self.writer.write(record)
      raise _Diverged(record)
    if step % cfg.eval_every == 0 or step == cfg.steps:
      losses = [self.s.program.eval_step(state["params"], b) for b in self.eval_batches]
      record["eval_loss"] = float(np.mean(jax.device_get(losses)))
    self.writer.write(record)  # before the checkpoint: a resume reads it back
    self.progress.update(step, record["loss"], record["tokens_per_sec"], now)
    return record

  def finish_record(self, step, record, state, checkpointing):
    if checkpointing:
      self.s.ckpt.save(step, state, self.train_iter,
                       {"fingerprint": self.s.fingerprint, "config": self.s.cfg_dict}, force=True)
    self.summary.update(
        step=step, tokens=record["tokens"], **{f: record[f] for f in FLOP_FIELDS},
        attn_density=record.get("attn_density"), final_loss=record["loss"],
        eval_loss=record.get("eval_loss", self.summary.fields["eval_loss"]),
        wall_seconds=record["wall_seconds"])
    self.last_time, self.last_step = time.time(), step

  def run(self, state, preemption):
    """Steps to cfg.steps; returns the final status."""
    cfg, program = self.s.cfg, self.s.program
    pending = None  # (step, metrics) read one step late
    for step in range(self.start + 1, cfg.steps + 1):
      batch = state_lib.global_batch(program, next(self.train_iter))
      state, step_metrics = program.train_step(state, batch)
      if pending is not None:
        self.check(*pending)
        pending = None
      if not self.records_at(step, preemption.requested):
        pending = (step, step_metrics)
        continue
      checkpointing = (step % cfg.checkpoint_every == 0 or step == cfg.steps
                       or preemption.requested)
      record = self.record(step, step_metrics, state)
      self.finish_record(step, record, state, checkpointing)
      if preemption.requested and step < cfg.steps:
        return "preempted"
    if pending is not None:
      self.check(*pending)
    return "done"


def run(cfg, workdir):
  """Trains to cfg.steps (or resumes); returns the summary dict.

  Bad input raises ValueError before anything is written. Once training starts,
  every outcome is recorded in summary.json: done, preempted, diverged (a
  non-finite loss or gradient at any step) or failed (with the error)."""
  s = setup(cfg, workdir)
  latest = s.ckpt.latest_step() or 0
  if latest >= cfg.steps and s.previous.get("status") == "done":
    s.ckpt.close()
    logging.info(f"{workdir}: already done ({latest} steps).")
    return s.previous
  summary = start_summary(s)
  train_iter = s.data.train_iterator()
  writer, preemption, loop = None, _Preemption(), None
  try:
    start, state, flops, wall = restore(s, train_iter)
    writer = metrics.MetricsWriter(workdir, enabled=s.is_writer, wandb_cfg=cfg.wandb,
                                   config=s.cfg_dict)
    summary.update(status="running", step=start, tokens=start * s.tokens_per_step,
                   **flops, wall_seconds=wall)
    loop = StepLoop(s, train_iter, summary, writer, start, flops, wall)
    status = loop.run(state, preemption)
    s.ckpt.close()
    return summary.update(status=status)
  except _Diverged as e:
    s.ckpt.close()
    r = e.record
    logging.error(f"step {r['step']}: {e}; stopping (status diverged, exit {EXIT_CODES['diverged']}).")
    return summary.update(status="diverged", step=r["step"], final_loss=r["loss"],
                          error=str(e), wall_seconds=r["wall_seconds"])
  except checkpoint.NoRestorableCheckpoint as e:
    logging.error(str(e))
    return summary.update(status="failed", error=str(e))
  except Exception as e:
    summary.update(status="failed", error=f"{type(e).__name__}: {e}")
    raise RunFailed(f"{workdir}: {type(e).__name__}: {e}") from e
  except BaseException as e:  # KeyboardInterrupt, SystemExit: recorded, not wrapped
    summary.update(status="failed", error=f"{type(e).__name__}: {e}")
    raise
  finally:
    if loop is not None:
      loop.progress.close()
    preemption.restore()
    if writer is not None:
      writer.close()
