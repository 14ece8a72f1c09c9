"""Training: the trainer, data (grain), checkpoints (orbax), metrics, configs."""
