"""Shen et al. 2024 (linear-complexity LMs): one scaling law per attention kind, one grid.

"Scaling Laws for Linear Complexity Language Models" fit one law per architecture on one
isoFLOP design and compare exponents, allocation and loss. Here: every attention kind.

  python -m sweeps.reproduce --name=attention_scaling:tiny --store=runs/attn-tiny --parallel=2
  python -m sweeps.launch --sweep=experiments/reproduce/attention_scaling.py:paper --store=S \
      --dry_run

Kinds (`KINDS`): dense, block_sparse (Sparge estimator, top-p 0.9), spectral (Prism, top-p
0.9), linear (simple-GLA decay), and a dense+linear hybrid (alternating layers). Every kind
gets the same model shapes at each budget; steps follow from each run's exact FLOPs per
token, which differ by kind (sparse kinds are charged their measured density, linear its
chunked work). The report fits Chinchilla Approach 3 (L = E + A/N^alpha + B/D^beta) and
Approach 2 (IsoFLOP parabolas) per kind and compares exponents, allocation and the loss at a
common budget (sweeps.compare), as Shen et al. compare their architectures.

Variants:
- `tiny`   CPU: pystdlib bytes, seq 128, blocks 16 (8 per row); budgets 3e10, 1e11, 3.2e11
           FLOPs x 5 shapes (depth 2 or 4, so the hybrid has both layer kinds) x 5 kinds =
           75 runs, under 25 minutes on 2 cores. Each budget's shapes span 0.9 decades around
           a prior of 100 tokens per parameter (TOKENS_PER_PARAM).
- `paper`  cluster: seq 2048, blocks 128, budgets 1e17..1e21 x 6 shapes x 5 kinds (150 runs,
           lm.py:small on pystdlib: point data.* at a real corpus there). Each budget's shapes
           span 1.2 decades around a prior of 20 tokens per parameter (8e6..1.1e8 parameters
           at 1e17, 7.4e8..1.2e10 at 1e21); the batch doubles per decade (64..1024 x 2048
           tokens), so runs take ~900..1e5 steps.
- `smoke`  2 kinds x 3 shapes at one budget, seconds per run (tests).
"""
import math

from sweeps import define, design

KINDS = [
    {"attention.kind": "dense"},
    {"attention.kind": "block_sparse", "attention.estimator": "sparge", "attention.topp": 0.9},
    {"attention.kind": "spectral", "attention.topp": 0.9},
    {"attention.kind": "linear"},
    {"attention.pattern": ("dense", "linear"), define.TAG: "dense+linear"},
]
GROUP_BY = "attention_layers"  # sweeps.store.ATTENTION_COLUMN: the kind, or "dense+linear"

TINY_CONFIG = "experiments/configs/lm.py:tiny"
TINY_BUDGETS = (3e10, 1e11, 3.2e11)
TINY_BASE = {
    "data.corpus": "pystdlib", "seq_len": 128, "batch_size": 8, "attention.block_q": 16,
    "attention.block_k": 16, "optimizer.lr": 3e-3, "optimizer.warmup_steps": 20,
    "log_every": 50, "eval_every": 1_000_000, "checkpoint_every": 1000, "eval_batches": 16,
    "wandb.mode": "disabled",
}
# The prior optimum: ~100 tokens per parameter, what a first run of this grid measured
# (optima near 8e3, 1.5e4 and 2e4 parameters at the three budgets; 50, the quickstart's
# prior at seq 64, left the smallest budget's minimum on its smallest size).
TOKENS_PER_PARAM = 100.0


def tiny_shapes():
  """Depth 2 at widths 4-96 and depth 4 from width 32 (width/depth >= 8, as the default
  ladder): even depths only, so the hybrid's dense and linear layers are equal in number;
  head dim 16 so the wider shapes have several heads; widths down to 4 (2.5e3 parameters,
  most of them the byte embedding) so the smallest budget's sizes reach below its optimum.
  (Narrow deep shapes, width 8 x depth 4, train visibly worse in a few hundred steps: an
  aspect-ratio effect a budget's parabola would take for a size effect.)"""
  return [s for s in design.shape_ladder(widths=(4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64, 80,
                                                 96), max_depth=4, min_aspect=2, head_dim=16)
          if s["model.depth"] == 2 or (s["model.depth"] == 4 and s["model.width"] >= 32)]


PAPER_CONFIG = "experiments/configs/lm.py:small"
PAPER_BUDGETS = (1e17, 1e18, 1e19, 1e20, 1e21)
# Chinchilla's prior (Hoffmann et al.: ~20 tokens per parameter), N*(1e21) ~ 2.9e9; 1.2 decades
# of sizes keep a minimum 0.35 decades smaller (100 tokens per parameter, what `tiny` measured
# on bytes) inside every budget.
PAPER_TOKENS_PER_PARAM = 20.0
PAPER_SPAN_DECADES = 1.2
PAPER_BATCH = 64  # sequences per step at the smallest budget; doubled per decade of budget


def paper_shapes():
  """Head dim 64, grouped KV (kv_heads = heads / 2), width/depth 32..128, even depths (the
  hybrid alternates layers): 5.6e5 to 2.5e10 parameters."""
  ladder = design.shape_ladder(widths=(128, 192, 256, 320, 384, 512, 640, 768, 1024, 1280,
                                       1536, 2048, 2560, 3072, 4096, 5120),
                               max_depth=64, min_aspect=32, max_aspect=128, head_dim=64,
                               mlp_ratio=4)
  return [dict(s, **{"model.kv_heads": s["model.heads"] // 2}) for s in ladder
          if s["model.depth"] % 2 == 0 and s["model.heads"] % 2 == 0]


def paper_batch(budget):
  """Batch ~ C^0.3 (DeepSeek-AI 2024 fit B_opt ~ C^0.33): 64 x 2048 tokens at 1e17, 1024 at
  1e21, so the top budget takes ~1e4-1e5 steps instead of ~1e6."""
  return round(PAPER_BATCH * 2 ** math.log10(budget / PAPER_BUDGETS[0]))


PAPER_BASE = {"data.corpus": "pystdlib", "seq_len": 2048, "batch_size": PAPER_BATCH,
              "attention.block_q": 128, "attention.block_k": 128,
              "optimizer.lr": 1e-3, "optimizer.warmup_steps": 200, "log_every": 50,
              "eval_every": 500, "checkpoint_every": 1000}

SMOKE_BASE = dict(TINY_BASE, seq_len=32, batch_size=4, eval_batches=2, log_every=5,
                  **{"attention.block_q": 8, "attention.block_k": 8,
                     "optimizer.warmup_steps": 2, "data.max_bytes": 200_000})


def get_sweep(arg=None):
  if arg == "tiny":
    count = design.param_counter(TINY_CONFIG, TINY_BASE)
    sizes = design.centered_isoflop(TINY_BUDGETS, count, tokens_per_param=TOKENS_PER_PARAM,
                                    per_budget=5, span_decades=0.9, shapes=tiny_shapes())
    return define.Sweep(name="attn-tiny", config=TINY_CONFIG, base=TINY_BASE,
                        runs=define.product(sizes, KINDS))
  if arg == "paper":
    count = design.param_counter(PAPER_CONFIG, PAPER_BASE)
    shapes = paper_shapes()
    sizes = []
    for budget in PAPER_BUDGETS:
      batch = {"batch_size": paper_batch(budget), define.TAG: ""}
      sizes += define.product(design.centered_isoflop(
          [budget], count, tokens_per_param=PAPER_TOKENS_PER_PARAM, per_budget=6,
          span_decades=PAPER_SPAN_DECADES, shapes=shapes), [batch])
    return define.Sweep(name="attn-paper", config=PAPER_CONFIG, base=PAPER_BASE,
                        runs=define.product(sizes, KINDS))
  if arg == "smoke":
    sizes = [define.model_size(w, 2, 1) for w in (8, 12, 16)]
    runs = define.product(define.isoflop([3e8], sizes), [KINDS[0], KINDS[3]])
    return define.Sweep(name="attn-smoke", config=TINY_CONFIG, base=SMOKE_BASE, runs=runs)
  raise ValueError(f"attention_scaling.py takes one of tiny, paper, smoke; got {arg!r}.")


def report(store, out, arg=None):
  """The comparison the paper makes, as markdown: one law per layout (sweeps.compare), loss
  and N_opt at the largest budget every layout reached, and where the compute-optimal loss
  curves cross up to 1000x beyond the fitted FLOPs (flagged as extrapolated)."""
  from sweeps import compare
  fits = compare.fit_groups(store, group_by=GROUP_BY, out=out)
  return compare.format_report(fits, beyond=1e3)
