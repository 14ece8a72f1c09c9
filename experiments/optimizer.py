"""optax AdamW with warmup + cosine / warmup-stable-decay, clipping, decay masks, and the
per-group LR (and CompleteP eps) multipliers of models/parametrization.py."""
import jax
import optax

from models import parametrization

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


def _per_param(params, fn):
  """fn(path name, shape) for every parameter (works on abstract params too)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: fn(jax.tree_util.keystr(path), p.shape), params)


def lr_multipliers(params, model_cfg, width_mult=None):
  """Each parameter's Adam LR multiplier: its group's rule (parametrization.classify).
  width_mult is accepted for older callers; the table reads it from model_cfg."""
  del width_mult

  def lr(name, shape):
    group = parametrization.classify(name, shape)
    return parametrization.lr_multiplier(model_cfg, group, parametrization.in_block(name),
                                         parametrization.fan_in(name, shape, group))
  return _per_param(params, lr)


def eps_multipliers(params, model_cfg):
  return _per_param(params, lambda name, _: parametrization.eps_multiplier(
      model_cfg, parametrization.in_block(name)))


def _scale_by(mults):
  return optax.stateless(lambda updates, _: jax.tree.map(lambda u, m: u * m, updates, mults))


def make(opt_cfg, steps, params, model_cfg, width_mult=None):
  """(GradientTransformation, lr schedule)."""
  lr = schedule(opt_cfg, steps)
  adamw = optax.adamw(lr, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                      weight_decay=opt_cfg.weight_decay, mask=decay_mask)
  clip = opt_cfg.grad_clip
  if parametrization.is_unit(model_cfg):
    # u-muP's gradients are unit-scaled (RMS ~1 per element, not a true gradient's
    # scale), so grad_clip bounds their global RMS: the norm over sqrt(#elements).
    clip *= sum(p.size for p in jax.tree.leaves(params)) ** 0.5
  chain = [optax.clip_by_global_norm(clip)]
  if parametrization.has_eps_rule(model_cfg):
    # A per-parameter AdamW eps (CompleteP): Adam is invariant to a gradient's scale
    # except through eps, so gradients x 1/c give m / (sqrt(v) + c eps) exactly. After
    # the clip, so the clip still sees the true norm; weight decay is unaffected.
    chain.append(_scale_by(jax.tree.map(lambda c: 1.0 / c,
                                        eps_multipliers(params, model_cfg))))
  chain += [adamw, _scale_by(lr_multipliers(params, model_cfg, width_mult))]
  return optax.chain(*chain), lr
