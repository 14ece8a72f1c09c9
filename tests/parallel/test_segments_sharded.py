"""Document masking under a mesh: segment ids are split like q's batch and sequence and
gathered to whole sequences per device; every kind matches one device."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parallel
from kernels import attention, kinds
from tests.helpers import micro_config
from tests.kernels.flash_checks import compile_fast

B, L, H, G, K = 4, 32, 4, 2, 16
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.mark.parametrize("kind", sorted(k for k in kinds.KINDS if kinds.get(k).segments))
def test_sharded_attention_with_segments_matches_one_device(kind):
  cfg = micro_config(**{"mesh.data": 2, "mesh.tensor": 2, "mesh.sequence": 2})
  mesh = parallel.make_mesh(cfg.mesh, jax.devices())
  rules = tuple(tuple(r) for r in cfg.mesh.rules)
  ks = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(ks[0], (B, L, H, K))
  k = jax.random.normal(ks[1], (B, L, G, K))
  v = jax.random.normal(ks[2], (B, L, G, K))
  lengths = [[5, 27], [32], [16, 8, 8], [1, 30, 1]]
  seg = jnp.array([np.repeat(np.arange(len(r)), r) for r in lengths], jnp.int32)
  params = {"block_q": 8, "block_k": 8} if kind in kinds.BLOCK_KINDS else {}
  if kind == "linear":
    params = {"log_decay": -jax.nn.softplus(jax.random.normal(ks[3], (B, L, H))),
              "chunk_size": 8}
  # One device's masked and unmasked outputs as one program (eager dispatch compiled every
  # op on its own); both programs compiled without XLA's CPU optimisations (compile-bound).
  expected, unmasked = compile_fast(lambda q, k, v, seg: (
      attention(q, k, v, kind=kind, impl="xla", segment_ids_BL=seg, **params),
      attention(q, k, v, kind=kind, impl="xla", **params)), q, k, v, seg)

  @functools.partial(jax.jit, compiler_options=FAST)
  def sharded(q, k, v, seg, decay):
    arrays = {} if decay is None else {"log_decay": decay}
    with parallel.activate(mesh, rules):
      return parallel.attention(q, k, v, kind=kind, impl="xla", segment_ids_BL=seg,
                                **{**static, **arrays})
  static = {n: p for n, p in params.items() if n != "log_decay"}
  got = sharded(q, k, v, seg, params.get("log_decay"))
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)
  assert float(jnp.max(jnp.abs(expected - unmasked))) > 1e-3  # the masking matters here
