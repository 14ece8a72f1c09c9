"""Tokenizes a corpus once into ArrayRecord shards of token records.

  python -m experiments.prepare --config=experiments/configs/lm.py:small \
      [--config.data.KEY=VALUE ...] --out=DIR [--shards=N] [--workers=K]

Reads `sources.documents(cfg.data)`, tokenizes with `data.tokenizer` in K worker
processes and writes DIR/shard-0000K-of-0000N.array_record (one record per
document: little-endian uint16/uint32 ids) and DIR/prepared.json. Shard k holds a
contiguous range of document indices, so the shards read in name order are the
corpus in order and the output is the same for any K. Training reads it with the
override line printed at the end (data.corpus=array_record ...): the same token
stream as the original corpus with the same tokenizer, without re-tokenizing.

Atomic: everything is written to a temp dir beside DIR, renamed to DIR at the
end (a killed prepare leaves only a hidden .DIR.tmp-* beside it); bad input fails
before anything is written. An existing non-empty DIR is refused unless it is a
finished prepare of the same inputs (then a no-op; the worker count is no input).
"""
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time

import numpy as np
from absl import logging
from rich import progress as rich_progress

from experiments import config as config_lib, corpora, logs, metrics, progress, sources
from experiments import encode_pool, tokenizers

MANIFEST = "prepared.json"
FORMAT = "chinchax.prepared/1"
RECORD_OPTIONS = "group_size:1"  # random access by record, as grain reads them
CHUNK_BYTES, CHUNK_DOCS = 1 << 18, 256  # one worker task (a few per worker in flight)
SOURCE_KEYS = ("corpus", "files", "text_field", "token_field", "token_dtype", "max_bytes")


def token_dtype(vocab_size):
  """uint16 or uint32 (sources.TOKEN_DTYPES): a byte vocab still takes uint16."""
  dtype = np.promote_types(tokenizers.id_dtype(vocab_size), np.uint16)
  return "uint16" if dtype == np.uint16 else "uint32"


def shard_names(n):
  return [f"shard-{k:05d}-of-{n:05d}.array_record" for k in range(n)]


def shard_bounds(documents, n):
  """Shard k holds documents [bounds[k], bounds[k+1]): contiguous, by index."""
  return [k * documents // n for k in range(n + 1)]


def _file_digest(path):
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _source_files(cfg_data):
  if cfg_data.corpus == "pystdlib":
    return corpora.stdlib_files()
  if cfg_data.corpus != "hf_dataset":
    return sources.paths(cfg_data)
  return sorted(os.path.join(root, f) for d in sources.paths(cfg_data, "directories")
                for root, _, files in os.walk(d) for f in files)


def inputs(cfg, tok, shards):
  """What the output depends on (not the worker count): compared on a rerun."""
  files = _source_files(cfg.data)
  stats = hashlib.sha256(json.dumps(
      [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in files]).encode()).hexdigest()
  spec = cfg.data.tokenizer or "byte"
  return {"source": {k: cfg.data[k] for k in SOURCE_KEYS}, "source_files": len(files),
          "source_files_sha256": stats, "tokenizer": spec,
          "tokenizer_sha256": None if tok.name == "byte" else _file_digest(os.path.expanduser(spec)),
          "shards": shards}


def _count(cfg_data):
  """(documents, bytes): the first pass, which also reads every input once, so a
  bad file fails before anything is written."""
  n = size = 0
  for doc in sources.documents(cfg_data):
    n, size = n + 1, size + (doc.nbytes if isinstance(doc, np.ndarray) else len(doc))
  return n, size


# --- chunks ------------------------------------------------------------------
def _chunks(docs):
  chunk, size, first = [], 0, 0
  for n, doc in enumerate(docs):
    chunk.append(doc)
    size += doc.nbytes if isinstance(doc, np.ndarray) else len(doc)
    if size >= CHUNK_BYTES or len(chunk) >= CHUNK_DOCS:
      yield size, (first, chunk)
      chunk, size, first = [], 0, n + 1
  if chunk:
    yield size, (first, chunk)


# --- progress ----------------------------------------------------------------
class PrepareProgress:
  """A rich bar on a terminal (docs, MB, tok/s, ETA); elsewhere an INFO line at most
  every `every` seconds and at the end."""

  def __init__(self, documents, stream=None, console=None, every=10.0):
    self.documents, self.every = documents, every
    self._start = self._logged = time.time()
    self._bar = None
    if console is not None or progress.is_tty(stream or sys.stderr):
      console = console or progress.console_lib.Console(file=stream or sys.stderr)
      self._bar = rich_progress.Progress(
          rich_progress.TextColumn("prepare"), rich_progress.BarColumn(bar_width=None),
          rich_progress.MofNCompleteColumn(),
          rich_progress.TextColumn("docs  {task.fields[mb]} MB  {task.fields[rate]} tok/s"),
          rich_progress.TimeElapsedColumn(), rich_progress.TimeRemainingColumn(),
          console=console, expand=True)
      self._task = self._bar.add_task("prepare", total=documents, mb="0.0", rate="-")
      self._started = False

  def update(self, docs, nbytes, tokens):
    now = time.time()
    rate = tokens / max(now - self._start, 1e-9)
    if self._bar is not None:
      if not self._started:  # started here: no thread before the worker pool forks
        self._bar.start()
        self._started = True
      self._bar.update(self._task, completed=docs, mb=f"{nbytes / 1e6:,.1f}",
                       rate=f"{rate:,.0f}")
    elif now - self._logged >= self.every or docs >= self.documents:
      self._logged = now
      eta = (now - self._start) * (self.documents - docs) / docs if docs else None
      logging.info(f"prepare {docs:,}/{self.documents:,} docs  {nbytes / 1e6:,.1f} MB  "
                   f"{tokens:,} tokens  {rate:,.0f} tok/s  ETA {progress.clock(eta)}")

  def close(self):
    if self._bar is not None and self._started:
      self._bar.stop()
      self._started = False


# --- prepare -----------------------------------------------------------------
def _finished(out, wanted):
  """The manifest if `out` is a finished prepare of these inputs; None if `out` is
  absent or empty; ValueError if it holds anything else."""
  if not os.path.exists(out) or (os.path.isdir(out) and not os.listdir(out)):
    return None
  path = os.path.join(out, MANIFEST)
  manifest = metrics.read_json(path)
  if not manifest or manifest.get("format") != FORMAT:
    raise ValueError(f"--out={out} exists and is not a finished prepare (no readable "
                     f"{MANIFEST}); choose a new directory or remove it.")
  differ = sorted(k for k in wanted if manifest["inputs"].get(k) != wanted[k])
  if differ:
    raise ValueError(f"--out={out} holds a prepare of other inputs (differs in: "
                     f"{', '.join(differ)}); choose a new directory or remove it.")
  missing = [s for s in manifest["shard_names"] if not os.path.isfile(os.path.join(out, s))]
  if missing:
    raise ValueError(f"--out={out}: shards {missing} of its {MANIFEST} are missing; remove it.")
  return manifest


def _check(cfg, shards, workers):
  if cfg.data.corpus not in sources.SOURCES:
    raise ValueError(f"data.corpus={cfg.data.corpus!r} cannot be prepared; use one of "
                     f"{sorted(sources.SOURCES)}.")
  if shards < 1 or workers < 1:
    raise ValueError(f"--shards={shards} and --workers={workers} must be at least 1.")
  return tokenizers.load(cfg.data.tokenizer or "byte")


def overrides(manifest, out, cfg):
  """The training overrides that read this prepare, as --config.KEY=VALUE flags."""
  pairs = {"data.corpus": "array_record",
           "data.files": os.path.join(os.path.abspath(out), "*.array_record"),
           "data.token_dtype": manifest["token_dtype"], "data.tokenizer": manifest["tokenizer"]}
  if cfg.data.max_bytes:
    pairs["data.max_bytes"] = 0  # the shards hold the capped corpus; a cap would count id bytes
  if cfg.model.vocab_size < manifest["vocab_size"]:
    pairs["model.vocab_size"] = manifest["vocab_size"]
  return " ".join(f"--config.{k}={shlex.quote(str(v))}" for k, v in pairs.items())


def _write(tmp, cfg, dtype, bounds, workers, bar):
  """Writes the shards into tmp; (documents, tokens per shard, text bytes)."""
  from array_record.python import array_record_module
  names, shard, writer, doc, tokens, nbytes = shard_names(len(bounds) - 1), 0, None, 0, 0, 0
  width, per_shard = np.dtype(sources.TOKEN_DTYPES[dtype]).itemsize, [0] * len(names)
  try:
    for size, records in encode_pool.encoded(
        _chunks(sources.documents(cfg.data)), cfg.data.tokenizer or "byte", dtype, workers):
      for record in records:
        if doc == bounds[-1]:
          raise ValueError(f"the corpus changed while it was read (more than the {doc} "
                           "documents counted); run prepare again.")
        if doc == bounds[shard + 1]:  # every shard holds at least one document
          shard += 1
          writer.close()
          writer = None
        if writer is None:
          writer = array_record_module.ArrayRecordWriter(os.path.join(tmp, names[shard]),
                                                         RECORD_OPTIONS)
        writer.write(record)
        doc, tokens = doc + 1, tokens + len(record) // width
        per_shard[shard] += len(record) // width
      nbytes += size
      bar.update(doc, nbytes, tokens)
  finally:
    if writer is not None:
      writer.close()
  return doc, per_shard, nbytes


def prepare(cfg, out, shards=1, workers=1, config_spec=None, bar=None):
  """Prepares cfg's corpus into `out` (see the module doc); returns the manifest."""
  tok = _check(cfg, shards, workers)
  wanted = inputs(cfg, tok, shards)
  done = _finished(out, wanted)
  if done is not None:
    logging.info(f"{out}: already prepared from these inputs ({done['documents']:,} "
                 f"documents, {done['tokens']:,} tokens); nothing to do.")
    return done
  documents, text_bytes = _count(cfg.data)
  if documents < shards:
    raise ValueError(f"the corpus holds {documents} documents, fewer than --shards={shards}.")
  dtype = token_dtype(tok.vocab_size)
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.tmp-", dir=parent)
  mask = os.umask(0o22)
  os.umask(mask)
  os.chmod(tmp, 0o777 & ~mask)  # mkdtemp's 0700 would become DIR's
  bar = bar or PrepareProgress(documents)
  try:
    written, per_shard, _ = _write(tmp, cfg, dtype, shard_bounds(documents, shards), workers, bar)
    if written != documents:
      raise ValueError(f"the corpus changed while it was read ({documents} documents counted, "
                       f"{written} read); run prepare again.")
    bounds = shard_bounds(documents, shards)
    manifest = {
        "format": FORMAT, "tokenizer": wanted["tokenizer"], "tokenizer_name": tok.name,
        "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "token_dtype": dtype,
        "documents": documents, "tokens": int(sum(per_shard)), "text_bytes": text_bytes,
        "source": {**wanted["source"], "config": config_spec},
        "shard_names": shard_names(shards),
        "shards": [{"name": name, "documents": bounds[k + 1] - bounds[k], "tokens": per_shard[k]}
                   for k, name in enumerate(shard_names(shards))],
        "inputs": wanted}
    metrics.write_json_atomic(os.path.join(tmp, MANIFEST), manifest)
    os.rename(tmp, out)  # replaces an empty `out`; a non-empty one was refused above
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  finally:
    bar.close()
  return manifest


# --- command line -----------------------------------------------------------
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# --config is also experiments.train's and --out sweeps.fit's (absl flags are
# process-global): whichever module loads last holds the name; a process runs one main.
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and variant, e.g. experiments/configs/lm.py:small; its "
    "data section names the corpus and the tokenizer.", allow_override=True)
_OUT = flags.DEFINE_string("out", None, "Output directory (made atomically).",
                           allow_override=True)
_SHARDS = flags.DEFINE_integer("shards", 1, "ArrayRecord shards to write.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Tokenizer processes.")


def main(argv):
  del argv
  logs.setup()
  if _CONFIG.value is None or not _OUT.value:
    raise app.UsageError("--config=FILE.py[:variant] and --out=DIR are required",
                         exitcode=logs.EXIT_BAD_INPUT)

  def body():
    spec = config_lib.argv_config_spec(sys.argv)
    manifest = prepare(_CONFIG.value, _OUT.value, _SHARDS.value, _WORKERS.value, spec)
    print(f"prepared {manifest['documents']:,} documents, {manifest['tokens']:,} tokens "
          f"({manifest['token_dtype']}, vocab {manifest['vocab_size']}) in "
          f"{len(manifest['shard_names'])} shards: {_OUT.value}")
    print(overrides(manifest, _OUT.value, _CONFIG.value))
    return 0
  return logs.guard(body)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
