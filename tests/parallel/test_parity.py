"""Sharded training matches one device for every mesh layout and attention kind.

One model holds a layer of every kind registered in kernels.kinds when the
tests run (attention.pattern), so kinds merged later are covered automatically
and each mesh costs one compile rather than one per kind.
"""
import functools

import jax
import numpy as np
import pytest

from kernels import kinds
import parallel
from experiments import data as data_lib, state as state_lib
from tests.helpers import micro_config

# (data, fsdp, tensor, sequence) over the 8 fake CPU devices.
MESHES = [(8, 1, 1, 1), (2, 4, 1, 1), (2, 2, 2, 1), (1, 2, 2, 2)]
KINDS = tuple(sorted(kinds.KINDS))
STEPS = 3


def parity_config(data=1, fsdp=1, tensor=1, sequence=1):
  # 4 heads over 2 kv heads: tensor x sequence = 4 makes the wrapper repeat kv
  # heads. Blocks of 16 give sparse kinds two blocks per 32-token row; kinds
  # that take no block sizes never see them. Other kind parameters: config defaults.
  return micro_config(**{
      "steps": STEPS, "model.depth": len(KINDS), "model.heads": 4, "model.kv_heads": 2,
      "attention.pattern": KINDS, "attention.impl": "xla", "attention.block_q": 16,
      "attention.block_k": 16, "mesh.data": data, "mesh.fsdp": fsdp,
      "mesh.tensor": tensor, "mesh.sequence": sequence})


def train_losses(cfg, devices, initial_state=None):
  mesh = parallel.make_mesh(cfg.mesh, devices)
  program = state_lib.build(cfg, mesh)
  if initial_state is None:
    state = program.init()
  else:  # the one-device init, resharded: saves compiling init per mesh
    state = jax.device_put(initial_state, program.state_shardings)
  batches = data_lib.build(cfg).train_iterator()
  losses = []
  for _ in range(STEPS):
    state, metrics = program.train_step(state, state_lib.global_batch(program, next(batches)))
    losses.append(float(metrics["loss"]))
  return np.array(losses)


@functools.lru_cache(maxsize=None)
def single_device_run():
  cfg = parity_config()
  mesh = parallel.make_mesh(cfg.mesh, jax.devices()[:1])
  initial = jax.device_get(state_lib.build(cfg, mesh).init())
  return initial, train_losses(cfg, jax.devices()[:1], initial)


@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda s: "d{}f{}t{}s{}".format(*s))
def test_sharded_training_matches_one_device(mesh_shape):
  initial, expected = single_device_run()
  losses = train_losses(parity_config(*mesh_shape), jax.devices(), initial)
  np.testing.assert_allclose(losses, expected, rtol=1e-5,
                             err_msg=f"attention kinds {KINDS} on mesh {mesh_shape}")
