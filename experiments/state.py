"""Train state (plain pytrees), its shardings, and the jitted train/eval steps.

The state is {'params', 'opt_state', 'step'} of plain dicts and arrays: the model
is rebuilt inside the step from its graphdef (nnx.merge), so jit, orbax and the
sharding rules all see ordinary pytrees.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

import models
import parallel
from parallel import context as context_lib
from experiments import optimizer, packing, teacher as teacher_lib


def cross_entropy(logits_BLV, targets_BL):
  logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp_BLV, targets_BL[..., None], axis=-1))


@dataclasses.dataclass
class Program:
  """Everything compiled for one config on one mesh."""
  graphdef: object
  tx: optax.GradientTransformation
  lr: object
  mesh: jax.sharding.Mesh
  rules: tuple
  state_shardings: dict
  batch_sharding: NamedSharding
  abstract_state: dict
  init: object
  train_step: object
  eval_step: object


def param_shardings(abstract_params_state, mesh, rules):
  """NamedSharding per parameter from its logical names (`out_sharding` metadata)."""
  def to_sharding(variable):
    names = variable.get_metadata().get("out_sharding") or ()
    return parallel.logical_sharding(names, variable.shape, mesh, rules)
  shardings = jax.tree.map(to_sharding, abstract_params_state,
                           is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(shardings)


def check_divisible(cfg, mesh, rules):
  """Batch and sequence splits the mesh implies must be even (fail before compiling)."""
  batch_spec, length_spec = parallel.spec_for(("batch", "length"), rules, mesh.axis_names)
  for what, size, entry, hint in (
      ("batch_size", cfg.batch_size, batch_spec, "mesh.data * mesh.fsdp"),
      ("seq_len", cfg.seq_len, length_spec, "mesh.sequence")):
    axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
    devices = math.prod(mesh.shape[a] for a in axes)
    if size % devices:
      raise ValueError(f"{what} {size} is not divisible by {hint} = {devices} "
                       f"(mesh axes {axes}); change {what} or the mesh.")


def build(cfg, mesh):
  rules = tuple(tuple(r) for r in cfg.mesh.rules)
  check_divisible(cfg, mesh, rules)
  abstract_model = nnx.eval_shape(lambda: models.LM(cfg, rngs=nnx.Rngs(cfg.seed)))
  graphdef, abstract_params_state = nnx.split(abstract_model, nnx.Param)
  abstract_params = nnx.to_pure_dict(abstract_params_state)
  tx, lr = optimizer.make(cfg.optimizer, cfg.steps, abstract_params, cfg.model,
                          models.width_mult(cfg.model))
  replicated = NamedSharding(mesh, PartitionSpec())
  p_shardings = param_shardings(abstract_params_state, mesh, rules)

  def init():
    model = models.LM(cfg, rngs=nnx.Rngs(cfg.seed))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {"params": params, "opt_state": tx.init(params),
            "step": jnp.zeros((), jnp.int32)}

  abstract = jax.eval_shape(init)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract["opt_state"], p_shardings,
      transform_non_params=lambda _: replicated)
  state_shardings = {"params": p_shardings, "opt_state": opt_shardings, "step": replicated}
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_shardings)
  batch_spec = parallel.spec_for(("batch", None), rules, mesh.axis_names)
  batch_sharding = NamedSharding(mesh, batch_spec)

  separator = packing.separator_id(cfg)
  # The context-parallel scheme (mesh.context / head_chunks), active while tracing.
  scheme = lambda: context_lib.use(cfg.mesh.get("context", "ulysses"),  # noqa: E731
                                   cfg.mesh.get("head_chunks", 1))

  distill_weight = float(cfg.attention.get("distill_weight", 0.0))
  # SpargeAttention2's distillation: towards a frozen teacher run's logits, or (no
  # teacher) per sparse layer towards dense attention on its own inputs.
  teacher = (teacher_lib.Teacher(cfg, mesh, build) if cfg.attention.get("distill_teacher")
             else None)

  def loss_fn(params, batch_BL, teacher_params=None):
    """(objective, aux): aux["loss"] is the cross-entropy; aux also holds the sparse
    layers' mean attn_density / attn_pv_skip / attn_distill and, with teacher_params,
    distill_kl. The objective adds distill_weight x (distill_kl or attn_distill)."""
    model = nnx.merge(graphdef, nnx.State(params))
    inputs_BL = batch_BL[:, :-1]
    extra = packing.model_inputs(inputs_BL, separator)
    logits_BLV = model(inputs_BL, **extra)
    aux = models.attention_stats(nnx.pop(model, nnx.Intermediate))
    aux["loss"] = cross_entropy(logits_BLV, batch_BL[:, 1:])
    objective = aux["loss"]
    if teacher_params is not None:
      aux["distill_kl"] = teacher_lib.kl(
          teacher.logits(teacher_params, inputs_BL, extra), logits_BLV)
      objective = objective + distill_weight * aux["distill_kl"]
    elif "attn_distill" in aux:
      objective = objective + distill_weight * aux["attn_distill"]
    return objective, aux

  def train_step(state, batch_BL, teacher_params=None):
    with parallel.activate(mesh, rules), scheme():
      (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state["params"], batch_BL, teacher_params)
    loss = aux.pop("loss")
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.global_norm(grads)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr(state["step"]),
               "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm), **aux}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  def eval_step(params, batch_BL):
    with parallel.activate(mesh, rules), scheme():
      return loss_fn(params, batch_BL)[1]["loss"]

  train_jit = jax.jit(
      train_step, out_shardings=(state_shardings, replicated), donate_argnums=0,
      in_shardings=(state_shardings, batch_sharding)
      + (() if teacher is None else (teacher.shardings,)))
  return Program(
      graphdef=graphdef, tx=tx, lr=lr, mesh=mesh, rules=rules,
      state_shardings=state_shardings, batch_sharding=batch_sharding,
      abstract_state=abstract_state,
      init=jax.jit(init, out_shardings=state_shardings),
      train_step=train_jit if teacher is None else teacher_lib.BoundStep(train_jit, teacher),
      eval_step=jax.jit(eval_step, in_shardings=(p_shardings, batch_sharding),
                        out_shardings=replicated))


def global_batch(program, local_batch):
  """This process's rows -> one global array sharded over the mesh's batch axes."""
  return jax.make_array_from_process_local_data(program.batch_sharding, local_batch)
