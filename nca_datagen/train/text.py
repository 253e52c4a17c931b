"""Text corpora for the language stage: byte-level tokens, a train/validation split by document, batches.

Bytes are the tokenizer (ids 0..255, plus one `<|endoftext|>` = 256 between documents), so any text
works offline and nothing is downloaded. The price: perplexities are per byte, not per BPE token, so they
are not comparable to the paper's numbers, only to each other.

A corpus is a list of documents (`nca_datagen.corpus` reads them). Rules:
- documents are split into train and validation by a fixed-seed permutation, so a document never lands in both
  and the split does not depend on what else is trained; a corpus of one document is split by bytes (its tail is
  validation);
- training batches are non-overlapping windows of the train stream in a per-epoch permutation: batch k of epoch e
  is a pure function of (seed, e, k), so the data position is the step and resuming needs no extra state.

Shape legend: B batch, T tokens per example.
"""

from __future__ import annotations

import numpy as np
import torch

BYTE_VOCAB = 256
EOT = 256  # <|endoftext|>: separates documents in the token stream
VOCAB_SIZE = BYTE_VOCAB + 1


def encode(text: str | bytes) -> np.ndarray:
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, dtype=np.uint8).astype(np.uint16)


def decode(ids) -> str:
    return bytes(int(i) for i in ids if int(i) < BYTE_VOCAB).decode("utf-8", errors="replace")


def split_documents(docs: list[bytes], val_fraction: float = 0.05, seed: int = 0):
    """(train, val) lists of documents, at least one of each. Two or more documents are split by document; a
    single one (one plain text file, the most common corpus) by bytes: its last `val_fraction` is validation."""
    if not docs:
        raise ValueError("the corpus holds no text (its files are empty): give text files or .jsonl")
    if len(docs) == 1:
        cut = len(docs[0]) - round(val_fraction * len(docs[0]))
        return [docs[0][:cut]], [docs[0][cut:]]
    order = np.random.default_rng(seed).permutation(len(docs))
    n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    return [docs[i] for i in sorted(order[n_val:])], [docs[i] for i in sorted(order[:n_val])]


def token_stream(docs: list[bytes]) -> np.ndarray:
    """Documents as one uint16 stream, each followed by EOT."""
    parts = []
    for doc in docs:
        parts += [encode(doc), np.array([EOT], dtype=np.uint16)]
    return np.concatenate(parts)


class TextBatches:
    """Training batches of (input_ids, labels), each B x T, from non-overlapping windows of T + 1 tokens."""

    def __init__(self, stream: np.ndarray, batch_size: int, context: int, seed: int = 0):
        self.windows = len(stream) // (context + 1)
        if self.windows < batch_size:
            raise ValueError(f"the training text holds {self.windows} windows of {context + 1} tokens, fewer than "
                             f"batch size {batch_size}: use a bigger corpus, a shorter --context or a smaller batch")
        # int16 holds ids 0..256 at a quarter of int64's memory (the stdlib corpus is ~30M tokens)
        self.stream = torch.from_numpy(stream[: self.windows * (context + 1)].astype(np.int16)).view(self.windows, -1)
        self.batch_size, self.seed = batch_size, seed
        self.index = 0  # batches served so far
        self._order = None, None  # (epoch, permutation)

    @property
    def batches_per_epoch(self) -> int:
        return self.windows // self.batch_size

    def next(self):
        epoch, k = divmod(self.index, self.batches_per_epoch)
        if self._order[0] != epoch:
            self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.windows)
        rows = self.stream[self._order[1][k * self.batch_size : (k + 1) * self.batch_size]].long()
        self.index += 1
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = state["index"]


def val_batches(stream: np.ndarray, batch_size: int, context: int, max_tokens: int | None = None):
    """Fixed validation batches: the first non-overlapping windows of the validation stream (all of them,
    or as many as `max_tokens` allows). A short tail shorter than a window is dropped."""
    n = len(stream) // (context + 1)
    if max_tokens:
        n = min(n, max(1, max_tokens // context))
    if n == 0:
        raise ValueError(f"the validation text ({len(stream)} tokens) is shorter than one window of {context + 1}: "
                         f"use a shorter --context or a larger --val-fraction")
    rows = torch.from_numpy(stream[: n * (context + 1)].astype(np.int64)).view(n, -1)
    return [(r[:, :-1], r[:, 1:]) for r in rows.split(batch_size)]
