"""experiments.calibrate: per-layer thresholds on a tiny trained run meet the target on
held-out batches at a lower density than the default; per-tile scoring is exact."""
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import MICRO_FLAGS, REPO, run_train
from experiments import block_stats, calibrate, calibrate_search as search, probe
from kernels import dense, pv_skip, sparse

TARGET = 0.08
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# A small grid keeps the test fast (the CLI searches search.grid's 61 settings).
GRID = tuple({"topk": t, "topp": None, "sim_threshold": None, "pv_threshold": None}
             for t in (0.05, 0.15, 0.25, 0.35, 0.5, 0.7, 1.0))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A tiny run trained a few steps (one device): seq 128 in 16-token blocks. Compiled
  without XLA's CPU optimisations (the run is compile-bound; the tests read its weights)."""
  workdir = tmp_path_factory.mktemp("calibrate") / "run"
  proc = run_train(workdir, *MICRO_FLAGS, "steps=30", "seq_len=128", "checkpoint_every=30",
                   "eval_every=30", "log_every=10", "model.width=64", "model.heads=4",
                   "model.kv_heads=2", "model.mlp_width=128", "attention.block_q=16",
                   "attention.block_k=16", "optimizer.lr=0.01",
                   env={"XLA_FLAGS": "--xla_backend_optimization_level=0 "
                        "--xla_llvm_disable_expensive_passes=true"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return str(workdir)


def _fake_run(path, checkpoint=True):
  """A run directory that only looks trained (config.json, an empty checkpoint step)."""
  from tests.helpers import micro_config
  from experiments import config as config_lib
  os.makedirs(os.path.join(path, "checkpoints", "1") if checkpoint else path)
  cfg = micro_config(**{"seq_len": 128})
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config_lib.to_json(cfg))
  return str(path)


def _inputs(seed, batch=2, length=64, heads=4, groups=2, dim=8, scale=4.0):
  a, b, c = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = jax.random.normal(a, (batch, length, heads, dim)) * scale
  k = jax.random.normal(b, (batch, length, groups, dim))
  v = jax.random.normal(c, (batch, length, groups, dim))
  seg = jnp.array([[1] * 20 + [2] * (length - 20), [1] * length])[:batch]
  return q, k, v, seg


# The oracles only need correct numbers: compiled without XLA's CPU optimisations (as
# tests.kernels.flash_checks.compile_fast), which is most of these tests' time.
_REFERENCE = jax.jit(pv_skip.reference_attention,
                     static_argnames=("block_q", "block_k", "causal", "pv_threshold"),
                     compiler_options=FAST)


def test_tile_scores_equal_the_oracles():
  q, k, v, seg = _inputs(0)  # row 0: two documents, row 1: one
  mask = jax.random.bernoulli(jax.random.PRNGKey(3), 0.7, (2, 4, 4, 8))
  everything = jnp.ones(mask.shape, bool)
  pvs = (None, -0.1)

  def scores_and_oracles(q, k, v, seg, mask):
    """Everything below as one program (one compile, not one per library call)."""
    stats = block_stats.tile_stats(q, k, v, seg, block_q=16, block_k=8)
    return dict(
        want=[pv_skip.reference_attention(q, k, v, mask, block_q=16, block_k=8,
                                          segment_ids_BL=seg, pv_threshold=pv)
              for pv in pvs],
        got=[block_stats.output(stats, mask, -jnp.inf if pv is None else pv) for pv in pvs],
        o_dense=dense.reference_attention(q, k, v,
                                          mask_BHQK=block_stats.token_allowed(64, seg)),
        o_everything=block_stats.output(stats, everything)[0],
        recall_everything=block_stats.recall(stats, everything),
        recall_mask=block_stats.recall(stats, mask),
        errors=block_stats.errors(stats, mask, -0.1))

  r = jax.jit(scores_and_oracles, compiler_options=FAST)(q, k, v, seg, mask)
  for pv, (want, want_skipped), (got, skipped) in zip(pvs, r["want"], r["got"]):
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_array_equal(skipped, want_skipped)
    assert (int(skipped.sum()) > 0) == (pv is not None)  # stage 2 is exercised
  o_dense = r["o_dense"]
  np.testing.assert_allclose(r["o_everything"], o_dense, atol=2e-5)
  assert float(r["recall_everything"]) == pytest.approx(1.0, abs=1e-5)
  assert 0 < float(r["recall_mask"]) < 1
  errors = r["errors"]
  assert float(errors["skipped"]) == int(skipped.sum())
  assert float(errors["l1"]) == pytest.approx(float(jnp.sum(jnp.abs(got - o_dense))), rel=1e-4)


@pytest.mark.parametrize("estimator,settings,segments", [
    ("sparge", ({"topk": 0.3, "topp": 0.6, "sim_threshold": 0.5},), True),
    ("prism", ({"topp": 0.7, "high_freq_dims": 2},), False)])
def test_grid_masks_equal_block_mask(estimator, settings, segments):
  q, k, _, seg = _inputs(1, length=128)
  seg = seg if segments else None
  keys = tuple(tuple(s.items()) for s in settings)
  masks, densities = block_stats.estimate_masks(
      q, k, seg, estimator=estimator, settings=keys, block_q=16, block_k=16)
  for s, mask, density in zip(settings, masks, densities):
    want = sparse.block_mask(q, k, estimator=estimator, block_q=16, block_k=16,
                             segment_ids_BL=seg, **s)
    np.testing.assert_array_equal(mask, want.mask_BHQK)
    assert float(density) == pytest.approx(float(want.density), abs=1e-6)


def test_calibrated_thresholds_meet_the_target_below_the_default_density(tiny_run, tmp_path):
  opts = search.Options(run=tiny_run, target_error=TARGET, pv=True, grid=GRID)
  record = calibrate.calibrate(opts)
  assert record["format"] == calibrate.FORMAT and record["kind"] == "block_sparse"
  assert (record["block_q"], record["block_k"], record["seq_len"]) == (16, 16, 128)
  layers = record["layers"]
  assert [e["layer"] for e in layers] == [0, 1]
  for e in layers:
    assert set(e["params"]) == {"topk", "topp", "sim_threshold", "pv_threshold"}
    assert e["heldout_error"] <= TARGET and e["calib_error"] <= TARGET
    assert e["density"] < e["default"]["density"], e
    assert e["default"]["params"]["topk"] == search.DEFAULT_TOPK
  path = str(tmp_path / "sub" / "thresholds.json")
  calibrate.write(record, path)
  assert calibrate.load(path) == json.loads(json.dumps(record))
  assert os.listdir(tmp_path / "sub") == ["thresholds.json"]  # no temp file left
  # Independent check on other held-out windows, through the library's own mask.
  run = probe.open_run(tiny_run)
  window = probe.batches(run.cfg, "eval", 1, skip=record["heldout_batches"])[0]
  for e, (q, k, v, seg) in zip(layers, probe.capture(run, window)):
    params = {n: x for n, x in e["params"].items() if x is not None and n != "pv_threshold"}
    bm = sparse.block_mask(q, k, estimator="sparge", block_q=16, block_k=16,
                           segment_ids_BL=seg, **params)
    o, _ = _REFERENCE(q, k, v, bm.mask_BHQK, block_q=16, block_k=16, segment_ids_BL=seg,
                      pv_threshold=e["params"]["pv_threshold"])
    o_dense, _ = _REFERENCE(q, k, v, jnp.ones_like(bm.mask_BHQK), block_q=16, block_k=16,
                            segment_ids_BL=seg)
    error = float(jnp.sum(jnp.abs(o - o_dense)) / jnp.sum(jnp.abs(o_dense)))
    assert error <= 1.5 * TARGET, (e["layer"], error)
  # No setting meets a target this tight: exit-2 error, after the table, and no file.
  tight = search.Options(run=tiny_run, target_error=1e-4, grid=GRID[:1])
  with pytest.raises(search.TargetNotMet, match=r"layer\(s\) \[0, 1\] cannot meet"):
    calibrate.calibrate(tight)


def test_bad_inputs_name_the_fix_before_anything_is_written(tmp_path):
  run = _fake_run(tmp_path / "run")
  untrained = _fake_run(tmp_path / "untrained", checkpoint=False)
  cases = [(search.Options(run=str(tmp_path / "nope")), "does not exist"),
           (search.Options(run=untrained), "no checkpoint"),
           (search.Options(run=run, target_error=1.5), "target_error must be in (0, 1)"),
           (search.Options(run=run, target_error=0.0), "target_error must be in (0, 1)"),
           (search.Options(run=run, kind="dense"), "is not a block kind"),
           (search.Options(run=run, kind="block_sparse", block_q=48), "must divide seq_len"),
           (search.Options(run=run, calib_batches=0), "calib_batches must be >= 1")]
  for opts, message in cases:
    with pytest.raises(ValueError, match=re.escape(message)):
      search.check(opts)
  assert search.check(search.Options(run=run))[1:] == ("sparge", [0, 1])
  assert search.check(search.Options(run=run, kind="spectral"))[1] == "prism"
  out = tmp_path / "t.json"
  proc = subprocess.run([sys.executable, "-m", "experiments.calibrate", f"--run={run}",
                         "--kind=linear", f"--out={out}"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "error: --kind must be one of" in proc.stderr, proc.stderr[-2000:]
  assert not out.exists() and sorted(os.listdir(run)) == ["checkpoints", "config.json"]
