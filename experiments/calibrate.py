"""Per-layer sparse-attention thresholds for a trained run, at a target output error.

  python -m experiments.calibrate --run=runs/small-dense [--kind=block_sparse|spectral]
      [--target_error=0.01] [--pv] [--calib_batches=2] [--heldout_batches=2]
      [--seq_len=N] [--block_q=64 --block_k=64] [--batch_size=B] [--out=PATH]

As SpargeAttn calibrates (arXiv 2502.18137, sec. 3.5 / 4): per layer, the setting of
the estimator (sparge: top-k or top-p fraction x self-similarity threshold; prism:
top-p x high-frequency band) with the lowest density whose relative L1 error of the
attention output vs dense, sum|o - o_dense| / sum|o_dense| over the calibration
batches (training windows), stays <= the target; with --pv, then the most aggressive
stage-2 lambda (kernels.pv_skip) that keeps it there with that mask. Held-out batches
(the eval stream) check each pick: one that fails there gives way to the next denser
calibration-feasible setting (logged). q/k/v are captured once per batch and every
grid point is scored from per-tile statistics (experiments.block_stats); the reported
held-out numbers come from the exact oracle, kernels.pv_skip.reference_attention.

Writes RUN/thresholds.json (--out), atomically: the format `attention.thresholds`
loads (layer i's "params" over the config's; null for layers left dense). Exit 2:
bad input, or a layer that meets the target on held-out data at no grid point
(nothing written).
"""
import functools
import json
import os
import tempfile

from absl import logging
import jax
import jax.numpy as jnp

from experiments import block_stats, calibrate_search as search, logs, probe
from kernels import dense, pv_skip

FORMAT = "chinchax.thresholds/1"


@functools.partial(jax.jit, static_argnames=("pv_threshold", "block_q", "block_k"))
def _oracle(layer_inputs, mask_BHQK, *, pv_threshold, block_q, block_k):
  """Exact sums for one layer and batch: kernels.pv_skip's oracle vs dense attention."""
  q, k, v, seg = layer_inputs
  o, skipped = pv_skip.reference_attention(q, k, v, mask_BHQK, block_q=block_q,
                                           block_k=block_k, causal=True,
                                           segment_ids_BL=seg, pv_threshold=pv_threshold)
  o_dense = dense.reference_attention(
      q, k, v, causal=True, mask_BHQK=block_stats.token_allowed(q.shape[1], seg))
  return {"l1": jnp.sum(jnp.abs(o - o_dense)), "dense": jnp.sum(jnp.abs(o_dense)),
          "skipped": jnp.sum(skipped, dtype=jnp.float32),
          "kept": jnp.sum(mask_BHQK, dtype=jnp.float32)}


def _verify(run, heldout, layers, estimator, picks, opts, keys):
  """Exact held-out numbers {layer: {name: summary}} for picks {name: {layer: params}}."""
  sums = {i: {name: [] for name in picks} for i in layers}
  for window in heldout:
    captured = probe.capture(run, window)
    for i in layers:
      masks, density = search.layer_masks(captured[i], estimator, keys, opts)
      for name, params in picks.items():
        u = keys.index(search.mask_key(params[i]))
        row = _oracle(captured[i], masks[u], pv_threshold=params[i].get("pv_threshold"),
                      block_q=opts.block_q, block_k=opts.block_k)
        sums[i][name].append({**row, "density": density[u]})
  return {i: {name: search.summarize(jax.device_get(rows)) for name, rows in d.items()}
          for i, d in sums.items()}


def calibrate(opts):
  """The thresholds record (a dict); raises ValueError on bad input and
  search.TargetNotMet (after logging the table) when a layer cannot meet the target."""
  opts, estimator, layers = search.check(opts)
  run = probe.open_run(opts.run, opts.seq_len)
  head_dim = run.cfg.model.head_dim or run.cfg.model.width // run.cfg.model.heads
  defaults = search.default_params(run.cfg, estimator)
  grid = opts.grid or search.grid(estimator, head_dim)
  calib = probe.batches(run.cfg, "train", opts.calib_batches, opts.batch_size)
  heldout = probe.batches(run.cfg, "eval", opts.heldout_batches, opts.batch_size)
  logging.info(f"{opts.run} (step {run.step}): {opts.kind} ({estimator}) on layers "
               f"{layers}, {len(grid)} settings, target {opts.target_error}")
  keys = search.all_keys(*grid, defaults)
  chosen, failed = search.pick_masks(run, calib, heldout, layers, estimator, grid, opts, keys)
  if opts.pv:
    chosen = search.pick_lambdas(run, calib, heldout, layers, estimator, chosen, opts, keys)
  picks = {"chosen": {i: chosen[i]["params"] for i in layers},
           "default": {i: defaults for i in layers}}
  exact = _verify(run, heldout, layers, estimator, picks, opts, keys)
  record = _record(run, opts, estimator, layers, chosen, defaults, exact)
  print(table(record))
  failed += [i for i in layers if exact[i]["chosen"]["error"] > opts.target_error]
  if failed:
    raise search.TargetNotMet(
        f"layer(s) {sorted(set(failed))} cannot meet target_error={opts.target_error} on "
        "the held-out batches with any grid setting; raise --target_error, add "
        "--calib_batches, or leave those layers dense. Nothing was written.")
  return record


def _record(run, opts, estimator, layers, chosen, defaults, exact):
  entries = [None] * run.cfg.model.depth
  for i in layers:
    c, d = exact[i]["chosen"], exact[i]["default"]
    entries[i] = {"layer": i, "params": chosen[i]["params"], "density": c["density"],
                  "skipped": c["skipped"], "calib_error": chosen[i]["calib_error"],
                  "calib_density": chosen[i]["calib_density"],
                  "heldout_error": c["error"],
                  "default": {"params": defaults, "density": d["density"],
                              "skipped": d["skipped"], "heldout_error": d["error"]}}
  return {"format": FORMAT, "run": os.path.abspath(opts.run), "step": run.step,
          "kind": opts.kind, "estimator": estimator, "block_q": opts.block_q,
          "block_k": opts.block_k, "seq_len": run.cfg.seq_len,
          "target_error": opts.target_error, "calib_batches": opts.calib_batches,
          "heldout_batches": opts.heldout_batches,
          "batch_size": opts.batch_size or run.cfg.batch_size, "pv": bool(opts.pv),
          "layers": entries}


def _fmt(params):
  short = {"topk": "topk", "topp": "topp", "sim_threshold": "sim", "high_freq_dims": "hf",
           "pv_threshold": "pv"}
  return " ".join(f"{short[k]}={v:g}" for k, v in params.items() if v is not None) or "-"


def table(record):
  """The per-layer report: calibrated params vs the uncalibrated default."""
  head = (f"{'layer':>5}  {'params':<28} {'density':>7} {'skipped':>7} {'calib err':>9} "
          f"{'held err':>9}  |  {'default':<24} {'density':>7} {'held err':>9}")
  lines = [f"{record['kind']} ({record['estimator']}), blocks {record['block_q']}x"
           f"{record['block_k']}, seq {record['seq_len']}, target {record['target_error']}",
           head, "-" * len(head)]
  for e in record["layers"]:
    if e is None:
      continue
    d = e["default"]
    lines.append(f"{e['layer']:>5}  {_fmt(e['params']):<28} {e['density']:>7.3f} "
                 f"{e['skipped']:>7.3f} {e['calib_error']:>9.4f} {e['heldout_error']:>9.4f}"
                 f"  |  {_fmt(d['params']):<24} {d['density']:>7.3f} {d['heldout_error']:>9.4f}")
  return "\n".join(lines)


def write(record, path):
  """JSON via a temp file + os.replace: never half-written."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".thresholds-", suffix=".json", dir=directory)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(record, f, indent=2)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def load(path):
  """A thresholds record, checked for its format."""
  with open(path) as f:
    record = json.load(f)
  if record.get("format") != FORMAT:
    raise ValueError(f"{path} is not a {FORMAT} file (format {record.get('format')!r}).")
  return record


# --- command line -----------------------------------------------------------
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as the CLI: absl flags are process-wide (experiments.train
  owns --workdir, experiments.prepare and the sweeps --out)."""
  flags.DEFINE_string("run", None, "The trained run directory.")
  flags.DEFINE_string("out", None, "Where the thresholds go (default RUN/thresholds.json).")
  flags.DEFINE_string("kind", "block_sparse", "block_sparse (sparge) or spectral (prism).")
  flags.DEFINE_float("target_error", 0.01, "Relative L1 error of each layer's attention "
                     "output vs dense, in (0, 1).")
  flags.DEFINE_integer("calib_batches", 2, "Calibration batches (training windows).")
  flags.DEFINE_integer("heldout_batches", 2, "Held-out batches (the eval stream).")
  flags.DEFINE_integer("seq_len", None, "Window length (default the run's).")
  flags.DEFINE_integer("batch_size", None, "Windows per batch (default the run's).")
  flags.DEFINE_integer("block_q", None, "Query block (default the run's config, else 64).")
  flags.DEFINE_integer("block_k", None, "Key block (default the run's config, else 64).")
  flags.DEFINE_bool("pv", False, "Also calibrate stage 2's pv_threshold (lambda).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}", exitcode=logs.EXIT_BAD_INPUT)
  logs.setup()

  def body():
    if not FLAGS.run:
      raise ValueError("--run=DIR (a trained run directory) is required.")
    opts = search.Options(run=FLAGS.run, out=FLAGS.out, kind=FLAGS.kind,
                          target_error=FLAGS.target_error, calib_batches=FLAGS.calib_batches,
                          heldout_batches=FLAGS.heldout_batches, seq_len=FLAGS.seq_len,
                          batch_size=FLAGS.batch_size, block_q=FLAGS.block_q,
                          block_k=FLAGS.block_k, pv=FLAGS.pv)
    record = calibrate(opts)
    out = opts.out or os.path.join(opts.run, "thresholds.json")
    write(record, out)
    logging.info(f"wrote {out}")
    return 0
  return logs.guard(body)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=logs.parse_flags)
