"""Baseline attentions for `benchmarks/attention.py`: XLA's and cuDNN's
`jax.nn.dot_product_attention` and the Pallas kernels shipped with JAX
(`jax.experimental.pallas.ops`: the Triton flash kernel and the Hopper Mosaic GPU
kernel on GPU, splash attention on TPU).

Each baseline is `fn(q_BLHK, k_BLGK, v_BLGK) -> o_BLHK` (causal, scale 1/sqrt(K)),
or a reason it cannot run here, so the benchmark prints a skipped row instead of
failing. All take GQA (G dividing H); the Triton kernel is MHA-only, so k and v are
repeated to H heads inside the timed function (its cost counted).
"""
import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

HALF = (jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class Baseline:
  name: str
  fn: Optional[Callable]  # None: skipped, see reason
  reason: str = ""
  backward: bool = True  # False: the kernel has no backward for causal attention


def _gpu_capability():
  try:
    return float(jax.devices()[0].compute_capability)
  except (AttributeError, ValueError, TypeError):
    return 0.0


def _repeat_kv(q, k, v):
  groups = q.shape[2] // k.shape[2]
  return jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)


def _sdpa(implementation):
  def fn(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                        implementation=implementation)
  return fn


def _triton_flash(q, k, v):
  from jax.experimental.pallas.ops.gpu import attention as gpu_attention
  k, v = _repeat_kv(q, k, v)
  return gpu_attention.mha(q, k, v, None, sm_scale=1 / math.sqrt(q.shape[-1]), causal=True)


def _mgpu_flash(q, k, v):
  from jax.experimental.pallas.ops.gpu import attention_mgpu
  config = attention_mgpu.TuningConfig(block_q=128, block_kv=128, max_concurrent_steps=2,
                                       causal=True)
  return attention_mgpu.attention(q * (1 / math.sqrt(q.shape[-1])), k, v, config)


def _splash(q, k, v):
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  length, heads = q.shape[1], q.shape[2]
  block = min(512, length)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block,
                            block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * heads)
  kernel = splash.make_splash_mha_single_device(mask, block_sizes=sizes)
  to_heads = lambda x: jnp.swapaxes(x, 1, 2)  # splash is [heads, L, K] per batch row
  o = jax.vmap(kernel)(to_heads(q * (1 / math.sqrt(q.shape[-1]))), to_heads(k), to_heads(v))
  return to_heads(o)


def baselines(dtype, head_dim):
  """The baselines for this backend, dtype and head_dim (skipped ones with a reason)."""
  backend = jax.default_backend()
  gpu, tpu = backend in ("gpu", "cuda"), backend == "tpu"
  half = jnp.dtype(dtype) in map(jnp.dtype, HALF)
  rows = [Baseline("sdpa xla", _sdpa("xla"))]
  if not gpu:
    rows.append(Baseline("sdpa cudnn", None, f"needs a CUDA GPU (backend {backend})"))
  elif not half:
    rows.append(Baseline("sdpa cudnn", None, "cuDNN flash takes bfloat16/float16 only"))
  else:
    rows.append(Baseline("sdpa cudnn", _sdpa("cudnn")))
  triton = "pallas.ops gpu mha (triton)"
  rows.append(Baseline(triton, _triton_flash) if gpu else
              Baseline(triton, None, f"needs a CUDA GPU (backend {backend})"))
  if not gpu or _gpu_capability() < 9.0:
    rows.append(Baseline("pallas.ops gpu attention_mgpu", None,
                         "needs a Hopper+ GPU (sm_90)"))
  elif not half or head_dim % 64:
    rows.append(Baseline("pallas.ops gpu attention_mgpu", None,
                         "takes bfloat16/float16 and head_dim % 64 == 0 only"))
  else:
    rows.append(Baseline("pallas.ops gpu attention_mgpu", _mgpu_flash, backward=False,
                         reason="no causal backward in this jax"))
  rows.append(Baseline("pallas.ops tpu splash", _splash) if tpu else
              Baseline("pallas.ops tpu splash", None, f"needs a TPU (backend {backend})"))
  return rows
