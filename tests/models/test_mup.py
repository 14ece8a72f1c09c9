"""muP coordinate check: after a few Adam steps the change in the logits stays
O(1) as width grows under muP, while under SP it grows with width."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import models
from experiments import optimizer


def logit_change(micro_cfg, width, parametrization, steps=3):
  cfg = micro_cfg(**{"model.width": width, "model.heads": width // 16, "model.kv_heads": width // 16,
                     "model.mlp_width": 2 * width, "model.parametrization": parametrization,
                     "model.mup_base_width": 32, "optimizer.lr": 1e-2,
                     "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
                     "optimizer.weight_decay": 0.0})
  model = models.LM(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  params = nnx.to_pure_dict(params)
  tx, _ = optimizer.make(cfg.optimizer, 10, params, cfg.model, models.width_mult(cfg.model))
  tokens = jax.random.randint(jax.random.key(0), (4, 33), 0, 256)

  def logits(p):
    return nnx.merge(graphdef, nnx.State(p))(tokens[:, :-1])

  def loss(p):
    lp = jax.nn.log_softmax(logits(p))
    return -jnp.mean(jnp.take_along_axis(lp, tokens[:, 1:, None], -1))

  # Compiled without XLA's CPU optimisations: compiling the unrolled steps is most of the
  # time, and the check only needs correct numbers.
  @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                "xla_llvm_disable_expensive_passes": True})
  def change(params):
    before = logits(params)
    opt_state = tx.init(params)
    for _ in range(steps):
      updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
      params = optax.apply_updates(params, updates)
    return jnp.sqrt(jnp.mean((logits(params) - before) ** 2))

  return float(change(params))


def test_mup_logit_updates_are_width_independent(micro_cfg):
  widths = (32, 128)
  sp = [logit_change(micro_cfg, w, "sp") for w in widths]
  mup = [logit_change(micro_cfg, w, "mup") for w in widths]
  sp_growth, mup_growth = sp[1] / sp[0], mup[1] / mup[0]
  print(f"SP {sp}, muP {mup}")
  assert sp_growth > 1.8, sp
  assert 0.5 < mup_growth < 1.6, mup
  assert np.isclose(mup[0], sp[0], rtol=0.3)  # same model at the base width
