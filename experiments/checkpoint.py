"""orbax checkpoints: the train state, each process's data-iterator state, and the
config that produced them.

A step holds three items: `state` (the sharded train state), `iterator` (grain's
own handler: one `process_<i>-of-<n>.json` per process, so every process resumes
its own position) and `config` ({"fingerprint", "config"}: the run's identity,
so a lost config.json cannot let a different config resume).

Restore falls back over the steps newest-first: a step that fails to restore is
reported, then moved aside to `<workdir>/checkpoints.skipped/` (never deleted: a
later save of that step number would otherwise collide with it, and orbax's
max_to_keep would count it among the kept steps).
"""
import os
import shutil
import time

from absl import logging
import grain
import orbax.checkpoint as ocp

SKIPPED = "checkpoints.skipped"


class NoRestorableCheckpoint(RuntimeError):
  """Every checkpoint of the run failed to restore (the reasons are in the message)."""


def _reason(error):
  """One line: orbax/tensorstore errors run to pages of spec dumps."""
  first = (str(error).strip().splitlines() or [""])[0]
  text = f"{type(error).__name__}: {first}"
  return text if len(text) < 300 else text[:300] + " ..."


class Checkpointer:
  """Async CheckpointManager: save every K steps (and at the end), keep the last N."""

  def __init__(self, directory, *, every, keep):
    self.directory = directory
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every,
            enable_async_checkpointing=True, create=True))

  def steps(self):
    return sorted(self._manager.all_steps())

  def latest_step(self):
    return self._manager.latest_step()

  def save(self, step, state, iterator, config, *, force=False):
    """Device-to-host copy happens here; the write finishes in the background.
    `config` is {"fingerprint": ..., "config": {...}}."""
    return self._manager.save(
        step, force=force,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                iterator=grain.checkpoint.CheckpointSave(iterator),
                                config=ocp.args.JsonSave(config)))

  def _step_dir(self, step):
    return os.path.join(self.directory, str(step))

  def stored_config(self):
    """The config record of the newest step that has a readable one, else None."""
    for step in reversed(self.steps()):
      if not os.path.isdir(os.path.join(self._step_dir(step), "config")):
        continue
      try:
        record = self._manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))["config"]
      except Exception:  # noqa: BLE001 - a damaged record: try the previous step
        continue
      if isinstance(record, dict) and "fingerprint" in record:
        return record
    return None

  def _restore(self, step, abstract_state, iterator):
    if os.path.isdir(os.path.join(self._step_dir(step), "data")):
      # Checkpoints written before per-process iterator state: one JSON item.
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      iterator.set_state(restored["data"])
      return restored["state"]
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        iterator=grain.checkpoint.CheckpointRestore(iterator)))
    return restored["state"]

  def restore_latest(self, abstract_state, iterator):
    """(step, state) of the newest step that restores cleanly; the iterator is set to
    that step's position. (0, None) when there is no checkpoint. Steps that fail
    are logged as warnings and moved aside; if none restores,
    NoRestorableCheckpoint says why each failed."""
    failures = []
    for step in reversed(self.steps()):
      try:
        state = self._restore(step, abstract_state, iterator)
      except Exception as e:  # noqa: BLE001 - any damage means: try the previous one
        failures.append((step, _reason(e)))
        logging.warning(f"checkpoint {step} does not restore ({_reason(e)}); trying the previous one.")
        continue
      if failures:
        self._move_aside([s for s, _ in failures])
      return step, state
    if failures:
      listed = "; ".join(f"step {s}: {r}" for s, r in failures)
      raise NoRestorableCheckpoint(
          f"no checkpoint in {self.directory} restores ({listed}). They are left in "
          "place; move or delete them to start this run from step 0.")
    return 0, None

  def _move_aside(self, steps):
    root = os.path.join(os.path.dirname(self.directory), SKIPPED)
    if ocp.multihost.is_primary_host(0):
      os.makedirs(root, exist_ok=True)
      for step in steps:
        target = os.path.join(root, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(self._step_dir(step), target)
        logging.warning(f"moved the damaged checkpoint {step} to {target} (kept for inspection).")
    ocp.multihost.sync_global_processes("chinchax_checkpoints_moved_aside")
    self._manager.reload()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
