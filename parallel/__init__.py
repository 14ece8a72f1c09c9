"""Meshes, logical-axis rules and shardings (imports only jax)."""
from parallel.mesh import make_mesh, axis_sizes, AXES
from parallel.rules import DEFAULT_RULES, spec_for, activate, constrain

__all__ = ["make_mesh", "axis_sizes", "AXES", "DEFAULT_RULES", "spec_for",
           "activate", "constrain"]
