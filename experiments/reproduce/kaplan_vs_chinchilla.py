"""Porian et al. 2024: one isoFLOP grid fitted with Kaplan's and the standard parameter count.

"Resolving Discrepancies in Compute-Optimal Scaling of Language Models": the same runs,
fitted twice, move the allocation exponent.

  python -m sweeps.reproduce --name=kaplan_vs_chinchilla:tiny --store=runs/quickstart --parallel=2

Kaplan et al. 2020 found N_opt ∝ C^0.73; Hoffmann et al. 2022 found C^0.50. Porian et al.'s
first step: Kaplan counted non-embedding parameters and left the last layer's FLOPs out of C
(C = 6 N_non-embedding D). Refitting one grid with that accounting raises the exponent (to
0.83-0.88 in their small-scale grids); counting every parameter and the real FLOPs lowers it
toward 0.5 (the rest of their gap closes with warmup and per-scale tuning, not reproduced
here). The effect is largest where embeddings are a large share of the parameters — tiny
models, which is what a CPU grid has.

The report fits Approach 2 (IsoFLOP) on the same runs under both parameter counts, with the
same budgets (each run's executed FLOPs, so the isoFLOP groups stay those that were run):
- standard:  N = `params` (every parameter, embeddings and head included);
- Kaplan:    N = `params_non_embedding`.
At a fixed budget the embedding is a fixed cost that matters less as models grow, so the
non-embedding optimum grows faster with C than the total one: the exponent rises.

Variants: `tiny` is the quickstart's grid (the same runs as chinchilla_isoflop:tiny, so one
store serves both), `paper` is Porian et al.'s scale (budgets 1.25e16..1.6e18 in factors of
2, ~5M..900M parameters), `smoke` the quickstart's smoke variant.
"""
from sweeps import define, design
from sweeps.defs import quickstart

ACCOUNTINGS = {  # name -> sweeps.fit --columns
    "standard (all parameters)": "N:params",
    "Kaplan (non-embedding parameters)": "N:params_non_embedding",
}
PUBLISHED = {"Kaplan et al. 2020": 0.73, "Hoffmann et al. 2022 (Approach 2)": 0.49,
             "Porian et al. 2024, Kaplan's accounting": "0.83-0.88",
             "Porian et al. 2024, after all three fixes": 0.50}

PAPER_BUDGETS = tuple(1.25e16 * 2 ** k for k in range(8))  # 1.25e16 .. 1.6e18
PAPER_CONFIG = "experiments/configs/lm.py:small"
PAPER_BASE = {"seq_len": 2048, "batch_size": 64, "model.vocab_size": 50304,
              "optimizer.lr": 1e-3, "optimizer.warmup_steps": 100, "log_every": 100,
              "eval_every": 1000, "checkpoint_every": 1000, "eval_batches": 32}


def get_sweep(arg=None):
  if arg in ("tiny", "smoke"):  # the quickstart's grid (or its smoke), as chinchilla_isoflop
    return quickstart.get_sweep({"tiny": None, "smoke": "smoke"}[arg])
  if arg == "paper":
    count = design.param_counter(PAPER_CONFIG, PAPER_BASE)
    # From 3M parameters: with a 50k vocabulary the embedding is most of a small model.
    shapes = design.shape_ladder(widths=(32, 48, 64, 96, 128, 192, 256, 320, 384, 512, 640,
                                         768, 1024, 1280, 1536, 2048), max_depth=32, min_aspect=16,
                                 max_aspect=96, head_dim=64, mlp_ratio=4)
    runs = design.centered_isoflop(PAPER_BUDGETS, count, tokens_per_param=20.0, per_budget=6,
                                   span_decades=1.2, shapes=shapes)
    return define.Sweep(name="porian-paper", config=PAPER_CONFIG, base=PAPER_BASE, runs=runs)
  raise ValueError(f"kaplan_vs_chinchilla.py takes one of tiny, paper, smoke; got {arg!r}.")


def report(store, out, arg=None):
  """The allocation exponent a under each accounting, with intervals and quality."""
  import os

  from sweeps import fit
  rows = ["| accounting | a (N_opt ∝ C^a) | b | N range | quality | diagnostics (warn and "
          "worse) |", "| --- | --- | --- | --- | --- | --- |"]
  for i, (name, columns) in enumerate(ACCOUNTINGS.items()):
    try:
      result = fit.run(store=store, law="isoflop", columns=columns,
                       out=os.path.join(out, f"fit-{'standard' if i == 0 else 'kaplan'}"))
    except ValueError as err:  # too few bracketed budgets: say so, go on
      rows.append(f"| {name} | - | - | - | not fitted: {err} | - |")
      continue
    p, iv = result["params"], result.get("intervals", {})
    n_lo, n_hi = result["data_range"]["N"]
    codes = [d["code"] for d in result["diagnostics"] if d["level"] != "info"]
    rows.append(f"| {name} | {fit.cell(p['a'], iv.get('a'))} | {fit.cell(p['b'], iv.get('b'))}"
                f" | {n_lo:.3g}..{n_hi:.3g} | {result['quality']} | {', '.join(codes) or '-'} |")
  rows += ["", "Published N_opt exponents: " + "; ".join(f"{k} {v}" for k, v in PUBLISHED.items())]
  return "\n".join(rows)
