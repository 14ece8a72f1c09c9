"""Sweep definitions as code: a base config plus a list of override dicts.

A definition file `sweeps/defs/NAME.py` exposes `get_sweep(arg=None) -> Sweep`.
Override dicts use dotted config keys; helpers build the lists:

  product(lr_grid([1e-3, 3e-3]), [{"attention.kind": "dense"}, {"attention.kind": "linear"}])
  isoflop([1e15, 1e16], sizes)    # steps derived from each budget and the resolved model
  ladder(sizes, tokens_per_param=20)

An override dict may carry `_tag`, a readable label for the run id; otherwise the
label is built from its values. Values that depend on the rest of the config
(steps for a FLOP budget) are `Derived` objects, resolved after the plain overrides.
Imports no JAX: planning (and `--dry_run`) is instant.
"""
import dataclasses
import itertools
import math
import re

TAG = "_tag"


@dataclasses.dataclass(frozen=True)
class Sweep:
  """name: prefix of every run id; config: the trainer's --config spec (file.py:variant,
  relative to the repository root or absolute); runs: override dicts; base: overrides
  shared by all runs (applied first)."""
  name: str
  config: str
  runs: list
  base: dict = dataclasses.field(default_factory=dict)


class Derived:
  """An override value computed from the otherwise resolved config: subclasses define
  value(cfg) (the value to set) and tag(cfg) (its part of the run id)."""


def _tokens_per_step(cfg):
  return cfg.batch_size * cfg.seq_len


def _num(x):
  """Compact number for ids: 1e15 -> '1e15', 210000 -> '2.1e5', 0.003 -> '0.003'."""
  if isinstance(x, int) and abs(x) < 1000:
    return str(x)
  text = f"{x:.2g}"
  mantissa, _, exponent = text.partition("e")
  return f"{mantissa}e{int(exponent)}" if exponent else mantissa


@dataclasses.dataclass(frozen=True)
class StepsForBudget(Derived):
  """steps = budget / (training FLOPs per token x tokens per step), at least 1."""
  budget: float

  def value(self, cfg):
    from models import flops
    return max(1, round(self.budget / (flops.flops_per_token(cfg) * _tokens_per_step(cfg))))

  def tag(self, cfg):
    from models import flops
    return f"C{_num(self.budget)}-N{_num(flops.count_params(cfg)['total'])}"


@dataclasses.dataclass(frozen=True)
class StepsForTokensPerParam(Derived):
  """steps so that tokens = tokens_per_param x total parameters (Chinchilla's ~20)."""
  tokens_per_param: float

  def value(self, cfg):
    from models import flops
    tokens = self.tokens_per_param * flops.count_params(cfg)["total"]
    return max(1, round(tokens / _tokens_per_step(cfg)))

  def tag(self, cfg):
    from models import flops
    return f"N{_num(flops.count_params(cfg)['total'])}-D{_num(self.tokens_per_param)}N"


def auto_tag(overrides):
  """A label from the values: strings as they are, numbers as leaf+value."""
  if TAG in overrides:
    return overrides[TAG]
  parts = []
  for key, value in overrides.items():
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(value, Derived):
      continue
    if isinstance(value, bool):
      parts.append(leaf if value else f"no-{leaf}")
    elif isinstance(value, (int, float)):
      parts.append(f"{leaf}{_num(value)}")
    elif isinstance(value, (tuple, list)):
      parts.append("+".join(str(v) for v in value))
    else:
      parts.append(str(value))
  return "-".join(parts)


def merge(*dicts):
  """One override dict from several; a key set twice is an error; tags are joined."""
  out, tags = {}, []
  for d in dicts:
    tags.append(auto_tag(d))
    for key, value in d.items():
      if key == TAG:
        continue
      if key in out:
        raise ValueError(f"override key {key!r} is set by two parts of a product/zip "
                         f"({out[key]!r} and {value!r}); set it in one of them.")
      out[key] = value
  out[TAG] = "-".join(t for t in tags if t)
  return out


def product(*axes):
  """Every combination of one dict from each axis (a list of override dicts)."""
  return [merge(*combo) for combo in itertools.product(*axes)]


def zip(*axes):  # noqa: A001 (the sweep vocabulary's name; builtins.zip stays reachable)
  """Dicts paired position by position (all axes must have the same length)."""
  lengths = {len(a) for a in axes}
  if len(lengths) > 1:
    raise ValueError(f"zip needs axes of equal length, got lengths {[len(a) for a in axes]}.")
  return [merge(*combo) for combo in itertools.zip_longest(*axes)]


def lr_grid(lrs, key="optimizer.lr"):
  return [{key: float(lr), TAG: f"lr{_num(float(lr))}"} for lr in lrs]


def ladder(sizes, tokens_per_param=20.0):
  """Each model size trained on tokens_per_param x its parameter count."""
  return [merge(dict(size, **{TAG: ""}), {"steps": StepsForTokensPerParam(tokens_per_param)})
          for size in sizes]


def isoflop(budgets, sizes_per_budget):
  """For each FLOP budget, each size trained for the steps that spend the budget.

  sizes_per_budget: a list of size override dicts used at every budget, or a dict
  {budget: list of size dicts}."""
  out = []
  for budget in budgets:
    sizes = sizes_per_budget[budget] if isinstance(sizes_per_budget, dict) else sizes_per_budget
    for size in sizes:
      out.append(merge(dict(size, **{TAG: ""}), {"steps": StepsForBudget(float(budget))}))
  return out


def model_size(width, depth, heads, kv_heads=None, mlp_ratio=3):
  """Override dict for a transformer shape (mlp width = mlp_ratio x width)."""
  return {"model.width": width, "model.depth": depth, "model.heads": heads,
          "model.kv_heads": kv_heads or heads, "model.mlp_width": mlp_ratio * width}


def safe_id(text):
  return re.sub(r"[^A-Za-z0-9.+_-]+", "_", text).strip("_-")[:80]


def log10_span(values):
  values = [v for v in values if v > 0]
  return math.log10(max(values) / min(values)) if values else 0.0
