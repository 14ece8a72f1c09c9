"""Tensor Programs V (Yang et al. 2021), Fig. 1: LR transfer across width under sp/mup/umup.

Learning-rate transfer across width (and depth) under sp, mup and umup.

  python -m sweeps.reproduce --name=mup_transfer:tiny --store=runs/transfer --parallel=2
  (= python -m sweeps.launch --sweep=experiments/reproduce/mup_transfer.py:tiny ... and then
     python -m sweeps.transfer --store=runs/transfer: per-width optima, transfer.png)

The experiment of microsoft/mup (Yang et al. 2021, Fig. 1) and u-muP (Blake et al. 2024,
Fig. 1): for each parametrization, an LR grid in factors of 2 at each of 4 widths; the LR
that minimises the held-out loss should stay put across widths under mup and umup and drift
(roughly as 1/width, Adam) under sp. Variants (the `:arg` of --sweep):

- `tiny`         CPU width sweep on real text (pystdlib bytes): widths 32..256 at depth 2,
                 200 steps of 16x64 tokens; mup's base width is the smallest (32), so mup and
                 sp coincide there. ~45 CPU-minutes.
- `tiny_depth`   CPU depth sweep: depths 1..8 at width 64 under mup, without and with
                 CompleteP's residual scaling (depth_base 1), and under umup (its own rule).
- `paper`        the same width sweep at LLM scale: widths 512..4096, depth 8, head dim 64,
                 seq 1024, 4000 steps (lm.py:small on pystdlib; point data.* at a corpus).
- `paper_depth`  depths 4..32 at width 1024.
- `smoke`        2 widths x 2 LRs x sp, a few seconds per run (tests).

Grids are per parametrization because their LR units differ (umup's are O(1), Blake et al.
Sec. 4.4); each spans the optima the probes found plus room on both sides, so an optimum
on a grid edge (which `sweeps.transfer` reports as not bracketed) means a widened grid.
"""
from sweeps import define


def lr_grid(lo, hi):
  """Powers of two 2^lo .. 2^hi."""
  return define.lr_grid([2.0 ** e for e in range(lo, hi + 1)])


# log2 LR ranges. sp/mup: the width-32 optimum is ~2^-7 (probe: 2^-8..2^-5); sp's drifts
# toward 2^-10 at width 256 (1/width), so the grid reaches 2^-11. umup: O(1) LRs, ~2^1
# at width 32 (probe: 2^-3, 2^-1, 2^1, 2^3).
GRIDS = {"sp": (-11, -4), "mup": (-11, -4), "umup": (-3, 4)}
PAPER_GRIDS = {"sp": (-14, -6), "mup": (-12, -6), "umup": (-4, 3)}


def _parametrization(name, base_width):
  return {"model.parametrization": name, "model.mup_base_width": base_width, define.TAG: name}


def _shape(width, depth, heads):
  return dict(define.model_size(width, depth, heads, mlp_ratio=4),
              **{define.TAG: f"w{width}-d{depth}"})


def width_runs(widths, depth, heads_of, grids, base_width):
  """Every (parametrization, width, LR) of the width sweep."""
  runs = []
  for name, (lo, hi) in grids.items():
    shapes = [_shape(w, depth, heads_of(w)) for w in widths]
    runs += define.product([_parametrization(name, base_width)], shapes, lr_grid(lo, hi))
  return runs


def depth_runs(width, depths, heads, grids, depth_base):
  """mup without and with CompleteP, and umup, at each depth and LR."""
  shapes = [_shape(width, d, heads) for d in depths]
  arms = [(dict(_parametrization("mup", width), **{"model.depth_scaling": "none"}), "mup"),
          (dict(_parametrization("mup", width),
                **{"model.depth_scaling": "completep", "model.depth_base": depth_base,
                   define.TAG: "mup+completep"}), "mup"),
          (_parametrization("umup", width), "umup")]
  runs = []
  for arm, grid in arms:
    runs += define.product([arm], shapes, lr_grid(*grids[grid]))
  return runs


CPU_BASE = {
    "data.corpus": "pystdlib", "batch_size": 16, "seq_len": 64, "steps": 200,
    "optimizer.warmup_steps": 20, "optimizer.schedule": "cosine", "log_every": 50,
    "eval_every": 1_000_000, "checkpoint_every": 1000, "eval_batches": 16,
    "wandb.mode": "disabled",
}
PAPER_BASE = {
    "data.corpus": "pystdlib", "batch_size": 256, "seq_len": 1024, "steps": 4000,
    "optimizer.warmup_steps": 400, "optimizer.schedule": "cosine", "log_every": 50,
    "eval_every": 1000, "checkpoint_every": 500, "eval_batches": 32,
}
SMOKE_BASE = dict(CPU_BASE, steps=6, batch_size=4, seq_len=16, log_every=3, eval_batches=1,
                  **{"optimizer.warmup_steps": 2, "data.max_bytes": 200_000})


def get_sweep(arg=None):
  if arg == "tiny":
    runs = width_runs((32, 64, 128, 256), 2, lambda w: 4, GRIDS, base_width=32)
    return define.Sweep("transfer", "experiments/configs/lm.py:tiny", runs, CPU_BASE)
  if arg == "tiny_depth":
    runs = depth_runs(64, (1, 2, 4, 8), 4, {"mup": (-10, -5), "umup": (-2, 3)}, depth_base=1)
    return define.Sweep("transfer-depth", "experiments/configs/lm.py:tiny", runs, CPU_BASE)
  if arg == "paper":
    runs = width_runs((512, 1024, 2048, 4096), 8, lambda w: w // 64, PAPER_GRIDS,
                      base_width=512)
    return define.Sweep("transfer-cluster", "experiments/configs/lm.py:small", runs,
                        PAPER_BASE)
  if arg == "paper_depth":
    runs = depth_runs(1024, (4, 8, 16, 32), 16, PAPER_GRIDS, depth_base=4)
    return define.Sweep("transfer-cluster-depth", "experiments/configs/lm.py:small", runs,
                        PAPER_BASE)
  if arg == "smoke":
    runs = width_runs((16, 32), 1, lambda w: 2, {"sp": (-8, -7)}, base_width=16)
    return define.Sweep("transfer-smoke", "experiments/configs/lm.py:tiny", runs, SMOKE_BASE)
  raise ValueError(f"mup_transfer.py takes one of tiny, tiny_depth, paper, paper_depth, "
                   f"smoke; got {arg!r}.")


def report(store, out, arg=None):
  """Per-width (or per-depth) LR optima and each parametrization's verdict (sweeps.transfer;
  transfer.json and transfer.png go to out)."""
  from sweeps import transfer
  result = transfer.run(store, out=out)
  return "```\n" + transfer.format_table(result, result["axis"]) + "\n```"
