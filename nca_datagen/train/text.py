"""Text corpora for the language stage: byte-level tokens, a train/validation split by document, batches.

Bytes are the tokenizer (ids 0..255, plus one `<|endoftext|>` = 256 between documents), so any text
works offline and nothing is downloaded. The price: perplexities are per byte, not per BPE token, so they
are not comparable to the paper's numbers, only to each other.

A corpus is a list of documents from files, folders (recursively), glob patterns, `.jsonl` files (one
document per line, its "text" field) or `stdlib` (the running Python's standard-library `.py` sources).
Hidden files and folders inside a folder are skipped, and so are binary files (a NUL byte), with a warning.
Documents are split into train and validation by a fixed-seed permutation, so a document never lands in
both and the split does not depend on what else is trained; a corpus of one document is split by bytes
(its tail is validation). Training batches are non-overlapping windows
of the train stream in a per-epoch permutation: batch k of epoch e is a pure function of (seed, e, k),
so the data position is the step and resuming needs no extra state.

Shape legend: B batch, T tokens per example.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import torch

BYTE_VOCAB = 256
EOT = 256  # <|endoftext|>: separates documents in the token stream
VOCAB_SIZE = BYTE_VOCAB + 1
SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages", ".git", "node_modules"}
BINARY_SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB marks a file binary (git looks at the first 8000)


def encode(text: str | bytes) -> np.ndarray:
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, dtype=np.uint8).astype(np.uint16)


def decode(ids) -> str:
    return bytes(int(i) for i in ids if int(i) < BYTE_VOCAB).decode("utf-8", errors="replace")


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def spec_list(spec: str | os.PathLike | list) -> list[str]:
    """A corpus spec as a list of strings: how checkpoints and the JSON outputs record it."""
    return [str(s) for s in spec] if isinstance(spec, (list, tuple)) else [str(spec)]


def corpus_files(spec: str | os.PathLike | list) -> list[Path]:
    """Files of a corpus spec (a path, folder, glob, .jsonl, `stdlib`, or a list of those), sorted within each
    spec so the split is reproducible across machines. A file named twice (`corp corp/*.py`) is read once, where
    it first appears: twice, its copies could land on both sides of the train/validation split."""
    if isinstance(spec, (list, tuple)):
        files = {}  # resolved path -> the path as found, in first-seen order
        for path in (path for s in spec for path in corpus_files(s)):
            files.setdefault(path.resolve(), path)
        return list(files.values())
    spec = str(spec)
    if spec == "stdlib":
        files = _folder_files(stdlib_dir(), "*.py")
    elif os.path.isdir(spec):
        files = _folder_files(Path(spec))
    elif os.path.isfile(spec):
        files = [Path(spec)]
    else:
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    if not files:
        raise ValueError(f"corpus {spec!r} has no files: give a file, folder, glob, .jsonl or 'stdlib'")
    return files


def _folder_files(root: Path, pattern: str = "*") -> list[Path]:
    """Files under `root`, less hidden files and folders and SKIP_DIRS inside it; `root`'s own path may hold
    any of them (`../corpus`, `~/.cache/corpus`)."""
    return sorted(p for p in root.rglob(pattern) if p.is_file() and not any(
        part.startswith(".") or part in SKIP_DIRS for part in p.relative_to(root).parts))


def read_corpus(spec: str | os.PathLike | list) -> tuple[list[bytes], list[Path]]:
    """(documents, binary files skipped) of a corpus spec. Empty files are skipped too, silently: they hold
    no text. Raises ValueError when every file with content was binary."""
    docs, binary = [], []
    for path in corpus_files(spec):
        if path.suffix == ".jsonl":
            docs += jsonl_documents(path)
            continue
        data = path.read_bytes()
        if b"\0" in data[:BINARY_SNIFF_BYTES]:
            binary.append(path)
        elif data:
            docs.append(data)
    if binary and not docs:
        raise ValueError(f"the corpus has no text: {binary_note(binary)}; give text files or .jsonl")
    return docs, binary


def load_documents(spec: str | os.PathLike | list) -> list[bytes]:
    """Documents of a corpus spec (see `corpus_files`); warns when binary files were skipped."""
    docs, binary = read_corpus(spec)
    if binary:
        warnings.warn(binary_note(binary), stacklevel=2)
    return docs


def binary_note(binary: list[Path]) -> str:
    sniffed = f"a NUL byte in the first {BINARY_SNIFF_BYTES // 1024} KiB"
    return f"{len(binary)} binary file(s) skipped ({sniffed}), e.g. {binary[0]}"


def jsonl_documents(path: Path) -> list[bytes]:
    """The "text" field of each line of a .jsonl file; blank lines are skipped. Raises ValueError naming
    `file:line` for a line that is not such an object."""
    docs = []
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                docs.append(_jsonl_text(line))
            except ValueError as exc:
                raise ValueError(f'{path}:{line_no}: {exc}; expected one JSON object with a string "text" field '
                                 f"per line") from exc
    return docs


def _jsonl_text(line: bytes) -> bytes:
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {line[exc.start]:#04x} at column {exc.start + 1})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        shown = line.decode("utf-8").strip()
        raise ValueError("got: " + (shown if len(shown) <= 80 else shown[:77] + "..."))
    return record["text"].encode("utf-8")  # a lone surrogate ("\\ud800") raises here, reported with its line


def documents_digest(docs: list[bytes]) -> str:
    """sha256 over the documents in order, each prefixed by its length (so a boundary moved is a change too)."""
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(len(doc).to_bytes(8, "little"))
        digest.update(doc)
    return digest.hexdigest()


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
