"""Names a package loads on first use (PEP 562).

kernels, models and parallel export names from JAX-importing modules, yet
configs, the FLOP count and sweep dry runs read their JAX-free parts (kind
registry, FLOP counts, default rules): importing JAX and Flax costs seconds
(measured ~4 s and ~7 s on CPU) and a dry run must not start it.
"""
import importlib


def loader(package, exports):
  """A module `__getattr__` for `package` that imports exports[name] on first use."""
  def __getattr__(name):
    if name not in exports:
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return getattr(importlib.import_module(exports[name]), name)
  return __getattr__
