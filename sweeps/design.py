"""IsoFLOP designs centred on a prior optimum, from a ladder of realizable model shapes.

An isoFLOP budget only measures the compute-optimal size if its sizes bracket the loss
minimum. Hand-picked sizes rarely do (small budgets get models that are too large), so a
design here starts from a prior: tokens = k x params (Chinchilla's k ~ 20), i.e.
N*(C) = sqrt(C / 6k) under C = 6ND, and places `per_budget` sizes log-evenly over
`span_decades` around N*, each the ladder shape whose exact parameter count (models.flops,
for the sweep's own base config) is nearest. Steps then follow from each shape's exact FLOPs
per token (define.StepsForBudget). `check` lists what a planned sweep gets wrong (runs
shorter than their warmup, far past any optimum, budgets that cannot bracket theirs).
Imports no JAX.

  count = design.param_counter("experiments/configs/lm.py:tiny", base_overrides)
  runs = design.centered_isoflop([1e11, 1e12], count, tokens_per_param=20, per_budget=5)
"""
import math

from sweeps import define


def shape_ladder(widths=(8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384,
                         512, 640, 768, 1024, 1536, 2048),
                 max_depth=24, min_aspect=8, max_aspect=64, head_dim=32, mlp_ratio=3):
  """Size override dicts for every (width, depth) with min_aspect <= width/depth <=
  max_aspect; heads = width / head_dim (one head below head_dim), kv_heads = heads."""
  shapes = []
  for width in widths:
    heads = max(1, width // head_dim)
    if width % heads:
      continue
    for depth in range(1, max_depth + 1):
      if min_aspect <= width / depth <= max_aspect:
        shapes.append(define.model_size(width, depth, heads, mlp_ratio=mlp_ratio))
  return shapes


def param_counter(config_spec: str, base: dict, key: str = "total"):
  """size dict -> parameter count (`total` or `non_embedding`) under the sweep's base config."""
  from experiments import config as config_lib
  from models import flops
  from sweeps import plan as plan_lib
  path, sep, arg = config_spec.partition(":")
  if not path.startswith("/"):
    path = f"{plan_lib.REPO}/{path}"
  plain = {k: v for k, v in base.items() if k != define.TAG}
  cfg = config_lib.override(config_lib.load(path + sep + arg), plain)

  def count(size: dict) -> int:
    sized = config_lib.override(cfg, {k: v for k, v in size.items() if k != define.TAG})
    return int(flops.count_params(sized)[key])
  return count


def prior_optimum(budget: float, tokens_per_param: float) -> float:
  """N* with D = k N and C = 6 N D."""
  return math.sqrt(budget / (6.0 * tokens_per_param))


def sizes_for_budget(budget, count, *, tokens_per_param=20.0, per_budget=5, span_decades=1.2,
                     shapes=None):
  """`per_budget` distinct ladder shapes nearest to log-even targets around N*(budget)."""
  if per_budget < 3:
    raise ValueError(f"per_budget={per_budget}: a parabola needs >= 3 sizes per budget "
                     "(use >= 4 so its vertex is bracketed with a size to spare).")
  if span_decades <= 0:
    raise ValueError(f"span_decades={span_decades} must be > 0.")
  shapes = shapes if shapes is not None else shape_ladder()
  counted = sorted(((count(s), i) for i, s in enumerate(shapes)))
  center = prior_optimum(budget, tokens_per_param)
  lo, hi = counted[0][0], counted[-1][0]
  half = span_decades / 2
  if center * 10 ** -half < lo / 1.5 or center * 10 ** half > hi * 1.5:
    raise ValueError(
        f"budget {budget:.3g}: the design wants sizes {center * 10 ** -half:.3g}.."
        f"{center * 10 ** half:.3g} params around the prior optimum {center:.3g} "
        f"(tokens_per_param={tokens_per_param}), but the shape ladder spans {lo:.3g}.."
        f"{hi:.3g}; change the budget or widen the ladder (shape_ladder(widths=...)).")
  picked, used = [], set()
  for j in range(per_budget):
    target = math.log(center) + math.log(10) * (-half + span_decades * j / (per_budget - 1))
    # Nearest unused shape in log N (ties: fewer layers, the cheaper shape to run).
    _, i = min((abs(math.log(n) - target), i) for n, i in counted if i not in used)
    used.add(i)
    picked.append(i)
  return [shapes[i] for i in sorted(picked, key=lambda i: count(shapes[i]))]


def centered_isoflop(budgets, count, *, tokens_per_param=20.0, per_budget=5, span_decades=1.2,
                     shapes=None):
  """Override dicts for an isoFLOP sweep whose sizes follow each budget's prior optimum."""
  sizes = {float(b): sizes_for_budget(float(b), count, tokens_per_param=tokens_per_param,
                                      per_budget=per_budget, span_decades=span_decades,
                                      shapes=shapes)
           for b in budgets}
  return define.isoflop(sorted(sizes), sizes)


def check(runs, *, tokens_per_param=20.0, max_tokens_per_param=1000.0):
  """Problems of a planned isoFLOP sweep (plan.plan's runs) as printable lines, [] if none:
  runs with fewer steps than their LR warmup, runs past `max_tokens_per_param` (far beyond
  any optimum: the budget is spent on a model that is too small), and budgets with >= 3
  sizes that do not bracket the prior optimum N*(C) (their parabola cannot find the
  minimum: Approach 2 drops them)."""
  problems = []
  for r in runs:
    warmup = r.cfg.optimizer.warmup_steps
    if r.cfg.steps < warmup:
      problems.append(f"{r.run_id}: {r.cfg.steps} steps, fewer than its {warmup} warmup steps")
    if r.tokens > max_tokens_per_param * r.params:
      problems.append(f"{r.run_id}: {r.tokens / r.params:.3g} tokens per parameter "
                      f"(> {max_tokens_per_param:g})")
  # Budgets as the fits group them (points.buckets).
  from sweeps import points as points_lib
  bucket = points_lib.buckets([r.flops for r in runs]) if runs else []
  for g in range(max(bucket, default=-1) + 1):
    group = sorted((r for r, b in zip(runs, bucket) if b == g), key=lambda r: r.flops)
    sizes = sorted({r.params for r in group})
    center = prior_optimum(max(r.flops for r in group), tokens_per_param)
    if len(sizes) >= 3 and not sizes[0] < center < sizes[-1]:
      problems.append(f"budget {group[0].flops:.3g}: sizes {sizes[0]:.3g}..{sizes[-1]:.3g} do "
                      f"not bracket N* = {center:.3g} ({tokens_per_param:g} tokens per "
                      "parameter); centre them with centered_isoflop")
  return problems
