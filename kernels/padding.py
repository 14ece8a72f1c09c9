"""Any sequence length: pad to the block multiple, mask the tail, slice the output.

The kernels and the block-mask paths compute whole blocks, so a length that is
not a multiple of the block is padded with zeros at the end, run, and the output
sliced back (autodiff of a pad is a slice and vice versa, so gradients follow).

Padded keys must stay invisible to real queries. Under the causal mask they
already are: they sit after every real query. Otherwise (causal=False), with
document masking, or with stage 2 (whose per-tile skip rule looks at every row of
a tile, padded query rows included) the padding gets a segment id of its own, one
above the row's largest, so ids stay non-decreasing and block ranges exact.
Padded query rows are sliced off; their output cotangent is zero, so they add
nothing to dk/dv. One difference remains under stage 2: padded rows see the padded
keys, so a tile holding both (the last diagonal tile) is never skipped; every impl
runs the same padded problem, so they still agree exactly.

Block masks stay at the real geometry, ceil(L / block) blocks per axis (the last
block may be partial); `pad_blocks` adds the all-padding blocks a padded length
can add (when the block sizes differ), always False, so no estimator selects them
and densities count real tiles only.
"""
import math

import jax.numpy as jnp
import numpy as np


def num_blocks(length, block):
  """Blocks covering `length` tokens (the last one may be partial)."""
  return -(-length // block)


def padded_length(length, block_q, block_k, *tiles):
  """The smallest length >= `length` that both block sizes (and any compute
  tiles) divide."""
  multiple = math.lcm(block_q, block_k, *tiles)
  return num_blocks(length, multiple) * multiple


def needs_own_segment(causal, segment_ids_BL, pv_threshold=None):
  """Whether padding must be masked by a segment id (see the module docstring)."""
  return not causal or segment_ids_BL is not None or pv_threshold is not None


def pad_tokens(x_BL, padded_len):
  """Zero-pads axis 1 (the sequence) to padded_len."""
  widths = [(0, 0), (0, padded_len - x_BL.shape[1])] + [(0, 0)] * (x_BL.ndim - 2)
  return jnp.pad(x_BL, widths)


def pad_segments(segment_ids_BL, batch, length, padded_len):
  """int32 [B, padded_len]: the ids (all 0 when None), padding one above each row's max."""
  if segment_ids_BL is None:
    segment_ids_BL = jnp.zeros((batch, length), jnp.int32)
  seg_BL = segment_ids_BL.astype(jnp.int32)
  pad_id_B1 = jnp.max(seg_BL, axis=1, keepdims=True) + 1
  pad_BP = jnp.broadcast_to(pad_id_B1, (batch, padded_len - length))
  return jnp.concatenate([seg_BL, pad_BP], axis=1)


def pad_inputs(q_BLHK, k_BLGK, v_BLGK, segment_ids_BL, padded_len, *, own_segment):
  """(q, k, v, segment ids) at padded_len; ids None unless own_segment or given."""
  batch, length = q_BLHK.shape[:2]
  q, k, v = (pad_tokens(x, padded_len) for x in (q_BLHK, k_BLGK, v_BLGK))
  seg = None
  if own_segment:
    seg = pad_segments(segment_ids_BL, batch, length, padded_len)
  return q, k, v, seg


def edge_pad_tokens(x_BL, padded_len):
  """Pads axis 1 by repeating the last entry (block min/max of ids stay exact)."""
  widths = [(0, 0), (0, padded_len - x_BL.shape[1])] + [(0, 0)] * (x_BL.ndim - 2)
  return jnp.pad(x_BL, widths, mode="edge")


def pad_blocks(mask_XYQK, num_q, num_k):
  """A block mask [.., nQ, nK] padded with False to [.., num_q, num_k]; numpy stays
  numpy (a static mask stays a trace-time constant)."""
  xp = np if isinstance(mask_XYQK, np.ndarray) else jnp
  extra_q, extra_k = num_q - mask_XYQK.shape[-2], num_k - mask_XYQK.shape[-1]
  if not extra_q and not extra_k:
    return mask_XYQK
  widths = [(0, 0)] * (mask_XYQK.ndim - 2) + [(0, extra_q), (0, extra_k)]
  return xp.pad(mask_XYQK, widths)


def slice_blocks(x_XYQK, num_q, num_k):
  """The real blocks [.., :num_q, :num_k] of a padded-geometry block array."""
  return x_XYQK[..., :num_q, :num_k]
