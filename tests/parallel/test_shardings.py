"""The rules table puts params, optimizer state, batches and kernels where it says."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import kernels
from kernels import dense, kinds
from models.attention import kind_params
import parallel
from parallel import distributed
from experiments import state as state_lib
from tests.helpers import micro_config

KINDS = tuple(sorted(kinds.KINDS))


def mesh_config(data=1, fsdp=1, tensor=1, sequence=1, **overrides):
  return micro_config(**{"model.depth": 1, "model.heads": 4, "model.kv_heads": 2,
                         "mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor,
                         "mesh.sequence": sequence, **overrides})


def build(cfg):
  return state_lib.build(cfg, parallel.make_mesh(cfg.mesh))


def leaves_by_path(tree):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_fsdp_and_tensor_rules_shard_params_optimizer_state_and_batch():
  program = build(mesh_config(fsdp=4, tensor=2))
  state = program.init()
  params = state["params"]
  block = params["blocks"][0]
  expected = [  # FSDP: embed on fsdp; TP: mlp/heads/kv_heads/vocab on tensor
      (block["mlp"]["w_gate_DF"], P("fsdp", "tensor")),
      (block["mlp"]["w_down_FD"], P("tensor", "fsdp")),
      (block["attn"]["wq_DHK"], P("fsdp", "tensor", None)),
      (block["attn"]["wk_DGK"], P("fsdp", "tensor", None)),
      (block["attn"]["wo_HKD"], P("tensor", None, "fsdp")),
      (params["embed_VD"], P("tensor", "fsdp")),
      (params["final_norm"]["scale"], P(None)),
  ]
  for array, spec in expected:
    assert array.sharding.spec == spec
  assert program.batch_sharding.spec == P(("data", "fsdp"), None)

  # Optimizer state (Adam mu and nu) is sharded exactly like its parameter.
  param_specs = {k: v.sharding.spec for k, v in leaves_by_path(params).items()}
  matched = 0
  for path, leaf in leaves_by_path(state["opt_state"]).items():
    owners = [k for k in param_specs if path.endswith(k)]
    if owners:
      assert leaf.sharding.spec == param_specs[max(owners, key=len)], path
      matched += 1
  assert matched == 2 * len(param_specs)

  # Per-device parameter bytes: everything but the norm vectors shrinks by fsdp x tensor.
  leaves = leaves_by_path(params)
  total = sum(x.nbytes for x in leaves.values())
  replicated = sum(x.nbytes for k, x in leaves.items() if "norm" in k)
  per_device = sum(x.addressable_shards[0].data.nbytes for x in leaves.values())
  assert per_device == (total - replicated) // 8 + replicated
  assert per_device < 1.05 * total / 8
  assert parallel.per_device_bytes(params) == per_device


def test_kv_heads_that_do_not_divide_tensor_stay_replicated():
  program = build(mesh_config(tensor=2, data=4, **{"model.heads": 2, "model.kv_heads": 1}))
  attn = program.state_shardings["params"]["blocks"][0]["attn"]
  assert attn["wk_DGK"].spec == P("fsdp", None, None)  # fsdp has size 1 here
  assert attn["wq_DHK"].spec == P("fsdp", "tensor", None)


def test_mesh_product_must_match_the_device_count():
  with pytest.raises(ValueError, match="multiply to 4 but there are 8 devices"):
    parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 1, "sequence": 1})
  with pytest.raises(ValueError, match="at most one may be -1"):
    parallel.make_mesh({"data": -1, "fsdp": -1, "tensor": 1, "sequence": 1})
  assert parallel.make_mesh({"data": -1, "fsdp": 2, "tensor": 1, "sequence": 1}).shape == {
      "data": 4, "fsdp": 2, "sequence": 1, "tensor": 1}


def test_batch_must_split_over_data_and_fsdp():
  with pytest.raises(ValueError, match=r"batch_size 6 is not divisible by mesh.data \* mesh.fsdp = 8"):
    build(mesh_config(data=8, batch_size=6))


def test_heads_must_split_over_sequence_times_tensor():
  cfg = mesh_config(data=2, tensor=2, sequence=2, **{"model.heads": 2, "model.kv_heads": 1})
  program = build(cfg)
  batch = jax.ShapeDtypeStruct((cfg.batch_size, cfg.seq_len + 1), jnp.int32,
                               sharding=program.batch_sharding)
  with pytest.raises(ValueError, match=r"divisible by mesh.sequence \* mesh.tensor"):
    program.train_step.lower(program.abstract_state, batch)


def _random_qkv(B=4, L=32, H=4, G=2, K=8):
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (B, L, H, K))
  k = jax.random.normal(keys[1], (B, L, G, K))
  v = jax.random.normal(keys[2], (B, L, G, K))
  log_decay = -jax.nn.softplus(jax.random.normal(keys[3], (B, L, H)))
  return q, k, v, log_decay


def _sharded_and_plain(fn, mesh_shape, *args):
  data, fsdp, tensor, sequence = mesh_shape
  mesh = parallel.make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor,
                             "sequence": sequence})

  def sharded(*a):
    with parallel.activate(mesh, parallel.DEFAULT_RULES):
      return fn(*a)
  # Both compiled without XLA's CPU optimisations (compile-bound; the check needs numbers).
  fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
  return (jax.jit(sharded, compiler_options=fast)(*args),
          jax.jit(fn, compiler_options=fast)(*args))


def _loss_and_grads(attend):
  def f(q, k, v, log_decay):
    o = attend(q, k, v, log_decay)
    return jnp.sum(o * jnp.sin(o)), o
  return jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True)


def _assert_close(got, want):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_wrapper_matches_the_kernel_on_one_device(kind):
  """Ulysses (sequence=2) with tensor=2 and repeated kv heads, forward and grads."""
  cfg = micro_config(**{"attention.block_q": 16, "attention.block_k": 16})
  params = kind_params(cfg.attention, kind)
  takes_decay = "log_decay" in kernels.KIND_PARAMS[kind]

  def attend(q, k, v, log_decay):
    extra = {"log_decay": log_decay} if takes_decay else {}
    return parallel.attention(q, k, v, kind=kind, impl="xla", **params, **extra)
  got, want = _sharded_and_plain(_loss_and_grads(attend), (2, 1, 2, 2), *_random_qkv())
  _assert_close(got, want)


def test_per_head_arrays_follow_the_query_layout():
  """An extra [B, L, H] input (like linear attention's log_decay) is split and
  all-to-all'd exactly like q, whether or not a kind that takes one exists yet."""
  def decayed_dense(q, k, v, *, impl, causal, log_decay):
    return dense.xla_attention(q * jnp.exp(log_decay)[..., None], k, v, causal=causal)
  spec = dataclasses.replace(kinds.get("dense"), impls={"xla": decayed_dense},
                             params={"log_decay": None})

  def attend(q, k, v, log_decay):
    return parallel.attention(q, k, v, kind="dense", impl="xla", log_decay=log_decay)
  with kinds.registered(spec):
    got, want = _sharded_and_plain(_loss_and_grads(attend), (1, 2, 2, 2), *_random_qkv())
  _assert_close(got, want)


def test_distributed_start_is_detected_from_the_environment_or_flags():
  detect = distributed.multi_process_environment
  assert detect({"SLURM_NTASKS": "4", "SLURM_PROCID": "1"})
  assert not detect({"SLURM_NTASKS": "1"})
  assert detect({"TPU_WORKER_HOSTNAMES": "host-a,host-b"})
  assert not detect({"TPU_WORKER_HOSTNAMES": "localhost"})
  assert not detect({})
  assert not parallel.initialize(environ={})  # one process: nothing to join
  with pytest.raises(ValueError, match="go together"):
    parallel.initialize(coordinator_address="127.0.0.1:1234", environ={})
