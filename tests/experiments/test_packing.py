"""data.packing: segment ids and positions from the separators, the model on a packed row
equals the model on each document alone, and the config checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
from experiments import packing, validation
from kernels import kinds

L = 32


def test_segments_start_at_each_separator_and_positions_restart():
  tokens = jnp.array([[5, 6, 0, 7, 8, 9, 0, 1], [0, 1, 2, 3, 0, 0, 4, 5]])
  seg, pos = packing.segments(tokens, 0)
  np.testing.assert_array_equal(seg, [[1, 1, 2, 2, 2, 2, 3, 3], [1, 1, 1, 1, 2, 3, 3, 3]])
  np.testing.assert_array_equal(pos, [[0, 1, 0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 0, 0, 1, 2]])
  assert packing.model_inputs(tokens, None) == {}


def test_packing_resolves_per_corpus_and_rejects_what_cannot_work(micro_cfg):
  assert packing.resolve(micro_cfg().data) == "concat"  # synthetic: no documents
  assert packing.resolve(micro_cfg(**{"data.corpus": "pystdlib"}).data) == "segments"
  assert packing.resolve(micro_cfg(**{"data.corpus": "pystdlib",
                                      "data.packing": "concat"}).data) == "concat"
  with pytest.raises(ValueError, match="synthetic corpus has none"):
    validation.validate(micro_cfg(**{"data.packing": "segments"}))
  with pytest.raises(ValueError, match=r"data.packing 'pack'.*auto"):
    validation.validate(micro_cfg(**{"data.packing": "pack", "data.corpus": "pystdlib"}))
  kinds.register(kinds.KindSpec("noseg_toy2", impls={"xla": lambda q, k, v, **_: q},
                                flops=lambda *a: 0.0))
  try:
    with pytest.raises(ValueError, match=r"\['noseg_toy2'\] do not support segment ids.*"
                                         "packing=concat"):
      validation.validate(micro_cfg(**{"data.corpus": "pystdlib",
                                       "attention.kind": "noseg_toy2"}))
    validation.validate(micro_cfg(**{"data.corpus": "pystdlib", "data.packing": "concat",
                                     "attention.kind": "noseg_toy2"}))
  finally:
    kinds.unregister("noseg_toy2")


@pytest.mark.parametrize("kind", ["dense", "linear"])
def test_the_model_on_a_packed_row_equals_each_document_alone(micro_cfg, kind):
  """RoPE positions, attention (softmax or linear state) and the linear mixer's conv all
  restart at each separator; a document alone is run at the start of its own row."""
  cfg = micro_cfg(**{"data.corpus": "pystdlib", "attention.kind": kind,
                     "attention.impl": "xla", "attention.conv": True,
                     "attention.decay": True})
  model = models.LM(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  lengths = [7, 15, 10]
  docs = [np.concatenate([[0], rng.integers(1, 256, n - 1)]) for n in lengths]
  tokens = jnp.asarray(np.concatenate(docs))[None]
  packed = model(tokens, **packing.model_inputs(tokens, 0))
  alone_rows = jnp.asarray(np.stack([np.pad(d, (0, L - len(d)), constant_values=9)
                                     for d in docs]))
  alone = model(alone_rows)
  start = 0
  for row, n in enumerate(lengths):
    np.testing.assert_allclose(packed[0, start:start + n], alone[row, :n], rtol=2e-5,
                               atol=2e-5)
    start += n
  unmasked = model(tokens)
  assert float(jnp.max(jnp.abs(unmasked[0, 7:] - packed[0, 7:]))) > 1e-3
