"""Built-in corpora that need no network, and user text files.

`synthetic`: an order-k Markov chain over a small alphabet with a few
successors per context. Its entropy rate (nats/token) is computed exactly from
the stationary distribution, so the irreducible loss is known; an order-2 chain
cannot be learned from unigram or bigram statistics alone.
`pystdlib`: the running interpreter's standard-library `.py` files, sorted.
`text_files` and the other file corpora: experiments/sources.py.
"""
import dataclasses
import json
import os
import sysconfig

import numpy as np

SEPARATOR = b"\0"  # document separator byte (absent from text)


@dataclasses.dataclass
class MarkovChain:
  alphabet: int
  order: int
  successors_CB: np.ndarray   # [contexts, branching] next symbols
  probs_CB: np.ndarray        # [contexts, branching] their probabilities
  stationary_C: np.ndarray    # stationary distribution over contexts

  @classmethod
  def make(cls, alphabet, order, branching, seed):
    if not (2 <= branching <= alphabet <= 256) or order < 1:
      raise ValueError(
          f"synthetic source needs 2 <= branching ({branching}) <= alphabet "
          f"({alphabet}) <= 256 and order ({order}) >= 1.")
    rng = np.random.default_rng(seed)
    contexts = alphabet ** order
    successors = np.stack([rng.choice(alphabet, branching, replace=False)
                           for _ in range(contexts)])
    probs = rng.dirichlet(np.ones(branching), size=contexts)
    chain = cls(alphabet, order, successors, probs, np.zeros(contexts))
    chain.stationary_C = chain._stationary()
    return chain

  def next_context(self, context, symbol):
    return (context * self.alphabet + symbol) % (self.alphabet ** self.order)

  def _stationary(self):
    # Power iteration on the lazy chain (P + I) / 2: same fixed points, aperiodic.
    contexts = self.alphabet ** self.order
    pi = np.full(contexts, 1.0 / contexts)
    targets_CB = self.next_context(np.arange(contexts)[:, None], self.successors_CB)
    for _ in range(20000):
      moved = np.zeros(contexts)
      np.add.at(moved, targets_CB.ravel(), (pi[:, None] * self.probs_CB).ravel())
      new = 0.5 * (pi + moved)
      if np.abs(new - pi).sum() < 1e-13:
        break
      pi = new
    return new / new.sum()

  def entropy_rate(self):
    """H = sum_c pi(c) H(next | c), nats/token."""
    h_C = -np.sum(self.probs_CB * np.log(self.probs_CB), axis=1)
    return float(np.dot(self.stationary_C, h_C))

  def min_loss(self, length):
    """Best achievable mean next-token loss over targets 1..length of a window
    that starts in the stationary distribution (early targets see < k symbols)."""
    joint = self.stationary_C.reshape((self.alphabet,) * self.order)

    def entropy(p):
      p = p[p > 0]
      return float(-np.sum(p * np.log(p)))

    marg = [entropy(joint.sum(axis=tuple(range(t, self.order)))) if t else 0.0
            for t in range(self.order + 1)]
    early = [marg[t + 1] - marg[t] for t in range(1, min(self.order, length + 1))]
    rate = self.entropy_rate()
    return (sum(early) + rate * (length - len(early))) / length

  def sample(self, num_windows, length, rng):
    """int [num_windows, length] windows, each started from the stationary law."""
    contexts = rng.choice(len(self.stationary_C), size=num_windows, p=self.stationary_C)
    digits = [(contexts // self.alphabet ** (self.order - 1 - i)) % self.alphabet
              for i in range(self.order)]
    out = np.zeros((num_windows, length), np.uint8)
    for t in range(min(self.order, length)):
      out[:, t] = digits[t]
    cum_CB = np.cumsum(self.probs_CB, axis=1)
    for t in range(self.order, length):
      u = rng.random(num_windows)[:, None]
      pick = np.minimum((u > cum_CB[contexts]).sum(axis=1), cum_CB.shape[1] - 1)
      symbol = self.successors_CB[contexts, pick]
      out[:, t] = symbol
      contexts = self.next_context(contexts, symbol)
    return out


def stdlib_files():
  root = sysconfig.get_paths()["stdlib"]
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
    files.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
  return sorted(files)


def read_documents(paths, text_field="text", max_bytes=0):
  """Documents as bytes: a .txt file is one document, a .jsonl line is one."""
  docs, total = [], 0
  for path in paths:
    if path.endswith(".jsonl"):
      with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
          if not line.strip():
            continue
          try:
            docs.append(json.loads(line)[text_field].encode("utf-8"))
          except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path}:{n}: expected a JSON object with a string field "
                f"{text_field!r} (set data.text_field): {e}") from None
          total += len(docs[-1])
    else:
      with open(path, "rb") as f:
        docs.append(f.read())
      total += len(docs[-1])
    if max_bytes and total >= max_bytes:
      break
  return docs


def split_stream(docs, eval_fraction, join=None):
  """(train, eval) streams, join(docs) each (default: bytes joined by NUL): every
  round(1/f)-th document is held out; with too few documents the stream's tail is."""
  join = join or to_stream
  every = max(2, round(1 / eval_fraction))
  if len(docs) >= 2 * every:
    train = [d for i, d in enumerate(docs) if i % every != every - 1]
    held = [d for i, d in enumerate(docs) if i % every == every - 1]
    return join(train), join(held)
  stream = join(docs)
  cut = int(len(stream) * (1 - eval_fraction))
  return stream[:cut], stream[cut:]


def to_stream(docs):
  return np.frombuffer(SEPARATOR.join(docs), np.uint8)
