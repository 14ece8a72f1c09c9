"""orbax checkpoints of the train state plus the data iterator's state."""
import orbax.checkpoint as ocp


class Checkpointer:
  """Async CheckpointManager: save every K steps (and at the end), keep the last N."""

  def __init__(self, directory, *, every, keep):
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every,
            enable_async_checkpointing=True, create=True))

  def latest_step(self):
    return self._manager.latest_step()

  def save(self, step, state, data_state, *, force=False):
    """Device-to-host copy happens here; the write finishes in the background."""
    return self._manager.save(
        step, force=force,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=ocp.args.JsonSave(data_state)))

  def restore(self, step, abstract_state):
    """(state placed with abstract_state's shardings, data iterator state)."""
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
