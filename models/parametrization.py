"""Parametrizations: the one table of per-group init, Adam LR and forward multipliers.

The init (models/transformer.py, layers.py, attention.py, linear_attention.py), the
optimizer (experiments/optimizer.py) and the README's "Parametrizations" table all read
`RULES` / `DEPTH_RULES` here; nothing else states a rule. No JAX import: the config
checks and sweep planning read it without starting JAX.

Width: m = width / mup_base_width under muP (1 under SP). Depth: d = depth / depth_base
under CompleteP (1 under "none"). Every rule is a power of m (or d) times a base value
tuned on the proxy, so at m = d = 1 sp, mup and completep build the same model.

u-muP (Blake et al. 2024, arXiv 2407.17465) has no base model: weights are N(0, 1) and
its rules are powers of each weight's own fan-in f (SCALE_BY), of d = depth, and of the
`model.umup_*` hyperparameters (UMUP_KEYS); its unit-scaled ops (attention, SwiGLU, the
loss) divide by the RMS their output has at init (models/unit_scaling.py).
"""
import dataclasses
import math

PARAMETRIZATIONS = ("sp", "mup", "umup")
DEPTH_SCALINGS = ("none", "completep")
# What a Rule's powers are powers of: m, or (u-muP) the weight's fan-in (see fan_in).
SCALE_BY = {"sp": "m", "mup": "m", "umup": "f"}
# u-muP's named hyperparameters (Sec. 4.5 / Table 3; model.umup_<name>, default 1.0).
UMUP_KEYS = ("residual_mult", "residual_attn_ratio", "attn_softmax_mult", "ffn_act_mult",
             "loss_softmax_mult")

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
# u-muP's unit init: every weight matrix N(0, 1), its 1/sqrt(fan_in) moved into the forward.
UNIT_INIT = {"embedding": "1", "hidden": "1", "readout": "1",
             "vector": "fixed (Mamba decay bias; norms have no gain)"}


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
    # u-muP (Table 3; powers of the weight's fan-in f): init N(0, 1) everywhere; hidden
    # matmuls x f^-0.5 in the forward and Adam LR x f^-0.5; the readout x 1/f (muP's) with
    # LR x 1; the embedding LR x width^-0.5 (Sec. 4.4's embedding rule: its "fan-in" is its
    # width, as in the reference library); norm gains LR x 1; the conv (f = 2 taps at
    # every width) LR x 2^-0.5, a constant, and identity init (already unit-scaled).
    "umup": {
        "embedding": Rule(lr=-0.5),
        "hidden": Rule(lr=-0.5, forward=-0.5),
        "readout": Rule(forward=-1.0),
        "vector": Rule(),
        "conv": Rule(lr=-0.5),
    },
}
# Attention logits q.k * K^power (K = head dim): muP's 1/K keeps them O(1) once q and k
# align in training (Tensor Programs V); the kernels apply 1/sqrt(K), q carries the rest.
# u-muP: 1/K times umup_attn_softmax_mult.
ATTENTION_POWER = {"sp": -0.5, "mup": -1.0, "umup": -1.0}


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
  residual: str = "add"  # "add": x + d^branch F; "tau": u-muP's weighted sum (residual_weights)


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
    # u-muP's own depth rule (not a depth_scaling choice: umup implies it; d = depth, no
    # base): branches combined by App. G's tau weights, block-parameter LRs x d^-0.5 (as
    # the reference library's depth-muP), no 1/sqrt(2 L) in the unit init.
    "umup": DepthRule(lr=-0.5, init_depth="none", residual="tau"),
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


def is_unit(model_cfg):
  """u-muP: unit init, unit-scaled ops and gradients."""
  return model_cfg.parametrization == "umup"


def umup(model_cfg, name):
  """A u-muP hyperparameter (model.umup_<name>); 1.0 for configs without the key."""
  return float(model_cfg.get(f"umup_{name}", 1.0))


def _mult(model_cfg, fan_in):
  """What the group's powers are powers of: m, or the weight's fan-in under u-muP."""
  return fan_in if SCALE_BY[model_cfg.parametrization] == "f" else width_mult(model_cfg)


def depth_scaling(model_cfg):
  if is_unit(model_cfg):
    return "umup"  # u-muP's own depth rule
  return model_cfg.get("depth_scaling", "none")  # configs from before the key: "none"


def depth_mult(model_cfg):
  """The depth multiplier: depth / depth_base (completep), depth (umup), else 1."""
  if depth_scaling(model_cfg) == "completep":
    return model_cfg.depth / model_cfg.depth_base
  return float(model_cfg.depth) if is_unit(model_cfg) else 1.0


def check(model_cfg):
  if model_cfg.parametrization not in PARAMETRIZATIONS:
    raise ValueError(f"model.parametrization {model_cfg.parametrization!r} is not valid; "
                     f"choose from {PARAMETRIZATIONS}.")
  scaling = model_cfg.get("depth_scaling", "none")
  if scaling not in DEPTH_SCALINGS:
    raise ValueError(f"model.depth_scaling {scaling!r} is not valid; "
                     f"choose from {DEPTH_SCALINGS}.")
  if is_unit(model_cfg):
    if scaling != "none":
      raise ValueError(f"model.depth_scaling {scaling!r} does not combine with "
                       "model.parametrization 'umup' (u-muP has its own depth rule); use 'none'.")
    for name in UMUP_KEYS:
      value = model_cfg.get(f"umup_{name}", 1.0)
      if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"model.umup_{name} {value!r} is not valid; it must be a finite "
                         "number > 0.")


def rule(model_cfg, group):
  return RULES[model_cfg.parametrization][group]


def init_scale(model_cfg, group, base, fan_in=1):
  """The group's init std (or, for vector / conv, its fixed init) from its base value;
  u-muP's weights are N(0, 1) whatever the base."""
  if is_unit(model_cfg) and group in UNIT_INIT and group != "vector":
    base = 1.0
  return scaled(base, _mult(model_cfg, fan_in), rule(model_cfg, group).init)


def residual_out_std(model_cfg, std):
  """The init std of a residual branch's output projection: GPT-2's 1/sqrt(2 L)."""
  depth_rule = DEPTH_RULES[depth_scaling(model_cfg)]
  if depth_rule.init_depth == "none":
    return std
  depth = model_cfg.depth if depth_rule.init_depth == "depth" else model_cfg.depth_base
  return std / (2 * depth) ** 0.5


def forward_multiplier(model_cfg, group, fan_in=1):
  return scaled(1.0, _mult(model_cfg, fan_in), rule(model_cfg, group).forward)


def branch_multiplier(model_cfg):
  """What each residual branch's output is multiplied by before it is added."""
  return scaled(1.0, depth_mult(model_cfg), DEPTH_RULES[depth_scaling(model_cfg)].branch)


def attention_q_scale(model_cfg, head_dim):
  """q's pre-scale, so the kernels' 1/sqrt(K) makes logits q.k * K^ATTENTION_POWER
  (times umup_attn_softmax_mult under u-muP)."""
  power = ATTENTION_POWER[model_cfg.parametrization] + 0.5
  scale = head_dim ** power if power else 1.0
  return scale * umup(model_cfg, "attn_softmax_mult") if is_unit(model_cfg) else scale


def _log_interp(alpha, lower, upper):
  """exp((1 - alpha) log lower + alpha log upper): u-muP's empirical models of an op's
  output RMS, between a small- and a large-multiplier limit."""
  return math.exp((1 - alpha) * math.log(lower) + alpha * math.log(upper))


def residual_weights(model_cfg, index):
  """u-muP's (branch, skip) weights of sublayer `index` (attention 2 i, MLP 2 i + 1):
  x <- a F(x) + b x with a^2 + b^2 = 1 (unit variance), tau = a / b from App. G so each
  attention (MLP) branch adds the same variance and all of them together
  umup_residual_mult times the embedding's; umup_residual_attn_ratio: attention / MLP."""
  mult, ratio = umup(model_cfg, "residual_mult"), umup(model_cfg, "residual_attn_ratio")
  alpha_mlp = mult * (2 / (1 + ratio ** 2)) ** 0.5
  alpha_attn = ratio * alpha_mlp
  n_attn, n_mlp = (index + 1) // 2, index // 2  # branches before this one
  sublayers = 2 * model_cfg.depth
  tau = (alpha_attn if index % 2 == 0 else alpha_mlp) / (
      sublayers / 2 + n_attn * alpha_attn ** 2 + n_mlp * alpha_mlp ** 2) ** 0.5
  norm = (1 + tau ** 2) ** 0.5
  return tau / norm, 1 / norm


def lr_multiplier(model_cfg, group, in_block, fan_in=1):
  """The Adam LR multiplier of a parameter of `group` (in_block: inside a residual block)."""
  lr = scaled(1.0, _mult(model_cfg, fan_in), rule(model_cfg, group).lr)
  if in_block:
    lr = scaled(lr, depth_mult(model_cfg), DEPTH_RULES[depth_scaling(model_cfg)].lr)
  return lr


def has_eps_rule(model_cfg):
  depth_rule = DEPTH_RULES[depth_scaling(model_cfg)]
  return bool(depth_rule.eps_width or depth_rule.eps_depth)


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


def fan_in(name, shape, group):
  """The fan-in u-muP's rules read: hidden weights contract their leading width axis
  (`..._D*`: q, k, v, W_a, MLP in) or every axis but the last (`..._*D`: o, MLP out); the
  embedding's is its width (the library's convention); the conv's its taps."""
  if group == "embedding":
    return shape[-1]
  if group in ("readout", "conv"):
    return shape[0]
  if group == "vector":
    return 1
  leaf = name.replace("'", "").replace('"', "").rstrip("]").split("[")[-1].split(".")[-1]
  axes = leaf.rsplit("_", 1)[-1]
  return shape[0] if axes.startswith("D") else math.prod(shape[:-1])


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
      r, sym = RULES[p][group], SCALE_BY[p]
      init = UNIT_INIT.get(group, BASE_INIT[group]) if p == "umup" else BASE_INIT[group]
      cells += [_expr(init, sym, r.init), _expr("lr", sym, r.lr), _expr("1", sym, r.forward)]
    lines.append(f"| {group} | {role} | " + " | ".join(cells) + " |")
  attention = []
  for p in PARAMETRIZATIONS:
    logits = _expr("q·k", "K", ATTENTION_POWER[p])
    attention += ["", "", logits + (" · attn_softmax_mult" if p == "umup" else "")]
  lines.append("| attention logits | K = head dim | " + " | ".join(attention) + " |")
  scalings = DEPTH_SCALINGS + ("umup",)
  lines += ["", "| depth rule (d = depth / depth_base; umup: d = depth) | "
            + " | ".join(scalings) + " |", "| --- | " + " | ".join("---" for _ in scalings) + " |"]
  rules = [DEPTH_RULES[s] for s in scalings]
  init = {"depth": "std / sqrt(2 L)", "depth_base": "std / sqrt(2 L_base)", "none": "1 (unit)"}
  rows = {
      "residual branch": ["x + " + _expr("F(LN(x))", "d", r.branch) if r.residual == "add"
                          else "a F(LN(x)) + b x, a^2 + b^2 = 1 (App. G tau)" for r in rules],
      "LR of block params (times the width rule)": [_expr("lr", "d", r.lr) for r in rules],
      "AdamW eps of block params": [_expr(_expr("eps", "m", r.eps_width), "d", r.eps_depth)
                                    for r in rules],
      "residual-output init": [init[r.init_depth] for r in rules],
  }
  for name, cells in rows.items():
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
