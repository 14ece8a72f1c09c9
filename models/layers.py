"""Building blocks: parameters with logical axis names, RMSNorm, RoPE, SwiGLU.

Every parameter carries the logical names of its axes (`embed`, `mlp`, `heads`,
`kv_heads`, `head_dim`, `vocab`, `norm`) as `out_sharding` metadata. Eager
sharding is off: `parallel` maps the names to mesh axes with one rules table and
creates the state already sharded.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from models import unit_scaling as U


def param(rngs, shape, names, std):
  """A float32 parameter ~ N(0, std^2) (std 0 gives zeros) tagged with logical names."""
  assert len(shape) == len(names), (shape, names)
  value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


def ones_param(shape, names, scale=1.0):
  """A float32 parameter filled with `scale` (a norm's gain)."""
  value = jnp.ones(shape, jnp.float32)
  if scale != 1.0:
    value = value * scale
  return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


class RMSNorm(nnx.Module):
  def __init__(self, width, *, eps=1e-6, scale=1.0, unit=False):
    """scale: the gain's init (the vector group's, models/parametrization.py). unit
    (u-muP): non-parametric, no gain (as the u-muP paper's models)."""
    self.scale = None if unit else ones_param((width,), ("norm",), scale)
    self.eps = eps

  def __call__(self, x_BLD):
    x = x_BLD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    if self.scale is None:
      return x.astype(x_BLD.dtype)
    return (x * self.scale[...]).astype(x_BLD.dtype)


def rope_tables(seq_len, head_dim, theta, positions_BL=None):
  """cos/sin [L, K/2] for the rotate-half layout: dim i pairs with i + K/2; with
  positions_BL (packed documents: positions restart at each document) [B, L, K/2].

  inv_freq = theta^(-2i/K), so the LOW indices of each half are the HIGH
  frequencies (the spectral estimator relies on this convention).
  """
  half = head_dim // 2
  inv_freq_F = theta ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / head_dim)
  if positions_BL is None:
    angle = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq_F[None, :]
  else:
    angle = positions_BL.astype(jnp.float32)[..., None] * inv_freq_F
  return jnp.cos(angle), jnp.sin(angle)


def apply_rope(x_BLHK, cos_LF, sin_LF):
  """cos/sin: [L, K/2] shared by the batch, or [B, L, K/2] per row."""
  half = x_BLHK.shape[-1] // 2
  x = x_BLHK.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  if cos_LF.ndim == 2:
    cos_LF, sin_LF = cos_LF[None], sin_LF[None]
  cos, sin = cos_LF[:, :, None, :], sin_LF[:, :, None, :]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BLHK.dtype)


class SwiGLU(nnx.Module):
  def __init__(self, width, mlp_width, *, rngs, std, out_std, unit=None):
    """unit (u-muP): (in_mult, out_mult, act_mult, glu_scale) of the unit-scaled MLP."""
    self.w_gate_DF = param(rngs, (width, mlp_width), ("embed", "mlp"), std)
    self.w_up_DF = param(rngs, (width, mlp_width), ("embed", "mlp"), std)
    self.w_down_FD = param(rngs, (mlp_width, width), ("mlp", "embed"), out_std)
    self.unit = unit

  def _unit(self, x_BLD):
    """u-muP: unit-scaled matmuls around glu_scale * up * silu(act_mult * gate)."""
    in_mult, out_mult, act_mult, glu_scale = self.unit
    gate_BLF = U.project("bld,df->blf", x_BLD, self.w_gate_DF, in_mult, True)
    up_BLF = U.project("bld,df->blf", x_BLD, self.w_up_DF, in_mult, True)
    act_BLF = gate_BLF * jax.nn.sigmoid(gate_BLF * jnp.asarray(act_mult, gate_BLF.dtype))
    h_BLF = up_BLF * act_BLF * jnp.asarray(glu_scale, up_BLF.dtype)
    return U.project("blf,fd->bld", h_BLF, self.w_down_FD, out_mult, True)

  def __call__(self, x_BLD):
    if self.unit:
      return self._unit(x_BLD)
    dtype = x_BLD.dtype
    gate_BLF = x_BLD @ self.w_gate_DF[...].astype(dtype)
    up_BLF = x_BLD @ self.w_up_DF[...].astype(dtype)
    return (jax.nn.silu(gate_BLF) * up_BLF) @ self.w_down_FD[...].astype(dtype)
