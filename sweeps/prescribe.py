"""Turn a fit into a prescription: with C FLOPs, train N params on D tokens, expect loss L.

  python -m sweeps.prescribe --fit=DIR/fit.json --budget=1e21 [--variant=small]
      [--group=dense] [--format=text|json]

The concrete model comes from the model family's own parameter count (models.flops): shapes
follow fixed rules (head_dim 64, mlp_width = mlp ratio of the base variant times width,
width close to ASPECT x depth) and the (width, depth) whose count is closest to N_opt wins.
The count matched is the one the fit used: total parameters for N = `params`, non-embedding
for N = `params_non_embedding`.
"""
import json
import math
import sys

from absl import app, flags
import numpy as np

from models import flops as flops_lib
from sweeps import allocation
from sweeps.jsonio import strict_json

HEAD_DIM = 64
ASPECT = 64  # width / depth of the preferred shape (Kaplan et al.: loss is flat near 50-100)
_FIT = flags.DEFINE_string("fit", None, "fit.json written by sweeps.fit.")
_BUDGET = flags.DEFINE_float("budget", None, "Training FLOP budget C.")
_VARIANT = flags.DEFINE_string("variant", "small", "experiments/configs/lm.py variant whose "
                               "vocab, seq_len, mlp and kv-head ratios are kept.")
_GROUP = flags.DEFINE_string("group", None, "Group of a --group_by fit to use.")
_FORMAT = flags.DEFINE_enum("format", "text", ["text", "json"], "Output format.")


def count_key(n_kind: str) -> str:
  """models.flops.count_params key matching the N the fit was made with."""
  return "non_embedding" if "non_embedding" in n_kind else "total"


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


def model_config(base, n_target: float, tokens: float, key: str, budget: float):
  """The (width, depth) shape whose parameter count is closest to n_target; the
  batch from `batch_tokens(budget)` in whole sequences; steps to reach `tokens`."""
  cfg = base.copy_and_resolve_references()
  m = cfg.model
  mlp_ratio = m.mlp_width / m.width
  kv_ratio = max(1, m.heads // m.kv_heads)
  best = None
  for depth in range(1, 257):
    nominal = ASPECT * depth / HEAD_DIM
    for heads in {max(1, math.floor(nominal * f)) for f in (0.5, 0.6, 0.7, 0.85, 1, 1.2, 1.4,
                                                             1.7, 2)}:
      heads = max(kv_ratio, heads - heads % kv_ratio)
      width = heads * HEAD_DIM
      m.width, m.depth, m.heads, m.kv_heads = width, depth, heads, heads // kv_ratio
      m.head_dim = HEAD_DIM
      m.mlp_width = int(HEAD_DIM * round(mlp_ratio * width / HEAD_DIM))
      n = flops_lib.count_params(cfg)[key]
      # Closest count first; among near ties (< 1%) the shape nearest the aspect ratio.
      score = (round(abs(math.log(n / n_target)) / 0.01), abs(math.log(width / depth / ASPECT)))
      if best is None or score < best[0]:
        best = (score, cfg.copy_and_resolve_references(), n)
  _, cfg, n = best
  cfg.batch_size = max(1, round(batch_tokens(budget) / cfg.seq_len))
  cfg.steps = max(1, math.ceil(tokens / (cfg.batch_size * cfg.seq_len)))
  return cfg, n


def prescribe(fit: dict, budget: float, base, group=None) -> dict:
  if not budget or budget <= 0:
    raise ValueError(f"--budget must be a positive FLOP count, got {budget}")
  group_by = fit.get("group_by")
  fit, group = select_group(fit, group)
  alloc = allocation.allocate(fit, budget)
  pick = lambda key: {"value": float(alloc[key][0][0]),
                      "interval": [float(alloc[key][1][0]), float(alloc[key][2][0])]}
  if group is not None and group_by == "attention.kind":
    base.attention.kind = group  # the prescription is for the attention kind that was fitted
  key = count_key(fit.get("n_kind", "params"))
  n_opt, d_opt = alloc["N_opt"][0][0], alloc["D_opt"][0][0]
  cfg, n_model = model_config(base, n_opt, d_opt, key, budget)
  tokens = cfg.steps * cfg.batch_size * cfg.seq_len
  return {
      "law": fit["law"], "group": group, "budget": budget,
      "N_opt": pick("N_opt"), "D_opt": pick("D_opt"),
      "tokens_per_param": pick("tokens_per_param"), "loss": pick("loss"),
      "config": {"model.width": cfg.model.width, "model.depth": cfg.model.depth,
                 "model.heads": cfg.model.heads, "model.kv_heads": cfg.model.kv_heads,
                 "model.head_dim": cfg.model.head_dim, "model.mlp_width": cfg.model.mlp_width,
                 "model.vocab_size": cfg.model.vocab_size, "seq_len": cfg.seq_len,
                 "batch_size": cfg.batch_size, "steps": cfg.steps,
                 "attention.kind": cfg.attention.kind},
      "params_counted": key, "model_params": int(n_model),
      "model_params_vs_N_opt": float(n_model / n_opt - 1),
      "tokens": int(tokens),
      "model_train_flops": float(flops_lib.flops_per_token(cfg) * tokens),
  }


def format_text(p: dict) -> str:
  def line(name, entry, fmt="{:.4g}"):
    lo, hi = entry["interval"]
    band = f"  [{fmt.format(lo)}, {fmt.format(hi)}]" if np.isfinite([lo, hi]).all() else ""
    return f"{name:<18}{fmt.format(entry['value'])}{band}"
  head = f"{p['law']} fit{' (' + p['group'] + ')' if p['group'] else ''}, budget C = " \
         f"{p['budget']:.3g} FLOPs"
  lines = [head, line("N_opt", p["N_opt"]), line("D_opt (tokens)", p["D_opt"]),
           line("tokens/param", p["tokens_per_param"]), line("predicted loss", p["loss"]), "",
           f"config ({p['params_counted']} params {p['model_params']:.4g}, "
           f"{p['model_params_vs_N_opt']:+.1%} vs N_opt; model FLOPs "
           f"{p['model_train_flops']:.3g}):"]
  lines += [f"  --config.{k}={v}" for k, v in p["config"].items()]
  return "\n".join(lines)


def main(argv):
  del argv
  if _FIT.value is None or _BUDGET.value is None:
    raise app.UsageError("--fit=DIR/fit.json and --budget=FLOPS are required")
  from experiments.configs import lm  # config helpers only (DESIGN: sweeps -> experiments)
  try:
    with open(_FIT.value) as f:
      fit = json.load(f)
    result = prescribe(fit, _BUDGET.value, lm.get_config(_VARIANT.value), _GROUP.value)
  except (OSError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  if _FORMAT.value == "json":
    print(json.dumps(strict_json(result), indent=1, allow_nan=False))
  else:
    print(format_text(result))


if __name__ == "__main__":
  app.run(main)
