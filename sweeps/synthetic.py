"""Synthetic scaling data with a known law, for tests, benchmarks and trying the CLIs.

The design mimics Chinchilla's IsoFLOP sweep: at each of several FLOP budgets, model sizes
log-spaced around the true compute-optimal size, D = C / 6N, loss from L(N, D) with
multiplicative log-normal noise.
"""
import json
import os
import re

import numpy as np
import pandas as pd

TRUE = {"E": 1.8, "A": 480.0, "B": 2000.0, "alpha": 0.35, "beta": 0.37}
# A toy of an attention comparison (Shen et al. 2024), one Chinchilla law per kind: linear
# attention is cheaper per token early (lower loss below ~6e19 FLOPs) but has the higher
# floor, so its compute-optimal loss crosses dense's at C ~ 5.9e19; the dense+linear hybrid
# sits 0.25 nats below dense everywhere and crosses linear at C ~ 2.6e18.
ATTENTION_LAWS = {
    "dense": TRUE,
    "linear": {"E": 2.1, "A": 200.0, "B": 700.0, "alpha": 0.33, "beta": 0.35},
    "dense+linear": {**TRUE, "E": 1.55},
}


def chinchilla_loss(n, d, p=TRUE):
  return p["E"] + p["A"] / np.asarray(n) ** p["alpha"] + p["B"] / np.asarray(d) ** p["beta"]


def isoflop_design(*, budgets=10, per_budget=24, c_range=(1e18, 1e22), n_range=(5e7, 2e10),
                   window_decades=0.8, noise=0.01, seed=0, p=TRUE) -> pd.DataFrame:
  """Columns N, D, C, loss, run_id: `budgets * per_budget` runs (240 by default)."""
  rng = np.random.default_rng(seed)
  total = p["alpha"] + p["beta"]
  g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / total)
  rows = []
  for c in np.geomspace(*c_range, budgets):
    center = np.log10(g * (c / 6) ** (p["beta"] / total))
    lo = max(center - window_decades, np.log10(n_range[0]))
    hi = min(center + window_decades, np.log10(n_range[1]))
    for n in np.logspace(lo, hi, per_budget):
      rows.append((n, c / (6 * n), c))
  n, d, c = map(np.array, zip(*rows))
  loss = chinchilla_loss(n, d, p) * np.exp(noise * rng.standard_normal(len(n)))
  return pd.DataFrame({"N": n, "D": d, "C": c, "loss": loss,
                       "run_id": [f"run{i:04d}" for i in range(len(n))]})


def write_store(store: str, frame: pd.DataFrame, *, steps: int = 8, extra_config=None,
                seed: int = 0, p=TRUE) -> None:
  """Writes one run directory per row (config.json, summary.json, metrics.jsonl).

  Each run's metrics follow L(N, D_t) (the law p) at its intermediate token counts, so the
  loss curves are consistent with the final losses (the envelope law reads them).
  """
  rng = np.random.default_rng(seed)
  for row in frame.itertuples(index=False):
    run = os.path.join(store, row.run_id)
    os.makedirs(run, exist_ok=True)
    config = {"seed": 0, "model": {"width": 64, "depth": 2}, "attention": {"kind": "dense"}}
    for key, value in (extra_config or {}).items():
      section, _, name = key.rpartition(".")
      (config.setdefault(section, {}) if section else config)[name] = value
    with open(os.path.join(run, "config.json"), "w") as f:
      json.dump(config, f)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
      for step in range(1, steps + 1):
        tokens = row.D * step / steps
        loss = float(row.loss * chinchilla_loss(row.N, tokens, p) /
                     chinchilla_loss(row.N, row.D, p))
        f.write(json.dumps({"step": step, "tokens": tokens, "flops": 6 * row.N * tokens,
                            "loss": loss, "lr": 1e-3, "tokens_per_sec": 1.0}) + "\n")
    summary = {"status": "done", "params": row.N, "params_non_embedding": 0.9 * row.N,
               "tokens": row.D, "flops": row.C, "final_loss": row.loss,
               "eval_loss": row.loss * (1 + 0.001 * rng.standard_normal()),
               "wall_seconds": 1.0}
    with open(os.path.join(run, "summary.json"), "w") as f:
      json.dump(summary, f)


def attention_config(name: str) -> dict:
  """write_store's extra_config for an attention name as store.ATTENTION_COLUMN spells it:
  "a+b" -> a per-layer attention.pattern [a, b], else attention.kind."""
  kinds = name.split("+")
  return {"attention.pattern": kinds} if len(kinds) > 1 else {"attention.kind": name}


def write_groups_store(store: str, groups=None, *, designs=None, steps: int = 4, seed: int = 0,
                       **design) -> dict:
  """A store of several groups, each an isoFLOP design from its own Chinchilla law: groups
  {attention name: law params} (default ATTENTION_LAWS). `design` are isoflop_design keywords
  for every group, `designs` {name: keywords} per group (e.g. one with too few runs). Run ids
  are prefixed by the group ("dense-plus-linear-run0007"), so groups never collide; each
  group's config names its attention (attention_config). Returns {name: its frame}."""
  groups = ATTENTION_LAWS if groups is None else groups
  frames = {}
  for i, (name, p) in enumerate(groups.items()):
    kwargs = {"seed": seed + i, **design, **(designs or {}).get(name, {})}
    frame = isoflop_design(p=p, **kwargs)
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.replace("+", "-plus-"))
    frame["run_id"] = prefix + "-" + frame["run_id"]
    write_store(store, frame, steps=steps, extra_config=attention_config(name),
                seed=seed + i, p=p)
    frames[name] = frame
  return frames
