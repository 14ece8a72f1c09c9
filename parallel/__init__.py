"""Meshes, logical-axis rules, shardings, sharded kernels and multi-process start-up
(imports jax and kernels; never models or experiments).

Names load on first use (kernels.lazy): a config that reads `parallel.DEFAULT_RULES`
does not start JAX, so sweep dry runs stay instant.
"""
from kernels.lazy import loader

_EXPORTS = {"make_mesh": "parallel.mesh", "axis_sizes": "parallel.mesh", "AXES": "parallel.mesh",
            "DEFAULT_RULES": "parallel.default_rules", "spec_for": "parallel.rules",
            "fit_spec": "parallel.rules", "logical_sharding": "parallel.rules",
            "activate": "parallel.rules", "constrain": "parallel.rules",
            "attention": "parallel.shard_kernels", "initialize": "parallel.distributed",
            "per_device_bytes": "parallel.memory", "total_bytes": "parallel.memory"}

__all__ = sorted(_EXPORTS)

__getattr__ = loader(__name__, _EXPORTS)
