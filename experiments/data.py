"""grain input pipeline: source -> byte tokenizer -> packed windows -> batches.

Documents are joined with a separator byte and cut into windows of seq_len + 1
tokens (stride seq_len, so every token is a target once): packing by
concatenation, no padding. The train stream is shuffled per epoch from the
seed, sliced by process, batched; the iterator's state is a small dict saved
with every checkpoint, so a resumed run sees exactly the batches it would have
seen. Eval batches are a fixed, ordered slice of the held-out stream.
"""
import dataclasses

import grain
import numpy as np

from experiments import corpora

CORPORA = ("synthetic", "pystdlib", "text_files")


class StreamWindows(grain.sources.RandomAccessDataSource):
  """Window i of a uint8 stream: stream[i*L : i*L + L + 1]."""

  def __init__(self, stream, seq_len):
    self._stream, self._seq_len = stream, seq_len

  def __len__(self):
    return max(0, (len(self._stream) - 1) // self._seq_len)

  def __getitem__(self, index):
    start = index * self._seq_len
    return self._stream[start:start + self._seq_len + 1]


class WindowPool(grain.sources.RandomAccessDataSource):
  """Pre-sampled windows [N, L + 1] (the synthetic source)."""

  def __init__(self, windows):
    self._windows = windows

  def __len__(self):
    return len(self._windows)

  def __getitem__(self, index):
    return self._windows[index]


def tokenize_bytes(window):
  """Byte-level tokenizer: byte b is token b (vocab 256)."""
  return np.asarray(window, np.uint8).astype(np.int32)


@dataclasses.dataclass
class Data:
  train_source: grain.sources.RandomAccessDataSource
  eval_source: grain.sources.RandomAccessDataSource
  batch_size: int          # per process
  seed: int
  process_index: int
  process_count: int
  eval_batches: int
  summary: dict            # e.g. data_entropy_rate for the synthetic corpus

  def _read_options(self):
    return grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)

  def train_iterator(self):
    ds = (grain.MapDataset.source(self.train_source)
          .shuffle(seed=self.seed)
          .repeat(None)
          .map(tokenize_bytes))
    ds = ds[self.process_index::self.process_count]
    ds = ds.batch(self.batch_size, drop_remainder=True)
    return iter(ds.to_iter_dataset(self._read_options()))

  def eval_iterable(self):
    ds = grain.MapDataset.source(self.eval_source).map(tokenize_bytes)
    ds = ds[self.process_index::self.process_count].batch(self.batch_size, drop_remainder=True)
    return [ds[i] for i in range(min(self.eval_batches, len(ds)))]


def _synthetic(cfg):
  d = cfg.data
  chain = corpora.MarkovChain.make(d.synthetic_alphabet, d.synthetic_order,
                                   d.synthetic_branching, d.seed)
  if cfg.model.vocab_size < d.synthetic_alphabet:
    raise ValueError(f"model.vocab_size {cfg.model.vocab_size} < data.synthetic_alphabet "
                     f"{d.synthetic_alphabet}.")
  length = cfg.seq_len + 1
  train = chain.sample(d.synthetic_windows, length, np.random.default_rng(d.seed + 1))
  held = chain.sample(max(d.synthetic_windows // 16, cfg.batch_size * cfg.eval_batches),
                      length, np.random.default_rng(d.seed + 2))
  summary = {"data_entropy_rate": chain.entropy_rate(),
             "data_min_loss": chain.min_loss(cfg.seq_len)}
  return WindowPool(train), WindowPool(held), summary


def _text(cfg, docs):
  if cfg.model.vocab_size < 256:
    raise ValueError(f"byte-level text needs model.vocab_size >= 256, got {cfg.model.vocab_size}.")
  train, held = corpora.split_stream(docs, cfg.data.eval_fraction)
  summary = {"data_train_bytes": int(len(train)), "data_eval_bytes": int(len(held))}
  return StreamWindows(train, cfg.seq_len), StreamWindows(held, cfg.seq_len), summary


def build(cfg, process_index=0, process_count=1):
  """Validates the data config and builds the sources (raises ValueError early)."""
  corpus = cfg.data.corpus
  if corpus not in CORPORA:
    raise ValueError(f"unknown data.corpus {corpus!r}; choose one of {CORPORA}.")
  if cfg.batch_size % process_count:
    raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the "
                     f"{process_count} processes.")
  if corpus == "synthetic":
    train, held, summary = _synthetic(cfg)
  elif corpus == "pystdlib":
    train, held, summary = _text(cfg, corpora.read_documents(
        corpora.stdlib_files(), max_bytes=cfg.data.max_bytes))
  else:
    paths = corpora.text_file_paths(cfg.data.files)
    train, held, summary = _text(cfg, corpora.read_documents(
        paths, cfg.data.text_field, cfg.data.max_bytes))
  local_batch = cfg.batch_size // process_count
  if len(train) < cfg.batch_size or len(held) < cfg.batch_size:
    raise ValueError(
        f"corpus {corpus!r} yields {len(train)} train / {len(held)} eval windows of "
        f"{cfg.seq_len + 1} tokens; need at least batch_size={cfg.batch_size} of each. "
        "Use more text, a shorter seq_len or a smaller batch.")
  return Data(train, held, local_batch, cfg.seed, process_index, process_count,
              cfg.eval_batches, summary)
