"""experiments.prepare (issue 14): shards are the same for any worker count, the
training stream read from them equals the one read from the text corpus, and an
interrupted or refused prepare leaves nothing behind."""
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from experiments import config as config_lib, corpora, data, prepare, tokenizers
from tests.helpers import LM_CONFIG, REPO, micro_config

# Real text: standard-library sources, cut short (small and deterministic).
TEXTS = [d[:3000].decode("utf-8", errors="replace").encode("utf-8")
         for d in corpora.read_documents(corpora.stdlib_files()[:150]) if d.strip()][:90]


class Quiet:
  """A progress sink; raises KeyboardInterrupt at update `stop_at` (an interrupt)."""

  def __init__(self, stop_at=None):
    self.updates, self.stop_at = 0, stop_at

  def update(self, docs, nbytes, tokens):
    self.updates += 1
    if self.updates == self.stop_at:
      raise KeyboardInterrupt("stopped by the test")

  def close(self):
    pass


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("prepare_corpus")
  with open(root / "docs.jsonl", "w") as f:
    for t in TEXTS:
      f.write(json.dumps({"text": t.decode("utf-8")}) + "\n")
  return {"jsonl": str(root / "docs.jsonl"), "hf": tokenizers.train_hf_bpe([t.decode("utf-8") for t in TEXTS], root / "tok.json", 400)}


def _cfg(tokenizer="byte", **data_overrides):
  cfg = micro_config(**{f"data.{k}": v for k, v in data_overrides.items()},
                     **{"data.tokenizer": tokenizer})
  cfg.model.vocab_size = max(256, tokenizers.load(tokenizer).vocab_size)
  return cfg


def _text_cfg(corpus, tokenizer="byte", **more):
  return _cfg(tokenizer, corpus="text_files", files=corpus["jsonl"], **more)


def _streams(cfg):
  d = data.build(cfg)
  return np.asarray(d.train_source._stream), np.asarray(d.eval_source._stream)


def _from_line(cfg, line):
  """cfg with the printed override line (--config.KEY=VALUE ...) applied."""
  pairs = dict(arg[len("--config."):].split("=", 1) for arg in shlex.split(line))
  current = {k: config_lib.flatten(config_lib.to_dict(cfg))[k] for k in pairs}
  return config_lib.override(cfg, {k: type(current[k])(v) for k, v in pairs.items()})


def _records(out, manifest):
  from array_record.python import array_record_module
  shards = []
  for name in manifest["shard_names"]:
    reader = array_record_module.ArrayRecordReader(os.path.join(out, name))
    shards.append(reader.read_all())
    reader.close()
  return shards


@pytest.mark.parametrize("tokenizer", ["byte", "hf"])
def test_any_worker_count_gives_the_same_shards_and_training_stream(tokenizer, corpus,
                                                                    tmp_path):
  spec = corpus.get(tokenizer, tokenizer)
  cfg = _text_cfg(corpus, spec)
  outs = {k: str(tmp_path / f"w{k}") for k in (1, 2)}
  manifests = {k: prepare.prepare(cfg, out, shards=3, workers=k, bar=Quiet())
               for k, out in outs.items()}
  assert _records(outs[1], manifests[1]) == _records(outs[2], manifests[2])
  m = manifests[1]
  assert m["documents"] == len(TEXTS) and [s["documents"] for s in m["shards"]] == [30] * 3
  assert m["token_dtype"] == "uint16" and m["tokenizer"] == spec
  assert m["vocab_size"] == tokenizers.load(spec).vocab_size
  line = prepare.overrides(m, outs[2], cfg)
  reference, prepared = _streams(cfg), _streams(_from_line(cfg, line))
  for a, b in zip(reference, prepared):
    assert a.dtype == b.dtype and np.array_equal(a, b)
  assert m["tokens"] == sum(len(tokenizers.load(spec).encode(t)) for t in TEXTS)
  if tokenizer == "hf":
    assert m["tokens"] < 0.9 * sum(map(len, TEXTS))  # it learned merges


def test_the_worker_pool_never_forks_the_caller(corpus, tmp_path, monkeypatch):
  """The caller runs JAX's threads; a fork of it can deadlock on a lock one of them held
  (a CI run hung so). Workers come from a fresh fork server: the caller never forks."""
  def refuse_fork():
    raise AssertionError("os.fork() in the calling process")
  monkeypatch.setattr(os, "fork", refuse_fork)
  serial = prepare.prepare(_text_cfg(corpus), str(tmp_path / "w1"), shards=2, bar=Quiet())
  pooled = prepare.prepare(_text_cfg(corpus), str(tmp_path / "w2"), shards=2, workers=2,
                           bar=Quiet())
  assert pooled == serial


def test_the_workers_do_not_run_the_callers_main(tmp_path):
  """A script that starts the pool is imported by no worker: not a benchmark's jax per
  worker, not an unguarded script's body once more per worker."""
  script = tmp_path / "caller.py"
  script.write_text(
      "print('imported', flush=True)\n"
      "from experiments import encode_pool\n"
      "chunks = [(10, (0, ['hello world', 'abc'])), (10, (2, ['more text']))]\n"
      "if __name__ == '__main__':\n"
      "  print(len(list(encode_pool.encoded(iter(chunks), 'byte', 'uint16', 2))))\n")
  proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["imported", "2"]


def test_a_finished_prepare_is_reused_and_other_inputs_are_refused(corpus, tmp_path):
  out = str(tmp_path / "out")
  first = prepare.prepare(_text_cfg(corpus), out, shards=2, bar=Quiet())
  before = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)}
  again = prepare.prepare(_text_cfg(corpus), out, shards=2, workers=2, bar=Quiet())
  assert again == first  # the worker count is not an input
  assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)} == before
  with pytest.raises(ValueError, match="differs in: shards"):
    prepare.prepare(_text_cfg(corpus), out, shards=3, bar=Quiet())
  with pytest.raises(ValueError, match="differs in: tokenizer, tokenizer_sha256"):
    prepare.prepare(_text_cfg(corpus, corpus["hf"]), out, shards=2, bar=Quiet())
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="is not a finished prepare"):
    prepare.prepare(_text_cfg(corpus), str(tmp_path / "other"), bar=Quiet())
  (tmp_path / "empty").mkdir()  # an empty directory is used
  assert prepare.prepare(_text_cfg(corpus), str(tmp_path / "empty"), bar=Quiet())["documents"]
  assert sorted(os.listdir(tmp_path)) == ["empty", "other", "out"]


@pytest.mark.parametrize("workers", [1, 2])
def test_an_interrupted_prepare_leaves_nothing(workers, corpus, tmp_path, monkeypatch):
  monkeypatch.setattr(prepare, "CHUNK_DOCS", 10)  # several chunks: stop after the second
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(_text_cfg(corpus), str(tmp_path / "out"), shards=3, workers=workers,
                    bar=Quiet(stop_at=2))
  assert os.listdir(tmp_path) == []


def test_bad_input_fails_before_anything_is_written(corpus, tmp_path):
  out = str(tmp_path / "sub" / "out")
  cases = [  # (message, cfg, shards)
      ("matches no files", _cfg(corpus="text_files", files=f"{tmp_path}/none*.jsonl"), 1),
      ("is not 'byte' or an existing file",
       _text_cfg(corpus).copy_and_resolve_references(), 1),
      ("cannot be prepared", _cfg(corpus="synthetic"), 1),
      ("fewer than --shards=100", _text_cfg(corpus), 100),
      ("must be at least 1", _text_cfg(corpus), 0),
  ]
  cases[1][1].data.tokenizer = str(tmp_path / "missing.json")
  for message, cfg, shards in cases:
    with pytest.raises(ValueError, match=message):
      prepare.prepare(cfg, out, shards=shards, bar=Quiet())
  assert os.listdir(tmp_path) == []


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "experiments.prepare",
                         f"--config={LM_CONFIG}:tiny", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_cli_prints_the_training_overrides(corpus, tmp_path):
  out = str(tmp_path / "out")
  proc = _cli("--config.data.corpus=text_files", f"--config.data.files={corpus['jsonl']}",
              f"--config.data.tokenizer={corpus['hf']}", f"--out={out}", "--shards=2",
              "--workers=2")
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert lines[0].startswith(f"prepared {len(TEXTS)} documents") and "in 2 shards" in lines[0]
  vocab = tokenizers.load(corpus["hf"]).vocab_size
  assert lines[-1] == (f"--config.data.corpus=array_record --config.data.files='{out}/"
                       f"*.array_record' --config.data.token_dtype=uint16 "
                       f"--config.data.tokenizer={corpus['hf']} --config.model.vocab_size={vocab}")
  assert "prepare 90/90 docs" in proc.stderr  # the log-line progress off a terminal
  cfg = _text_cfg(corpus, corpus["hf"])
  assert np.array_equal(_streams(cfg)[0], _streams(_from_line(cfg, lines[-1]))[0])


def test_cli_bad_input_exits_2(corpus, tmp_path):
  out = str(tmp_path / "out")
  cases = {("--config.data.filez=x", f"--out={out}"): "data.files",
           ("--config.data.corpus=text_files", f"--config.data.files={tmp_path}/no*.jsonl",
            f"--out={out}"): "matches no files",
           ("--config.data.corpus=text_files",): "--out=DIR are required"}
  for args, message in cases.items():
    proc = _cli(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
  assert os.listdir(tmp_path) == []


def test_progress_is_a_bar_on_a_terminal():
  import io
  from rich import console as console_lib
  sink = io.StringIO()
  bar = prepare.PrepareProgress(10, console=console_lib.Console(file=sink, force_terminal=True,
                                                                width=100))
  bar.update(5, 2_000_000, 12_345)
  bar.close()
  assert "prepare" in sink.getvalue() and "5/10" in sink.getvalue()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failure_while_writing_leaves_nothing(workers, tmp_path):
  from array_record.python import array_record_module
  path = str(tmp_path / "in" / "ids.array_record")
  os.makedirs(os.path.dirname(path))
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for ids in [[1, 2, 3]] * 300 + [[1, 300]]:  # the last document's ids exceed the bytes' 256
    writer.write(np.asarray(ids, "<u2").tobytes())
  writer.close()
  cfg = _cfg(corpus="array_record", files=path, token_dtype="uint16")
  with pytest.raises(ValueError, match="document 300 holds ids in \\[1, 300\\]"):
    prepare.prepare(cfg, str(tmp_path / "out"), shards=2, workers=workers, bar=Quiet())
  assert os.listdir(tmp_path) == ["in"]
