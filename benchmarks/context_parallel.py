"""Compiled memory of Ulysses vs Untied Ulysses context parallelism; prints a table.

  python benchmarks/context_parallel.py                  # 8 fake CPU devices, L=4096
  python benchmarks/context_parallel.py --seq_len=8192 --kinds=dense --chunks=2,4,8

Per device, XLA's compiled temporaries (memory_analysis().temp_size_in_bytes) of
(a) the attention layer alone, forward and backward (jax.grad of its summed
output), and (b) the whole train step as `python -m experiments.train
--compile_only` compiles it (a small-width model whose attention dominates). The
mesh puts every device on the sequence axis. Nothing runs; only compiles.

`untied x1` is Ulysses with untied's recomputation and no chunking: the rows
below it show what chunking the heads adds to recomputing them.
"""
import contextlib
import io

import jax
import jax.numpy as jnp
from absl import app, flags

import parallel
from experiments import config as config_lib, train
from experiments.configs import lm
from kernels import kinds
from parallel import context as context_lib

_SEQ_LEN = flags.DEFINE_integer("seq_len", 4096, "Sequence length.")
_HEADS = flags.DEFINE_integer("heads", 32, "Query heads.")
_KV_HEADS = flags.DEFINE_integer("kv_heads", 8, "kv heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Head dim.")
_KINDS = flags.DEFINE_list("kinds", ["dense", "block_sparse"], "Attention kinds.")
_CHUNKS = flags.DEFINE_list("chunks", ["1", "2", "4"], "Untied head_chunks to compare "
                            "(1: Ulysses with the attention recomputed in the backward).")
_IMPL = flags.DEFINE_string("impl", "xla", "Attention impl (auto: Pallas on accelerators).")
_TRAIN = flags.DEFINE_bool("train_step", True, "Also compile the whole train step.")


def kind_params(kind):
  if kind == "linear":
    return {"chunk_size": 64}
  return {"block_q": 64, "block_k": 64} if kind in kinds.BLOCK_KINDS else {}


def layer_temp_bytes(mesh, kind, context, head_chunks):
  def loss(q, k, v):
    with parallel.activate(mesh, parallel.DEFAULT_RULES), context_lib.use(context, head_chunks):
      return jnp.sum(parallel.attention(q, k, v, kind=kind, impl=_IMPL.value,
                                        **kind_params(kind)))
  sharding = jax.NamedSharding(mesh, jax.P(None, "sequence"))
  shapes = [jax.ShapeDtypeStruct((1, _SEQ_LEN.value, h, _HEAD_DIM.value), jnp.float32,
                                 sharding=sharding)
            for h in (_HEADS.value, _KV_HEADS.value, _KV_HEADS.value)]
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*shapes).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def train_temp_bytes(devices, kind, context, head_chunks):
  params = {f"attention.{n}": v for n, v in kind_params(kind).items()}
  cfg = config_lib.override(lm.get_config("tiny"), {
      "batch_size": 1, "seq_len": _SEQ_LEN.value, "model.width": 256, "model.depth": 2,
      "model.heads": _HEADS.value, "model.kv_heads": _KV_HEADS.value,
      "model.head_dim": _HEAD_DIM.value, "model.mlp_width": 512, "attention.kind": kind,
      "attention.impl": _IMPL.value, **params, "mesh.data": 1, "mesh.sequence": devices,
      "mesh.context": context, "mesh.head_chunks": head_chunks, "wandb.mode": "disabled"})
  with contextlib.redirect_stdout(io.StringIO()):  # its own table: we keep one number
    return train.compile_only(cfg)["temporaries"][1]


def main(argv):
  del argv
  parallel.initialize(num_cpu_devices=flags.FLAGS.num_fake_devices)
  devices = jax.device_count()
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1, "sequence": devices})
  per_device = _HEADS.value // devices  # query heads each device attends to
  chunks = [int(c) for c in _CHUNKS.value]
  if any(per_device % c for c in chunks):
    raise app.UsageError(f"--chunks must divide the {per_device} heads per device "
                         f"(--heads={_HEADS.value} over {devices} devices).")
  schemes = [("ulysses", 1)] + [("untied", c) for c in chunks]
  print(f"L={_SEQ_LEN.value}, {_HEADS.value} heads ({_KV_HEADS.value} kv) x "
        f"{_HEAD_DIM.value}, batch 1, impl {_IMPL.value}, sequence={devices} "
        f"{jax.default_backend()} devices; compiled temporaries per device, MiB")
  print(f"{'kind':>13} {'scheme':>12} {'layer fwd+bwd':>14} {'saved':>11}"
        + (f" {'train step':>11} {'saved':>11}" if _TRAIN.value else ""))
  for kind in _KINDS.value:
    base = {}
    for context, chunks in schemes:
      row = {"layer": layer_temp_bytes(mesh, kind, context, chunks)}
      if _TRAIN.value:
        row["train"] = train_temp_bytes(devices, kind, context, chunks)
      base = base or row
      name = context if context == "ulysses" else f"untied x{chunks}"
      cells = "".join(f" {row[k] / 2**20:>{w}.1f} {1 - row[k] / base[k]:>11.0%}"
                      for k, w in (("layer", 14), ("train", 11)) if k in row)
      print(f"{kind:>13} {name:>12}{cells}", flush=True)


if __name__ == "__main__":
  # --num_fake_devices is experiments.train's flag (0: the real devices).
  flags.FLAGS.set_default("num_fake_devices", 8)
  app.run(main)
