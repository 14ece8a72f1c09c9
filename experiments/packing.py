"""Document packing: how a window of the packed token stream becomes model inputs.

Text corpora reach the trainer as one stream of documents, each preceded by the
tokenizer's eos id (the separator experiments.data joins them with), cut into windows
of seq_len + 1 tokens: concatenate-then-split packing, no padding, every token a target
once. `data.packing` says what the model may see across a document boundary:

  concat    nothing is masked: attention (every kind) reads across documents and RoPE
            positions run over the whole window (every earlier run; the synthetic
            source, which has no documents, always packs this way).
  segments  document masking: each separator starts a new segment (it acts as the
            document's BOS), a token attends only to its own segment (every attention
            kind and impl; linear attention resets its state), RoPE positions restart
            at 0 at each segment start, and the first, partial segment of a window
            starts at position 0 too. Segment ids and positions are computed on device
            from the window's separators, so the batch, its sharding, the iterator
            checkpoint and resume are the same in both modes.
  auto      segments for text and token corpora, concat for synthetic (the default).

The loss is the mean over every target: with no padding there is nothing to drop (a
separator's target, the next document's first token, is predicted from the separator
alone, as from a BOS).
"""
import jax.numpy as jnp
from jax import lax

PACKINGS = ("auto", "concat", "segments")


def resolve(data_cfg):
  """'concat' or 'segments' for this data config (raises ValueError naming the fix)."""
  packing = data_cfg.get("packing", "concat")
  if packing not in PACKINGS:
    raise ValueError(f"data.packing {packing!r}: choose one of {PACKINGS}.")
  if data_cfg.corpus == "synthetic":
    if packing == "segments":
      raise ValueError("data.packing 'segments' needs documents; the synthetic corpus has "
                       "none (its windows are independent samples). Use data.packing=concat "
                       "or auto, or a text corpus.")
    return "concat"
  return "segments" if packing == "auto" else packing


def separator_id(cfg):
  """The token that starts each document of the packed stream, or None under concat."""
  if resolve(cfg.data) == "concat":
    return None
  from experiments import tokenizers
  return tokenizers.load(cfg.data.tokenizer).eos_id


def segments(tokens_BL, separator):
  """(segment_ids_BL, positions_BL), int32: each separator starts a segment; positions
  count from the segment's start (the window's first token starts one too)."""
  length = tokens_BL.shape[1]
  starts_BL = (tokens_BL == separator).at[:, 0].set(True)
  segment_ids_BL = jnp.cumsum(starts_BL, axis=1, dtype=jnp.int32)
  index_L = jnp.arange(length, dtype=jnp.int32)
  start_BL = lax.cummax(jnp.where(starts_BL, index_L, 0), axis=1)
  return segment_ids_BL, index_L - start_BL


def model_inputs(tokens_BL, separator):
  """Keyword arguments of models.LM for a window's inputs: {} under concat."""
  if separator is None:
    return {}
  segment_ids_BL, positions_BL = segments(tokens_BL, separator)
  return {"segment_ids_BL": segment_ids_BL, "positions_BL": positions_BL}
