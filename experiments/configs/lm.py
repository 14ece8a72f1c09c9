"""Language-model training configs: `--config=experiments/configs/lm.py:VARIANT`.

Variants: tiny (CPU, ~1-2 minutes, learns the synthetic source), small (CPU,
pystdlib bytes), 1b (a ~1B-parameter plan for --compile_only / accelerators).
"""
from ml_collections import config_dict

import parallel

placeholder = config_dict.placeholder


def base():
  c = config_dict.ConfigDict()
  c.seed = 0
  c.steps = 1000
  c.batch_size = 16
  c.seq_len = 128
  c.log_every = 10
  c.eval_every = 100
  c.eval_batches = 4
  c.checkpoint_every = 100
  c.keep_checkpoints = 2

  c.data = config_dict.ConfigDict()
  c.data.corpus = "synthetic"         # synthetic | pystdlib | text_files
  c.data.seed = 1234                  # the source itself (chain, file sampling)
  c.data.synthetic_alphabet = 16      # synthetic: order-k Markov chain over symbols
  c.data.synthetic_order = 2
  c.data.synthetic_branching = 3      # successors per context
  c.data.synthetic_windows = 16384    # train windows in the pool (eval pool is 1/16)
  c.data.files = ""                   # text_files: glob(s) of .txt/.jsonl, comma-separated
  c.data.text_field = "text"          # text_files: jsonl field holding the text
  c.data.max_bytes = 0                # cap on corpus bytes (0 = all)
  c.data.eval_fraction = 0.02         # text corpora: share of documents held out

  c.model = config_dict.ConfigDict()
  c.model.width = 64
  c.model.depth = 2
  c.model.heads = 4
  c.model.kv_heads = 2
  c.model.head_dim = 0                # 0 = width // heads
  c.model.mlp_width = 192
  c.model.vocab_size = 256            # byte-level tokenizer
  c.model.tie_embeddings = False
  c.model.parametrization = "sp"      # sp | mup
  c.model.mup_base_width = 64         # muP: width of the tuned proxy model
  c.model.init_std = 0.02
  c.model.norm_eps = 1e-6
  c.model.rope_theta = 10000.0
  c.model.compute_dtype = "float32"   # float32 | bfloat16 (params stay float32)

  c.attention = config_dict.ConfigDict()
  c.attention.kind = "dense"          # dense | block_sparse | spectral | linear
  c.attention.impl = "auto"           # auto | pallas | xla | reference
  c.attention.pattern = ()            # per-layer kinds, cycled over depth
  c.attention.estimator = "static"    # block_sparse: static | sparge
  c.attention.block_q = 64
  c.attention.block_k = 64
  c.attention.window_blocks = placeholder(int)
  c.attention.sink_blocks = placeholder(int)
  c.attention.topk = placeholder(float)
  c.attention.topp = placeholder(float)
  c.attention.sim_threshold = placeholder(float)
  c.attention.high_freq_dims = placeholder(int)
  c.attention.max_blocks = placeholder(int)  # xla sparse path: static bound on kept blocks per row
  c.attention.feature_map = "identity"  # linear: identity | elu1 | relu | squared
  c.attention.normalize = False
  c.attention.chunk_size = 64
  c.attention.decay = True            # linear: per-token decay -softplus(W_a x + b)
  c.attention.conv = True             # linear: causal depthwise conv (size 2) on q, k, v

  c.optimizer = config_dict.ConfigDict()
  c.optimizer.lr = 3e-3
  c.optimizer.schedule = "cosine"     # cosine | wsd | constant (all with warmup)
  c.optimizer.warmup_steps = 50
  c.optimizer.decay_fraction = 0.2    # wsd: share of steps in the final decay
  c.optimizer.min_lr_ratio = 0.1
  c.optimizer.weight_decay = 0.1
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.grad_clip = 1.0

  c.mesh = config_dict.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.sequence = 1
  c.mesh.rules = parallel.DEFAULT_RULES

  c.wandb = config_dict.ConfigDict()
  c.wandb.mode = "offline"            # offline | online | disabled
  c.wandb.project = "chinchax"
  c.wandb.entity = placeholder(str)
  return c


def tiny():
  c = base()
  c.steps = 400
  c.eval_every = 100
  c.checkpoint_every = 100
  return c


def small():
  c = base()
  c.data.corpus = "pystdlib"
  c.steps = 2000
  c.batch_size = 16
  c.seq_len = 256
  c.eval_every = 250
  c.checkpoint_every = 500
  c.model.width = 512
  c.model.depth = 4
  c.model.heads = 8
  c.model.kv_heads = 4
  c.model.mlp_width = 1536
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 100
  return c


def b1():
  """~0.94B parameters (models.count_params): for --compile_only and accelerators."""
  c = small()
  c.seq_len = 2048
  c.batch_size = 64
  c.model.width = 2048
  c.model.depth = 20
  c.model.heads = 16
  c.model.kv_heads = 8
  c.model.mlp_width = 5632
  c.model.vocab_size = 256
  c.model.compute_dtype = "bfloat16"
  c.optimizer.lr = 3e-4
  return c


VARIANTS = {"tiny": tiny, "small": small, "1b": b1}


def get_config(variant="tiny"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of lm.py; choose one of {sorted(VARIANTS)}.")
  return VARIANTS[variant]()
