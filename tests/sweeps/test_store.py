"""Run store reader: flattening, summaries, curves, and damaged stores."""
import json
import os

import pytest

from sweeps import store, synthetic


@pytest.fixture
def small_store(tmp_path):
  frame = synthetic.isoflop_design(budgets=2, per_budget=3)
  synthetic.write_store(str(tmp_path), frame, steps=4, extra_config={"attention.kind": "linear"})
  return tmp_path, frame


def test_load_flattens_config_and_joins_summary(small_store):
  path, frame = small_store
  runs = store.load(str(path))
  assert len(runs) == len(frame)
  assert set(runs["run_id"]) == set(frame["run_id"])
  assert (runs["attention.kind"] == "linear").all()
  assert (runs["model.width"] == 64).all()
  assert (runs["status"] == "done").all()
  by_id = runs.set_index("run_id")
  for row in frame.itertuples():
    assert by_id.loc[row.run_id, "params"] == pytest.approx(row.N)
    assert by_id.loc[row.run_id, "final_loss"] == pytest.approx(row.loss)


def test_curves_long_form(small_store):
  path, frame = small_store
  long = store.curves(str(path))
  assert len(long) == 4 * len(frame)
  assert {"run_id", "step", "tokens", "flops", "loss", "eval_loss"} <= set(long.columns)
  last = long[long.step == 4].set_index("run_id")
  for row in frame.itertuples():
    assert last.loc[row.run_id, "loss"] == pytest.approx(row.loss)


def test_truncated_metrics_and_missing_summary_are_counted(small_store):
  path, frame = small_store
  first, second = sorted(os.listdir(path))[:2]
  with open(path / first / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "loss": 1.\n')  # a crash mid-write
    f.write("not json\n")
  os.remove(path / second / "summary.json")
  os.makedirs(path / "broken")
  (path / "broken" / "config.json").write_text("{")
  with pytest.warns(UserWarning, match="skipped 2 malformed metrics line"):
    long = store.curves(str(path))
  assert len(long) == 4 * len(frame)
  with pytest.warns(UserWarning) as record:
    runs = store.load(str(path))
  messages = " ".join(str(w.message) for w in record)
  assert "1 run(s) have no summary.json" in messages
  assert "unreadable" in messages and "broken" in messages
  assert runs.set_index("run_id").loc[second, "status"] == "unknown"
  assert len(runs) == len(frame)


def test_missing_store_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="not a directory"):
    store.load(str(tmp_path / "nope"))


def test_flatten_nested():
  assert store.flatten({"a": {"b": {"c": 1}}, "d": [1, 2]}) == {"a.b.c": 1, "d": [1, 2]}
  json.dumps(store.flatten({"x": {"y": 2}}))
