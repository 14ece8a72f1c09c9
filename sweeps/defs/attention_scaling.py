"""IsoFLOP scaling of the attention kinds: dense, block_sparse, spectral, linear.

  python -m sweeps.launch --sweep=sweeps/defs/attention_scaling.py --store=DIR --dry_run

Five budgets (1e17..1e21 FLOPs) x six model sizes x four attention kinds on
pystdlib bytes at sequence length 2048; steps are derived per run from the
budget and that run's exact FLOPs per token (which differ by kind).
`:small` is a CPU-sized version of the same grid.
"""
from sweeps import define

KINDS = [{"attention.kind": k} for k in ("dense", "block_sparse", "spectral", "linear")]

SIZES = [define.model_size(w, d, h, kv_heads=h // 2, mlp_ratio=4) for w, d, h in
         [(256, 4, 4), (384, 6, 6), (512, 8, 8), (768, 12, 12), (1024, 16, 16), (1536, 20, 12)]]

BASE = {"data.corpus": "pystdlib", "seq_len": 2048, "batch_size": 64,
        "attention.block_q": 128, "attention.block_k": 128, "attention.topp": 0.9,
        "optimizer.lr": 1e-3, "optimizer.warmup_steps": 200, "log_every": 50,
        "eval_every": 500, "checkpoint_every": 1000}

SMALL_SIZES = [define.model_size(w, 2, 4, kv_heads=2) for w in (32, 64, 96)]
SMALL_BASE = {"seq_len": 128, "batch_size": 8, "attention.block_q": 32, "attention.block_k": 32,
              "attention.topp": 0.9, "wandb.mode": "disabled"}


def get_sweep(arg=None):
  if arg == "small":
    runs = define.product(define.isoflop([1e12, 1e13], SMALL_SIZES), KINDS)
    return define.Sweep(name="attn-small", config="experiments/configs/lm.py:tiny",
                        base=SMALL_BASE, runs=runs)
  if arg is not None:
    raise ValueError(f"attention_scaling.py takes no argument or 'small', got {arg!r}.")
  runs = define.product(define.isoflop([1e17, 1e18, 1e19, 1e20, 1e21], SIZES), KINDS)
  return define.Sweep(name="isoflop", config="experiments/configs/lm.py:small", base=BASE,
                      runs=runs)
