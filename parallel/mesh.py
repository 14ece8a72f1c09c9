"""Device mesh from the config's `mesh.data/fsdp/tensor/sequence` sizes (and the
context-parallel scheme, `mesh.context` / `mesh.head_chunks`, parallel/context.py)."""
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from parallel import context as context_lib

AXES = ("data", "fsdp", "sequence", "tensor")  # tensor last: innermost, fastest links


def axis_sizes(mesh_cfg, num_devices):
  """Resolves the sizes (one of them may be -1 = fill) against the device count."""
  sizes = {a: int(mesh_cfg[a]) for a in AXES}
  fill = [a for a, s in sizes.items() if s == -1]
  bad = [a for a, s in sizes.items() if s == 0 or s < -1]
  if bad or len(fill) > 1:
    raise ValueError(
        f"mesh sizes {sizes}: each of {AXES} must be a positive int, and at most "
        "one may be -1 (fill with the remaining devices).")
  known = math.prod(s for s in sizes.values() if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(
          f"mesh sizes {sizes}: {num_devices} devices are not divisible by the "
          f"fixed axes' product {known}; change the sizes so they divide {num_devices}.")
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(
        f"mesh sizes {sizes} multiply to {math.prod(sizes.values())} but there are "
        f"{num_devices} devices; make the product equal the device count or set one "
        "axis to -1.")
  return sizes


def make_mesh(mesh_cfg, devices=None):
  """A Mesh with axes (data, fsdp, sequence, tensor), Auto axis types. The config's
  context-parallel scheme is validated here (before anything compiles); the train
  and eval steps trace under it (experiments.state, parallel.context.use).

  `jax.make_mesh` orders devices so the innermost (last) axis gets the fastest
  interconnect; tensor parallelism communicates the most, so it goes last.
  """
  devices = jax.devices() if devices is None else devices
  sizes = axis_sizes(mesh_cfg, len(devices))
  context_lib.from_config(mesh_cfg, sizes["sequence"])  # raises on a bad setting
  shape = tuple(sizes[a] for a in AXES)
  if devices is jax.devices() or list(devices) == jax.devices():
    mesh = jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))
  else:
    mesh = Mesh(np.asarray(devices).reshape(shape), AXES,
                axis_types=(AxisType.Auto,) * len(AXES))
  return mesh
