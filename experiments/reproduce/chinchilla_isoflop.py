"""Hoffmann et al. 2022 (Chinchilla), Approaches 2 and 3 at small scale.

  python -m sweeps.reproduce --name=chinchilla_isoflop:tiny --store=runs/quickstart --parallel=2

Published (9 budgets 6e18..3e21 FLOPs, 44M..16B parameters, MassiveText): Approach 2
(IsoFLOP parabolas) a = 0.49, b = 0.51; Approach 3 (L = E + A/N^alpha + B/D^beta) a = 0.46,
b = 0.54 with E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28 (sweeps.laws.chinchilla.PUBLISHED
also holds Besiroglu et al.'s refit of the same data).

Variants:
- `tiny`   the quickstart's isoFLOP grid (sweeps/defs/quickstart.py: 4 budgets 3e10..1e12 x 5
           sizes on pystdlib bytes, 20 runs): the same runs and ids, so a quickstart store is
           this reproduction's store.
- `paper`  Chinchilla's 9 budgets, 5 sizes each centred on 20 tokens per parameter, seq 2048
           (lm.py:small; point data.* and data.tokenizer at a real corpus on the cluster).
- `smoke`  the quickstart's 2-run smoke variant (tests).
"""
from sweeps import define, design
from sweeps.defs import quickstart

PAPER_BUDGETS = (6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21)
PAPER_CONFIG = "experiments/configs/lm.py:small"
PAPER_BASE = {"seq_len": 2048, "batch_size": 256, "model.vocab_size": 32768,
              "optimizer.lr": 2e-4, "optimizer.warmup_steps": 1000, "log_every": 100,
              "eval_every": 2000, "checkpoint_every": 1000, "eval_batches": 64}
# (Approach, a, b): Hoffmann et al. 2022, Table 2 (the N_opt and D_opt exponents).
PUBLISHED_ALLOCATION = {"Approach 2": (0.49, 0.51), "Approach 3": (0.46, 0.54)}


def paper_shapes():
  """LLM shapes from ~40M to ~40B parameters: head dim 128, width/depth 32..128."""
  return design.shape_ladder(widths=(512, 640, 768, 1024, 1280, 1536, 2048, 2560, 3072, 4096,
                                     5120, 6144, 8192),
                             max_depth=80, min_aspect=32, max_aspect=128, head_dim=128,
                             mlp_ratio=4)


def get_sweep(arg=None):
  if arg == "tiny":
    return quickstart.get_sweep()
  if arg == "smoke":
    return quickstart.get_sweep("smoke")
  if arg == "paper":
    count = design.param_counter(PAPER_CONFIG, PAPER_BASE)
    runs = design.centered_isoflop(PAPER_BUDGETS, count, tokens_per_param=20.0, per_budget=5,
                                   span_decades=1.0, shapes=paper_shapes())
    return define.Sweep(name="chinchilla-paper", config=PAPER_CONFIG, base=PAPER_BASE,
                        runs=runs)
  raise ValueError(f"chinchilla_isoflop.py takes one of tiny, paper, smoke; got {arg!r}.")


def report(store, out, arg=None):
  """Approach 2 and Approach 3 on the store, beside the published exponents."""
  import os

  from sweeps import fit
  rows = ["| approach | a (N_opt ∝ C^a) | b (D_opt ∝ C^b) | published a / b | quality | "
          "diagnostics (warn and worse) |", "| --- | --- | --- | --- | --- | --- |"]
  details = []
  for name, law in (("Approach 2", "isoflop"), ("Approach 3", "chinchilla")):
    a_pub, b_pub = PUBLISHED_ALLOCATION[name]
    try:
      result = fit.run(store=store, law=law, out=os.path.join(out, f"fit-{law}"))
    except ValueError as err:  # too few runs or budgets for this approach: say so, go on
      rows.append(f"| {name} ({law}) | - | - | {a_pub} / {b_pub} | not fitted: {err} | - |")
      continue
    values = {**result["params"], **result.get("derived", {})}
    iv = result.get("intervals", {})
    codes = [d["code"] for d in result["diagnostics"] if d["level"] != "info"]
    rows.append(f"| {name} ({law}) | {fit.cell(values['a'], iv.get('a'))} | "
                f"{fit.cell(values['b'], iv.get('b'))} | {a_pub} / {b_pub} | "
                f"{result['quality']} | {', '.join(codes) or '-'} |")
    details += [f"### {name} (`--law={law}`)", "", "```", fit.format_diagnostics(result),
                fit.format_table(result), "```", ""]
  return "\n".join(rows + [""] + details)
