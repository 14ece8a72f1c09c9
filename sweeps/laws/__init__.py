"""Scaling laws: each module defines LAW, a `base.Law` (the protocol: name, fit, bootstrap,
extrapolate, and optional allocation, rows, plot and check hooks), registered below. Adding
a law is one module and its name in the registration line; sweeps.fit, fitting, plot,
allocation and diagnostics look everything up through `get`. A law defined elsewhere (a
plug-in, a test) calls `register` itself.
"""
import importlib

from sweeps.laws.base import CURVES, RUNS, Law  # noqa: F401

LAWS: dict = {}


def register(law: Law) -> Law:
  """Makes `law` available by its name (to `get`, --law and fit.json readers)."""
  if not isinstance(law, Law):
    raise TypeError(f"register a sweeps.laws.Law, not {type(law).__name__}")
  LAWS[law.name] = law
  return law


def unregister(name: str) -> None:
  LAWS.pop(name, None)


def get(name: str) -> Law:
  if name not in LAWS:
    raise ValueError(f"unknown law {name!r}; choose one of {', '.join(LAWS)}")
  return LAWS[name]


def allocating() -> list[str]:
  """Names of the laws that prescribe N_opt(C), D_opt(C)."""
  return [name for name, law in LAWS.items() if law.allocates]


for _module in ("chinchilla", "isoflop", "envelope", "kaplan", "frontier"):  # registration
  register(importlib.import_module(f"sweeps.laws.{_module}").LAW)
