"""Data-pipeline throughput: tokenization / prepare, and the input pipeline
against the trainer (issue 14).

  python benchmarks/data_pipeline.py [--max_mb=8] [--vocab=4096] [--train_steps=5]

Table 1: the byte tokenizer, a BPE `tokenizers` JSON and a SentencePiece BPE
model (both trained here on pystdlib text) on the first --max_mb of pystdlib:
`encode` alone in this process, then `experiments.prepare` end to end (count
pass, read, tokenize, write ArrayRecord shards) with 1 and 2 worker processes.

Table 2: tokens/s of `data.build(cfg).train_iterator()` for the `small` variant
(its batch and seq_len; from the pystdlib text and from prepared shards) against
the trainer's tokens/s for `small` on this machine (benchmarks/train_step.py's
timing), and whether the pipeline is the bottleneck.
"""
import os
import tempfile
import time

from absl import app, flags

import train_step  # benchmarks/train_step.py, beside this script
from experiments import config as config_lib, data as data_lib, prepare, sources
from experiments import tokenizers
from experiments.configs import lm

_MAX_MB = flags.DEFINE_float("max_mb", 8.0, "Table 1: MB of pystdlib text to tokenize.")
_VOCAB = flags.DEFINE_integer("vocab", 4096, "Vocab size of the trained tokenizers.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 5, "Timed trainer steps of `small`.")
_BATCHES = flags.DEFINE_integer("pipeline_batches", 300, "Timed input-pipeline batches.")
_SHARDS = 4


class _Quiet:
  def update(self, docs, nbytes, tokens):
    pass

  def close(self):
    pass


def _text_cfg(tokenizer, max_bytes, vocab=256):
  return config_lib.override(lm.get_config("small"), {
      "data.tokenizer": tokenizer, "data.max_bytes": max_bytes,
      "model.vocab_size": max(vocab, 256)})


def _row(name, mode, docs, nbytes, tokens, seconds):
  print(f"{name:>14} {mode:>18} {docs / seconds:>9,.0f} {nbytes / 1e6 / seconds:>8.2f} "
        f"{tokens / seconds:>12,.0f} {tokens / nbytes:>9.3f} {seconds:>8.2f}")


def tokenizer_table(tmp):
  max_bytes = int(_MAX_MB.value * 1e6)
  docs = list(sources.documents(_text_cfg("byte", max_bytes).data))
  nbytes = sum(map(len, docs))
  train_texts = [d.decode("utf-8", errors="replace") for d in docs[:len(docs) // 4]]
  specs = {"byte": "byte",
           f"hf-bpe-{_VOCAB.value}": tokenizers.train_hf_bpe(train_texts, f"{tmp}/tok.json", _VOCAB.value),
           f"sp-bpe-{_VOCAB.value}": tokenizers.train_sentencepiece_bpe(train_texts, f"{tmp}/sp",
                                                          _VOCAB.value)}
  print(f"pystdlib text: {len(docs):,} documents, {nbytes / 1e6:.1f} MB; "
        f"{os.cpu_count()} CPUs; prepare writes {_SHARDS} shards")
  print(f"{'tokenizer':>14} {'mode':>18} {'docs/s':>9} {'MB/s':>8} {'tokens/s':>12} "
        f"{'tok/byte':>9} {'seconds':>8}")
  for name, spec in specs.items():
    tok = tokenizers.load(spec)
    t = time.perf_counter()
    tokens = sum(len(tok.encode(d)) for d in docs)
    _row(name, "encode (1 proc)", len(docs), nbytes, tokens, time.perf_counter() - t)
    for workers in (1, 2):
      t = time.perf_counter()
      m = prepare.prepare(_text_cfg(spec, max_bytes, tok.vocab_size),
                          f"{tmp}/{name}-w{workers}", _SHARDS, workers, bar=_Quiet())
      _row(name, f"prepare workers={workers}", m["documents"], m["text_bytes"], m["tokens"],
           time.perf_counter() - t)
  return specs


def _pipeline_rate(cfg):
  """(build seconds, tokens/s) of the train iterator, after a warm-up."""
  t = time.perf_counter()
  d = data_lib.build(cfg)
  build = time.perf_counter() - t
  it = d.train_iterator()
  for _ in range(10):
    next(it)
  t = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(it)
  return build, _BATCHES.value * cfg.batch_size * cfg.seq_len / (time.perf_counter() - t)


def _prepared(cfg, out):
  """cfg reading the shards prepare wrote to `out` (the overrides it prints)."""
  m = prepare.prepare(cfg, out, _SHARDS, 2, bar=_Quiet())  # already there: a no-op
  return config_lib.override(cfg, {
      "data.corpus": "array_record", "data.token_dtype": m["token_dtype"], "data.max_bytes": 0,
      "data.files": f"{out}/*.array_record", "data.tokenizer": m["tokenizer"]}), m


def pipeline_table(tmp, hf_name, hf_spec):
  cfg = lm.get_config("small")
  t = time.perf_counter()
  prepared, m = _prepared(cfg, f"{tmp}/small")
  prepare_s = time.perf_counter() - t
  hf = _text_cfg(hf_spec, int(_MAX_MB.value * 1e6), tokenizers.load(hf_spec).vocab_size)
  rows = {"byte, pystdlib text": _pipeline_rate(cfg),
          "byte, prepared": _pipeline_rate(prepared),
          f"{hf_name}, {_MAX_MB.value:g} MB text": _pipeline_rate(hf),
          f"{hf_name}, prepared": _pipeline_rate(_prepared(hf, f"{tmp}/{hf_name}-w2")[0])}
  trainer = train_step.time_variant("small", _TRAIN_STEPS.value)["tokens/s"]
  print(f"\nvariant small: batch {cfg.batch_size} x seq_len {cfg.seq_len}; pystdlib "
        f"{m['tokens']:,} tokens, prepared (2 workers) in {prepare_s:.1f} s")
  print("build s: data.build (reads and tokenizes, or reads the shards); tokens/s: "
        "train_iterator() batches")
  print(f"{'input pipeline':>28} {'build s':>8} {'tokens/s':>12} {'x trainer':>10}  verdict")
  for name, (build, rate) in rows.items():
    verdict = ("pipeline IS the bottleneck" if rate < trainer else
               "pipeline is not the bottleneck")
    print(f"{name:>28} {build:>8.2f} {rate:>12,.0f} {rate / trainer:>10.0f}  {verdict}")
  print(f"{'trainer (small, 1 CPU dev)':>28} {'':>8} {trainer:>12,.0f} {1:>10.0f}")


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    specs = tokenizer_table(tmp)
    hf_name = next(name for name in specs if name.startswith("hf"))
    pipeline_table(tmp, hf_name, specs[hf_name])


if __name__ == "__main__":
  app.run(main)
