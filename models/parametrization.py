"""Parametrizations: the one table of per-group init, Adam LR and forward multipliers.

The init (models/transformer.py, layers.py, attention.py, linear_attention.py), the
optimizer (experiments/optimizer.py) and the README's "Parametrizations" table all read
`RULES` / `DEPTH_RULES` here; nothing else states a rule. No JAX import: the config
checks and sweep planning read it without starting JAX.

Width: m = width / mup_base_width under muP (1 under SP). Depth: d = depth / depth_base
under CompleteP (1 under "none"). Every rule is a power of m (or d) times a base value
tuned on the proxy, so at m = d = 1 all parametrizations build the same model.
"""
import dataclasses

PARAMETRIZATIONS = ("sp", "mup")
DEPTH_SCALINGS = ("none", "completep")

# A group is named by how its dims relate to the width: that role fixes its rules.
GROUPS = {
    "embedding": "vocab x width: fan-in constant (one-hot tokens), fan-out grows",
    "hidden": "width x width: fan-in and fan-out grow (q, k, v, o, MLP, decay W_a)",
    "readout": "width x vocab: fan-in grows, fan-out constant (untied unembedding)",
    "vector": "one dim, fan-in 1 (norm scales, decay bias)",
    "conv": "depthwise conv (linear mixer): fan-in = its 2 taps at any width",
}
# What each group's init std is a power of m times.
BASE_INIT = {
    "embedding": "init_std",
    "hidden": "init_std",
    "readout": "init_std",
    "vector": "fixed (ones; Mamba decay bias)",
    "conv": "identity (taps 1, 0)",
}


@dataclasses.dataclass(frozen=True)
class Rule:
  """Powers of m: init std ∝ m^init, Adam LR ∝ m^lr, the group's output ∝ m^forward."""
  init: float = 0.0
  lr: float = 0.0
  forward: float = 0.0


RULES = {
    "sp": {group: Rule() for group in GROUPS},
    # muP for Adam (Tensor Programs V, Table 3; microsoft/mup MuAdam + MuReadout): a weight
    # whose fan-in grows with width gets init var ∝ 1/fan_in and LR ∝ 1/fan_in; the readout
    # takes its 1/fan_in as a forward multiplier on the logits instead of in its LR.
    "mup": {
        "embedding": Rule(),
        "hidden": Rule(init=-0.5, lr=-1.0),
        "readout": Rule(init=-0.5, forward=-1.0),
        "vector": Rule(),
        # The depthwise conv's fan-in is its 2 taps at every width, so (like a vector) an
        # O(lr) Adam step already moves its output O(1): an LR / m (hidden's rule, which it
        # got before because it is 3-D) would freeze it as the model widens.
        "conv": Rule(),
    },
}
# Attention logits q.k * K^power (K = head dim): muP's 1/K keeps them O(1) once q and k
# align in training (Tensor Programs V); the kernels apply 1/sqrt(K), q carries the rest.
ATTENTION_POWER = {"sp": -0.5, "mup": -1.0}


@dataclasses.dataclass(frozen=True)
class DepthRule:
  """Powers of d: each residual branch's output ∝ d^branch; the Adam LR of the residual
  blocks' parameters ∝ d^lr; their AdamW eps ∝ m^eps_width d^eps_depth. init_depth: the
  depth whose 1/sqrt(2 L) scales the residual-output init."""
  branch: float = 0.0
  lr: float = 0.0
  eps_width: float = 0.0
  eps_depth: float = 0.0
  init_depth: str = "depth"


_ALPHA = 1.0  # CompleteP's residual exponent (depth-muP would be 0.5)
DEPTH_RULES = {
    "none": DepthRule(),
    # CompleteP (Dey et al. 2025, Table 1, column alpha = 1, as the EleutherAI/nanoGPT-mup
    # completep branch implements it): x + d^-alpha F(LN(x)); hidden-weight, hidden-bias
    # and pre-LN LRs x d^(alpha - 1) (= 1 at alpha = 1); AdamW eps of the residual blocks
    # x m^-1 d^-alpha; init variances carry no depth term, so the 1/sqrt(2 L) of the
    # residual outputs is frozen at the base depth (the proxy's init at every depth).
    # Not implemented: Table 1's hidden weight decay x m (this repo decays lr * wd).
    "completep": DepthRule(branch=-_ALPHA, lr=_ALPHA - 1.0, eps_width=-1.0,
                           eps_depth=-_ALPHA, init_depth="depth_base"),
}


def scaled(value, mult, power):
  """value * mult^power, as a division for negative powers (so at m = 1, and for the rules
  the code had before this table, the result is bitwise what it was)."""
  if power == 0:
    return value
  return value / mult ** -power if power < 0 else value * mult ** power


def width_mult(model_cfg):
  """muP's width multiplier relative to the base (proxy) width; 1 under SP."""
  if model_cfg.parametrization == "mup":
    return model_cfg.width / model_cfg.mup_base_width
  return 1.0


def depth_scaling(model_cfg):
  return model_cfg.get("depth_scaling", "none")  # configs from before the key: "none"


def depth_mult(model_cfg):
  """CompleteP's depth multiplier relative to the base (proxy) depth; 1 under "none"."""
  if depth_scaling(model_cfg) == "completep":
    return model_cfg.depth / model_cfg.depth_base
  return 1.0


def check(model_cfg):
  if model_cfg.parametrization not in PARAMETRIZATIONS:
    raise ValueError(f"model.parametrization {model_cfg.parametrization!r} is not valid; "
                     f"choose from {PARAMETRIZATIONS}.")
  if depth_scaling(model_cfg) not in DEPTH_RULES:
    raise ValueError(f"model.depth_scaling {depth_scaling(model_cfg)!r} is not valid; "
                     f"choose from {DEPTH_SCALINGS}.")


def rule(model_cfg, group):
  return RULES[model_cfg.parametrization][group]


def init_scale(model_cfg, group, base):
  """The group's init std (or, for vector / conv, its fixed init) from its base value."""
  return scaled(base, width_mult(model_cfg), rule(model_cfg, group).init)


def residual_out_std(model_cfg, std):
  """The init std of a residual branch's output projection: GPT-2's 1/sqrt(2 L)."""
  depth_rule = DEPTH_RULES[depth_scaling(model_cfg)]
  depth = model_cfg.depth if depth_rule.init_depth == "depth" else model_cfg.depth_base
  return std / (2 * depth) ** 0.5


def forward_multiplier(model_cfg, group):
  return scaled(1.0, width_mult(model_cfg), rule(model_cfg, group).forward)


def branch_multiplier(model_cfg):
  """What each residual branch's output is multiplied by before it is added."""
  return scaled(1.0, depth_mult(model_cfg), DEPTH_RULES[depth_scaling(model_cfg)].branch)


def attention_q_scale(model_cfg, head_dim):
  """q's pre-scale, so the kernels' 1/sqrt(K) makes logits q.k * K^ATTENTION_POWER."""
  power = ATTENTION_POWER[model_cfg.parametrization] + 0.5
  return head_dim ** power if power else 1.0


def lr_multiplier(model_cfg, group, in_block):
  """The Adam LR multiplier of a parameter of `group` (in_block: inside a residual block)."""
  lr = scaled(1.0, width_mult(model_cfg), rule(model_cfg, group).lr)
  if in_block:
    lr = scaled(lr, depth_mult(model_cfg), DEPTH_RULES[depth_scaling(model_cfg)].lr)
  return lr


def eps_multiplier(model_cfg, in_block):
  """The AdamW eps multiplier of a parameter (CompleteP scales the residual blocks')."""
  if not in_block:
    return 1.0
  depth_rule = DEPTH_RULES[depth_scaling(model_cfg)]
  eps = scaled(1.0, width_mult(model_cfg), depth_rule.eps_width)
  return scaled(eps, depth_mult(model_cfg), depth_rule.eps_depth)


def classify(name, shape):
  """The group of a parameter from its path (e.g. jax.tree_util.keystr's
  "['blocks'][0]['attn']['conv_q_2HK']") and shape."""
  leaf = name.replace("'", "").replace('"', "").rstrip("]").split("[")[-1].split(".")[-1]
  if leaf == "embed_VD":
    return "embedding"
  if leaf == "unembed_DV":
    return "readout"
  if leaf.startswith("conv_"):
    return "conv"
  return "vector" if len(shape) < 2 else "hidden"


def in_block(name):
  """Whether a parameter path lies inside a residual block (CompleteP's depth rules)."""
  return "blocks" in name


def _expr(lead, sym, power):
  """'lead', 'lead / m', 'lead / m^0.5' or 'lead · m^2'."""
  if power == 0:
    return lead
  if power < 0:
    return f"{lead} / {sym}" if power == -1 else f"{lead} / {sym}^{-power:g}"
  return f"{lead} · {sym}" if power == 1 else f"{lead} · {sym}^{power:g}"


def markdown_table():
  """The README's tables, rendered from RULES, ATTENTION_POWER and DEPTH_RULES."""
  cols = [f"{p} {what}" for p in PARAMETRIZATIONS for what in ("init std", "LR", "forward")]
  lines = ["| group | fan-in / fan-out | " + " | ".join(cols) + " |",
           "| --- | --- | " + " | ".join("---" for _ in cols) + " |"]
  for group, role in GROUPS.items():
    cells = []
    for p in PARAMETRIZATIONS:
      r = RULES[p][group]
      cells += [_expr(BASE_INIT[group], "m", r.init), _expr("lr", "m", r.lr),
                _expr("1", "m", r.forward)]
    lines.append(f"| {group} | {role} | " + " | ".join(cells) + " |")
  attention = []
  for p in PARAMETRIZATIONS:
    attention += ["", "", _expr("q·k", "K", ATTENTION_POWER[p])]
  lines.append("| attention logits | K = head dim | " + " | ".join(attention) + " |")
  lines += ["", "| depth rule (d = depth / depth_base) | " + " | ".join(DEPTH_SCALINGS) + " |",
            "| --- | " + " | ".join("---" for _ in DEPTH_SCALINGS) + " |"]
  rules = [DEPTH_RULES[s] for s in DEPTH_SCALINGS]
  rows = {
      "residual branch": ["x + " + _expr("F(LN(x))", "d", r.branch) for r in rules],
      "LR of block params (times the width rule)": [_expr("lr", "d", r.lr) for r in rules],
      "AdamW eps of block params": [_expr(_expr("eps", "m", r.eps_width), "d", r.eps_depth)
                                    for r in rules],
      "residual-output init": [f"std / sqrt(2 {'L' if r.init_depth == 'depth' else 'L_base'})"
                               for r in rules],
  }
  for name, cells in rows.items():
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
