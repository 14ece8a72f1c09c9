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
  c.init_from = ""          # a run directory: start from its latest params (fine-tuning;
                            # fresh optimizer and step 0), e.g. a dense run made sparse
  c.steps = 1000
  c.batch_size = 16
  c.seq_len = 128
  c.log_every = 10
  c.eval_every = 100
  c.eval_batches = 4
  c.checkpoint_every = 100
  c.keep_checkpoints = 2
  c.data = _data()
  c.model = _model()
  c.attention = _attention()
  c.optimizer = _optimizer()
  c.mesh = _mesh()
  c.wandb = _wandb()
  return c


def _data():
  c = config_dict.ConfigDict()
  c.corpus = "synthetic"         # synthetic | pystdlib | text_files | parquet | array_record
                                 # | hf_dataset | token_bin (experiments/sources.py)
  c.seed = 1234                  # the source itself (chain, file sampling)
  c.synthetic_alphabet = 16      # synthetic: order-k Markov chain over symbols
  c.synthetic_order = 2
  c.synthetic_branching = 3      # successors per context
  c.synthetic_windows = 16384    # train windows in the pool (eval pool is 1/16)
  c.files = ""                   # file corpora: comma-separated globs (hf_dataset: its directory)
  c.text_field = "text"          # jsonl field / parquet or hf_dataset column holding the text
  c.token_field = ""             # parquet / hf_dataset: a list<int> column of token ids instead
  c.token_dtype = ""             # array_record (token records), token_bin: uint16 | uint32
  c.tokenizer = "byte"           # byte | path to a SentencePiece *.model | HF tokenizers *.json
  c.max_bytes = 0                # cap on corpus bytes (0 = all)
  c.packing = "auto"             # auto | concat | segments (document masking; auto: segments
                                 # for text and token corpora) (experiments/packing.py)
  c.eval_fraction = 0.02         # text corpora: share of documents held out
  return c


def _model():
  c = config_dict.ConfigDict()
  c.width = 64
  c.depth = 2
  c.heads = 4
  c.kv_heads = 2
  c.head_dim = 0                # 0 = width // heads
  c.mlp_width = 192
  c.vocab_size = 256            # byte-level tokenizer
  c.tie_embeddings = False
  c.parametrization = "sp"      # sp | mup | umup (u-muP: unit init, ops and gradients)
  c.mup_base_width = 64         # muP: width of the tuned proxy model
  c.depth_scaling = "none"      # none | completep (residual branches x depth_base / depth);
                                # umup has its own depth rule (keep none)
  c.depth_base = 2              # completep: depth of the tuned proxy model
  # u-muP's hyperparameters (Blake et al. 2024, Sec. 4.5; all > 0, the paper's defaults 1):
  c.umup_residual_mult = 1.0        # all residual branches' variance / the embedding's
  c.umup_residual_attn_ratio = 1.0  # attention branches' contribution / the MLP's
  c.umup_attn_softmax_mult = 1.0    # attention logits q.k / K x this
  c.umup_ffn_act_mult = 1.0         # SwiGLU: up * silu(this x gate)
  c.umup_loss_softmax_mult = 1.0    # logits (into the loss's softmax) x this
  c.init_std = 0.02
  c.norm_eps = 1e-6
  c.rope_theta = 10000.0
  c.compute_dtype = "float32"   # float32 | bfloat16 (params stay float32)
  return c


def _attention():
  c = config_dict.ConfigDict()
  c.kind = "dense"          # dense | block_sparse | spectral | linear
  c.impl = "auto"           # auto | pallas | xla | reference
  c.pattern = ()            # per-layer kinds, cycled over depth
  c.estimator = "static"    # block_sparse: static | sparge
  c.block_q = 128           # compiled TPU blocks: multiples of 128 (or the whole length)
  c.block_k = 128
  # Pallas compute tiles apart from the mask blocks: multiples or divisors of them
  # (e.g. 64-blocks in 128-tiles on TPU); None: the blocks (backward: the forward's).
  c.fwd_block_q = placeholder(int)
  c.fwd_block_k = placeholder(int)
  c.bwd_block_q = placeholder(int)
  c.bwd_block_k = placeholder(int)
  c.fused_bwd = False       # pallas: FlashAttention-2's one-kernel backward (5 matmuls a
                            # tile, not 7; GPU atomics, TPU an nK x dq float32 buffer)
  c.window_blocks = placeholder(int)
  c.sink_blocks = placeholder(int)
  c.topk = placeholder(float)
  c.topp = placeholder(float)
  c.sim_threshold = placeholder(float)
  c.high_freq_dims = placeholder(int)
  c.low_freq_dims = placeholder(int)  # prism's low band (None: 3/4 of head_dim, as Prism)
  c.max_blocks = placeholder(int)  # xla sparse path: static bound on kept blocks per row
  c.pv_threshold = placeholder(float)  # SpargeAttn stage 2 lambda (<= 0; kernels/pv_skip.py)
  c.thresholds = ""         # per-layer estimator params from `python -m experiments.calibrate`
  c.distill_weight = 0.0    # sparse layers: + weight x |o_sparse - sg(o_dense)|^2 / |o_dense|^2
  c.distill_teacher = ""    # a dense run: distill towards its frozen logits instead (KL)
  c.feature_map = "identity"  # linear: identity | elu1 | relu | squared
  c.normalize = False
  c.chunk_size = 64
  c.decay = True            # linear: per-token decay -softplus(W_a x + b)
  c.conv = True             # linear: causal depthwise conv (size 2) on q, k, v
  return c


def _optimizer():
  c = config_dict.ConfigDict()
  c.lr = 3e-3
  c.schedule = "cosine"     # cosine | wsd | constant (all with warmup)
  c.warmup_steps = 50
  c.decay_fraction = 0.2    # wsd: share of steps in the final decay
  c.min_lr_ratio = 0.1
  c.weight_decay = 0.1
  c.b1 = 0.9
  c.b2 = 0.95
  c.eps = 1e-8
  c.grad_clip = 1.0
  return c


def _mesh():
  c = config_dict.ConfigDict()
  c.data = -1
  c.fsdp = 1
  c.tensor = 1
  c.sequence = 1
  c.context = "ulysses"     # sequence > 1: ulysses | untied (all-to-all head_chunks at a time)
  c.head_chunks = 1         # untied: chunks of each device's heads (divides them)
  c.rules = parallel.DEFAULT_RULES
  return c


def _wandb():
  c = config_dict.ConfigDict()
  c.mode = "offline"            # offline | online | disabled
  c.project = "chinchax"
  c.entity = placeholder(str)
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
  c.model.update(width=512, depth=4, heads=8, kv_heads=4, mlp_width=1536)
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 100
  return c


def b1():
  """~0.94B parameters (models.count_params): for --compile_only and accelerators."""
  c = small()
  c.seq_len = 2048
  c.batch_size = 64
  c.model.update(width=2048, depth=20, heads=16, kv_heads=8, mlp_width=5632, vocab_size=256,
                 compute_dtype="bfloat16")
  c.optimizer.lr = 3e-4
  return c


VARIANTS = {"tiny": tiny, "small": small, "1b": b1}


def get_config(variant="tiny"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of lm.py; choose one of {sorted(VARIANTS)}.")
  return VARIANTS[variant]()
