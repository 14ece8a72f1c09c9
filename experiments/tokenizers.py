"""Tokenizers named by `data.tokenizer`: "byte" (the default), a SentencePiece
model file (`*.model`) or a Hugging Face `tokenizers` JSON file (`*.json`).

Each gives `encode(text) -> int32 ids`, `decode(ids) -> text`, `vocab_size` and
`eos_id`, the token that joins documents in the packed stream (byte: 0, a byte
that text does not contain; others: their end-of-sequence token, else 0).
"""
import dataclasses
import os
from typing import Callable

import numpy as np

HF_EOS_NAMES = ("</s>", "<|endoftext|>", "[SEP]", "<eos>", "[EOS]")


def id_dtype(vocab_size):
  """The narrowest unsigned dtype holding ids below vocab_size (a packed stream's)."""
  for dtype in (np.uint8, np.uint16, np.uint32):
    if vocab_size <= np.iinfo(dtype).max + 1:
      return dtype
  raise ValueError(f"vocab_size {vocab_size} does not fit in uint32.")


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  name: str
  vocab_size: int
  eos_id: int
  _encode: Callable
  _decode: Callable

  def encode(self, text) -> np.ndarray:
    return np.asarray(self._encode(text), np.int32)

  def decode(self, ids) -> str:
    return self._decode([int(i) for i in ids])



def _byte():
  return Tokenizer("byte", 256, 0,
                   lambda text: np.frombuffer(_utf8(text), np.uint8),
                   lambda ids: bytes(ids).decode("utf-8", errors="replace"))


def _utf8(text):
  return text if isinstance(text, bytes) else text.encode("utf-8")


def _sentencepiece(path):
  import sentencepiece
  sp = sentencepiece.SentencePieceProcessor(model_file=path)
  eos = sp.eos_id()
  return Tokenizer(f"sentencepiece:{path}", sp.get_piece_size(), eos if eos >= 0 else 0,
                   lambda text: sp.encode(_utf8(text).decode("utf-8", errors="replace")),
                   sp.decode)


def _hf(path):
  import tokenizers
  tok = tokenizers.Tokenizer.from_file(path)
  eos = next((tok.token_to_id(n) for n in HF_EOS_NAMES if tok.token_to_id(n) is not None), 0)
  return Tokenizer(f"hf:{path}", tok.get_vocab_size(with_added_tokens=True), eos,
                   lambda text: tok.encode(_utf8(text).decode("utf-8", errors="replace"),
                                           add_special_tokens=False).ids,
                   tok.decode)


def load(spec):
  """'byte', 'path/to/tokenizer.model' (SentencePiece) or 'path/to/tokenizer.json' (HF)."""
  if spec in ("", "byte"):
    return _byte()
  path = os.path.expanduser(spec)
  if not os.path.isfile(path):
    raise ValueError(f"data.tokenizer={spec!r} is not 'byte' or an existing file; name a "
                     "SentencePiece model (*.model) or a Hugging Face tokenizers JSON (*.json).")
  loaders = {".model": _sentencepiece, ".json": _hf}
  ext = os.path.splitext(path)[1]
  if ext not in loaders:
    raise ValueError(f"data.tokenizer={spec!r}: unknown tokenizer file type {ext!r}; use a "
                     "SentencePiece *.model or a Hugging Face tokenizers *.json.")
  try:
    return loaders[ext](path)
  except Exception as e:  # noqa: BLE001 - a corrupt file: say which and why
    raise ValueError(f"data.tokenizer={spec!r} does not load: {type(e).__name__}: {e}") from None


def train_hf_bpe(texts, path, vocab_size):
  """Trains a byte-level BPE (HF tokenizers) on texts (str), saves it to path (*.json),
  returns path: lossless on any text, with <|endoftext|> as its eos."""
  import tokenizers
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  tok.save(str(path))
  return str(path)


def train_sentencepiece_bpe(texts, prefix, vocab_size):
  """Trains a SentencePiece BPE on texts (str) into prefix.model, returns its path.
  Identity normalisation, no dummy prefix and byte fallback make it lossless on code."""
  import sentencepiece
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(line for t in texts for line in t.splitlines() if line.strip()),
      model_prefix=str(prefix), vocab_size=vocab_size, model_type="bpe", byte_fallback=True,
      normalization_rule_name="identity", add_dummy_prefix=False,
      remove_extra_whitespaces=False, split_by_whitespace=False, minloglevel=2)
  return f"{prefix}.model"
