"""One source shard as the exports read it: its sequences and their metadata, in sample order, typed.

Every export format carries the same per-sample metadata: the fields of each sample's `KEY.json`
(`nca_datagen.shards`), each with a fixed type (`COLUMNS`). Fixed rather than inferred, so every file of an
export has the same schema whatever its shard holds (a float column that is null in one shard stays float64) and
the same bytes on every machine. A shard whose samples carry other fields is refused, naming them: add a field
here, with its type, and every format carries it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nca_datagen import storage
from nca_datagen.shards import iter_shard_samples

# name -> type, in column order. Ints as narrow as their range: shard and sample indices < 10^6 (config's
# MAX_SAMPLES_PER_SHARD keys), sims and colours small; rule ids reach shard * 2^20 (config.RULE_ID_STRIDE).
# Ratios are float64 and null where the shard's JSON holds null (a NaN statistic).
COLUMNS = {
    "key": "string",
    "split": "string",
    "shard": "int32",
    "sample": "int32",
    "rule_id": "int64",
    "sim": "int32",
    "complexity": "float64",
    "probe_complexity": "float64",
    "cell_change_rate": "float64",
    "colors_last_frame": "int32",
}
INTEGER_TYPES = ("int32", "int64")


@dataclass
class Unit:
    """One source shard's samples, what every format writes one export unit from. Legend: N samples, L tokens."""

    split: str
    index: int  # the source shard's index in its split
    tokens_NL: np.ndarray  # uint16, the sequences as the shard holds them
    columns: dict[str, list]  # COLUMNS' names, in order, one value per sample


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every token id (the shards' uint16 above 256 ids)."""
    return np.dtype(np.uint8) if vocab_size <= 2**8 else np.dtype(np.uint16)


def read_unit(fs, root: str, split: str, index: int, shard: dict, seq_len: int) -> Unit:
    """The samples of source shard (`split`, `index`) of the dataset at `root`, its manifest entry `shard`: checked
    against the entry's size and sha256 before the first sample (`ShardError` naming the file otherwise)."""
    path = storage.join(root, shard["path"])
    tokens, metas = [], []
    for _, t, meta in iter_shard_samples(path, fs=fs, expected_sha256=shard["sha256"], expected_bytes=shard["bytes"],
                                         seq_len=seq_len):
        tokens.append(t)
        metas.append(meta)
    tokens_NL = np.stack(tokens) if tokens else np.zeros((0, seq_len), np.uint16)
    return Unit(split, index, tokens_NL, columns_of(metas, storage.url_of(fs, path)))


def columns_of(metas: list[dict], where: str) -> dict[str, list]:
    """The samples' metadata as `COLUMNS`; ValueError naming the sample and fields when they are not those."""
    for meta in metas:
        if set(meta) != set(COLUMNS):
            odd = sorted(set(meta) ^ set(COLUMNS))
            raise ValueError(f"{where}: sample {str(meta.get('key'))[:40]!r} has fields {odd[:10]} that differ from "
                             f"the exports' schema (nca_datagen.exports.samples.COLUMNS): give each new field a type "
                             f"there, or export with the nca-datagen version that built the dataset")
    return {name: [meta[name] for meta in metas] for name in COLUMNS}
