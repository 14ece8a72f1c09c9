"""Quickstart: a small isoFLOP sweep on the synthetic corpus, a few minutes on a laptop.

  python -m sweeps.launch --sweep=sweeps/defs/quickstart.py --store=runs/quickstart --parallel=2

Three FLOP budgets (3e10, 2e11, 1e12: 1.5 decades), two or three model sizes
each (7 runs). `quickstart.py:smoke` is a 2-run, few-second variant for tests.
"""
from sweeps import define

CONFIG = "experiments/configs/lm.py:tiny"

BASE = {
    "batch_size": 16, "seq_len": 64, "log_every": 10, "eval_every": 100,
    "checkpoint_every": 250, "eval_batches": 2, "optimizer.warmup_steps": 10,
    "data.synthetic_windows": 4096, "wandb.mode": "disabled",
}

# Larger budgets train larger models, as in any isoFLOP grid; 1.5 decades of FLOPs.
SIZE = {w: define.model_size(w, d, h) for w, d, h in
        [(16, 1, 2), (32, 2, 2), (48, 2, 4), (64, 2, 4), (96, 2, 4)]}
SIZES_PER_BUDGET = {3e10: [SIZE[16], SIZE[32], SIZE[48]],
                    2e11: [SIZE[32], SIZE[64]],
                    1e12: [SIZE[64], SIZE[96]]}

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
  runs = define.isoflop(sorted(SIZES_PER_BUDGET), SIZES_PER_BUDGET)
  return define.Sweep(name="quickstart", config=CONFIG, base=BASE, runs=runs)
