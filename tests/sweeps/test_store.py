"""Run store reader: flattening, summaries, curves, and damaged stores."""
import json
import logging
import os

import numpy as np
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


def _messages(record) -> str:
  return "\n".join(str(w.message) for w in record)


def test_truncated_metrics_and_missing_summary_are_named(small_store):
  path, frame = small_store
  first, second, third = sorted(os.listdir(path))[:3]
  with open(path / first / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "loss": 1.\n')  # a crash mid-write
    f.write("not json\n")
  with open(path / third / "metrics.jsonl", "a") as f:
    f.write("[1, 2]\n")  # valid JSON, not a record
  os.remove(path / second / "summary.json")
  os.makedirs(path / "broken")
  (path / "broken" / "config.json").write_text("{")
  with pytest.warns(UserWarning) as record:
    long = store.curves(str(path))
  messages = _messages(record)
  assert f"{first!r}: 2 malformed metrics line(s)" in messages
  assert f"{third!r}: 1 malformed metrics line(s)" in messages
  assert len(long) == 4 * len(frame)
  with pytest.warns(UserWarning) as record:
    runs = store.load(str(path))
  messages = _messages(record)
  assert f"1 run(s) have no summary.json (status 'unknown'): {second}" in messages
  assert "'broken': config.json is not valid JSON (line 1 col 2" in messages
  assert runs.set_index("run_id").loc[second, "status"] == "unknown"
  assert len(runs) == len(frame)


def _write_run(run_dir, config=None, summary=None, metrics=None):
  os.makedirs(run_dir, exist_ok=True)
  for name, text in (("config.json", config), ("summary.json", summary),
                     ("metrics.jsonl", metrics)):
    if text is not None:
      (run_dir / name).write_text(text)


def test_malformed_runs_are_skipped_and_each_is_named(small_store):
  path, frame = small_store
  good_config = (path / frame.run_id[0] / "config.json").read_text()
  good_summary = json.loads((path / frame.run_id[0] / "summary.json").read_text())
  metrics = '{"step": 1, "loss": 3.0}\n'
  _write_run(path / "cfg-list", config="[1, 2, 3]", summary=json.dumps(good_summary))
  _write_run(path / "sum-null", config=good_config, summary="null")
  _write_run(path / "no-config", summary=json.dumps(good_summary), metrics=metrics)
  _write_run(path / "cfg-cut", config='{"seed": 0, "mod')
  _write_run(path / "params-str", config=good_config,
             summary=json.dumps({**good_summary, "params": "abc"}))
  _write_run(path / "loss-list", config=good_config,
             summary=json.dumps({**good_summary, "final_loss": [1.0]}))
  # NaN is written as null: a valid run whose loss is NaN.
  _write_run(path / "loss-null", config=good_config,
             summary=json.dumps({**good_summary, "final_loss": None}))
  for quiet in (".submitit", "empty", ".hidden"):  # not runs: ignored without a word
    os.makedirs(path / quiet / "sub")
  with pytest.warns(UserWarning) as record:
    runs = store.load(str(path))
  assert set(runs["run_id"]) == set(frame["run_id"]) | {"loss-null"}
  assert np.isnan(runs.set_index("run_id").loc["loss-null", "final_loss"])
  reasons = {
      "cfg-list": "config.json is not a JSON object (got list)",
      "sum-null": "summary.json is not a JSON object (got null)",
      "no-config": "config.json missing",
      "cfg-cut": "config.json is not valid JSON (line 1 col 13",
      "params-str": "summary.json field 'params' is not a number (got string \"abc\")",
      "loss-list": "summary.json field 'final_loss' is not a number (got list [1.0])"}
  messages = _messages(record)
  assert "skipped 6 unreadable run(s)" in messages
  for run_id, reason in reasons.items():
    assert f"{run_id!r}: {reason}" in messages, run_id
  assert runs.attrs["skipped"].keys() == reasons.keys()
  assert runs.attrs["store"] == str(path)
  for quiet in (".submitit", "empty", ".hidden"):
    assert quiet not in messages
  # curves keep the metrics of a run that lost its config (load reports it).
  assert "no-config" in set(store.curves(str(path))["run_id"])


def test_all_null_summary_field_is_a_float_nan_column(tmp_path):
  frame = synthetic.isoflop_design(budgets=1, per_budget=3)
  synthetic.write_store(str(tmp_path), frame, steps=1)
  for run_id in frame.run_id:
    summary_path = tmp_path / run_id / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**summary, "eval_loss": None}))
  runs, skipped = store.load_report(str(tmp_path))
  assert skipped == {} and runs.attrs["skipped"] == {}
  assert runs["eval_loss"].dtype == float and runs["eval_loss"].isna().all()


def test_fit_cli_prints_runs_read_and_skipped(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  from sweeps import fit as fit_cli, fitting
  frame = synthetic.isoflop_design(budgets=3, per_budget=6)
  synthetic.write_store(str(tmp_path / "store"), frame, steps=1)
  _write_run(tmp_path / "store" / "bad-a", config="null")
  _write_run(tmp_path / "store" / "bad-b", summary="{}")
  with pytest.warns(UserWarning, match="skipped 2 unreadable run"):
    fit_cli.run(store=str(tmp_path / "store"), out=str(tmp_path / "out"), law="isoflop",
                plots=False, options=fitting.FitOptions(bootstrap=0))
  err = caplog.text
  assert f"store {tmp_path / 'store'}: 18 runs read, 2 skipped as unreadable" in err


def test_missing_store_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="not a directory"):
    store.load(str(tmp_path / "nope"))


def test_flatten_nested():
  assert store.flatten({"a": {"b": {"c": 1}}, "d": [1, 2]}) == {"a.b.c": 1, "d": [1, 2]}
  json.dumps(store.flatten({"x": {"y": 2}}))
