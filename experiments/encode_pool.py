"""Tokenizes chunks of documents into token records, here or in a process pool.

Its own module, with no flags and no jax, so the pool's fork server and its workers
import it alone: not prepare's absl flags, not the caller's __main__ (hidden while the
workers start, see _main_hidden).
"""
import collections
import contextlib
import multiprocessing
import sys

import numpy as np

from experiments import sources, tokenizers

_WORKER = {}


def init_worker(spec, dtype):
  _WORKER.update(tok=tokenizers.load(spec), dtype=np.dtype(sources.TOKEN_DTYPES[dtype]))


def encode_chunk(chunk):
  """(first document index, docs) -> [record bytes]: one little-endian id array each."""
  first, docs = chunk
  tok, dtype, out = _WORKER["tok"], _WORKER["dtype"], []
  for n, doc in enumerate(docs, first):
    ids = doc if isinstance(doc, np.ndarray) else tok.encode(doc)
    if ids.size and (ids.min() < 0 or ids.max() >= tok.vocab_size):
      raise ValueError(f"document {n} holds ids in [{ids.min()}, {ids.max()}], outside "
                       f"the tokenizer's vocab_size {tok.vocab_size}; set data.tokenizer to "
                       "the tokenizer that made them.")
    out.append(np.asarray(ids).astype(dtype).tobytes())
  return out


@contextlib.contextmanager
def _main_hidden():
  """multiprocessing prepares a fork-server or spawn child by importing the caller's
  __main__ (from its __spec__ or __file__): a benchmark's jax in every worker, or an
  unguarded script's whole body. The workers need only this module, so __main__ is
  hidden while the pool starts them (a Pool starts all its workers in its constructor)."""
  main = sys.modules.get("__main__")
  saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if main and k in main.__dict__}
  try:
    if "__spec__" in saved:
      main.__spec__ = None  # multiprocessing reads it unguarded; None names no module
    main.__dict__.pop("__file__", None)
    yield
  finally:
    main.__dict__.update(saved)


def encoded(chunks, spec, dtype, workers):
  """(size, records) per (size, chunk), in order. K > 1: a process pool with a bounded
  window of chunks in flight (ordered, memory bounded); K = 1: here."""
  if workers == 1:
    init_worker(spec, dtype)
    yield from ((size, encode_chunk(c)) for size, c in chunks)
    return
  # Not fork: the caller may already run threads (JAX's pools, a pytest worker's), and
  # a forked child can deadlock on a lock one of them held. The fork server is a fresh,
  # thread-free process that imports only this module and forks the workers.
  if "forkserver" in multiprocessing.get_all_start_methods():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
  else:
    ctx = multiprocessing.get_context("spawn")
  with _main_hidden():
    pool = ctx.Pool(workers, init_worker, (spec, dtype))
  try:
    pending = collections.deque()
    for size, chunk in chunks:
      pending.append((size, pool.apply_async(encode_chunk, (chunk,))))
      if len(pending) >= 2 * workers:
        n, result = pending.popleft()
        yield n, result.get()
    while pending:
      n, result = pending.popleft()
      yield n, result.get()
    pool.close()
  finally:
    pool.terminate()
    pool.join()
