"""FLOPs per token under both conventions (models.flops), against hand counts.

One micro config throughout: D=32, H=2 query heads, G=1 kv head, K=16, MLP F=64,
V=256, L=32, depth 2. Every expected number below is written out by hand; none
calls the code under test. The dense executed count is also in test_model.py.
"""
import pytest

from models import flops

# Forward, per token: embedding 2VD + head 2DV + per layer q/k/v/o 2D(2HK + 2GK)
# and the SwiGLU MLP 2 x 3DF.
EMBED = HEAD = 2 * 256 * 32          # 16384
PROJ = 2 * 32 * (2 * 2 * 16 + 2 * 1 * 16)  # 6144
MLP = 2 * 3 * 32 * 64                # 12288
COMMON = EMBED + HEAD + 2 * (PROJ + MLP)  # 69632
SCORE = 2 * (4 * 16 + 3)             # per head and scored key: 4K + softmax 3; x H


def train(core_per_layer_sum):
  return 3 * (COMMON + core_per_layer_sum)


def counts(cfg, density=None):
  return (flops.flops_per_token(cfg, density),
          flops.flops_per_token(cfg, density, convention="chinchilla"))


def test_dense(micro_cfg):
  # executed: (L+1)/2 = 16.5 keys per query; chinchilla: all L = 32.
  assert counts(micro_cfg()) == (train(2 * SCORE * 16.5), train(2 * SCORE * 32))
  assert counts(micro_cfg()) == (222162, 234624)


def test_block_sparse_at_half_density(micro_cfg):
  cfg = micro_cfg(**{"attention.kind": "block_sparse", "attention.block_q": 8,
                     "attention.block_k": 8})
  # 4 x 4 blocks of 8: 1 + 2 + 3 + 4 = 10 causal blocks of 64 pairs over 32 queries,
  # half kept: 10 scores per query. chinchilla: half of L = 16.
  assert counts(cfg, 0.5) == (train(2 * SCORE * 10), train(2 * SCORE * 16))


def test_spectral_at_quarter_density(micro_cfg):
  cfg = micro_cfg(**{"attention.kind": "spectral", "attention.block_q": 16,
                     "attention.block_k": 16})
  # 2 x 2 blocks of 16: 3 causal blocks of 256 pairs over 32 queries, a quarter
  # kept: 6 scores per query. chinchilla: a quarter of L = 8.
  assert counts(cfg, 0.25) == (train(2 * SCORE * 6), train(2 * SCORE * 8))


def linear(micro_cfg, **overrides):
  return micro_cfg(**{"attention.kind": "linear", "attention.chunk_size": 8,
                      "attention.decay": False, "attention.conv": False, **overrides})


# Per head, C = 8, K = 16. chinchilla: the recurrence's state read and update,
# 4 x features x values. xla: its row of the C x C chunk product q.k (for squared
# (q.k)^2, still K wide), of (scores)V, then the state read and update. pallas: the
# same passes (kernels/linear_kernels.py), and the current token (q.k, its v) in jnp.
IDENTITY = {"attention.impl": "xla"}
SQUARED = {"attention.impl": "xla", "attention.feature_map": "squared",
           "attention.normalize": True}
LINEAR_CASES = {  # name: (overrides, executed per layer, chinchilla per layer)
    "identity": (IDENTITY, 2 * (2 * 16 * 8 + 2 * 16 * 8 + 4 * 16 * 16), 2 * 4 * 16 * 16),
    # features K(K+1)/2 = 136, values K + 1 = 17 (the normaliser as one more column)
    "squared_normalized": (SQUARED, 2 * (2 * 16 * 8 + 2 * 17 * 8 + 4 * 136 * 17),
                           2 * 4 * 136 * 17),
    "pallas_squared_normalized": (
        {**SQUARED, "attention.impl": "pallas"},
        2 * (2 * 16 * 8 + 2 * 17 * 8 + 4 * 136 * 17 + 2 * 136 + 2 * 17), 2 * 4 * 136 * 17),
    "reference_squared_normalized": ({**SQUARED, "attention.impl": "reference"},
                                     2 * 4 * 136 * 17, 2 * 4 * 136 * 17),
    # chunk 12: 32 tokens run as 36, so each real token pays 36/32 positions.
    "padded": ({**IDENTITY, "attention.chunk_size": 12},
               2 * (2 * 16 * 12 + 2 * 16 * 12 + 4 * 16 * 16) * 36 / 32, 2 * 4 * 16 * 16),
    # W_a x: 2 D H = 128; size-2 convs on q (H K) and k, v (G K each): 2 x 2 x 64 = 256.
    "decay_conv": ({**IDENTITY, "attention.decay": True, "attention.conv": True},
                   2 * (2 * 16 * 8 + 2 * 16 * 8 + 4 * 16 * 16) + 128 + 256,
                   2 * 4 * 16 * 16 + 128 + 256),
}


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_linear(micro_cfg, case):
  overrides, executed, model = LINEAR_CASES[case]
  assert counts(linear(micro_cfg, **overrides)) == pytest.approx(
      (train(2 * executed), train(2 * model)))


def test_dense_linear_hybrid(micro_cfg):
  cfg = linear(micro_cfg, **{**IDENTITY, "attention.pattern": ("dense", "linear")})
  _, executed, model = LINEAR_CASES["identity"]
  assert counts(cfg) == (train(SCORE * 16.5 + executed), train(SCORE * 32 + model))


def test_mfu_is_model_flops_over_time_and_peak(micro_cfg):
  # 234624 chinchilla FLOPs per token x 8 x 32 tokens per step, in 0.5 s at 1 GFLOP/s.
  assert flops.mfu(micro_cfg(), 0.5, 1e9) == pytest.approx(234624 * 256 / 0.5e9)


def test_unknown_convention_is_refused(micro_cfg):
  with pytest.raises(ValueError, match="chinchilla"):
    flops.flops_per_token(micro_cfg(), convention="palm")
