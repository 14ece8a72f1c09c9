"""Untied Ulysses (mesh.context="untied"): the same losses as Ulysses, less memory.

Training compares the losses of one kind; every registered kind's forward and
backward is compared at the attention layer (one jit per scheme); the memory check
only compiles the attention layer.
"""
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
import parallel
from experiments import state as state_lib
from kernels import kinds, sparse
from parallel import context as context_lib
from tests.helpers import micro_config
from tests.parallel.test_parity import KINDS, STEPS, train_losses


def scheme_config(context, head_chunks):
  # data x fsdp x sequence = 2 x 2 x 2: 4 heads leave 2 per device after the
  # all-to-all, so 2 chunks of one head (and the 2 kv heads repeated to 4).
  return micro_config(**{
      "steps": STEPS, "model.depth": 1, "model.heads": 4, "model.kv_heads": 2,
      "attention.impl": "xla",
      "mesh.data": 2, "mesh.fsdp": 2, "mesh.sequence": 2, "mesh.context": context,
      "mesh.head_chunks": head_chunks})


def test_untied_trains_like_ulysses():
  cfg = scheme_config("ulysses", 1)
  # one init for both (on one device: it compiles faster), kept on the host since
  # each train step donates its state
  one_device = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1},
                                  jax.devices()[:1])
  initial = jax.device_get(state_lib.build(cfg, one_device).init())
  ulysses = train_losses(cfg, jax.devices(), initial)
  untied = train_losses(scheme_config("untied", 2), jax.devices(), initial)
  np.testing.assert_allclose(untied, ulysses, rtol=1e-5)
  # ... and the train step really ran the chunk loop (a scan: a while loop in HLO).
  def lowered(cfg):
    program = state_lib.build(cfg, parallel.make_mesh(cfg.mesh))
    batch = jax.ShapeDtypeStruct((cfg.batch_size, cfg.seq_len + 1), jnp.int32,
                                 sharding=program.batch_sharding)
    return program.train_step.lower(program.abstract_state, batch).as_text()
  assert "while" in lowered(scheme_config("untied", 2))
  assert "while" not in lowered(cfg)


def test_untied_matches_ulysses_for_every_kind():
  """Outputs and q, k, v gradients of every registered kind, one jit per scheme."""
  B, L, H, G, K = 1, 32, 16, 2, 8  # 2 heads per device after the all-to-all
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 2, "sequence": 4})
  ks = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, (B, L, h, K)) for key, h in zip(ks, (H, G, G)))
  decay_BLH = -jax.nn.softplus(jax.random.normal(ks[3], (B, L, H)))

  def kind_params(kind):
    if kind == "linear":
      return {"log_decay": decay_BLH, "chunk_size": 8}
    return {"block_q": 8, "block_k": 8} if kind in kinds.BLOCK_KINDS else {}

  def run(context, head_chunks):
    def loss(q, k, v):
      outs = [sharded_attention(mesh, context, head_chunks, kind=kind, impl="xla",
                                **kind_params(kind))(q, k, v) for kind in KINDS]
      return sum(jnp.sum(o * jnp.cos(o)) for o in outs), outs
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)

  (expected, expected_outs), (got, got_outs) = run("ulysses", 1), run("untied", 2)
  for kind, e, g in zip(KINDS, expected_outs, got_outs):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5, err_msg=kind)
  for name, e, g in zip("qkv", expected, got):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(e))),
                               err_msg=f"d{name}")


def sharded_attention(mesh, context=None, head_chunks=1, **params):
  """parallel.attention under the mesh; the scheme the mesh was built with unless
  `context` is given."""
  def attend(q, k, v, *mask):
    scheme = contextlib.nullcontext() if context is None else context_lib.use(
        context, head_chunks)
    with parallel.activate(mesh, parallel.DEFAULT_RULES), scheme:
      return parallel.attention(q, k, v, **params, **dict(zip(("mask_BHQK",), mask)))
  return attend


def test_untied_gives_each_chunk_its_heads_block_mask():
  """An estimated [B, H, nQ, nK] mask reaches each chunk's heads, and stage 2's
  skipped-tile map comes back in the global head order (a misplaced head would
  attend under another head's mask)."""
  B, L, H, G, K = 2, 32, 16, 2, 8
  mesh = parallel.make_mesh({"data": 2, "fsdp": 1, "tensor": 2, "sequence": 2})
  ks = jax.random.split(jax.random.key(1), 3)
  q, k, v = (3 * jax.random.normal(key, (B, L, h, K)) for key, h in zip(ks, (H, G, G)))
  _, params = sparse.estimate_block_sparse(
      q, k, block_q=8, block_k=8, estimator="sparge", topk=0.5, pv_threshold=-2.0)
  mask = params.pop("mask_BHQK")
  expected, expected_skipped = jax.jit(lambda q, k, v, mask: kernels.attention(
      q, k, v, kind="block_sparse", impl="xla", return_skipped=True, mask_BHQK=mask,
      **params))(q, k, v, mask)
  got, got_skipped = jax.jit(sharded_attention(
      mesh, "untied", 2, kind="block_sparse", impl="xla", return_skipped=True,
      **params))(q, k, v, mask)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got_skipped), np.asarray(expected_skipped))


def attention_temp_bytes(mesh, context, head_chunks, B, L, H, G, K):
  """Compiled temporaries of the attention layer's forward and backward per device."""
  attend = sharded_attention(mesh, context, head_chunks, kind="dense", impl="xla")
  sharding = jax.NamedSharding(mesh, jax.P(None, "sequence"))
  shapes = [jax.ShapeDtypeStruct((B, L, h, K), jnp.float32, sharding=sharding)
            for h in (H, G, G)]
  grad = jax.grad(lambda *qkv: jnp.sum(attend(*qkv)), argnums=(0, 1, 2))
  return jax.jit(grad).lower(*shapes).compile().memory_analysis().temp_size_in_bytes


def test_untied_cuts_attention_memory():
  # 2 heads per device after the all-to-all; the scores (L x L per head) dominate.
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1, "sequence": 8})
  shape = dict(B=1, L=512, H=16, G=4, K=16)
  ulysses = attention_temp_bytes(mesh, "ulysses", 1, **shape)
  untied = attention_temp_bytes(mesh, "untied", 2, **shape)
  assert untied < 0.6 * ulysses, (untied, ulysses)


@pytest.mark.parametrize("mesh_cfg, message", [
    ({"sequence": 2, "context": "rings"}, "choose one of"),
    ({"sequence": 2, "head_chunks": 2}, "context='untied' only"),
    ({"sequence": 2, "context": "untied", "head_chunks": 0}, "positive int"),
    ({"sequence": 1, "context": "untied", "head_chunks": 2}, "mesh.sequence is 1"),
])
def test_bad_context_settings_fail_when_the_mesh_is_built(mesh_cfg, message):
  sizes = {"data": -1, "fsdp": 1, "tensor": 1, "sequence": 1}
  with pytest.raises(ValueError, match=message):
    parallel.make_mesh({**sizes, **mesh_cfg})


def test_head_chunks_must_divide_each_devices_heads():
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 2, "sequence": 4})
  q = jax.ShapeDtypeStruct((1, 32, 16, 8), jnp.float32)  # 2 heads per device
  attend = sharded_attention(mesh, "untied", 4, kind="dense", impl="xla")
  with pytest.raises(ValueError, match="divisors of 2"):
    jax.eval_shape(attend, q, q, q)
