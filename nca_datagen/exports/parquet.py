"""Parquet export: one file per source shard, `<split>/shard-NNNNNN.parquet`, one row per sequence.

Each file, in sample order:
- columns: the metadata of `samples.COLUMNS` (key, split, shard, sample, rule_id, sim, complexity,
  probe_complexity, cell_change_rate, colors_last_frame), then `tokens`: `fixed_size_list<element: uint16>[seq_len]`
  (`uint8` items when the vocabulary has at most 256 ids);
- zstd level 3 on every column; dictionary encoding for `split` alone (keys are unique; for tokens a dictionary
  measured 1.82 bytes/token against 1.77 plain, on a paper-sized shard);
- row groups of at most `ROW_GROUP_TOKENS` tokens (1 MiB of uint16: 511 sequences of the paper's 1026 tokens),
  so a streaming reader holds one small group at a time and a default shard is one or two groups;
- Parquet format 2.6, data pages v1 of 1 MiB, statistics, the Arrow schema in the footer (`ARROW:schema`, so
  readers get the fixed-size list back), no page index, no page checksums (the manifest holds each file's sha256).

Determinism: every writer option is fixed here (`SETTINGS`, and the literals in `write_unit`), and nothing the
writer adds varies but pyarrow's version string, which the footer carries (`created_by`, which pyarrow offers no
way to set) and the export's manifest records. The same unit gives the same bytes under the same pyarrow.

Trade-off: byte_stream_split encoding would store tokens in 1.54 bytes/token (13% less), but readers older than
Arrow 16 and other engines cannot decode it for integers; plain pages are what every Parquet reader reads.
"""

from __future__ import annotations

import io

from nca_datagen.exports.samples import COLUMNS, Unit, token_dtype

NAME = "parquet"
LIBRARY = "pyarrow"  # what writes it, whose version the manifest records
ROW_GROUP_TOKENS = 2**19  # tokens per row group at most: 1 MiB of uint16
SETTINGS = {"compression": "zstd", "compression_level": 3}
DATA_FILES = "*.parquet"  # what the card's `configs` name in each split folder


def ready() -> None:
    """Nothing to check: the package's own dependencies write this format."""


def unit_paths(split: str, index: int) -> list[str]:
    return [f"{split}/shard-{index:06d}.parquet"]


def split_paths(split: str) -> list[str]:
    return []


def settings(sequence: dict) -> dict:
    """The writer's fixed knobs for sequences of this layout (recorded in the export's manifest)."""
    rows = max(1, ROW_GROUP_TOKENS // sequence["seq_len"])
    return {**SETTINGS, "row_group_rows": rows, "token_type": token_dtype(sequence["vocab_size"]).name}


def write_unit(unit: Unit, sequence: dict, knobs: dict) -> dict[str, bytes]:
    """{path: bytes} of the unit's one Parquet file."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(_table(unit, sequence), buf, row_group_size=knobs["row_group_rows"],
                   compression=knobs["compression"], compression_level=knobs["compression_level"],
                   use_dictionary=["split"], write_statistics=True, version="2.6", data_page_version="1.0",
                   data_page_size=2**20, store_schema=True, write_page_index=False, write_page_checksum=False,
                   use_compliant_nested_type=True)
    return {unit_paths(unit.split, unit.index)[0]: buf.getvalue()}


def split_files(split: str, num_units: int, read) -> dict[str, bytes]:
    return {}


def schema(sequence: dict):
    """The Arrow schema of every file of an export of sequences of this layout."""
    import pyarrow as pa

    item = pa.field("element", pa.from_numpy_dtype(token_dtype(sequence["vocab_size"])))  # Parquet's LIST name
    tokens = pa.list_(item, sequence["seq_len"])
    types = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64()}
    return pa.schema([pa.field(name, types[kind]) for name, kind in COLUMNS.items()] + [pa.field("tokens", tokens)])


def _table(unit: Unit, sequence: dict):
    import pyarrow as pa

    target = schema(sequence)
    tokens = unit.tokens_NL.astype(token_dtype(sequence["vocab_size"]), copy=False).reshape(-1)
    columns = [pa.array(unit.columns[name], type=target.field(name).type) for name in COLUMNS]
    columns.append(pa.FixedSizeListArray.from_arrays(pa.array(tokens), sequence["seq_len"]))
    return pa.Table.from_arrays(columns, schema=target)


def check(files: dict[str, bytes], entry: dict, sequence: dict) -> str | None:
    """What a reader would find wrong in the unit's file (its rows, its schema), else None."""
    import pyarrow.parquet as pq

    (path, data), = files.items()
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged footer
        return f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})"
    if not parquet.schema_arrow.equals(schema(sequence)):
        return f"{path}: its schema is not the export's ({parquet.schema_arrow.to_string()[:200]})"
    if parquet.metadata.num_rows != entry["samples"]:
        return f"{path}: {parquet.metadata.num_rows} rows, the manifest says {entry['samples']}"
    return None


def card_body(manifest: dict, where: str) -> str:
    """The card's format and loading sections (`where`: the export's folder, as the card's snippets spell it)."""
    split, sequence = next(iter(manifest["splits"])), manifest["sequence"]
    kind = token_dtype(sequence["vocab_size"]).name
    return (f"## Format\n\nParquet (zstd), one file per source shard: `{split}/shard-000000.parquet`, ... One row per "
            f"sequence: `tokens`, a fixed-size list of {sequence['seq_len']:,} {kind} token ids, and its metadata "
            f"columns {', '.join(f'`{c}`' for c in COLUMNS)}. `manifest.json` lists every file with its sha256, and "
            f"the recipe that regenerates it.\n\n"
            "## Loading\n\nWith Hugging Face `datasets` (the front matter's `configs` name the files; the Hub's "
            "viewer reads the same):\n\n```python\nfrom datasets import load_dataset\n\n"
            f"ds = load_dataset(\"{where}\", split=\"{split}\")  # or the Hub repo id\n"
            "tokens = ds[0][\"tokens\"]  # a list of ints\n```\n\n"
            "With pyarrow:\n\n```python\nimport pyarrow.parquet as pq\n\n"
            f"table = pq.read_table(\"{where}/{split}/shard-000000.parquet\")\n"
            "tokens_NL = table.column(\"tokens\").combine_chunks().flatten().to_numpy().reshape(len(table), -1)\n```")
