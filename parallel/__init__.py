"""Meshes, logical-axis rules, shardings and sharded kernels (imports jax and kernels)."""
from parallel.mesh import make_mesh, axis_sizes, AXES
from parallel.rules import (DEFAULT_RULES, spec_for, fit_spec, logical_sharding, activate,
                            constrain)
from parallel.attention import attention
from parallel.distributed import initialize
from parallel.memory import per_device_bytes, total_bytes

__all__ = ["make_mesh", "axis_sizes", "AXES", "DEFAULT_RULES", "spec_for", "fit_spec",
           "logical_sharding", "activate", "constrain", "attention", "initialize",
           "per_device_bytes", "total_bytes"]
