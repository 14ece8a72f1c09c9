"""What the linear-attention Pallas kernels share: tiles, chunk decays, the poisoned call.

Decays. Within a chunk the kernels need B_i - B_j, B the chunk's cumulative log
decay. A float32 cumsum b carries an absolute rounding error ~eps |b|, so b_i - b_j
is off by ~eps |b| however near i and j are; under strong decay (|b| up to C max|g|)
that is ~C times the rounding of the segment sum itself, and the log-decay
gradient, made of nearly diagonal weights, inherited it (median relative error
7e-6 against the XLA path's 1e-7 at g ~ -5, C = 16). So the kernels get
B = b + lo, lo the running sum of what each cumsum step rounded off (compensated
summation, in jnp: compensated_cumsum), and form (b_i - b_j) + (lo_i - lo_j): the
first difference is exact for nearby tokens (Sterbenz) and the second restores
what the cumsum dropped, leaving ~eps |B_i - B_j| as direct segment sums do.
"""
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

MAX_TILE = 64  # cuda: Triton blocks, powers of two
TPU_LANES = 128  # tpu: a tiled last dim is a multiple of the lane count
TPU_MAX_TILE = 2048  # tpu: a [2048, 128] float32 state tile is 1 MiB of VMEM


def tile_size(dim, platform):
  """The tile of a feature or value dim (its padded size is a multiple of it).

  cuda: a power of two, >= 16 (the smallest Triton dot), <= MAX_TILE.
  tpu: the whole dim up to TPU_MAX_TILE (a full-width block needs no alignment);
  beyond it the fewest tiles, each the smallest multiple of 128 lanes that covers
  (F = 8256, the squared map at K = 128: 5 tiles of 1664, padded to 8320).
  Both give a padded dim the same tile as the dim itself.
  """
  if platform != "tpu":
    return min(MAX_TILE, max(16, 1 << (dim - 1).bit_length()))
  if dim <= TPU_MAX_TILE:
    return dim
  groups = -(-dim // TPU_LANES)
  tiles = -(-groups // (TPU_MAX_TILE // TPU_LANES))
  return -(-groups // tiles) * TPU_LANES


def pad_to_tiles(x, platform):
  """Zero-pads the last axis to a multiple of its tile (zero features or value
  columns change nothing and are sliced off by the caller)."""
  pad = -x.shape[-1] % tile_size(x.shape[-1], platform)
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])


def compensated_cumsum(g_BHL, chunk):
  """(b, lo) [B, H, L]: b the float32 cumsum of g within each chunk, lo the running
  sum of what its steps rounded off, so b + lo is the cumsum to ~eps (module docstring)."""
  batch, heads, length = g_BHL.shape
  g = g_BHL.astype(jnp.float32).reshape(batch, heads, length // chunk, chunk)
  b = jnp.cumsum(g, -1)
  # b_i - b_{i-1} is exact (Sterbenz) and g_i - step exact too where it matters.
  step = b - jnp.pad(b[..., :-1], ((0, 0), (0, 0), (0, 0), (1, 0)))
  lo = jnp.cumsum(g - step, -1)
  return b.reshape(batch, heads, length), lo.reshape(batch, heads, length)


# ---- in-kernel chunk math: decays as b (column b_C1 or row b_1C) plus lo ----

def dot(a, b):
  return lax.dot(a, b, preferred_element_type=jnp.float32)


def chunk_total(x_1C):
  """x_last as [1, 1], via a masked reduction (Triton cannot slice a value)."""
  cols = lax.broadcasted_iota(jnp.int32, x_1C.shape, 1)
  return jnp.sum(jnp.where(cols == x_1C.shape[1] - 1, x_1C, 0.0), axis=1, keepdims=True)


def decay_matrix(b_C1, b_1C, lo_C1, lo_1C):
  """exp(B_i - B_j) for j < i (rows i, columns j), else 0: strictly past tokens."""
  chunk = b_C1.shape[0]
  rows = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
  cols = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)
  return jnp.exp(jnp.where(rows > cols, (b_C1 - b_1C) + (lo_C1 - lo_1C), -jnp.inf))


def from_start(b_C1, lo_C1):
  """exp(B_i): the decay from the chunk's start (the state entering it) to token i."""
  return jnp.exp(b_C1 + lo_C1)


def to_end(b_C1, b_1C, lo_C1, lo_1C):
  """(exp(B_last - B_j) as a column [C, 1], the chunk's decay exp(B_last) [1, 1])."""
  b_last, lo_last = chunk_total(b_1C), chunk_total(lo_1C)
  return jnp.exp((b_last - b_C1) + (lo_last - lo_C1)), jnp.exp(b_last + lo_last)


def square_if(scores_CC, square):
  return scores_CC * scores_CC if square else scores_CC


# ---- the call ----

def _ignoring_aliased(kernel, num_inputs, num_aliased):
  """Drops the refs of NaN-filled buffers aliased to the outputs (poison tests)."""
  def run(*refs):
    return kernel(*refs[:num_inputs], *refs[num_inputs + num_aliased:])
  return run


def poisoned_call(kernel, operands, out_shapes, poison, *, in_specs, out_specs, **call):
  """pallas_call with a list of outputs, each starting as NaN when `poison`, so an
  unwritten block shows; returns the list."""
  aliases = [jnp.full(s.shape, jnp.nan, s.dtype) for s in out_shapes] if poison else []
  return pl.pallas_call(
      _ignoring_aliased(kernel, len(operands), len(aliases)),
      in_specs=list(in_specs) + (list(out_specs) if poison else []),
      out_specs=list(out_specs), out_shape=list(out_shapes),
      input_output_aliases={len(operands) + i: i for i in range(len(aliases))},
      **call)(*operands, *aliases)
