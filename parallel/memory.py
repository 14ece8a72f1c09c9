"""Per-device bytes of sharded (abstract) arrays: the planning side of a mesh."""
import math

import jax


def per_device_bytes(tree):
  """Bytes one device holds for a pytree of arrays/ShapeDtypeStructs with shardings."""
  def leaf_bytes(x):
    shard_shape = x.sharding.shard_shape(x.shape)
    return math.prod(shard_shape) * x.dtype.itemsize
  return sum(leaf_bytes(x) for x in jax.tree.leaves(tree))


def total_bytes(tree):
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))
