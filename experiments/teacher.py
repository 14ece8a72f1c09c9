"""SpargeAttention2's teacher distillation, for language models.

With `attention.distill_teacher=RUN` (and `attention.distill_weight` > 0) the training
objective is cross-entropy + weight x KL(teacher || student) over the next-token
distributions, the teacher being RUN's latest params, frozen. This is SpargeAttention2's
output-level ("velocity") distillation with the frozen full-attention model as the
target, the LM analogue of matching the dense model's prediction: the student keeps
the teacher's knowledge while its attention adapts to the sparse pattern, instead of
relearning it from one-hot labels. (Without a teacher, distill_weight pulls each sparse
layer towards dense attention on its own inputs: models.attention.distill_distance.)

The teacher may be any run whose tokens mean the same (vocab_size and tokenizer
equal); usually the dense model the sparse run was initialised from (config.init_from).
"""
import copy
import functools

import jax
import jax.numpy as jnp
from flax import nnx

import models

# The keys that make the teacher's logits comparable with the student's.
_SAME = ("model.vocab_size", "data.tokenizer")


def _get(cfg, dotted):
  for part in dotted.split("."):
    cfg = cfg[part]
  return cfg


@functools.lru_cache(maxsize=4)
def _stored_config(path):
  from experiments import probe  # here: probe imports experiments.state
  return probe.load_config(path)


def config(cfg):
  """The teacher run's config, with the student's data shape and mesh (the teacher runs
  on the student's batches, on its devices) and no distillation of its own. Raises
  ValueError naming the key when the teacher's tokens differ from the student's."""
  path = cfg.attention.distill_teacher
  if not cfg.attention.get("distill_weight", 0.0) > 0:
    raise ValueError(f"attention.distill_teacher={path!r} is set but attention."
                     "distill_weight is 0, so the teacher would be ignored; set a weight "
                     "> 0 (e.g. 1.0) or unset the teacher.")
  try:
    t = copy.deepcopy(_stored_config(path))
  except ValueError as e:
    raise ValueError(f"attention.distill_teacher: {e}") from None
  for key in _SAME:
    if _get(t, key) != _get(cfg, key):
      raise ValueError(f"attention.distill_teacher={path!r} has {key}={_get(t, key)!r} but "
                       f"this run has {_get(cfg, key)!r}; a teacher's next-token "
                       "distribution is comparable only over the same tokens.")
  with t.unlocked():
    t.seq_len, t.batch_size, t.mesh = cfg.seq_len, cfg.batch_size, cfg.mesh
    t.attention.distill_teacher, t.attention.distill_weight = "", 0.0
    t.init_from = ""
  return t


def forward_flops_per_token(cfg, convention="executed"):
  """The teacher's forward pass per student token under `convention` (models.flops; it
  is never differentiated), plus the KL (about 4 FLOPs per vocabulary entry); 0
  without a teacher."""
  if not cfg.attention.get("distill_teacher"):
    return 0.0
  t = config(cfg)
  return (sum(models.flops_breakdown(t, convention=convention).values())
          + 4.0 * cfg.model.vocab_size)


def kl(teacher_logits_BLV, student_logits_BLV):
  """Mean over tokens of KL(teacher || student) in float32."""
  t_BLV = jax.nn.log_softmax(teacher_logits_BLV.astype(jnp.float32), axis=-1)
  s_BLV = jax.nn.log_softmax(student_logits_BLV.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(t_BLV) * (t_BLV - s_BLV), axis=-1))


class Teacher:
  """The frozen teacher of one student program: its graphdef, abstract params (sharded
  like its own rules say, on the student's mesh) and, once loaded, its params."""

  def __init__(self, cfg, mesh, build):
    self.path = cfg.attention.distill_teacher
    self.cfg = config(cfg)
    program = build(self.cfg, mesh)  # experiments.state.build: shapes and shardings only
    self.graphdef = program.graphdef
    self.abstract_state = program.abstract_state
    self.abstract_params = program.abstract_state["params"]
    self.shardings = program.state_shardings["params"]
    self.params = None

  def logits(self, params, inputs_BL, extra):
    model = nnx.merge(self.graphdef, nnx.State(params))
    return jax.lax.stop_gradient(model(inputs_BL, **extra))

  def load(self):
    """The teacher's latest params (restored once, read-only; eagerly, even when the
    first call is inside a trace such as the loop's eval_shape of the step)."""
    if self.params is None:
      from experiments import probe
      try:
        with jax.ensure_compile_time_eval():
          _, state = probe.restore_state(self.path, self.abstract_state)
      except ValueError as e:
        raise ValueError(f"attention.distill_teacher: {e}") from None
      self.params = state["params"]
    return self.params


class BoundStep:
  """A train step jitted as (state, batch, teacher_params), called as (state, batch):
  the teacher's params are restored on the first call; `lower` needs only their shapes
  (--compile_only never reads the teacher's checkpoint)."""

  def __init__(self, jitted, teacher):
    self.jitted, self.teacher = jitted, teacher

  def __call__(self, state, batch):
    return self.jitted(state, batch, self.teacher.load())

  def lower(self, state, batch):
    return self.jitted.lower(state, batch, self.teacher.abstract_params)
