"""Bad config values fail in validate() (or on the command line) with a message
naming the key and the value, before anything is written; valid configs pass."""
import json
import os
import re
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from tests.helpers import LM_CONFIG, REPO
from experiments import config as config_lib, train, validation
from experiments.configs import lm

# (overrides, fragments the message must hold: the key, the bad value, an alternative)
BAD = {
    "heads_not_dividing_width": ({"model.width": 100, "model.heads": 6, "model.kv_heads": 1},
                                 ["model.width 100", "model.heads 6", "[1, 2, 4, 5, 10",
                                  "model.head_dim"]),
    "kv_heads_zero": ({"model.kv_heads": 0}, ["model.kv_heads 0", ">= 1"]),
    "kv_heads_not_dividing_heads": ({"model.heads": 4, "model.kv_heads": 3},
                                    ["model.kv_heads 3", "model.heads 4", "[1, 2, 4]"]),
    "kv_heads_above_heads": ({"model.heads": 2, "model.kv_heads": 4}, ["model.kv_heads 4"]),
    "width_zero": ({"model.width": 0}, ["model.width 0", ">= 1"]),
    "depth_zero": ({"model.depth": 0}, ["model.depth 0"]),
    "heads_negative": ({"model.heads": -2}, ["model.heads -2"]),
    "mlp_width_zero": ({"model.mlp_width": 0}, ["model.mlp_width 0"]),
    "vocab_size_zero": ({"model.vocab_size": 0}, ["model.vocab_size 0"]),
    "head_dim_negative": ({"model.head_dim": -8}, ["model.head_dim -8", ">= 0"]),
    "head_dim_odd": ({"model.head_dim": 7}, ["model.head_dim 7", "even", "head_dim=8"]),
    "implied_head_dim_odd": ({"model.width": 30, "model.heads": 2},
                             ["model.width 30", "model.heads 2", "15", "model.head_dim"]),
    "parametrization": ({"model.parametrization": "ntk"}, ["model.parametrization 'ntk'",
                                                            "'mup'"]),
    "mup_base_width_zero": ({"model.parametrization": "mup", "model.mup_base_width": 0},
                            ["model.mup_base_width 0"]),
    "compute_dtype": ({"model.compute_dtype": "float16"}, ["model.compute_dtype 'float16'",
                                                           "'bfloat16'"]),
    "rope_theta_zero": ({"model.rope_theta": 0.0}, ["model.rope_theta 0.0", "> 0"]),
    "unknown_kind": ({"attention.kind": "sparse"}, ["attention.kind 'sparse'", "'dense'"]),
    "unknown_pattern_entry": ({"attention.pattern": ("dense", "sparse")},
                              ["attention.pattern entry 1 'sparse'", "'dense'"]),
    "impl": ({"attention.impl": "triton"}, ["attention.impl 'triton'", "'pallas'"]),
    "estimator": ({"attention.estimator": "topk"}, ["attention.estimator 'topk'", "'static'"]),
    # The kernels check these when the model is traced; validate names the config keys.
    "sparge_without_topk_or_topp": ({"attention.kind": "block_sparse",
                                     "attention.estimator": "sparge"},
                                    ["attention.estimator 'sparge' needs attention.topk",
                                     "attention.topp (e.g. 0.98)"]),
    "sparge_in_a_pattern": ({"attention.pattern": ("dense", "block_sparse"),
                             "attention.estimator": "sparge"},
                            ["attention.topk", "(block_sparse layers)"]),
    "topk_above_one": ({"attention.kind": "block_sparse", "attention.estimator": "sparge",
                        "attention.topk": 1.5}, ["attention.topk must be a fraction", "1.5"]),
    "window_blocks_zero": ({"attention.kind": "block_sparse", "attention.window_blocks": 0},
                           ["attention.window_blocks must be an int >= 1", "got 0"]),
    "max_blocks_below_the_diagonal": ({"attention.kind": "block_sparse", "attention.block_q": 16,
                                       "attention.block_k": 8, "attention.estimator": "sparge",
                                       "attention.topk": 0.5, "attention.max_blocks": 1},
                                      ["attention.max_blocks must be an int >= 2", "got 1"]),
    "high_freq_dims_odd": ({"attention.kind": "spectral", "attention.high_freq_dims": 3},
                           ["attention.high_freq_dims must be even", "got 3", "(spectral"]),
    "low_freq_dims_too_wide": ({"attention.kind": "spectral", "attention.low_freq_dims": 30},
                               ["attention.low_freq_dims must be even", "got 30"]),
    "pv_threshold_positive": ({"attention.kind": "block_sparse", "attention.pv_threshold": 3.0},
                              ["attention.pv_threshold (SpargeAttn's lambda)", "got 3.0"]),
    "feature_map": ({"attention.feature_map": "softmax"}, ["attention.feature_map 'softmax'",
                                                           "'elu1'"]),
    "block_q_zero": ({"attention.block_q": 0}, ["attention.block_q 0"]),
    "chunk_size_zero": ({"attention.chunk_size": 0}, ["attention.chunk_size 0"]),
    "fwd_tile_not_a_multiple": ({"attention.block_q": 64, "attention.fwd_block_q": 96},
                                ["attention.fwd_block_q 96", "attention.block_q 64",
                                 "multiple or a divisor"]),
    "fwd_tile_with_stage2": ({"attention.kind": "block_sparse", "attention.block_k": 64,
                              "attention.fwd_block_k": 128, "attention.pv_threshold": -8.0},
                             ["attention.fwd_block_q/_k (128, 128)", "attention.pv_threshold"]),
    "tiles_without_block_kinds": ({"attention.fwd_block_q": 256},
                                  ["attention.fwd_block_q acts on block-sparse layers",
                                   "['dense']"]),
    "tile_not_a_multiple_of_8": ({"attention.block_q": 24, "attention.bwd_block_q": 12},
                                 ["attention.bwd_block_q 12", "multiple of 8"]),
    "too_many_blocks_per_tile": ({"attention.block_q": 16, "attention.block_k": 16,
                                  "attention.fwd_block_q": 128, "attention.fwd_block_k": 128},
                                 ["hold 64 blocks (16, 16)", "at most 31"]),
    "steps_zero": ({"steps": 0}, ["steps 0", ">= 1"]),
    "batch_size_zero": ({"batch_size": 0}, ["batch_size 0"]),
    "seq_len_one": ({"seq_len": 1}, ["seq_len 1", ">= 2"]),
    "eval_batches_zero": ({"eval_batches": 0}, ["eval_batches 0"]),
    "keep_checkpoints_zero": ({"keep_checkpoints": 0}, ["keep_checkpoints 0"]),
    "lr_zero": ({"optimizer.lr": 0.0}, ["optimizer.lr 0.0", "> 0"]),
    "schedule": ({"optimizer.schedule": "linear"}, ["optimizer.schedule 'linear'", "'wsd'"]),
    "warmup_negative": ({"optimizer.warmup_steps": -1}, ["optimizer.warmup_steps -1", ">= 0"]),
    "min_lr_ratio": ({"optimizer.min_lr_ratio": 1.5}, ["optimizer.min_lr_ratio 1.5", "[0, 1]"]),
    "decay_fraction_zero": ({"optimizer.decay_fraction": 0.0},
                            ["optimizer.decay_fraction 0.0", "(0, 1]"]),
    "b2_one": ({"optimizer.b2": 1.0}, ["optimizer.b2 1.0", "[0, 1)"]),
    "grad_clip_zero": ({"optimizer.grad_clip": 0.0}, ["optimizer.grad_clip 0.0"]),
    "eval_fraction_one": ({"data.eval_fraction": 1.0}, ["data.eval_fraction 1.0"]),
    "wandb_mode": ({"wandb.mode": "cloud"}, ["wandb.mode 'cloud'", "'offline'"]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_value_fails_naming_the_key_and_the_value(micro_cfg, name):
  overrides, fragments = BAD[name]
  with pytest.raises(ValueError) as info:
    validation.validate(micro_cfg(**overrides))
  for fragment in fragments:
    assert fragment in str(info.value), (fragment, str(info.value))


@pytest.mark.parametrize("name", ["width_zero", "kv_heads_zero", "heads_not_dividing_width",
                                  "unknown_kind"])
def test_run_fails_before_the_workdir_is_created(tmp_path, micro_cfg, name):
  overrides, fragments = BAD[name]
  workdir = tmp_path / "never"
  with pytest.raises(ValueError, match=fragments[0]):
    train.run(micro_cfg(**overrides), str(workdir))
  assert not workdir.exists()


def test_shipped_configs_and_sweep_runs_validate(micro_cfg):
  from sweeps import plan
  validation.validate(micro_cfg())
  for variant in lm.VARIANTS:
    validation.validate(lm.get_config(variant))
  repo = os.path.join(os.path.dirname(LM_CONFIG), "..", "..")
  for spec in ("sweeps/defs/quickstart.py", "sweeps/defs/quickstart.py:smoke",
               "experiments/reproduce/attention_scaling.py:tiny",
               "experiments/reproduce/attention_scaling.py:paper",
               "experiments/reproduce/attention_scaling.py:smoke"):
    for run in plan.plan(plan.load_sweep(os.path.join(repo, spec))):
      validation.validate(run.cfg)


def test_workdir_that_is_a_file_or_under_one_fails(tmp_path):
  path = tmp_path / "x"
  path.write_text("")
  with pytest.raises(ValueError, match=re.escape(f"--workdir {path} is a file; pass a directory")):
    validation.check_workdir(str(path))
  with pytest.raises(ValueError, match=re.escape(f"{path} is a file")):
    validation.check_workdir(str(path / "run"))
  with pytest.raises(ValueError, match="--workdir is empty"):
    validation.check_workdir("")
  validation.check_workdir(str(tmp_path))  # existing directory
  validation.check_workdir(str(tmp_path / "new" / "run"))  # created later
  assert not (tmp_path / "new").exists()


def test_workdir_under_a_read_only_directory_fails(tmp_path, monkeypatch):
  locked = tmp_path / "locked"
  locked.mkdir()
  # os.access, not chmod: root (as in CI containers) may write anywhere.
  monkeypatch.setattr(os, "access", lambda path, mode: path != str(locked))
  with pytest.raises(ValueError, match=re.escape(f"{locked / 'run'} cannot be created: "
                                                 f"{locked} is not writable")):
    validation.check_workdir(str(locked / "run"))
  with pytest.raises(ValueError, match=re.escape(f"--workdir {locked}: {locked} is not writable")):
    validation.check_workdir(str(locked))


def test_override_value_of_the_wrong_type_names_the_flag_and_an_example():
  cfg = lm.get_config("tiny")
  cases = {
      "--config.steps=abc": "--config.steps: 'abc' is not a valid int (e.g. --config.steps=400)",
      "--config.optimizer.lr=fast": "--config.optimizer.lr: 'fast' is not a valid float",
      "--config.attention.topk=most": "'most' is not a valid float (e.g. --config.attention.topk=",
      "--config.model.tie_embeddings=maybe": "'maybe' is not a valid bool",
  }
  for arg, message in cases.items():
    with pytest.raises(ValueError) as info:
      config_lib.check_override_values(cfg, ["train", arg])
    assert message in str(info.value), (arg, str(info.value))
  with pytest.raises(ValueError, match="'abc' is not a valid int"):
    config_lib.check_override_values(cfg, ["train", "--config.steps", "abc"])
  with pytest.raises(ValueError, match="unknown config key 'stepz'"):
    config_lib.check_override_values(cfg, ["train", "--config.stepz=3"])
  config_lib.check_override_values(cfg, [
      "train", "--config.steps=12", "--config.steps", "13", "--config.optimizer.lr=1",
      "--config.model.tie_embeddings", "--config.attention.pattern=dense,linear",
      "--config.attention.topp=0.5", "--config.wandb.entity=me", "--", "--config.steps=x"])


@pytest.mark.parametrize("arg", [
    "--config.steps=abc", "--config.steps=1e3", "--config.steps=0x10", "--config.steps=-3",
    "--config.optimizer.lr=1", "--config.optimizer.lr=nan", "--config.optimizer.lr=x",
    "--config.model.tie_embeddings=yes", "--config.model.tie_embeddings=0",
    "--config.attention.pattern=dense,linear", "--config.attention.pattern=a b",
    "--config.attention.window_blocks=4", "--config.attention.window_blocks=four"])
def test_override_values_are_accepted_exactly_when_ml_collections_accepts_them(arg):
  argv = ["train", f"--config={LM_CONFIG}:tiny", arg]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv, sys_argv=argv)
  try:
    fv(argv)
    absl_ok = True
  except flags.Error:
    absl_ok = False
  try:
    config_lib.check_override_values(lm.get_config("tiny"), argv)
    ours_ok = True
  except ValueError:
    ours_ok = False
  assert ours_ok == absl_ok, arg


def test_override_of_the_wrong_type_on_the_command_line_fails_cleanly(tmp_path):
  from tests.helpers import run_train
  workdir = tmp_path / "never"
  proc = run_train(workdir, "steps=abc")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "--config.steps: 'abc' is not a valid int" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()


def test_values_only_the_kernels_check_fail_before_the_workdir_exists(tmp_path, micro_cfg):
  from experiments import train
  workdir = tmp_path / "never"
  cfg = micro_cfg(**{"attention.kind": "block_sparse", "attention.block_q": 16,
                     "attention.block_k": 16, "attention.window_blocks": 0})
  with pytest.raises(ValueError, match="window_blocks"):
    train.run(cfg, str(workdir))
  assert not workdir.exists()


def test_calibrated_params_are_checked_and_named_by_their_file(tmp_path, micro_cfg):
  path = tmp_path / "t.json"
  path.write_text(json.dumps({
      "format": "chinchax.thresholds/1", "kind": "block_sparse", "estimator": "sparge",
      "block_q": 16, "block_k": 16, "target_error": 0.01,
      "layers": [{"layer": 0, "params": {"topk": 0.5}}, {"layer": 1, "params": {"topk": 1.5}}]}))
  cfg = micro_cfg(**{"attention.kind": "block_sparse", "attention.estimator": "sparge",
                     "attention.block_q": 16, "attention.block_k": 16,
                     "attention.thresholds": str(path)})  # no config topk: the file's
  with pytest.raises(ValueError, match=re.escape(
      f"attention.thresholds={str(path)!r}: layer 1's params with the config's: topk must")):
    validation.validate(cfg)


def test_sparge_without_topk_on_the_command_line_names_the_keys(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train", f"--config={LM_CONFIG}:tiny",
       f"--workdir={tmp_path / 'never'}", "--compile_only", "--config.attention.kind=block_sparse",
       "--config.attention.estimator=sparge"], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "error: attention.estimator 'sparge' needs attention.topk" in proc.stderr
  assert "Traceback" not in proc.stderr and not (tmp_path / "never").exists()


@pytest.mark.parametrize("kind", ["block_sparse", "spectral"])
def test_any_seq_len_is_accepted_by_the_block_kinds(micro_cfg, kind):
  # The kernels pad to the block multiple inside (kernels/padding.py).
  validation.validate(micro_cfg(**{"attention.kind": kind, "seq_len": 40,
                                   "attention.block_q": 32, "attention.block_k": 24}))
