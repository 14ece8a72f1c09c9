"""Block-sparse flash attention (Pallas): public entry point and custom_vjp.

`block_sparse_attention(q, k, v, block_mask)` computes softmax attention over
the (query block, key block) tiles a BlockMask keeps, optionally intersected
with the causal mask at token resolution. Forward, dq and dk/dv are Pallas
kernels for TPU (Mosaic, sparse_flash_tpu) and GPU (Triton, sparse_flash_gpu);
dense flash attention (kernels.flash) is the same kernel over all tiles.

Mask broadcasting: `block_mask.mask_BHQK` may have batch B or 1 and heads H
(query heads) or 1.
"""
import functools

import jax
import numpy as np

from kernels import flash_lists, sparse_flash_gpu, sparse_flash_tpu
from kernels.block_mask_lib import BlockMask
from kernels.platform import resolve_platform

_BACKENDS = {"tpu": sparse_flash_tpu, "cuda": sparse_flash_gpu}


def _valid_blocks(seq_len, platform, interpret):
  """Block sizes that divide seq_len and satisfy the compiled platform's tiling."""
  sizes = [d for d in range(8, seq_len + 1, 8) if seq_len % d == 0]
  if interpret:
    return sizes
  if platform == "tpu":
    return [d for d in sizes if d % 128 == 0 or d == seq_len]
  return [d for d in sizes if d >= 16 and d & (d - 1) == 0]


def check_inputs(q_BLHK, k_BLGK, v_BLGK, block_q, block_k, platform, interpret):
  """Raises ValueError (with the fix) for shapes the kernels do not support."""
  if q_BLHK.ndim != 4 or k_BLGK.shape != v_BLGK.shape or k_BLGK.ndim != 4:
    raise ValueError("expected q [B, L, H, K] and k, v [B, L, G, K] of equal shape; "
                     f"got {q_BLHK.shape}, {k_BLGK.shape}, {v_BLGK.shape}.")
  batch, seq_len, num_heads, head_dim = q_BLHK.shape
  if k_BLGK.shape[0] != batch or k_BLGK.shape[1] != seq_len or k_BLGK.shape[3] != head_dim:
    raise ValueError(f"q {q_BLHK.shape} and k {k_BLGK.shape} must agree on batch, "
                     "seq_len and head_dim (self-attention).")
  if num_heads % k_BLGK.shape[2]:
    raise ValueError(f"query heads {num_heads} must be a multiple of kv heads "
                     f"{k_BLGK.shape[2]}.")
  valid = _valid_blocks(seq_len, platform, interpret)
  for name, block in (("block_q", block_q), ("block_k", block_k)):
    if block not in valid:
      problem = (f"seq_len {seq_len} is not a multiple of {name} {block}"
                 if seq_len % block else
                 f"{name} {block} does not fit the {platform!r} kernel tiling")
      raise ValueError(
          f"{problem}; pad the sequence or choose {name} in "
          f"{valid or 'a padded seq_len (multiple of 128)'}.")
  if platform == "cuda" and not interpret and (head_dim < 16 or head_dim & (head_dim - 1)):
    raise ValueError(f"head_dim {head_dim} must be a power of two >= 16 for the GPU "
                     "kernel; pad head_dim.")


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _sparse_flash(q_BLHK, k_BLGK, v_BLGK, lists, platform, interpret):
  o_BLHK, _ = _BACKENDS[platform].forward(q_BLHK, k_BLGK, v_BLGK, lists,
                                          interpret=interpret)
  return o_BLHK


def _sparse_flash_fwd(q_BLHK, k_BLGK, v_BLGK, lists, platform, interpret):
  o_BLHK, lse = _BACKENDS[platform].forward(q_BLHK, k_BLGK, v_BLGK, lists,
                                            interpret=interpret)
  return o_BLHK, (q_BLHK, k_BLGK, v_BLGK, o_BLHK, lse, lists)


def _sparse_flash_bwd(platform, interpret, residuals, do_BLHK):
  q_BLHK, k_BLGK, v_BLGK, o_BLHK, lse, lists = residuals
  dq, dk, dv = _BACKENDS[platform].backward(q_BLHK, k_BLGK, v_BLGK, o_BLHK, lse,
                                            do_BLHK, lists, interpret=interpret)
  no_grad = jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0), lists)
  return dq, dk, dv, no_grad


_sparse_flash.defvjp(_sparse_flash_fwd, _sparse_flash_bwd)


# TPU scalar memory is 1 MiB (v4 to v6e); the kernels prefetch one list set.
_TPU_LIST_BYTES = 512 * 1024


def run_lists(q_BLHK, k_BLGK, v_BLGK, lists, *, platform, interpret):
  """Differentiable block-sparse flash attention over prepared SparseLists."""
  rows = lists.mask_batch * lists.mask_heads
  list_bytes = 4 * rows * (lists.num_q_blocks + 1) * (lists.num_k_blocks + 1)
  if platform == "tpu" and not interpret and list_bytes > _TPU_LIST_BYTES:
    raise ValueError(
        f"the block lists need {list_bytes} bytes of TPU scalar memory (limit "
        f"{_TPU_LIST_BYTES}); use larger blocks, or shard batch/heads (shard_map) "
        "so each device holds fewer mask rows.")
  return _sparse_flash(q_BLHK, k_BLGK, v_BLGK, lists, platform, interpret)


def block_sparse_attention(q_BLHK, k_BLGK, v_BLGK, block_mask: BlockMask, *,
                           causal=True, interpret=None, platform=None):
  """Attention restricted to the tiles block_mask keeps (and causal); o_BLHK.

  Query rows that see no key (an empty mask row) return zeros. Block sizes come
  from block_mask.block_q / block_k; mask_BHQK is [B or 1, H or 1, L/bq, L/bk].
  platform / interpret: see kernels.platform ("tpu" | "cuda"; None = from the backend).
  """
  platform, interpret = resolve_platform(platform, interpret)
  bq, bk = block_mask.block_q, block_mask.block_k
  check_inputs(q_BLHK, k_BLGK, v_BLGK, bq, bk, platform, interpret)
  batch, seq_len, num_heads, _ = q_BLHK.shape
  mask_shape = block_mask.mask_BHQK.shape
  if (len(mask_shape) != 4 or mask_shape[0] not in (1, batch)
      or mask_shape[1] not in (1, num_heads)
      or mask_shape[2:] != (seq_len // bq, seq_len // bk)):
    raise ValueError(
        f"block mask shape {mask_shape} does not match q {q_BLHK.shape} with blocks "
        f"({bq}, {bk}); expected [{batch} or 1, {num_heads} or 1, {seq_len // bq}, "
        f"{seq_len // bk}] (heads are query heads).")
  lists = flash_lists.from_block_mask(block_mask, causal=causal)
  return run_lists(q_BLHK, k_BLGK, v_BLGK, lists, platform=platform,
                   interpret=interpret)
