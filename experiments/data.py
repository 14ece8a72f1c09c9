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

from experiments import corpora, packing, sources, tokenizers

CORPORA = ("synthetic", *sources.SOURCES)


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


def _stream_maker(cfg, tok):
  """docs -> one stream: documents joined by the tokenizer's eos id. Byte-level text
  keeps its fast path (bytes joined by NUL), the stream every earlier run read."""
  vocab = cfg.model.vocab_size
  dtype = tokenizers.id_dtype(vocab)

  def ids(n, doc):
    if not isinstance(doc, np.ndarray):
      return tok.encode(doc)
    if doc.size and (doc.min() < 0 or doc.max() >= vocab):
      raise ValueError(f"pre-tokenized document {n} holds ids in [{doc.min()}, {doc.max()}], "
                       f"outside model.vocab_size {vocab}; set model.vocab_size (or "
                       "data.tokenizer to the tokenizer that made them).")
    return doc

  def stream(docs):
    if tok.name == "byte" and all(isinstance(d, bytes) for d in docs):
      return corpora.to_stream(docs)
    sep = np.array([tok.eos_id], dtype)
    parts = [part for n, d in enumerate(docs) for part in ((sep,) if n else ()) + (ids(n, d),)]
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
  return stream


def _text(cfg, docs):
  tok = tokenizers.load(cfg.data.tokenizer)
  if cfg.model.vocab_size < tok.vocab_size:
    raise ValueError(f"data.tokenizer {tok.name!r} has {tok.vocab_size} tokens but "
                     f"model.vocab_size is {cfg.model.vocab_size}; set "
                     f"--config.model.vocab_size={tok.vocab_size} (or more).")
  train, held = corpora.split_stream(list(docs), cfg.data.eval_fraction, _stream_maker(cfg, tok))
  if tok.name == "byte" and train.dtype == np.uint8:
    summary = {"data_train_bytes": int(len(train)), "data_eval_bytes": int(len(held))}
  else:
    summary = {"data_train_tokens": int(len(train)), "data_eval_tokens": int(len(held)),
               "data_tokenizer": tok.name}
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
  else:
    train, held, summary = _text(cfg, sources.documents(cfg.data))
  summary["data_packing"] = packing.resolve(cfg.data)
  local_batch = cfg.batch_size // process_count
  if len(train) < cfg.batch_size or len(held) < cfg.batch_size:
    raise ValueError(
        f"corpus {corpus!r} yields {len(train)} train / {len(held)} eval windows of "
        f"{cfg.seq_len + 1} tokens; need at least batch_size={cfg.batch_size} of each. "
        "Use more text, a shorter seq_len or a smaller batch.")
  return Data(train, held, local_batch, cfg.seed, process_index, process_count,
              cfg.eval_batches, summary)
