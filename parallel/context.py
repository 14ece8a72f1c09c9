"""Context parallelism: how `parallel.attention` trades sequence shards for heads.

- `ulysses` (DeepSpeed-Ulysses): one all-to-all turns the sequence shards of all
  heads into whole sequences of heads / sequence heads per device; attention runs
  on them and a second all-to-all returns the output.
- `untied` (UPipe, Ghadia et al. 2026): the heads in `head_chunks` chunks, the same
  exchange one chunk at a time in a sequential loop, so only one chunk of heads is
  ever resident at full sequence length. The backward runs chunk by chunk too: the loop
  body is rematerialised, so the backward keeps only each chunk's sequence-sharded
  inputs (slices of q, k, v) and recomputes its all-to-all and attention forward
  (one extra attention forward per layer). head_chunks=1 is Ulysses with that
  recomputation.

The setting comes from the mesh config (`mesh.context`, `mesh.head_chunks`):
`make_mesh` validates it, and experiments.state traces the train and eval steps inside
`use` (a scope, like parallel.activate for the mesh and rules); outside any scope it
is plain Ulysses.
"""
import contextlib
import dataclasses

import jax
import jax.numpy as jnp

CONTEXTS = ("ulysses", "untied")


@dataclasses.dataclass(frozen=True)
class Context:
  mode: str = "ulysses"
  head_chunks: int = 1

  def __post_init__(self):
    if self.mode not in CONTEXTS:
      raise ValueError(f"mesh.context={self.mode!r}; choose one of {CONTEXTS}.")
    chunks = self.head_chunks
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
      raise ValueError(f"mesh.head_chunks={chunks!r} must be a positive int.")
    if self.mode == "ulysses" and chunks != 1:
      raise ValueError(
          f"mesh.head_chunks={chunks} chunks the heads of context='untied' only; "
          "set mesh.context='untied' or mesh.head_chunks=1.")

  @property
  def chunked(self):
    return self.mode == "untied"


def from_config(mesh_cfg, sequence):
  """The validated setting of a mesh config (keys absent: plain Ulysses); `sequence`
  is the resolved size of the sequence axis."""
  context = Context(mesh_cfg.get("context", "ulysses"), mesh_cfg.get("head_chunks", 1))
  if context.chunked and sequence == 1:
    raise ValueError(
        "mesh.context='untied' chunks the all-to-all of sequence parallelism, but "
        "mesh.sequence is 1; set mesh.sequence > 1 or mesh.context='ulysses'.")
  return context


_scoped = []


@contextlib.contextmanager
def use(mode="ulysses", head_chunks=1):
  """Every `parallel.attention` traced in this scope uses this setting."""
  _scoped.append(Context(mode, head_chunks))
  try:
    yield
  finally:
    _scoped.pop()


def active():
  return _scoped[-1] if _scoped else Context()


def check(context, heads, shards):
  """Each device's heads after the all-to-all (heads / shards) split into the chunks."""
  if context.chunked and (heads // shards) % context.head_chunks:
    raise ValueError(
        f"mesh.head_chunks={context.head_chunks} must divide the {heads // shards} "
        f"query heads each device attends to after the all-to-all ({heads} heads over "
        f"{shards} devices: sequence x tensor). Choose head_chunks among the "
        f"divisors of {heads // shards}.")


# --- the chunk loop -----------------------------------------------------------

def to_chunks(x, chunks, axis):
  """[..., h, ...] -> [chunks, ..., h / chunks, ...]: chunk c is heads c*h/chunks:..."""
  shape = x.shape[:axis] + (chunks, x.shape[axis] // chunks) + x.shape[axis + 1:]
  return jnp.moveaxis(x.reshape(shape), axis, 0)


def from_chunks(x, axis):
  """Inverse of `to_chunks`."""
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2:])


def over_chunks(fn, chunked_inputs):
  """fn applied to each leading-axis slice of the chunked inputs, one after the other.

  A scan lowers to a while loop whose body buffers XLA allocates once, so the chunks
  cannot be fused into one resident buffer. Rematerialising the body makes the
  scan's backward save only each chunk's inputs and recompute the chunk's forward
  (all-to-all and kernel) right before its backward, chunk by chunk as well.
  """
  body = jax.checkpoint(fn)

  def step(carry, xs):
    return carry, body(*xs)

  return jax.lax.scan(step, None, chunked_inputs)[1]


def chunk_heads_order(heads, tensor, sequence, chunks):
  """Permutation of the global heads for arrays laid out per device after the
  all-to-all ([B, H, ...] split over tensor, then sequence): device (t, j) must hold,
  chunk after chunk, the heads chunk c sends it, i.e. global heads viewed as
  (tensor, chunks, sequence, per) reordered to (tensor, sequence, chunks, per)."""
  per = heads // (tensor * sequence * chunks)
  order = jnp.arange(heads).reshape(tensor, chunks, sequence, per)
  return order.transpose(0, 2, 1, 3).reshape(-1)
