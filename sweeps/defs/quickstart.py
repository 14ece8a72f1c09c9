"""Quickstart: an isoFLOP sweep on real text (pystdlib) that brackets every budget's optimum.

  python -m sweeps.launch --sweep=sweeps/defs/quickstart.py --store=runs/quickstart --parallel=2

Four FLOP budgets (3e10 .. 1e12: 1.5 decades), five model sizes each (20 runs, a few minutes
on two CPU cores). Sizes come from sweeps.design.centered_isoflop: log-even over one decade
around a prior optimum of TOKENS_PER_PARAM tokens per parameter. The prior is measured, not
Chinchilla's 20: a 20-run probe of this setup (byte vocabulary, seq 64, batch 16, lr 3e-3)
put the eval-loss minimum at ~2e4 params at 1e11 FLOPs, ~3e4 at 3.2e11 and ~6e4 at 1e12,
i.e. 40-60 tokens per parameter (tiny byte-level models are embedding-heavy). The fit reads
the held-out eval loss (16 batches = 16k tokens, the same windows for every run).
`quickstart.py:smoke` is a 2-run, few-second variant for tests.
"""
from sweeps import define, design

CONFIG = "experiments/configs/lm.py:tiny"
BUDGETS = (3e10, 1e11, 3.2e11, 1e12)
TOKENS_PER_PARAM = 40.0

BASE = {
    "data.corpus": "pystdlib", "batch_size": 16, "seq_len": 64, "log_every": 50,
    "eval_every": 1_000_000, "checkpoint_every": 1000, "eval_batches": 16,
    "optimizer.warmup_steps": 20, "optimizer.lr": 3e-3, "wandb.mode": "disabled",
}

SMOKE = {
    "batch_size": 8, "seq_len": 32, "log_every": 5, "eval_every": 10, "checkpoint_every": 10,
    "eval_batches": 2, "optimizer.warmup_steps": 5, "data.synthetic_windows": 512,
    "wandb.mode": "disabled", "model.heads": 2, "model.kv_heads": 1, "model.mlp_width": 64,
}


def get_sweep(arg=None):
  if arg == "smoke":
    runs = [{"model.width": 16, "model.depth": 1, "steps": 20},
            {"model.width": 32, "model.depth": 2, "steps": 30}]
    return define.Sweep(name="quickstart-smoke", config=CONFIG, base=SMOKE, runs=runs)
  if arg is not None:
    raise ValueError(f"quickstart.py takes no argument or 'smoke', got {arg!r}.")
  runs = design.centered_isoflop(BUDGETS, design.param_counter(CONFIG, BASE),
                                 tokens_per_param=TOKENS_PER_PARAM, per_budget=5,
                                 span_decades=1.0)
  return define.Sweep(name="quickstart", config=CONFIG, base=BASE, runs=runs)
