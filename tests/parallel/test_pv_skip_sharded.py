"""Stage 2 under a mesh: the output and the skipped-tile map match one device."""
import functools

import jax
import numpy as np

import parallel
from kernels import attention, sparse
from tests.helpers import micro_config

B, L, H, G, K = 4, 64, 4, 2, 16


def test_sharded_stage_two_matches_one_device():
  cfg = micro_config(**{"mesh.data": 2, "mesh.tensor": 2, "mesh.sequence": 2})
  mesh = parallel.make_mesh(cfg.mesh, jax.devices())
  rules = tuple(tuple(r) for r in cfg.mesh.rules)
  ks = jax.random.split(jax.random.key(1), 3)
  q = 3 * jax.random.normal(ks[0], (B, L, H, K))
  k = 3 * jax.random.normal(ks[1], (B, L, G, K))
  v = jax.random.normal(ks[2], (B, L, G, K))
  params = {"block_q": 8, "block_k": 8, "estimator": "sparge", "topk": 0.5,
            "pv_threshold": -2.0}
  _, params = sparse.estimate_block_sparse(q, k, **params)  # the mask, as a layer passes it
  # Both sides compiled without XLA's CPU optimisations (compile-bound; the one-device side
  # was eager, every op compiled on its own).
  fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
  expected, skipped = jax.jit(lambda q, k, v, mask: attention(
      q, k, v, kind="block_sparse", impl="xla", return_skipped=True,
      **{**params, "mask_BHQK": mask}), compiler_options=fast)(q, k, v, params["mask_BHQK"])

  @functools.partial(jax.jit, compiler_options=fast)
  def sharded(q, k, v, mask):
    with parallel.activate(mesh, rules):
      return parallel.attention(q, k, v, kind="block_sparse", impl="xla", return_skipped=True,
                                **{**params, "mask_BHQK": mask})
  got, got_skipped = sharded(q, k, v, params["mask_BHQK"])
  # float32 sums in another order under shard_map: outputs are O(1), so 1e-5 absolute.
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got_skipped), np.asarray(skipped))
  assert 0 < int(skipped.sum()) < int(params["mask_BHQK"].sum())
