"""Coordinate checks (experiments/coord_check.py), issue 13's must-hold 1 for width (mup
and umup flat, sp's logits growing) and CompleteP's depth check (Dey et al. 2025, Fig. 7:
the final residual stream after a few steps is flat in depth with alpha = 1 and grows
without depth scaling).

Nearly all the cost is XLA compiling each (width, depth, parametrization) model, so every
model is measured once (`_measure` caches "t0" and "t5" together) and the checks that read
the same models share one test: under pytest-xdist, split tests recompile."""
import functools

import pytest

from experiments import coord_check

STEPS = 5
# 256 tokens a step: with fewer the SwiGLU output's update at width 512 is visibly
# finite-batch (64 tokens put mup's mlp_out at 0.45x the width-64 value).
SIZE = {"batch_size": 8, "seq_len": 32}
# 4x deeper: without depth scaling the final residual stream grows ~9x (CompleteP ~0.9x);
# 16 blocks said the same; the blocks are unrolled, so compile time grows with depth.
DEEP = 8


@functools.lru_cache(maxsize=None)
def _measure(width, depth, parametrization, depth_scaling="none"):
  cfg = coord_check.coord_config(width, depth, parametrization, depth_scaling, **SIZE)
  return coord_check.measure(cfg, steps=STEPS)


def _after(*args):
  return _measure(*args)[f"t{STEPS}"]


def _ratios(small, large):
  return {layer: large[layer] / small[layer] for layer in small}


def test_width_mup_umup_are_flat_sp_logits_grow():
  sp = _ratios(_after(64, 2, "sp"), _after(512, 2, "sp"))
  assert sp["logits"] > 2.0, sp
  for parametrization in ("mup", "umup"):
    flat = _ratios(_after(64, 2, parametrization), _after(512, 2, parametrization))
    assert set(flat) >= {"embed", "blocks.0.attn_out", "blocks.1.mlp_out", "residual",
                         "logits"}, parametrization
    for layer, ratio in flat.items():
      assert 0.5 <= ratio <= 2.0, (parametrization, layer, flat)
  # What test_measure_reports_every_group_at_init checked on its own models: every group
  # at init, init_std at every width (u-muP's unit init), for each parametrization.
  for parametrization in ("sp", "mup", "umup"):
    for width in (64, 512):
      t0 = _measure(width, 2, parametrization)["t0"]
      assert set(coord_check.group_rms(t0)) == set(coord_check.GROUPS), parametrization
      expected = 1.0 if parametrization == "umup" else 0.02
      assert t0["embed"] == pytest.approx(expected, rel=0.2), (parametrization, width)


def _depth_ratios(depth_scaling):
  return _ratios(_after(64, 2, "mup", depth_scaling), _after(64, DEEP, "mup", depth_scaling))


def _flat_in_depth(ratios):
  """What CompleteP predicts: the final residual stream (and the logits read from it)
  after training stays O(1) as depth grows 4x."""
  return all(0.5 <= ratios[layer] <= 2.0 for layer in ("residual", "logits"))


def test_depth_completep_is_flat_none_grows():
  completep, none = _depth_ratios("completep"), _depth_ratios("none")
  assert _flat_in_depth(completep), completep
  # Without depth scaling each of the L blocks adds an O(lr) update to the stream.
  assert none["residual"] > 2.0, none
  assert not _flat_in_depth(none), none  # so the CompleteP assertion can fail
