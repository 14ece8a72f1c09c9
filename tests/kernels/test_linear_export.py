"""The linear-attention Pallas kernels (forward and backward) lower for TPU and CUDA."""
import re

import jax
import jax.numpy as jnp
import pytest

from kernels import linear_pallas

# Custom-call target each platform's Pallas lowering emits.
KERNEL_MARKERS = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}
# Triton calls carry no serialization-stability guarantee; lowering is what we test.
DISABLED_CHECKS = {"tpu": [], "cuda": [jax.export.DisabledSafetyCheck.custom_call(
    KERNEL_MARKERS["cuda"])]}


def _export_loss_and_grads(platform, dtype, head_dim, feature_map):
  batch, length, heads, kv_heads = 2, 200, 4, 2  # 200: not a multiple of the chunk

  def loss(q, k, v, log_decay):
    o = linear_pallas.pallas_linear_attention(
        q, k, v, log_decay, feature_map=feature_map, normalize=True, chunk_size=64,
        platform=platform, interpret=False)
    return jnp.sum(o.astype(jnp.float32))

  args = (jax.ShapeDtypeStruct((batch, length, heads, head_dim), dtype),
          jax.ShapeDtypeStruct((batch, length, kv_heads, head_dim), dtype),
          jax.ShapeDtypeStruct((batch, length, kv_heads, head_dim), dtype),
          jax.ShapeDtypeStruct((batch, length, heads), jnp.float32))
  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
  exported = jax.export.export(fn, platforms=[platform],
                              disabled_checks=DISABLED_CHECKS[platform])(*args)
  return exported.mlir_module()


# One kernel call per forward and per gradient (dq, dk, dv), the normaliser fused
# in; on cuda each call is a state pass, a scores pass and an output pass.
CALLS = {"tpu": 4, "cuda": 12}


def _kernel_last_dims(module, platform):
  """The last dims of every operand and result of the module's kernel calls."""
  calls = [line for line in module.splitlines() if KERNEL_MARKERS[platform] in line]
  return {int(dims.split("x")[-1]) for line in calls
          for dims in re.findall(r"tensor<([0-9x]+)x(?:bf16|f32)>", line.split(" : ")[-1])}


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_identity_features_lower(platform, dtype):
  module = _export_loss_and_grads(platform, dtype, 64, "identity")
  assert module.count(KERNEL_MARKERS[platform]) == CALLS[platform]
  # Every kernel operand is L (200 padded to 256), the chunk (64) = K = V wide, or a
  # column: the normaliser widens nothing (as a ones column it made V 65, padded to 128).
  assert 64 in _kernel_last_dims(module, platform) <= {256, 64, 1}


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_squared_features_lower_at_head_dim_128(platform):
  """The 2Mamba configuration: K = 128, symmetric squared features F = 128 * 129 / 2."""
  module = _export_loss_and_grads(platform, jnp.bfloat16, 128, "squared")
  assert module.count(KERNEL_MARKERS[platform]) == CALLS[platform]
  assert "x8256x" in module
  # V = 128 stays 128 wide (a ones column made it 129, padded to 192 by 64-wide tiles);
  # F pads to the tiles: 129 of 64 on cuda, 5 of 1664 on tpu.
  features = {"cuda": 8256, "tpu": 8320}[platform]
  assert {128, features} <= _kernel_last_dims(module, platform) <= {256, 128, 64, 1, features}
