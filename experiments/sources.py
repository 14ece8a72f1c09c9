"""Document sources for `data.corpus`: each yields documents, as text (bytes) or
as token ids (an int array: a pre-tokenized corpus skips the tokenizer).

  pystdlib      the running Python's standard-library sources (built in)
  text_files    .txt (one document per file) / .jsonl (one per line, `data.text_field`)
  parquet       `data.text_field`, or `data.token_field` (a list<int> column); read
                one row group and one column at a time
  array_record  one document per record: UTF-8 text, or token ids when
                `data.token_dtype` is uint16/uint32 (little-endian), as `prepare` writes
  hf_dataset    a directory written by `datasets.Dataset.save_to_disk` (its Arrow
                files are read with pyarrow, one record batch at a time; no `datasets`)
  token_bin     flat uint16/uint32 token files (nanoGPT's .bin), one document per file

Files come from `data.files` (comma-separated globs; hf_dataset: the directory).
Documents are read in sorted-path order, so the stream is the same on every host.
"""
import glob
import json
import os

import numpy as np

from experiments import corpora

TOKEN_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def paths(cfg_data, what="files"):
  out = []
  for pattern in [p.strip() for p in cfg_data.files.split(",") if p.strip()]:
    out.extend(sorted(glob.glob(os.path.expanduser(pattern), recursive=True)))
  out = [p for p in out if os.path.isfile(p)] if what == "files" else out
  if not out:
    raise ValueError(f"data.files={cfg_data.files!r} matches no {what} for data.corpus="
                     f"{cfg_data.corpus!r}; give a comma-separated glob, e.g. "
                     "--config.data.files='~/corpus/*.parquet'.")
  return out


def _token_dtype(cfg_data, required):
  if cfg_data.token_dtype in TOKEN_DTYPES:
    return TOKEN_DTYPES[cfg_data.token_dtype]
  if required or cfg_data.token_dtype:
    raise ValueError(f"data.token_dtype={cfg_data.token_dtype!r}: use one of "
                     f"{sorted(TOKEN_DTYPES)} for data.corpus={cfg_data.corpus!r}.")
  return None


def _column_docs(batches, cfg_data, where):
  """Documents from Arrow record batches: the token column if named, else text."""
  field = cfg_data.token_field or cfg_data.text_field
  for batch in batches:
    if field not in batch.schema.names:
      raise ValueError(f"{where} has no column {field!r} (columns: {batch.schema.names}); "
                       "set data.text_field or data.token_field.")
    column = batch.column(batch.schema.names.index(field))
    for value in column.to_pylist():
      if cfg_data.token_field:
        yield np.asarray(value, np.int64)
      elif isinstance(value, str):
        yield value.encode("utf-8")
      else:
        raise ValueError(f"{where}: column {field!r} holds {type(value).__name__}, not text; "
                         "a token column goes in data.token_field.")


def _parquet(cfg_data):
  import pyarrow.parquet as pq
  field = cfg_data.token_field or cfg_data.text_field
  for path in paths(cfg_data):
    f = pq.ParquetFile(path)
    if field not in f.schema_arrow.names:
      raise ValueError(f"{path} has no column {field!r} (columns: {f.schema_arrow.names}); "
                       "set data.text_field or data.token_field.")
    groups = (f.read_row_group(i, columns=[field]).to_batches()
              for i in range(f.num_row_groups))
    yield from _column_docs((b for group in groups for b in group), cfg_data, path)


def _hf_dataset(cfg_data):
  import pyarrow as pa
  for directory in paths(cfg_data, what="directories"):
    state = os.path.join(directory, "state.json")
    if not os.path.isfile(state):
      raise ValueError(f"{directory} is not a saved Hugging Face dataset (no state.json); "
                       "write it with datasets.Dataset.save_to_disk.")
    with open(state) as f:
      files = [d["filename"] for d in json.load(f)["_data_files"]]
    for name in files:
      with pa.memory_map(os.path.join(directory, name)) as source:
        yield from _column_docs(pa.ipc.open_stream(source), cfg_data, f"{directory}/{name}")


def _array_record(cfg_data):
  import grain
  dtype = _token_dtype(cfg_data, required=False)
  records = grain.sources.ArrayRecordDataSource(paths(cfg_data))
  for i in range(len(records)):
    yield records[i] if dtype is None else np.frombuffer(records[i], dtype)


def _token_bin(cfg_data):
  dtype = _token_dtype(cfg_data, required=True)
  for path in paths(cfg_data):
    yield np.memmap(path, dtype=dtype, mode="r")


def _text_files(cfg_data):
  yield from corpora.read_documents(paths(cfg_data), cfg_data.text_field, cfg_data.max_bytes)


def _pystdlib(cfg_data):
  yield from corpora.read_documents(corpora.stdlib_files(), max_bytes=cfg_data.max_bytes)


SOURCES = {"pystdlib": _pystdlib, "text_files": _text_files, "parquet": _parquet,
           "array_record": _array_record, "hf_dataset": _hf_dataset, "token_bin": _token_bin}


def documents(cfg_data):
  """The corpus's documents in order, up to data.max_bytes (0 = all) of text or tokens."""
  total = 0
  for doc in SOURCES[cfg_data.corpus](cfg_data):
    yield doc
    total += doc.nbytes if isinstance(doc, np.ndarray) else len(doc)
    if cfg_data.max_bytes and total >= cfg_data.max_bytes:
      return
