"""Per-tile softmax statistics of one attention layer: the exact output, stage-2 skips
and dense attention-mass recall of ANY block mask, without recomputing attention.

Flash attention's merge rule makes a block mask's output a function of per-tile
partials: for tile (query block q, key block n) and row i, m = max visible logit,
l = sum exp(s - m), n = sum exp(s - m) v. A mask keeps tiles; with M the row's max
over kept m, o = sum_kept e^(m-M) n / sum_kept e^(m-M) l. Stage 2 (kernels.pv_skip)
drops a kept tile's numerator (not its l) when its m sits lambda below the running
max over kept tiles in ascending order, which the same partials decide. So a grid
of masks and lambdas costs one O(L^2) pass per layer and O(L nK K) per grid point.
`output` equals kernels.pv_skip.reference_attention (tests/experiments/test_calibrate).
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from kernels import block_mask_lib, dense, estimators, pv_skip


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TileStats:
  m_BHQIN: jax.Array    # row i's max visible logit in tile (q, n); -inf: none visible
  l_BHQIN: jax.Array    # sum of exp(s - m) over the tile's visible keys
  n_BHQINK: jax.Array   # sum of exp(s - m) v
  mass_BHQIN: jax.Array  # dense softmax mass of the row in the tile
  o_BHQIK: jax.Array    # dense output (every reachable tile)
  l1_dense: jax.Array   # [] sum |o_dense|


def token_allowed(length, segment_ids_BL=None):
  """bool [B or 1, 1, L, L]: causal, and within one document when segment ids are given."""
  allowed = jnp.tril(jnp.ones((length, length), bool))[None, None]
  if segment_ids_BL is not None:
    allowed = allowed & block_mask_lib.segment_mask_tokens(segment_ids_BL)
  return allowed


@functools.partial(jax.jit, static_argnames=("block_q", "block_k"))
def tile_stats(q_BLHK, k_BLGK, v_BLGK, segment_ids_BL=None, *, block_q, block_k):
  """TileStats of causal attention (document-masked with segment ids), float32."""
  batch, length, heads, dim = q_BLHK.shape
  num_q, num_k = length // block_q, length // block_k
  q = q_BLHK.astype(jnp.float32)
  k = dense.repeat_kv(k_BLGK, heads).astype(jnp.float32)
  v = dense.repeat_kv(v_BLGK, heads).astype(jnp.float32)
  logits = jnp.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(dim)
  logits = jnp.where(token_allowed(length, segment_ids_BL), logits, -jnp.inf)
  tiles = logits.reshape(batch, heads, num_q, block_q, num_k, block_k)
  m = jnp.max(tiles, axis=-1)
  weights = jnp.exp(tiles - jnp.where(jnp.isfinite(m), m, 0.0)[..., None])
  l = jnp.sum(weights, axis=-1)
  n = jnp.einsum("bhqinj,bnjhk->bhqink", weights,
                 v.reshape(batch, num_k, block_k, heads, dim))
  reach = jnp.ones((batch, heads, num_q, num_k), bool)
  o, _, scale, den = _merge(m, l, n, reach, None)
  mass = scale * l / jnp.where(den == 0, 1.0, den)[..., None]
  return TileStats(m, l, n, mass, o, jnp.sum(jnp.abs(o)))


def _merge(m, l, n, live_BHQN, pv_threshold):
  """(o_BHQIK, skipped_BHQN, scale_BHQIN, den_BHQI) for the kept tiles."""
  m = jnp.where(live_BHQN[..., None, :], m, -jnp.inf)
  row_max = jnp.max(m, axis=-1, keepdims=True)
  scale = jnp.exp(m - jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  den = jnp.sum(scale * l, axis=-1)
  skipped = jnp.zeros(live_BHQN.shape, bool)
  if pv_threshold is not None:
    skipped = pv_skip.skip_tiles(m, lax.cummax(m, axis=m.ndim - 1), live_BHQN, pv_threshold)
  keep = (live_BHQN & ~skipped)[..., None, :]
  num = jnp.einsum("bhqin,bhqink->bhqik", scale * keep, n)
  return num / jnp.where(den == 0, 1.0, den)[..., None], skipped, scale, den


def _live(stats, mask_BHQK):
  return jnp.broadcast_to(mask_BHQK, stats.m_BHQIN.shape[:3] + stats.m_BHQIN.shape[-1:])


@jax.jit
def output(stats, mask_BHQK, pv_threshold=-jnp.inf):
  """(o_BLHK, skipped_BHQK) of the masked attention with stage 2 at pv_threshold
  (-inf: off); equals kernels.pv_skip.reference_attention."""
  o, skipped, _, _ = _merge(stats.m_BHQIN, stats.l_BHQIN, stats.n_BHQINK,
                            _live(stats, mask_BHQK), pv_threshold)
  batch, heads, num_q, block_q, dim = o.shape
  o_BLHK = jnp.transpose(o.reshape(batch, heads, num_q * block_q, dim), (0, 2, 1, 3))
  return o_BLHK, skipped


@jax.jit
def errors(stats, mask_BHQK, pv_threshold=-jnp.inf):
  """Sums over the layer's batch: {"l1": sum |o - o_dense|, "skipped", "kept"} (tiles)."""
  live = _live(stats, mask_BHQK)
  o, skipped, _, _ = _merge(stats.m_BHQIN, stats.l_BHQIN, stats.n_BHQINK, live,
                            pv_threshold)
  return {"l1": jnp.sum(jnp.abs(o - stats.o_BHQIK)),
          "skipped": jnp.sum(skipped, dtype=jnp.float32),
          "kept": jnp.sum(live, dtype=jnp.float32)}


@jax.jit
def recall(stats, mask_BHQK):
  """float32 []: dense softmax mass in kept tiles, averaged over rows and heads."""
  kept = jnp.sum(stats.mass_BHQIN * _live(stats, mask_BHQK)[..., None, :], axis=-1)
  return jnp.mean(kept)


@jax.jit
def errors_many(stats, masks_UBHQK, index_S, pv_S):
  """errors() for settings s = (masks[index_S[s]], pv_S[s]), one at a time (lax.map
  keeps memory at one setting's); each entry is [S]."""
  def one(args):
    index, pv = args
    return errors(stats, masks_UBHQK[index], pv)
  return lax.map(one, (index_S, pv_S))


@functools.partial(jax.jit, static_argnames=("estimator", "settings", "block_q", "block_k"))
def estimate_masks(q_BLHK, k_BLGK, segment_ids_BL=None, *, estimator, settings, block_q,
                   block_k):
  """(masks [U, B, H, nQ, nK], densities [U]) for settings (tuples of (name, value)):
  kernels.sparse.block_mask's masks and densities, traced once for all settings so a
  grid compiles once (the estimator's pooling is shared)."""
  make = estimators.sparge_mask if estimator == "sparge" else estimators.prism_mask
  allowed = (None if segment_ids_BL is None else
             block_mask_lib.segment_block_mask(segment_ids_BL, block_q, block_k))
  batch, length, heads, _ = q_BLHK.shape
  reachable_QK = estimators.reachable_blocks(length // block_q, length // block_k,
                                             block_q, block_k, True)
  masks = []
  for setting in settings:
    params = {n: v for n, v in setting if v is not None}
    mask = make(q_BLHK, k_BLGK, block_q=block_q, block_k=block_k, causal=True,
                allowed_BXQK=allowed, **params)
    masks.append(jnp.broadcast_to(mask, (batch, heads) + reachable_QK.shape) & reachable_QK)
  masks = jnp.stack(masks)
  kept = jnp.sum(masks, axis=(1, 2, 3, 4), dtype=jnp.float32)
  return masks, kept / float(batch * heads * reachable_QK.sum())
