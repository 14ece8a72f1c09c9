"""Recall vs density of the block-mask estimators on a trained checkpoint; prints a table.

  python benchmarks/sparse_recall.py [--run=runs/small-dense] [--lengths=128,256,512]
      [--batches=2] [--batch_size=8] [--block=64] [--per_layer] [--json=rows.json]

On held-out windows of the run's corpus, at each length, every softmax attention
layer's q/k/v are captured once; each estimator setting (sparge: top-k and top-p
sweeps; prism: top-p) is scored from per-tile statistics (experiments.block_stats):
  density  kept fraction of causally reachable blocks (kernels.sparse.block_mask's)
  recall   dense softmax probability mass in the kept blocks (mean over rows, heads)
  error    sum|o - o_dense| / sum|o_dense| of the layer's attention output
each averaged over layers. The baseline is the static causal window + 1 sink block
mask (estimator "static", every window size), interpolated to each row's density:
`static recall` / `static error` say what a fixed local pattern gets at that density.
A benchmark, not a test: nothing is asserted.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import block_stats, logs, probe  # noqa: E402
from kernels import sparse  # noqa: E402

SETTINGS = {
    "sparge": ({"topk": 0.1}, {"topk": 0.2}, {"topk": 0.35}, {"topk": 0.5},
               {"topp": 0.8}, {"topp": 0.9}, {"topp": 0.95}, {"topp": 0.99}),
    "prism": ({"topp": 0.8}, {"topp": 0.9}, {"topp": 0.95}, {"topp": 0.99}),
}


def _label(setting):
  return " ".join(f"{n}={v:g}" for n, v in setting.items())


@jax.jit
def _scores(stats, masks_UBHQK):
  """(recall [U], l1 [U]) of each mask (lax.map: one mask's memory at a time)."""
  def one(mask):
    return block_stats.recall(stats, mask), block_stats.errors(stats, mask)["l1"]
  return jax.lax.map(one, masks_UBHQK)


def _static_masks(q, k, seg, block):
  """(masks [W], densities [W]) of causal window w = 1..nK blocks + 1 sink block."""
  masks, densities = [], []
  for w in range(1, q.shape[1] // block + 1):
    bm = sparse.block_mask(q, k, estimator="static", block_q=block, block_k=block,
                           segment_ids_BL=seg, window_blocks=w, sink_blocks=1)
    masks.append(bm.mask_BHQK)
    densities.append(bm.density)
  return jnp.stack(masks), jnp.stack(densities)


def _layer_rows(layer, block):
  """{(estimator, label): (density, recall, l1, dense l1)} for one layer and batch."""
  q, k, v, seg = layer
  stats = block_stats.tile_stats(q, k, v, seg, block_q=block, block_k=block)
  out = {}
  for estimator, settings in SETTINGS.items():
    keys = tuple(tuple(s.items()) for s in settings)
    masks, density = block_stats.estimate_masks(q, k, seg, estimator=estimator,
                                                settings=keys, block_q=block, block_k=block)
    recall, l1 = _scores(stats, masks)
    for j, s in enumerate(settings):
      out[(estimator, _label(s))] = (density[j], recall[j], l1[j], stats.l1_dense)
  masks, density = _static_masks(q, k, seg, block)
  recall, l1 = _scores(stats, masks)
  for w in range(masks.shape[0]):
    out[("static", f"window={w + 1} sink=1")] = (density[w], recall[w], l1[w], stats.l1_dense)
  return out


def measure(run, windows, block):
  """{(estimator, label): {"density", "recall", "error", "per_layer"}} averaged over
  layers (error: per layer over all batches, then the mean)."""
  sums = {}
  for window in windows:
    for i, layer in enumerate(probe.capture(run, window)):
      if layer is None:
        continue
      for key, values in jax.device_get(_layer_rows(layer, block)).items():
        sums.setdefault(key, {}).setdefault(i, []).append([float(x) for x in values])
  out = {}
  for key, layers in sums.items():
    per_layer = []
    for i, rows in sorted(layers.items()):
      r = np.array(rows)
      per_layer.append({"layer": i, "density": r[:, 0].mean(), "recall": r[:, 1].mean(),
                        "error": r[:, 2].sum() / r[:, 3].sum()})
    out[key] = {name: float(np.mean([p[name] for p in per_layer]))
                for name in ("density", "recall", "error")}
    out[key]["per_layer"] = per_layer
  return out


def rows_for(seq_len, results):
  """Table rows; estimator rows carry the static baseline at their density."""
  static = sorted((r["density"], r["recall"], r["error"])
                  for (e, _), r in results.items() if e == "static")
  d, rec, err = (np.array(x) for x in zip(*static))
  rows = []
  for (estimator, label), r in results.items():
    row = {"seq_len": seq_len, "estimator": estimator, "setting": label,
           **{n: r[n] for n in ("density", "recall", "error")}, "per_layer": r["per_layer"]}
    if estimator != "static":
      row["static_recall"] = float(np.interp(r["density"], d, rec))
      row["static_error"] = float(np.interp(r["density"], d, err))
    rows.append(row)
  rank = {e: n for n, e in enumerate((*SETTINGS, "static"))}
  labels = {(e, _label(s)): n for e, settings in SETTINGS.items() for n, s in enumerate(settings)}
  return sorted(rows, key=lambda r: (rank[r["estimator"]], r["density"]) if r["estimator"] ==
                "static" else (rank[r["estimator"]], labels[(r["estimator"], r["setting"])]))


def table(rows, per_layer=False):
  head = (f"{'seq':>5} {'estimator':<9} {'setting':<20} {'density':>7} {'recall':>7} "
          f"{'error':>7} {'static recall':>13} {'static error':>12}")
  lines = [head, "-" * len(head)]
  for r in rows:
    base = (f"{r['static_recall']:>13.4f} {r['static_error']:>12.4f}"
            if "static_recall" in r else f"{'':>13} {'':>12}")
    lines.append(f"{r['seq_len']:>5} {r['estimator']:<9} {r['setting']:<20} "
                 f"{r['density']:>7.3f} {r['recall']:>7.4f} {r['error']:>7.4f} {base}")
    if per_layer:
      for p in r["per_layer"]:
        lines.append(f"{'':>5} {'':<9} {'  layer ' + str(p['layer']):<20} "
                     f"{p['density']:>7.3f} {p['recall']:>7.4f} {p['error']:>7.4f}")
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags():
  """Only when run as the CLI (absl flags are process-wide)."""
  flags.DEFINE_string("run", "runs/small-dense", "Trained run directory (its latest checkpoint).")
  flags.DEFINE_list("lengths", ["128", "256", "512"], "Sequence lengths.")
  flags.DEFINE_integer("batches", 2, "Held-out batches per length.")
  flags.DEFINE_integer("batch_size", 8, "Windows per batch.")
  flags.DEFINE_integer("block", None, "Block size (query and key; default the run's, else 64).")
  flags.DEFINE_bool("per_layer", False, "Also print each layer's numbers.")
  flags.DEFINE_string("json", None, "Also write the rows here.")


def main(argv):
  del argv
  logs.setup()
  rows = []
  for length in [int(x) for x in FLAGS.lengths]:
    run = probe.open_run(FLAGS.run, seq_len=length)
    block = FLAGS.block or run.cfg.attention.get("block_q") or 64
    windows = probe.batches(run.cfg, "eval", FLAGS.batches, FLAGS.batch_size)
    rows += rows_for(length, measure(run, windows, block))
    print(f"# {FLAGS.run} step {run.step}, seq {length}, block {block}, "
          f"{FLAGS.batches} x {FLAGS.batch_size} held-out windows", flush=True)
  print(table(rows, FLAGS.per_layer))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
