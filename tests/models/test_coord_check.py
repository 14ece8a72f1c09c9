"""Coordinate checks (experiments/coord_check.py), issue 13's must-hold 1 for width (mup
and umup flat, sp's logits growing) and CompleteP's depth check (Dey et al. 2025, Fig. 7:
the final residual stream after a few steps is flat in depth with alpha = 1 and grows
without depth scaling)."""
import functools

import pytest

from experiments import coord_check

STEPS = 5
# 256 tokens a step: with fewer the SwiGLU output's update at width 512 is visibly
# finite-batch (64 tokens put mup's mlp_out at 0.45x the width-64 value).
SIZE = {"batch_size": 8, "seq_len": 32}


@functools.lru_cache(maxsize=None)
def _after(width, depth, parametrization, depth_scaling="none"):
  cfg = coord_check.coord_config(width, depth, parametrization, depth_scaling, **SIZE)
  return coord_check.measure(cfg, steps=STEPS)[f"t{STEPS}"]


def _ratios(small, large):
  return {layer: large[layer] / small[layer] for layer in small}


@pytest.mark.parametrize("parametrization", ["mup", "umup"])
def test_width_mup_umup_are_flat_sp_logits_grow(parametrization):
  flat = _ratios(_after(64, 2, parametrization), _after(512, 2, parametrization))
  sp = _ratios(_after(64, 2, "sp"), _after(512, 2, "sp"))
  assert set(flat) >= {"embed", "blocks.0.attn_out", "blocks.1.mlp_out", "residual", "logits"}
  for layer, ratio in flat.items():
    assert 0.5 <= ratio <= 2.0, (layer, flat)
  assert sp["logits"] > 2.0, sp


def _depth_ratios(depth_scaling):
  return _ratios(_after(64, 2, "mup", depth_scaling), _after(64, 16, "mup", depth_scaling))


def _flat_in_depth(ratios):
  """What CompleteP predicts: the final residual stream (and the logits read from it)
  after training stays O(1) as depth grows 8x."""
  return all(0.5 <= ratios[layer] <= 2.0 for layer in ("residual", "logits"))


def test_depth_completep_is_flat_none_grows():
  completep, none = _depth_ratios("completep"), _depth_ratios("none")
  assert _flat_in_depth(completep), completep
  # Without depth scaling each of the L blocks adds an O(lr) update to the stream.
  assert none["residual"] > 2.0, none
  assert not _flat_in_depth(none), none  # so the CompleteP assertion can fail


@pytest.mark.parametrize("parametrization", ["sp", "mup", "umup"])
def test_measure_reports_every_group_at_init(parametrization):
  out = coord_check.measure(coord_check.coord_config(64, 2, parametrization, seq_len=8),
                            steps=1)
  assert set(coord_check.group_rms(out["t0"])) == set(coord_check.GROUPS)
  # init_std at every width; u-muP's unit init
  expected = 1.0 if parametrization == "umup" else 0.02
  assert out["t0"]["embed"] == pytest.approx(expected, rel=0.2)
