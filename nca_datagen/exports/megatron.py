"""Megatron export: `<split>/shard-NNNNNN.bin` + `.idx` per source shard, megatron-core's `IndexedDataset`
format (`megatron.core.datasets.indexed_dataset`), written with numpy alone: one document per sequence.

`.bin`: the sequences' tokens back to back in sample order, uint16 little-endian, 2 * seq_len bytes each; nothing
else (no end-of-document token: a document is exactly the source's sequence).

`.idx`, every integer little-endian, N = the shard's sequences (`IDX_HEADER` is bytes 0-33):

| offset | bytes | field | value |
|---|---|---|---|
| 0 | 9 | magic | `MMIDIDX\\x00\\x00` |
| 9 | 8 | format version, uint64 | 1 |
| 17 | 1 | token dtype code, uint8 | 8: uint16 (megatron-core's `DType`) |
| 18 | 8 | sequence count, uint64 | N |
| 26 | 8 | document count, uint64 | N + 1 (document boundaries, below) |
| 34 | 4 N | sequence lengths, int32 | seq_len each |
| 34 + 4 N | 8 N | sequence pointers, int64 | byte offset of sequence i in `.bin`: 2 * seq_len * i |
| 34 + 12 N | 8 (N + 1) | document indices, int64 | 0, 1, ..., N: document i is sequence i |

42 + 20 N bytes in all; no sequence modes (those follow only in multimodal datasets).

A megatron dataset is a path prefix: `IndexedDataset("DST/train/shard-000000")`. One prefix per source shard
keeps an export unit one shard, so `verify --regenerate` re-exports any shard alone. Megatron trains on many
prefixes as a blend (`--data-path W1 PREFIX1 W2 PREFIX2 ...`, weights proportional to the sequences for one pass
over each; the manifest lists them), or Megatron-LM's `tools/merge_datasets.py` merges a split's prefixes into one
(the same format, concatenated). Tokens are uint16 whatever the vocabulary (megatron's own choice below 65,500 ids).
"""

from __future__ import annotations

import struct

import numpy as np

from nca_datagen.exports.samples import Unit

NAME = "megatron"
LIBRARY = "numpy"
MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
UINT16_CODE = 8  # megatron.core.datasets.indexed_dataset.DType.uint16
IDX_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count: 34 bytes
TOKEN = np.dtype("<u2")


def ready() -> None:
    """Nothing to check: the package's own dependencies write this format."""


def unit_paths(split: str, index: int) -> list[str]:
    prefix = f"{split}/shard-{index:06d}"
    return [f"{prefix}.bin", f"{prefix}.idx"]


def split_paths(split: str) -> list[str]:
    return []


def settings(sequence: dict) -> dict:
    return {"token_type": TOKEN.name, "documents": "one per sequence"}


def write_unit(unit: Unit, sequence: dict, knobs: dict) -> dict[str, bytes]:
    """{path: bytes} of the unit's `.bin` and `.idx`."""
    bin_path, idx_path = unit_paths(unit.split, unit.index)
    return {bin_path: unit.tokens_NL.astype(TOKEN, copy=False).tobytes(),
            idx_path: idx_bytes(len(unit.tokens_NL), sequence["seq_len"])}


def idx_bytes(n: int, seq_len: int) -> bytes:
    """The `.idx` of `n` documents of one `seq_len`-token sequence each (the module docstring's table)."""
    lengths = np.full(n, seq_len, "<i4")
    pointers = np.arange(n, dtype="<i8") * (TOKEN.itemsize * seq_len)
    documents = np.arange(n + 1, dtype="<i8")
    return IDX_HEADER.pack(MAGIC, VERSION, UINT16_CODE, n, n + 1) + lengths.tobytes() + pointers.tobytes() + \
        documents.tobytes()


def split_files(split: str, num_units: int, read) -> dict[str, bytes]:
    return {}


def check(files: dict[str, bytes], entry: dict, sequence: dict) -> str | None:
    """What megatron's reader would find wrong in the unit's pair (header, counts, offsets, `.bin` size), else None:
    the `.idx` must be exactly the one `idx_bytes` writes for the manifest's counts."""
    bin_path, idx_path = sorted(files)
    n, seq_len = entry["samples"], sequence["seq_len"]
    if files[idx_path] != idx_bytes(n, seq_len):
        return f"{idx_path}: not the index of {n} documents of {seq_len} tokens (see nca_datagen.exports.megatron)"
    if len(files[bin_path]) != n * seq_len * TOKEN.itemsize:
        return f"{bin_path}: {len(files[bin_path])} bytes, {n} sequences of {seq_len} uint16 tokens take " \
               f"{n * seq_len * TOKEN.itemsize}"
    return None


def card_body(manifest: dict, where: str) -> str:
    """The card's format and loading sections (`where`: the export's folder, as the card's snippets spell it)."""
    split, seq_len = next(iter(manifest["splits"])), manifest["sequence"]["seq_len"]
    return (f"## Format\n\nmegatron-core `IndexedDataset` pairs, one per source shard: `{split}/shard-000000.bin` + "
            f"`.idx`, ... One document per sequence ({seq_len:,} uint16 tokens, no end-of-document token). The `.idx` "
            "header is documented byte by byte in `nca_datagen/exports/megatron.py`; `manifest.json` lists every "
            "file with its sha256, and the recipe that regenerates it.\n\n"
            "## Loading\n\n```python\nfrom megatron.core.datasets.indexed_dataset import IndexedDataset\n\n"
            f"ds = IndexedDataset(\"{where}/{split}/shard-000000\")  # a path prefix: .bin + .idx\n"
            "tokens = ds[0]  # one sequence, a uint16 numpy array\n```\n\n"
            "A split is many prefixes: blend them (Megatron's `--data-path W1 PREFIX1 W2 PREFIX2 ...`), weighted by "
            "their sequences for one pass over each, or merge them with Megatron-LM's `tools/merge_datasets.py`:"
            "\n\n```python\nimport json\n\n"
            f"manifest = json.load(open(\"{where}/manifest.json\"))\n"
            f"data_path = []\nfor unit in manifest[\"splits\"][\"{split}\"][\"shards\"]:\n"
            f"    prefix = unit[\"files\"][0][\"path\"].removesuffix(\".bin\")\n"
            f"    data_path += [str(unit[\"samples\"]), f\"{where}/{{prefix}}\"]\n```")
