import json
import os

import numpy as np
import pytest

from experiments import corpora, data


def test_entropy_rate_is_exact_for_a_known_chain():
  # Order-1 chain on 2 symbols, each with both successors: compare with a closed form.
  chain = corpora.MarkovChain.make(alphabet=2, order=1, branching=2, seed=3)
  P = np.zeros((2, 2))
  for c in range(2):
    P[c, chain.successors_CB[c]] = chain.probs_CB[c]
  pi = np.array([P[1, 0], P[0, 1]]) / (P[1, 0] + P[0, 1])
  h = -np.sum(pi[:, None] * np.where(P > 0, P * np.log(P), 0))
  assert chain.entropy_rate() == pytest.approx(h, rel=1e-9)
  # And empirically: sampled windows' mean -log p approaches the rate.
  w = chain.sample(2000, 200, np.random.default_rng(0)).astype(int)
  nll = -np.log(P[w[:, :-1], w[:, 1:]]).mean()
  assert nll == pytest.approx(h, rel=0.02)


def test_order2_source_needs_context(micro_cfg):
  cfg = micro_cfg()
  chain = corpora.MarkovChain.make(16, 2, 3, cfg.data.seed)
  rate = chain.entropy_rate()
  w = chain.sample(4000, 64, np.random.default_rng(0)).astype(int)
  counts = np.zeros((16, 16))
  np.add.at(counts, (w[:, 1:-1].ravel(), w[:, 2:].ravel()), 1)
  bigram = counts / counts.sum(1, keepdims=True)
  bigram_entropy = -np.nansum(counts * np.log(np.where(bigram > 0, bigram, 1))) / counts.sum()
  assert bigram_entropy > 1.3 * rate  # passing the 1.3x bar needs order-2 context


def test_batches_are_deterministic_and_resumable(micro_cfg):
  cfg = micro_cfg()
  a = data.build(cfg).train_iterator()
  first = [next(a) for _ in range(3)]
  state = a.get_state()
  rest = [next(a) for _ in range(5)]
  b = data.build(cfg).train_iterator()
  np.testing.assert_array_equal(np.stack(first), np.stack([next(b) for _ in range(3)]))
  c = data.build(cfg).train_iterator()
  c.set_state(json.loads(json.dumps(state)))
  np.testing.assert_array_equal(np.stack(rest), np.stack([next(c) for _ in range(5)]))
  assert first[0].shape == (cfg.batch_size, cfg.seq_len + 1) and first[0].dtype == np.int32


def test_processes_get_disjoint_slices(micro_cfg):
  cfg = micro_cfg()
  full = next(data.build(cfg).train_iterator())
  halves = [next(data.build(cfg, p, 2).train_iterator()) for p in range(2)]
  assert halves[0].shape[0] == cfg.batch_size // 2
  rows = {r.tobytes() for h in halves for r in h}
  assert len(rows) == cfg.batch_size and rows == {r.tobytes() for r in full}


def test_pystdlib_is_real_python_in_sorted_order(micro_cfg):
  files = corpora.stdlib_files()
  assert files == sorted(files) and any(f.endswith(os.sep + "os.py") for f in files)
  assert not any("site-packages" in f for f in files)
  d = data.build(micro_cfg(**{"data.corpus": "pystdlib", "data.max_bytes": 2_000_000}))
  text = bytes(next(d.train_iterator())[0].astype(np.uint8))
  assert len(text) == 33 and d.summary["data_eval_bytes"] > 0


def test_text_files_txt_and_jsonl(tmp_path, micro_cfg):
  (tmp_path / "a.txt").write_text("hello world " * 500)
  with open(tmp_path / "b.jsonl", "w") as f:
    for i in range(200):
      f.write(json.dumps({"text": f"document {i} " * 20}) + "\n")
  cfg = micro_cfg(**{"data.corpus": "text_files", "data.files": f"{tmp_path}/*"})
  batch = next(data.build(cfg).train_iterator())
  assert batch.max() < 256
  bad = micro_cfg(**{"data.corpus": "text_files", "data.files": f"{tmp_path}/*.jsonl",
                     "data.text_field": "body"})
  with pytest.raises(ValueError, match="text_field"):
    data.build(bad)


def test_bad_corpus_errors(micro_cfg, tmp_path):
  with pytest.raises(ValueError, match="unknown data.corpus 'wiki'"):
    data.build(micro_cfg(**{"data.corpus": "wiki"}))
  with pytest.raises(ValueError, match="matches no files"):
    data.build(micro_cfg(**{"data.corpus": "text_files", "data.files": f"{tmp_path}/none*.txt"}))
