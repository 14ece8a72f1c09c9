"""Config checks that need no workdir: a bad value fails here, naming the key, the
value and a valid alternative, before anything is written."""
import models


def validate(cfg):
  if cfg.steps < 1 or cfg.batch_size < 1 or cfg.seq_len < 2:
    raise ValueError("steps and batch_size must be >= 1 and seq_len >= 2.")
  for key in ("log_every", "eval_every", "checkpoint_every"):
    if cfg[key] < 1:
      raise ValueError(f"{key} must be >= 1, got {cfg[key]}.")
  if cfg.wandb.mode not in ("offline", "online", "disabled"):
    raise ValueError(f"wandb.mode must be offline|online|disabled, got {cfg.wandb.mode!r}.")
  models.layer_kinds(cfg)
