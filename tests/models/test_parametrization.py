"""The parametrization table (models/parametrization.py): parameter groups, the rules the
init and the optimizer read from it, CompleteP's depth rules, the README's copy, and the
config checks of its keys."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import models
from experiments import optimizer, validation
from models import parametrization as P
from tests.helpers import REPO

LINEAR = {"attention.kind": "linear", "attention.impl": "xla"}


def _cfg(micro_cfg, width=32, **overrides):
  return micro_cfg(**{"model.width": width, "model.heads": width // 16,
                      "model.kv_heads": width // 16, "model.mlp_width": 2 * width,
                      "model.mup_base_width": 32, "optimizer.warmup_steps": 0,
                      "optimizer.schedule": "constant", **overrides})


def _params(cfg):
  graphdef, state = nnx.split(models.LM(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  return graphdef, nnx.to_pure_dict(state)


def _loss_and_update(cfg):
  graphdef, params = _params(cfg)
  tokens = jax.random.randint(jax.random.key(0), (4, 17), 0, cfg.model.vocab_size)

  def loss(p):
    logp = jax.nn.log_softmax(nnx.merge(graphdef, nnx.State(p))(tokens[:, :-1]))
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))

  value, grads = jax.value_and_grad(loss)(params)
  tx, _ = optimizer.make(cfg.optimizer, 10, params, cfg.model)
  updates, _ = tx.update(grads, tx.init(params), params)
  return params, float(value), updates


def _named(tree):
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_every_parameter_has_its_group(micro_cfg):
  cfg = _cfg(micro_cfg, **LINEAR)
  groups = {name: P.classify(name, v.shape) for name, v in _named(_params(cfg)[1]).items()}
  for name, group in groups.items():
    leaf = re.findall(r"'(\w+)'\]$", name)[0]
    expected = {"embed_VD": "embedding", "unembed_DV": "readout"}.get(leaf)
    expected = expected or ("conv" if leaf.startswith("conv_") else None)
    expected = expected or ("vector" if leaf in ("scale", "decay_bias_H") else "hidden")
    assert group == expected, (name, group)
  assert {"embedding", "hidden", "readout", "vector", "conv"} == set(groups.values())


def test_mup_lr_multipliers_follow_fan_in(micro_cfg):
  """The issue-13 defect: the 3-D depthwise conv (constant fan-in) had hidden's lr / m."""
  cfg = _cfg(micro_cfg, width=128, **{"model.parametrization": "mup", **LINEAR})
  params = _named(_params(cfg)[1])
  mults = _named(optimizer.lr_multipliers(_params(cfg)[1], cfg.model))
  for name, mult in mults.items():  # m = 128 / 32: only hidden learns at lr / m
    group = P.classify(name, params[name].shape)
    assert mult == (0.25 if group == "hidden" else 1.0), (name, group, mult)
  assert mults["['blocks'][0]['attn']['conv_q_2HK']"] == 1.0
  assert mults["['blocks'][0]['attn']['wq_DHK']"] == 0.25


@pytest.mark.parametrize("kind", [LINEAR, {"attention.kind": "dense"}], ids=["linear", "dense"])
def test_mup_equals_sp_at_base_width(micro_cfg, kind):
  """Issue 13, must-hold 2: at width == mup_base_width the multipliers are all 1, so mup
  builds the same params and (for a layer without softmax attention) the same loss and
  first update, bitwise. Dense attention differs only by the documented logit scale
  (1/K under mup, 1/sqrt(K) under sp): tiny at init, so loss and update stay close."""
  sp = _loss_and_update(_cfg(micro_cfg, **kind))
  mup = _loss_and_update(_cfg(micro_cfg, **{"model.parametrization": "mup", **kind}))
  for a, b in zip(jax.tree.leaves(sp[0]), jax.tree.leaves(mup[0])):
    np.testing.assert_array_equal(a, b)
  if kind["attention.kind"] == "linear":
    assert sp[1] == mup[1]
    for a, b in zip(jax.tree.leaves(sp[2]), jax.tree.leaves(mup[2])):
      np.testing.assert_array_equal(a, b)
  else:
    assert sp[1] == pytest.approx(mup[1], rel=1e-5)
    delta = optax.global_norm(jax.tree.map(lambda a, b: a - b, sp[2], mup[2]))
    assert float(delta) < 0.05 * float(optax.global_norm(sp[2]))


def test_completep_at_base_depth_is_none(micro_cfg):
  base = _loss_and_update(_cfg(micro_cfg, **{"model.parametrization": "mup"}))
  cp = _loss_and_update(_cfg(micro_cfg, **{"model.parametrization": "mup",
                                           "model.depth_scaling": "completep",
                                           "model.depth_base": 2}))
  assert base[1] == cp[1]
  for a, b in zip(jax.tree.leaves(base[0]) + jax.tree.leaves(base[2]),
                  jax.tree.leaves(cp[0]) + jax.tree.leaves(cp[2])):
    np.testing.assert_array_equal(a, b)


def test_completep_rules(micro_cfg):
  """Depth 8 on a base of 2 (d = 4), width 64 on 32 (m = 2): branches x 1/4, the residual
  output init frozen at the base depth, block LRs unchanged (alpha = 1), block eps / (m d)."""
  cfg = _cfg(micro_cfg, width=64, **{"model.parametrization": "mup", "model.depth": 8,
                                     "model.depth_scaling": "completep", "model.depth_base": 2})
  assert P.branch_multiplier(cfg.model) == 0.25
  assert P.residual_out_std(cfg.model, 1.0) == 0.5
  params = _params(cfg)[1]
  lr, eps = (_named(f(params, cfg.model)) for f in (optimizer.lr_multipliers,
                                                    optimizer.eps_multipliers))
  assert lr["['blocks'][3]['mlp']['w_up_DF']"] == 0.5
  assert lr["['blocks'][3]['attn_norm']['scale']"] == 1.0
  assert eps["['blocks'][3]['mlp']['w_up_DF']"] == eps["['blocks'][0]['attn_norm']['scale']"]
  assert eps["['blocks'][3]['mlp']['w_up_DF']"] == 0.125
  assert eps["['embed_VD']"] == eps["['final_norm']['scale']"] == 1.0


def test_per_parameter_eps_via_gradient_scale():
  """optimizer.make's CompleteP eps: gradients x 1/c before AdamW == AdamW with eps x c."""
  g = {"w": jnp.array([1e-7, -3e-8, 2e-6])}
  p = {"w": jnp.zeros(3)}
  c = 0.01
  ref = optax.adam(1.0, eps=1e-7 * c)
  got = optax.chain(optax.scale(1.0 / c), optax.adam(1.0, eps=1e-7))
  want, _ = ref.update(g, ref.init(p), p)
  out, _ = got.update(g, got.init(p), p)
  np.testing.assert_allclose(out["w"], want["w"], rtol=1e-5)


def test_readme_table_is_the_code_table():
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  section = readme.split("## Parametrizations", 1)[1].split("\n## ", 1)[0]
  assert P.markdown_table() in section


@pytest.mark.parametrize("overrides,fragments", [
    ({"model.depth_scaling": "depth_mup"}, ["model.depth_scaling 'depth_mup'", "'completep'"]),
    ({"model.depth_scaling": "completep", "model.depth_base": 0}, ["model.depth_base 0", ">= 1"]),
])
def test_depth_keys_are_validated(micro_cfg, overrides, fragments):
  with pytest.raises(ValueError) as err:
    validation.validate(micro_cfg(**overrides))
  for fragment in fragments:
    assert fragment in str(err.value)
  validation.validate(micro_cfg(**{"model.depth_scaling": "completep"}))
