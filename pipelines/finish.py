"""The closing step of a build: once every shard is written, the dataset's other files, then its manifest.

    stale files out -> samples tables -> dataset card -> manifest.json -> build marker out

The order is the dataset's promise: a manifest is the last file written, so a reader that sees it sees every file
it names; the marker goes only after it, so an interruption anywhere before leaves a folder that is still ours.
"""

from __future__ import annotations

from nca_datagen import card, manifest, ownership, storage
from nca_datagen.config import DatasetConfig


def finish_dataset(out_url: str, config: DatasetConfig, records: dict[str, list[dict]], provenance: dict,
                   storage_options=None, *, figures: bool = True) -> dict:
    """Finish the dataset whose every shard `records` lists (per split, in index order); returns its manifest.

    `figures=False` writes the card's text without its PNG figures (drawing them reads a few samples and imports
    matplotlib: a second or more, which tests skip)."""
    fs, root = storage.filesystem(out_url, storage_options)
    ownership.remove_stale_files(fs, root, {split: len(recs) for split, recs in records.items()})
    result = manifest.describe_dataset(fs, root, config, records, provenance)
    result["files"] = manifest.write_tables(fs, root, records)
    written = card.write_card(fs, root, result, figures=figures)  # presentation: its text shows the provenance
    result["card"] = {name: manifest.file_entry(data) for name, data in sorted(written.items())}
    manifest.write_manifest(fs, root, result)
    ownership.remove_build_marker(fs, root)
    return result
