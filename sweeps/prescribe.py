"""Turn a fit into a prescription: with C FLOPs, train N params on D tokens, expect loss L.

  python -m sweeps.prescribe --fit=DIR/fit.json --budget=1e21 [--variant=small]
      [--group=dense] [--batch_rule=fitted|deepseek] [--format=text|json]

The concrete config keeps to the budget: N_opt is rounded to a realizable shape, then
steps = budget / (that shape's exact training FLOPs per token x batch x seq_len), so the
config's FLOPs (models.flops) are within 10% of the budget (or the prescription fails).
Everything but the shape and the steps comes from the runs the law was fitted on: fit.json's
`base_config` (the largest-compute fitted run's resolved config) applied over the variant
(--variant, else fit.json's `config_spec`, else `tiny`). Shapes keep that run's head_dim
(at least), heads per kv head and mlp_width/width ratio, and trade the parameter count's
distance from N_opt against the width/depth ratio's from that run's (ASPECT without one).
The count matched is the one the fit used: total parameters for N = `params`, non-embedding
for N = `params_non_embedding`.
"""
import json
import math
import os

from absl import app, flags
import numpy as np

from experiments import config as config_lib, logs
from models import flops as flops_lib
from models import layout
from sweeps import REPO, allocation
from experiments.metrics import to_strict

ASPECT = 64  # width / depth preferred without a fitted run (Kaplan et al.: flat near 50-100)
ASPECT_WEIGHT = 0.05  # score per unit |log(aspect / preferred)|, against |log(N / N_opt)|
MAX_DEPTH = 256
MIN_STEPS = 5  # below this, rounding steps alone can miss the budget by more than 10%
TOLERANCE = 0.10  # |model FLOPs / budget - 1| allowed
WARN_DECADES = 2.0  # extrapolation beyond the largest fitted run that earns a warning
SHAPE_KEYS = ("model.width", "model.depth", "model.heads", "model.kv_heads", "model.head_dim",
              "model.mlp_width")
CONFIG_KEYS = ("model.vocab_size", "seq_len", "batch_size", "steps", "attention.kind")
BATCH_RULES = {
    "fitted": "the fitted runs' batch (the law was measured at it; changing it would confound "
              "a verification)",
    "deepseek": "DeepSeek LLM's law, tokens per batch 0.292 C^0.3271 (Bi et al. 2024), in "
                "whole sequences",
}

_FIT = flags.DEFINE_string("fit", None, "fit.json written by sweeps.fit.")
_BUDGET = flags.DEFINE_float("budget", None, "Training FLOP budget C.")
_VARIANT = flags.DEFINE_string("variant", None, "experiments/configs/lm.py variant under the "
                               "fitted runs' base_config (default: fit.json's config_spec, "
                               "else tiny).")
_GROUP = flags.DEFINE_string("group", None, "Group of a --group_by fit to use.")
_BATCH_RULE = flags.DEFINE_enum("batch_rule", "fitted", sorted(BATCH_RULES),
                                "Batch size: " + "; ".join(f"{k} = {v}"
                                                          for k, v in BATCH_RULES.items()))
_FORMAT = flags.DEFINE_enum("format", "text", ["text", "json"], "Output format.")


def count_key(n_kind: str) -> str:
  """models.flops.count_params key matching the N the fit was made with."""
  return "non_embedding" if "non_embedding" in n_kind else "total"


def load_fit(path: str) -> dict:
  """The fit.json a --fit names (prescribe, verify). A missing one is bad input that
  says how to make it; `error: [Errno 2] ...` did not."""
  if os.path.isdir(path) and os.path.isfile(os.path.join(path, "fit.json")):
    raise ValueError(f"--fit={path} is a directory; name the fit file in it: "
                     f"--fit={os.path.join(path, 'fit.json')}")
  if not os.path.isfile(path):
    raise ValueError(f"--fit={path}: the fit file does not exist; create it with "
                     "`python -m sweeps.fit --store=STORE --out=DIR` (it writes DIR/fit.json)")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as err:
    raise ValueError(f"cannot read --fit={path}: {err}") from None


def select_group(fit: dict, group=None) -> tuple:
  if "groups" not in fit:
    return fit, None
  names = sorted(fit["groups"])
  if group is None and len(names) == 1:
    group = names[0]
  if group not in fit["groups"]:
    raise ValueError(f"this fit has groups {names} (by {fit['group_by']}); pick one with "
                     "--group=NAME")
  return {"law": fit["law"], **fit["groups"][group]}, group


def batch_tokens(budget: float) -> float:
  """Tokens per batch for a compute budget: DeepSeek LLM's fitted law (Bi et al. 2024,
  B_opt = 0.292 C^0.3271), so a large budget is not prescribed a laptop's batch."""
  return 0.292 * budget ** 0.3271


def lm_spec(variant: str) -> str:
  return f"experiments/configs/lm.py:{variant}"


def load_spec(spec: str):
  """A --config spec (file.py:variant, relative to the repository root or absolute)."""
  path, sep, arg = spec.partition(":")
  if not os.path.isabs(path) and not os.path.isfile(path):
    path = os.path.join(REPO, path)
  return config_lib.load(path + sep + arg)


def base_spec(fit: dict, variant=None) -> str:
  """--variant if given, else the fitted runs' config_spec, else the tiny variant."""
  return lm_spec(variant) if variant else (fit.get("config_spec") or lm_spec("tiny"))


def _same(a, b) -> bool:
  """Equal as JSON (a fit.json list equals a config tuple)."""
  return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def apply_base_config(variant_cfg, base_config):
  """(cfg, applied {key: value} that differ from the variant, notes) with the fitted run's
  resolved config over the variant; keys the variant lacks and None values are skipped."""
  if not base_config:
    return variant_cfg.copy_and_resolve_references(), {}, []
  valid = set(config_lib.leaf_keys(variant_cfg))
  current = config_lib.flatten(config_lib.to_dict(variant_cfg))
  missing = sorted(k for k in base_config if k not in valid)
  notes = [f"skipped base_config keys the variant lacks: {', '.join(missing)}"] if missing else []
  applied = {k: v for k, v in base_config.items()
             if k in valid and v is not None and not _same(v, current.get(k))}
  return config_lib.override(variant_cfg, applied), applied, notes


def _width(i: int) -> int:
  """The i-th width of the grid (i >= 1): multiples of 8 up to 1024, of 64 beyond."""
  return 8 * i if i <= 128 else 1024 + 64 * (i - 128)


def _set_shape(cfg, depth, width, kv_ratio, head_dim, mlp_ratio):
  """Heads as the fitted run's family has them: width // head_dim (at least kv_ratio),
  rounded down to a multiple of kv_ratio that divides width."""
  m = cfg.model
  heads = max(kv_ratio, (width // head_dim) // kv_ratio * kv_ratio)
  while width % heads and heads > kv_ratio:
    heads -= kv_ratio
  if width % heads:
    width = heads * math.ceil(width / heads)
  m.depth, m.width, m.heads, m.kv_heads = depth, width, heads, heads // kv_ratio
  m.head_dim = width // heads
  m.mlp_width = 8 * max(1, round(mlp_ratio * width / 8))


def model_shape(base, n_target: float, key: str, aspect: float = ASPECT):
  """(cfg, count): the (width, depth) whose count is near n_target at a width/depth near
  `aspect`, with base's head_dim (at least), heads per kv head and mlp ratio. Per depth,
  bisection on the width grid (the count grows with width); the score trades the two:
  a 2x departure from `aspect` costs as much as missing n_target by 3.5% (isoFLOP curves
  are flat near their minimum; Kaplan et al. find loss within a few % over aspect 5-200)."""
  cfg = base.copy_and_resolve_references()
  m = cfg.model
  rules = (max(1, m.heads // m.kv_heads), layout.head_dim(m), m.mlp_width / m.width)

  def count(depth, i):
    _set_shape(cfg, depth, _width(i), *rules)
    return flops_lib.count_params(cfg)[key]

  best = None
  for depth in range(1, MAX_DEPTH + 1):
    lo, hi = 1, 1
    while count(depth, hi) < n_target and hi < 1 << 14:
      hi *= 2
    while lo < hi:  # the smallest width whose count reaches n_target
      mid = (lo + hi) // 2
      lo, hi = (mid + 1, hi) if count(depth, mid) < n_target else (lo, mid)
    for i in {max(1, lo - 1), lo}:
      n = count(depth, i)
      score = abs(math.log(n / n_target)) + ASPECT_WEIGHT * abs(
          math.log(cfg.model.width / depth / aspect))
      if best is None or score < best[0]:
        best = (score, depth, i, n)
    if count(depth, 1) >= n_target:
      break  # deeper shapes only grow
  _, depth, i, n = best
  _set_shape(cfg, depth, _width(i), *rules)
  return cfg, n


def _warnings(fit: dict, budget: float, n_model: float, n_opt: float) -> tuple:
  """(extrapolation_decades or None, warnings) from fit.json's data_range and quality."""
  out, decades = [], None
  c_range = (fit.get("data_range") or {}).get("C")
  if c_range:
    decades = math.log10(budget / c_range[1])
    if decades > WARN_DECADES:
      out.append(f"extrapolates {decades:.1f} decades beyond the largest fitted run "
                 f"(C={c_range[1]:.3g}): treat the prescription as a hypothesis to verify")
    if budget < c_range[0]:
      out.append(f"budget is {math.log10(c_range[0] / budget):.1f} decades below the smallest "
                 f"fitted run (C={c_range[0]:.3g}): the law is extrapolated downwards")
  else:
    out.append("extrapolation not assessed: fit.json has no data_range (refit with the "
               "current sweeps.fit to record it)")
  quality = fit.get("quality")
  if quality not in (None, "ok", "info"):
    diagnostics = [d for d in fit.get("diagnostics") or [] if d.get("level") != "info"]
    codes = ", ".join(d.get("code", "?") for d in diagnostics) or "none listed"
    out.append(f"the fit's quality is {quality!r} (diagnostics: {codes}): check them before "
               "acting on this prescription")
    out += [f"{d.get('code', '?')}: {d.get('message', '')}" for d in diagnostics]
  if abs(n_model / n_opt - 1) > 0.1:
    out.append(f"the nearest realizable shape has {n_model:.4g} params, "
               f"{n_model / n_opt - 1:+.0%} from N_opt = {n_opt:.4g}")
  return decades, out


def resolve_base(top: dict, fit: dict, base=None, variant=None) -> tuple:
  """(cfg, spec, description, base_overrides, notes): the variant (base, or loaded from
  `base_spec`) under the fitted runs' base_config (a --group_by fit's group carries its own);
  base_overrides are the keys that differ from the variant, less those prescribed."""
  spec = base_spec({"config_spec": fit.get("config_spec") or top.get("config_spec")}, variant)
  if base is None:
    try:
      base = load_spec(spec)
    except ValueError as err:
      raise ValueError(f"{err} (the base config {spec!r}; pick one with --variant=NAME)") \
          from None
  elif not variant:
    spec = None  # a config given by the caller: its spec is unknown
  base_config = fit.get("base_config")
  cfg, applied, notes = apply_base_config(base, base_config)
  partial = [k for k in ("model.width", "model.heads", "model.kv_heads", "model.mlp_width")
             if base_config and k not in base_config]
  if partial:
    notes.append(f"base_config lacks {', '.join(partial)}: the shape's head_dim and ratios mix "
                 "the fitted run's and the variant's values")
  base_overrides = {k: v for k, v in applied.items() if k not in SHAPE_KEYS + CONFIG_KEYS}
  if base_config:
    described = (f"{spec or 'the given config'} with the base_config of the largest-compute "
                 f"fitted run ({len(base_overrides)} more keys differ from the variant)")
  else:
    why = "fitted from a CSV" if (top.get("source") or {}).get("csv") else \
        "written before sweeps.fit recorded it; refit to record it"
    name = (spec or "given").rpartition(":")[2]
    described = f"variant {name} (fit.json has no base_config: {why})"
  return cfg, spec, described, base_overrides, notes


def _steps_for_budget(cfg, budget, n_model):
  """Sets cfg.steps so the run spends `budget` FLOPs (within TOLERANCE); returns
  (FLOPs per token, tokens, the run's FLOPs, its relative budget error)."""
  per_token = flops_lib.flops_per_token(cfg)
  exact_steps = budget / (per_token * cfg.batch_size * cfg.seq_len)
  cfg.steps = round(exact_steps)
  if cfg.steps < MIN_STEPS:
    raise ValueError(
        f"budget {budget:.3g} FLOPs buys {exact_steps:.3g} steps of the prescribed model "
        f"({n_model:.3g} params, {per_token:.3g} FLOPs/token, batch {cfg.batch_size} x "
        f"{cfg.seq_len} tokens); at least {MIN_STEPS} are needed to keep within "
        f"{TOLERANCE:.0%} of the budget: raise --budget or use a smaller batch")
  tokens = cfg.steps * cfg.batch_size * cfg.seq_len
  model_flops = per_token * tokens
  error = model_flops / budget - 1
  if abs(error) > TOLERANCE:
    raise ValueError(f"the prescribed config's FLOPs {model_flops:.3g} miss the budget "
                     f"{budget:.3g} by {error:+.1%} (more than {TOLERANCE:.0%})")
  return per_token, tokens, model_flops, error


def prescribe(fit: dict, budget: float, base=None, group=None, *, batch_rule="fitted",
              variant=None) -> dict:
  """The prescription for `budget` FLOPs. base: the config under the fitted runs'
  base_config (default: loaded from `base_spec(fit, variant)`)."""
  if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
    raise ValueError(f"--budget must be a positive FLOP count, got {budget}")
  if batch_rule not in BATCH_RULES:
    raise ValueError(f"--batch_rule={batch_rule!r}: choose one of {sorted(BATCH_RULES)}")
  top, group_by = fit, fit.get("group_by")
  fit, group = select_group(fit, group)
  cfg, spec, described, base_overrides, notes = resolve_base(top, fit, base, variant)
  if group is not None and group_by == "attention.kind":
    cfg.attention.kind = group  # the prescription is for the attention kind that was fitted

  alloc = allocation.allocate(fit, budget)
  pick = lambda key: {"value": float(alloc[key][0][0]),
                      "interval": [float(alloc[key][1][0]), float(alloc[key][2][0])]}
  key = count_key(fit.get("n_kind", "params"))
  n_opt = float(alloc["N_opt"][0][0])
  if not (math.isfinite(n_opt) and n_opt > 0):
    raise ValueError(f"the {fit['law']} fit gives N_opt = {n_opt} at C = {budget:.3g}; its "
                     "parameters are not usable for a prescription (see its diagnostics)")
  fitted = fit.get("base_config") or {}
  aspect = fitted["model.width"] / fitted["model.depth"] if fitted.get("model.width") and \
      fitted.get("model.depth") else ASPECT
  cfg, n_model = model_shape(cfg, n_opt, key, aspect)
  if batch_rule == "deepseek":
    cfg.batch_size = max(1, round(batch_tokens(budget) / cfg.seq_len))
  per_token, tokens, model_flops, error = _steps_for_budget(cfg, budget, n_model)
  decades, warnings = _warnings(fit, budget, n_model, n_opt)
  rule_text = BATCH_RULES[batch_rule]
  if batch_rule == "fitted" and "batch_size" not in (fit.get("base_config") or {}):
    rule_text = "the variant's batch (fit.json records no fitted batch_size)"
  flat = config_lib.flatten(config_lib.to_dict(cfg))
  config = {k: flat[k] for k in SHAPE_KEYS + CONFIG_KEYS}
  return {
      "law": fit["law"], "group": group, "budget": budget,
      "N_opt": pick("N_opt"), "D_opt": pick("D_opt"),
      "tokens_per_param": pick("tokens_per_param"), "loss": pick("loss"),
      "config": config, "config_spec": spec, "base": described,
      "base_overrides": base_overrides, "base_notes": notes,
      "batch_rule": batch_rule, "batch_rule_text": rule_text,
      "aspect": {"preferred": float(aspect), "prescribed": cfg.model.width / cfg.model.depth},
      "params_counted": key, "model_params": int(n_model),
      "model_params_vs_N_opt": float(n_model / n_opt - 1),
      "tokens": int(tokens), "model_tokens_per_param": float(tokens / n_model),
      "flops_per_token": float(per_token), "model_train_flops": float(model_flops),
      "budget_error": float(error),
      "data_range": fit.get("data_range"), "extrapolation_decades": decades,
      "quality": fit.get("quality"), "warnings": warnings,
  }


def flag_lines(p: dict) -> list:
  """The trainer's --config flags for the prescription (base overrides, then the shape)."""
  from sweeps.plan import flag_value
  lines = [f"--config={p['config_spec']}"] if p.get("config_spec") else []
  return lines + [f"--config.{k}={flag_value(v)}"
                  for k, v in {**p["base_overrides"], **p["config"]}.items()]


def format_text(p: dict) -> str:
  def line(name, entry, fmt="{:.4g}"):
    lo, hi = entry["interval"]
    band = f"  [{fmt.format(lo)}, {fmt.format(hi)}]" if np.isfinite([lo, hi]).all() else ""
    return f"{name:<18}{fmt.format(entry['value'])}{band}"
  head = f"{p['law']} fit{' (' + p['group'] + ')' if p['group'] else ''}, budget C = " \
         f"{p['budget']:.3g} FLOPs"
  lines = [f"WARNING: {w}" for w in p["warnings"]]
  lines += [head, line("N_opt", p["N_opt"]), line("D_opt (tokens)", p["D_opt"]),
            line("tokens/param", p["tokens_per_param"]), line("predicted loss", p["loss"]), ""]
  if p["extrapolation_decades"] is not None:
    lines.append(f"extrapolation: {p['extrapolation_decades']:+.2f} decades from the largest "
                 f"fitted run (C={p['data_range']['C'][1]:.3g})")
  lines += [f"base: {p['base']}"] + [f"  note: {n}" for n in p["base_notes"]]
  lines.append(f"batch rule: {p['batch_rule']} = {p['batch_rule_text']}: batch "
               f"{p['config']['batch_size']} x {p['config']['seq_len']} tokens")
  lines.append(
      f"config ({p['params_counted']} params {p['model_params']:.4g}, width/depth "
      f"{p['aspect']['prescribed']:.3g} (preferred {p['aspect']['preferred']:.3g}), "
      f"{p['model_params_vs_N_opt']:+.1%} vs N_opt; {p['config']['steps']} steps = "
      f"{p['tokens']:.4g} tokens, {p['model_tokens_per_param']:.3g} tokens/param; model FLOPs "
      f"{p['model_train_flops']:.4g} = budget {p['budget_error']:+.1%}):")
  lines += [f"  {flag}" for flag in flag_lines(p)]
  return "\n".join(lines)


def main(argv):
  del argv
  logs.setup()
  if _FIT.value is None or _BUDGET.value is None:
    raise app.UsageError("--fit=DIR/fit.json and --budget=FLOPS are required",
                         exitcode=logs.EXIT_BAD_INPUT)

  def body():
    result = prescribe(load_fit(_FIT.value), _BUDGET.value, group=_GROUP.value,
                       batch_rule=_BATCH_RULE.value, variant=_VARIANT.value)
    print(json.dumps(to_strict(result), indent=1, allow_nan=False)
          if _FORMAT.value == "json" else format_text(result))
    return 0
  return logs.guard(body, bad_input=(OSError, ValueError))


if __name__ == "__main__":
  app.run(main, flags_parser=logs.parse_flags)
