"""Logical axis names -> mesh axes: one rules table, used for params and activations.

A rule maps a logical name to a mesh axis, a tuple of mesh axes, or None. When
converting a tuple of names to a PartitionSpec a mesh axis is used at most once:
a later name whose axes are taken is replicated. That lets activations reuse
the parameter names: x_BLD (batch, length, embed) puts batch on (data, fsdp) and
leaves embed replicated, while a [embed, mlp] weight shards embed on fsdp.
"""
import contextlib
import dataclasses
import math

import jax
from jax.sharding import NamedSharding, PartitionSpec

from parallel.default_rules import DEFAULT_RULES  # noqa: F401 (re-exported)


def spec_for(names, rules, mesh_axes=None):
  """PartitionSpec for a tuple of logical names (unknown names are replicated)."""
  table = dict(rules)
  used, entries = set(), []
  for name in names:
    target = table.get(name)
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used
                 and (mesh_axes is None or a in mesh_axes))
    used.update(axes)
    entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*entries)


def fit_spec(spec, shape, mesh):
  """Drops mesh axes (from the innermost) that do not divide their dimension.

  A dimension that cannot be split evenly is kept whole on those axes instead
  of failing: e.g. 2 kv heads under tensor=4 leave the kv projections
  replicated over tensor while the query heads still shard.
  """
  entries = []
  for entry, size in zip(tuple(spec) + (None,) * (len(shape) - len(spec)), shape):
    axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
    while axes and size % math.prod(mesh.shape[a] for a in axes):
      axes = axes[:-1]
    entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*entries)


def logical_sharding(names, shape, mesh, rules):
  """NamedSharding of an array of `shape` whose axes have logical `names`."""
  spec = spec_for(names, rules, mesh.axis_names)
  return NamedSharding(mesh, fit_spec(spec, shape, mesh))


@dataclasses.dataclass
class _Active:
  mesh: jax.sharding.Mesh | None = None
  rules: tuple = ()


_active = _Active()


@contextlib.contextmanager
def activate(mesh, rules):
  """Makes `constrain` (and the sharded kernel wrappers) use this mesh and rules."""
  previous = (_active.mesh, _active.rules)
  _active.mesh, _active.rules = mesh, tuple(tuple(r) for r in rules)
  try:
    yield
  finally:
    _active.mesh, _active.rules = previous


def active_mesh():
  return _active.mesh


def active_rules():
  return _active.rules


def constrain(x, names):
  """with_sharding_constraint by logical names; a no-op outside `activate` or on 1 device."""
  mesh = _active.mesh
  if mesh is None or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(
      x, logical_sharding(names, x.shape, mesh, _active.rules))
