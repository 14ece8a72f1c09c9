"""optax AdamW with warmup + cosine / warmup-stable-decay, clipping, decay masks, muP LRs."""
import jax
import optax

SCHEDULES = ("cosine", "wsd", "constant")


def schedule(opt_cfg, steps):
  lr, warmup = opt_cfg.lr, min(opt_cfg.warmup_steps, steps)
  floor = lr * opt_cfg.min_lr_ratio
  if opt_cfg.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule {opt_cfg.schedule!r}: choose one of {SCHEDULES}.")
  ramp = optax.linear_schedule(0.0, lr, max(warmup, 1))
  if opt_cfg.schedule == "cosine":
    rest = optax.cosine_decay_schedule(lr, max(steps - warmup, 1), alpha=opt_cfg.min_lr_ratio)
  elif opt_cfg.schedule == "wsd":
    decay = max(int(round(steps * opt_cfg.decay_fraction)), 1)
    stable = max(steps - warmup - decay, 0)
    rest = optax.join_schedules(
        [optax.constant_schedule(lr), optax.linear_schedule(lr, floor, decay)], [stable])
  else:
    rest = optax.constant_schedule(lr)
  return optax.join_schedules([ramp, rest], [warmup])


def decay_mask(params):
  """Weight decay on matrices only: norms (and any bias) are excluded."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def lr_multipliers(params, model_cfg, width_mult):
  """muP (MuAdam): hidden matrices (both dims grow with width) learn at
  lr / width_mult; the embedding, the readout (whose logits the model divides by
  width_mult instead) and vectors learn at lr. SP: 1 everywhere."""
  def mult(path, p):
    name = jax.tree_util.keystr(path)
    vector_like = p.ndim < 2 or "embed_VD" in name or "unembed_DV" in name
    if model_cfg.parametrization != "mup" or vector_like:
      return 1.0
    return 1.0 / width_mult
  return jax.tree_util.tree_map_with_path(mult, params)


def make(opt_cfg, steps, params, model_cfg, width_mult):
  """(GradientTransformation, lr schedule)."""
  lr = schedule(opt_cfg, steps)
  mults = lr_multipliers(params, model_cfg, width_mult)
  scale_per_param = optax.stateless(
      lambda updates, _: jax.tree.map(lambda u, m: u * m, updates, mults))
  tx = optax.chain(
      optax.clip_by_global_norm(opt_cfg.grad_clip),
      optax.adamw(lr, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                  weight_decay=opt_cfg.weight_decay, mask=decay_mask),
      scale_per_param)
  return tx, lr
