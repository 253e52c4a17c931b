"""MDS export (mosaicml-streaming): per source shard a folder `<split>/shard-NNNNNN/` written by `MDSWriter`, and
`<split>/index.json` joining them, so `StreamingDataset(local="DST/train")` (or `remote=` it, with a local cache)
reads a whole split.

Per unit folder, `MDSWriter(columns=..., compression=None, hashes=["sha1"], size_limit=None)`:
- `shard.00000.mds`: the shard's sequences in sample order, one MDS shard (`size_limit=None`: a source shard is
  at most 2^27 tokens, 256 MiB, inside MDS's 4 GiB of uint32 offsets);
- `index.json`: MDSWriter's index of it (JSON with sorted keys: columns, sizes, sample count, sha1).
Columns: `tokens` as `ndarray:<uint16|uint8>:<seq_len>` (a numpy array of the sequence back), and the metadata of
`samples.COLUMNS` as `str`, `int32`, `int64` and `float64` (MDS has no nulls: a null ratio is NaN).

`<split>/index.json` is what `streaming.base.util.merge_index` makes of the unit folders' indexes, in shard order
(each shard's file name prefixed with its folder; tests compare the two), written here with sorted keys: the
library's function writes through temporary folders and a cloud uploader.

Uncompressed on purpose (2.09 bytes/token on paper-sized shards, against the shards' 1.73): zstd takes NCA tokens
only to ~0.89 of their size (1.77 bytes/token in the Parquet export's pages), and `StreamingDataset` decompresses
compressed shards into the folder it reads (with `local=` alone, the export itself), while raw shards are read
where they lie. The bytes then depend on mosaicml-streaming alone (no compressor
version), whose version the export's manifest records; MDSWriter writes no times or host names.

Needs mosaicml-streaming: `pip install 'nca-datagen[mds]'` (README, "Exports", for a lean install).
"""

from __future__ import annotations

import json
import math
import os
import tempfile

from nca_datagen.exports.samples import COLUMNS, Unit, token_dtype

NAME = "mds"
LIBRARY = "mosaicml-streaming"
ENCODINGS = {"string": "str", "int32": "int32", "int64": "int64", "float64": "float64"}  # COLUMNS' types in MDS
SHARD = "shard.00000.mds"  # MDSWriter's name for the first (here the only) shard of a folder
INDEX = "index.json"


def ready() -> None:
    """ValueError, with the fix, when mosaicml-streaming cannot be imported here."""
    _writer_class()


def unit_paths(split: str, index: int) -> list[str]:
    folder = f"{split}/shard-{index:06d}"
    return [f"{folder}/{INDEX}", f"{folder}/{SHARD}"]


def split_paths(split: str) -> list[str]:
    return [f"{split}/{INDEX}"]


def settings(sequence: dict) -> dict:
    return {"columns": columns(sequence), "compression": None, "hashes": ["sha1"], "size_limit": None}


def columns(sequence: dict) -> dict[str, str]:
    """MDSWriter's `columns`: name -> MDS encoding."""
    tokens = f"ndarray:{token_dtype(sequence['vocab_size']).name}:{sequence['seq_len']}"
    return {**{name: ENCODINGS[kind] for name, kind in COLUMNS.items()}, "tokens": tokens}


def write_unit(unit: Unit, sequence: dict, knobs: dict) -> dict[str, bytes]:
    """{path: bytes} of the unit's folder, written by MDSWriter into a temporary folder and read back."""
    writer_class = _writer_class()
    tokens = unit.tokens_NL.astype(token_dtype(sequence["vocab_size"]), copy=False)
    floats = [name for name, kind in COLUMNS.items() if kind == "float64"]
    with tempfile.TemporaryDirectory(prefix="nca-export-mds-") as tmp:
        out = os.path.join(tmp, "unit")
        with writer_class(out=out, columns=knobs["columns"], compression=knobs["compression"],
                          hashes=knobs["hashes"], size_limit=knobs["size_limit"]) as writer:
            for i, row in enumerate(tokens):
                sample = {name: values[i] for name, values in unit.columns.items()}
                sample.update({name: math.nan if sample[name] is None else sample[name] for name in floats})
                writer.write({**sample, "tokens": row})
        assert sorted(os.listdir(out)) == [INDEX, SHARD], os.listdir(out)  # one shard: size_limit=None
        files = {}
        for name, path in zip((INDEX, SHARD), unit_paths(unit.split, unit.index), strict=True):
            with open(os.path.join(out, name), "rb") as f:
                files[path] = f.read()
    return files


def split_files(split: str, num_units: int, read) -> dict[str, bytes]:
    """The split's joined `index.json` from its units' indexes (`read(path)` gives a written file's bytes), in shard
    order, as `merge_index` joins them."""
    shards = []
    for index in range(num_units):
        folder = f"shard-{index:06d}"
        for shard in json.loads(read(unit_paths(split, index)[0]))["shards"]:
            for key in ("raw_data", "zip_data", "raw_meta", "zip_meta"):
                if shard.get(key):
                    shard[key]["basename"] = f"{folder}/{shard[key]['basename']}"
            shards.append(shard)
    return {split_paths(split)[0]: json.dumps({"version": 2, "shards": shards}, sort_keys=True).encode()}


def check(files: dict[str, bytes], entry: dict, sequence: dict) -> str | None:
    """What StreamingDataset would find wrong in the unit's folder (its index against its shard), else None."""
    index_path, shard_path = sorted(files)  # .../index.json, .../shard.00000.mds
    try:
        (shard,) = json.loads(files[index_path])["shards"]
        listed = {"samples": shard["samples"], "bytes": shard["raw_data"]["bytes"]}
    except (ValueError, KeyError, TypeError) as exc:
        return f"{index_path}: not an MDS index of one shard ({type(exc).__name__}: {exc})"
    if listed != {"samples": entry["samples"], "bytes": len(files[shard_path])}:
        return (f"{index_path}: lists {listed}, the manifest says {entry['samples']} samples and the shard holds "
                f"{len(files[shard_path])} bytes")
    return None


def card_body(manifest: dict, where: str) -> str:
    """The card's format and loading sections (`where`: the export's folder, as the card's snippets spell it)."""
    split, sequence = next(iter(manifest["splits"])), manifest["sequence"]
    return (f"## Format\n\nMDS (mosaicml-streaming), uncompressed: per source shard a folder `{split}/shard-000000/` "
            f"(MDSWriter's `index.json` and `shard.00000.mds`), and `{split}/index.json` joining a split's folders. "
            f"Columns: `tokens` (`{columns(sequence)['tokens']}`) and the metadata "
            f"{', '.join(f'`{c}`' for c in COLUMNS)} (a null ratio is NaN). `manifest.json` lists every file with its "
            f"sha256, and the recipe that regenerates it.\n\n"
            "## Loading\n\n```python\nfrom streaming import StreamingDataset\n\n"
            f"ds = StreamingDataset(local=\"{where}/{split}\", shuffle=False)  # or remote=\"s3://...\", local=CACHE\n"
            "sample = ds[0]  # {\"tokens\": a numpy array, \"rule_id\": ..., ...}\n```")


def _writer_class():
    try:
        from streaming import MDSWriter
    except ImportError as exc:
        raise ValueError(f"--format mds needs mosaicml-streaming, which cannot be imported here ({exc}): "
                         f"pip install 'nca-datagen[mds]' (README, \"Exports\", for a lean install)") from None
    return MDSWriter
