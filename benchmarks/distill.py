"""Does SpargeAttention2's distillation close the sparse-dense gap? Three short runs.

Trains, on the same data and seeds: a dense model; the same model with block-sparse
attention (sparge, top-k) and no distillation; and the sparse model with
`attention.distill_weight` > 0 (each sparse layer pulled towards dense attention on
its own q, k, v; with --teacher, its logits pulled towards a frozen run's). Optionally every arm starts from a dense checkpoint (--init_from,
SpargeAttention2's fine-tuning setting). Prints the eval-loss curves and the gap

    gap = eval_loss(sparse arm) - eval_loss(dense)

at each eval step; distillation helps when its gap is the smaller one. Each arm is
`python -m experiments.train` in its own workdir under --out (rerunning resumes).

  .venv/bin/python benchmarks/distill.py --out=runs/distill
"""
import json
import os
import subprocess
import sys

from absl import app, flags

_OUT = flags.DEFINE_string("out", "runs/distill", "Directory of the three runs.")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps per arm.")
_WEIGHT = flags.DEFINE_float("weight", 1.0, "attention.distill_weight of the distilled arm.")
_TOPK = flags.DEFINE_float("topk", 0.2, "sparge top-k fraction of the sparse arms.")
_BLOCK = flags.DEFINE_integer("block", 16, "block_q = block_k of the sparse arms.")
_INIT = flags.DEFINE_string(
    "init_from", "", "A dense run: every arm starts from its latest params (fine-tuning, "
    "SpargeAttention2's setting; the dense arm continues training it). Its model settings "
    "must match --set.")
_TEACHER = flags.DEFINE_enum(
    "teacher", "", ["", "init", "dense"], "The distilled arm distils towards a frozen "
    "run's logits (attention.distill_teacher, SpargeAttention2's output-level "
    "distillation) instead of each layer's own dense attention: 'init' the --init_from "
    "run, 'dense' this benchmark's dense arm (trained first: a dense model of the same "
    "size on the same data).")
_SETTINGS = flags.DEFINE_list(
    "set", ["data.corpus=pystdlib", "seq_len=256", "batch_size=16", "model.width=128",
            "model.depth=2", "model.heads=4", "model.kv_heads=2", "model.mlp_width=384",
            "optimizer.lr=3e-3", "optimizer.warmup_steps=30", "eval_every=50",
            "log_every=50", "checkpoint_every=1000", "wandb.mode=disabled"],
    "KEY=VALUE config overrides shared by every arm.")


def _arms():
  sparse = [f"attention.kind=block_sparse", "attention.estimator=sparge",
            f"attention.topk={_TOPK.value}", f"attention.block_q={_BLOCK.value}",
            f"attention.block_k={_BLOCK.value}"]
  distill = sparse + [f"attention.distill_weight={_WEIGHT.value}"]
  if _TEACHER.value == "init":
    if not _INIT.value:
      raise app.UsageError("--teacher=init distils towards the --init_from run; pass one.")
    distill.append(f"attention.distill_teacher={os.path.abspath(_INIT.value)}")
  elif _TEACHER.value == "dense":
    distill.append(f"attention.distill_teacher={os.path.abspath(_workdir('dense'))}")
  return {"dense": [], "sparse": sparse, "sparse+distill": distill}


def _workdir(name):
  return os.path.join(_OUT.value, name.replace("+", "_"))


def _train(name, overrides):
  workdir = _workdir(name)
  cmd = [sys.executable, "-m", "experiments.train",
         "--config=experiments/configs/lm.py:tiny", f"--workdir={workdir}",
         f"--config.steps={_STEPS.value}"]
  cmd += [f"--config.{kv}" for kv in list(_SETTINGS.value) + overrides]
  if _INIT.value:
    cmd.append(f"--config.init_from={os.path.abspath(_INIT.value)}")
  print(" ".join(cmd), flush=True)
  subprocess.run(cmd, check=True)
  return workdir


def _curve(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return {r["step"]: r for r in records if "eval_loss" in r}


def main(argv):
  del argv
  curves = {name: _curve(_train(name, o)) for name, o in _arms().items()}
  steps = sorted(set.intersection(*(set(c) for c in curves.values())))
  print(f"\n{'step':>6} {'dense':>8} {'sparse':>8} {'+distill':>9} {'gap':>8} "
        f"{'gap+distill':>12} {'density':>8} {'distance':>9} {'distance+d':>10}")
  for step in steps:
    d, s, sd = (curves[n][step] for n in ("dense", "sparse", "sparse+distill"))
    print(f"{step:>6} {d['eval_loss']:>8.4f} {s['eval_loss']:>8.4f} {sd['eval_loss']:>9.4f} "
          f"{s['eval_loss'] - d['eval_loss']:>8.4f} {sd['eval_loss'] - d['eval_loss']:>12.4f} "
          f"{s.get('attn_density', float('nan')):>8.3f} "
          f"{s.get('attn_distill', float('nan')):>9.4f} "
          f"{sd.get('distill_kl', sd.get('attn_distill', float('nan'))):>10.4f}")


if __name__ == "__main__":
  app.run(main)
