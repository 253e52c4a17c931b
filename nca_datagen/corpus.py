"""Text corpora as documents: what a corpus spec names, read as bytes, offline.

A spec is a file, a folder (recursively), a glob, a `.jsonl` file (one document per line, its "text" field) or
`stdlib` (the running Python's standard-library `.py` sources, a code corpus present everywhere), or a list of
those. Rules:
- hidden files and folders inside a folder are skipped, and so are SKIP_DIRS;
- binary files (a NUL byte in the first 8 KiB) are skipped with a warning, empty files silently;
- files are sorted within each spec, and a file named twice is read once, so every machine reads the same
  documents in the same order.

`nca-datagen complexity` and the trainer (`nca_datagen.train`) both read corpora here.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
import warnings
from pathlib import Path

SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages", ".git", "node_modules"}
BINARY_SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB marks a file binary (git looks at the first 8000)


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
