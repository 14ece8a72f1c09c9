"""Corpus sources and tokenizers (issue 14): the same documents through every
source give the same token stream; tokenizers trained here round-trip; resume on
an ArrayRecord corpus is bitwise. Every file is made here, nothing is downloaded."""
import json
import os
import shutil

import numpy as np
import pytest

from experiments import corpora, data, metrics, sources, tokenizers, train
from tests.helpers import micro_config

# Real text: the first standard-library sources, cut short (tiny and deterministic).
DOCS = [d[:3000] for d in corpora.read_documents(corpora.stdlib_files()[:200]) if d.strip()][:120]
TEXTS = [d.decode("utf-8", errors="replace").encode("utf-8") for d in DOCS]


def _cfg(**data_overrides):
  return micro_config(**{f"data.{k}": v for k, v in data_overrides.items()})


def _streams(cfg):
  d = data.build(cfg)
  return np.asarray(d.train_source._stream), np.asarray(d.eval_source._stream)


def write_jsonl(path, texts=TEXTS):
  with open(path, "w") as f:
    for t in texts:
      f.write(json.dumps({"text": t.decode("utf-8")}) + "\n")


def write_parquet(path, column, values, row_group_size=25):
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({column: values, "id": list(range(len(values)))}), path,
                 row_group_size=row_group_size)


def write_array_record(path, records):
  from array_record.python import array_record_module
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for r in records:
    writer.write(r)
  writer.close()


def write_hf_dataset(path, column, values):
  import datasets
  datasets.Dataset.from_dict({column: values}).save_to_disk(path, max_shard_size="20KB")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("sources")
  write_jsonl(root / "docs.jsonl")
  write_parquet(str(root / "docs.parquet"), "text", [t.decode("utf-8") for t in TEXTS])
  write_array_record(str(root / "docs.array_record"), TEXTS)
  write_hf_dataset(str(root / "hf"), "text", [t.decode("utf-8") for t in TEXTS])
  ids = [np.frombuffer(t, np.uint8).astype(np.uint16) for t in TEXTS]
  write_parquet(str(root / "tokens.parquet"), "ids", [i.tolist() for i in ids])
  write_array_record(str(root / "tokens.array_record"), [i.astype("<u2").tobytes() for i in ids])
  write_hf_dataset(str(root / "hf_tokens"), "ids", [i.tolist() for i in ids])
  return root


def test_every_source_gives_the_same_token_stream(corpus_dir):
  reference = _streams(_cfg(corpus="text_files", files=f"{corpus_dir}/docs.jsonl"))
  assert reference[0].dtype == np.uint8 and len(reference[0]) > 100_000
  same = {
      "parquet text": _cfg(corpus="parquet", files=f"{corpus_dir}/docs.parquet"),
      "array_record text": _cfg(corpus="array_record", files=f"{corpus_dir}/docs.array_record"),
      "hf_dataset text": _cfg(corpus="hf_dataset", files=f"{corpus_dir}/hf"),
      "parquet tokens": _cfg(corpus="parquet", files=f"{corpus_dir}/tokens.parquet",
                             token_field="ids"),
      "array_record tokens": _cfg(corpus="array_record", token_dtype="uint16",
                                  files=f"{corpus_dir}/tokens.array_record"),
      "hf_dataset tokens": _cfg(corpus="hf_dataset", files=f"{corpus_dir}/hf_tokens",
                                token_field="ids"),
  }
  assert len(os.listdir(corpus_dir / "hf")) > 3  # several Arrow shards, read in order
  for name, cfg in same.items():
    train_s, eval_s = _streams(cfg)
    assert np.array_equal(train_s, reference[0]) and np.array_equal(eval_s, reference[1]), name


def test_token_bin_is_one_document_per_file(tmp_path):
  ids = np.concatenate([np.frombuffer(t, np.uint8) for t in TEXTS]).astype("<u2")
  ids.tofile(tmp_path / "train.bin")
  train_s, eval_s = _streams(_cfg(corpus="token_bin", files=f"{tmp_path}/*.bin",
                                  token_dtype="uint16"))
  assert np.array_equal(np.concatenate([train_s, eval_s]), ids)  # one file: the tail is held out


def test_source_errors_name_the_key(corpus_dir, tmp_path):
  cases = {
      "no column 'body'": _cfg(corpus="parquet", files=f"{corpus_dir}/docs.parquet",
                               text_field="body"),
      "matches no files": _cfg(corpus="parquet", files=f"{tmp_path}/none*.parquet"),
      "data.token_dtype=''": _cfg(corpus="token_bin", files=f"{corpus_dir}/docs.jsonl"),
      "not a saved Hugging Face dataset": _cfg(corpus="hf_dataset", files=str(tmp_path)),
      "outside model.vocab_size 256": _cfg(corpus="parquet", token_field="ids",
                                           files=f"{tmp_path}/big.parquet"),
      "not text": _cfg(corpus="parquet", files=f"{corpus_dir}/docs.parquet", text_field="id"),
  }
  write_parquet(str(tmp_path / "big.parquet"), "ids", [[1, 2, 300]] * 10)
  for message, cfg in cases.items():
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
      data.build(cfg)


@pytest.mark.parametrize("kind", ["sentencepiece", "hf"])
def test_trained_tokenizer_round_trips_and_trains(kind, corpus_dir, tmp_path):
  texts = [t.decode("utf-8") for t in TEXTS]
  path = (tokenizers.train_sentencepiece_bpe(texts, tmp_path / "sp", 400)
          if kind == "sentencepiece" else tokenizers.train_hf_bpe(texts, tmp_path / "tok.json", 400))
  tok = tokenizers.load(path)
  assert 300 <= tok.vocab_size <= 400
  sample = "def f(x):\n\treturn {'a': x ** 2}  # ünïcode\n"
  assert tok.decode(tok.encode(sample)) == sample
  ids = tok.encode(TEXTS[0])
  assert len(ids) < 0.9 * len(TEXTS[0])  # it learned merges: fewer tokens than bytes
  small = _cfg(corpus="text_files", files=f"{corpus_dir}/docs.jsonl", tokenizer=path)
  with pytest.raises(ValueError, match=f"model.vocab_size={tok.vocab_size}"):
    data.build(small)
  cfg = _cfg(corpus="text_files", files=f"{corpus_dir}/docs.jsonl", tokenizer=path)
  cfg.model.vocab_size = tok.vocab_size
  d = data.build(cfg)
  train_s = np.asarray(d.train_source._stream)
  assert train_s.dtype == np.uint16 and train_s.max() < tok.vocab_size
  assert d.summary["data_tokenizer"].endswith(os.path.basename(path))
  assert np.count_nonzero(train_s == tok.eos_id) >= len(TEXTS) * 0.9 - 1  # documents joined


def test_tokenizer_spec_errors(tmp_path):
  with pytest.raises(ValueError, match="is not 'byte' or an existing file"):
    tokenizers.load("gpt2")
  (tmp_path / "t.vocab").write_text("x")
  with pytest.raises(ValueError, match="unknown tokenizer file type '.vocab'"):
    tokenizers.load(str(tmp_path / "t.vocab"))
  (tmp_path / "t.json").write_text("{not json")
  with pytest.raises(ValueError, match="does not load"):
    tokenizers.load(str(tmp_path / "t.json"))


def _losses(workdir):
  records, _ = metrics.read_metrics(os.path.join(workdir, metrics.METRICS))
  return {r["step"]: r["loss"] for r in records}


@pytest.mark.slow
def test_resume_on_an_array_record_corpus_is_bitwise(corpus_dir, tmp_path):
  cfg = _cfg(corpus="array_record", files=f"{corpus_dir}/docs.array_record")
  cfg.steps = 20
  reference = str(tmp_path / "reference")
  assert train.run(cfg, reference)["status"] == "done"
  resumed = str(tmp_path / "resumed")
  shutil.copytree(reference, resumed)  # as a crash after step 10 would leave it
  shutil.rmtree(os.path.join(resumed, "checkpoints", "20"))
  metrics.truncate_metrics(os.path.join(resumed, metrics.METRICS), 12)
  summary = metrics.read_json(os.path.join(resumed, metrics.SUMMARY))
  metrics.write_json_atomic(os.path.join(resumed, metrics.SUMMARY),
                            {**summary, "status": "running", "step": 12})
  assert train.run(cfg, resumed)["status"] == "done"
  assert _losses(resumed) == _losses(reference) and len(_losses(reference)) == 4


def test_sources_registry_is_the_corpus_list():
  assert set(data.CORPORA) == {"synthetic", *sources.SOURCES}
