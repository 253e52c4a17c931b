"""The export's manifest, `manifest.json` beside the exported files, and whose folder an export may write.

An export is a sibling dataset: a folder of one format's files (`FORMATS`), a card (`README.md`) and this
manifest, written last:

    format, format_version    "nca-datagen-export", FORMAT_VERSION
    export_format, settings   the format's name and its writer's fixed knobs (nca_datagen.exports.<format>)
    config, recipe, sequence  the source's, verbatim: enough to regenerate every source shard
    dataset_digest            the source's (`manifest.dataset_digest`): which data this is, wherever it lies
    source                    the source shards' compression and level, its zlib and tool versions
    splits.<split>            shards: one export unit per source shard, in order, each {source_shard,
                              source_sha256, samples, tokens, files: [{path, bytes, sha256}]}; files: the split's
                              own files (MDS's joined index); num_shards, samples, tokens, bytes
    files                     the card, {name: {bytes, sha256}}
    totals, provenance        sums over the splits; versions of python, numpy and the format's writer library

A manifest from elsewhere is untrusted input; `read_export_manifest` is the one way in. It refuses any file name
but the canonical ones of its format, for its units' indices, in order (no `..`, nothing outside the folder),
sizes no unit of its samples can have (`max_file_bytes`), a manifest over `MAX_MANIFEST_BYTES`, and a `sequence`
or recipe fingerprint that is not its config's: the dataset manifest's rules, read by the same plain arithmetic.

Whose folder (`check_destination`, before anything is written): an export writes into a folder that is new or
empty, holds an export of ours of the same source and format (finished: its manifest; or interrupted: the
marker `export.json`, written before any file and removed after the manifest), and nothing else: not a dataset
or build of ours (an export goes beside its source, never in it), and no file not proven ours
(`ownership.survey`'s rules). An export never deletes anything but its own manifest, marker and temporary files.
"""

from __future__ import annotations

from nca_datagen import __version__, storage
from nca_datagen.config import MAX_SAMPLES_PER_SHARD, MAX_SHARD_TOKENS, SPLITS, recipe_fingerprint
from nca_datagen.exports import mds, megatron, parquet
from nca_datagen.manifest import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    TEMPORARY,
    _wrong_field,
    dataset_digest,
    json_bytes,
    json_object,
    read_json,
    read_manifest_bytes,
    sequence_layout,
)
from nca_datagen.ownership import refuse_foreign, survey
from nca_datagen.shards import COMPRESSIONS

FORMAT = "nca-datagen-export"
FORMAT_VERSION = 1
FORMATS = {module.NAME: module for module in (parquet, megatron, mds)}
MARKER = "export.json"  # an export in progress (see the module docstring)
MARKER_FORMAT = "nca-datagen-export-marker"
CARD = "README.md"
MAX_CARD_BYTES = 2**20  # the card is a few KB of text
MAX_SPLIT_FILE_BYTES = 2**16  # per unit, for a split's own files (MDS's joined index: ~400 bytes a unit)
IDENTITY = ("export_format", "dataset_digest")  # what an export in a folder must share to be written over
UNIT_FIELDS = {"source_shard": int, "source_sha256": str, "samples": int, "tokens": int, "files": list}
FILE_FIELDS = {"bytes": int, "sha256": str}  # and "path" in a unit's or split's list
COUNTS = ("num_shards", "samples", "tokens", "bytes")  # per split and in totals
_TOP_FIELDS = {"export_format": str, "settings": dict, "config": dict, "recipe": dict, "sequence": dict,
               "dataset_digest": str, "source": dict, "splits": dict, "files": dict, "totals": dict,
               "provenance": dict}
_HEX = frozenset("0123456789abcdef")


def format_module(name: str):
    """The writer module of export format `name`; ValueError naming the formats otherwise."""
    if name not in FORMATS:
        raise ValueError(f"export format {str(name)[:40]!r} is not one of {', '.join(FORMATS)}")
    return FORMATS[name]


def max_file_bytes(samples: int, seq_len: int) -> int:
    """The most bytes one file of an export unit of `samples` sequences may have, in any format, so what a reader
    holds in memory at most: 2 bytes a token (uint16 stored raw, or compressed data that did not shrink), 1 KiB a
    sequence for its metadata and per-row overhead (ours take about 100 bytes), 64 KiB for a header or footer."""
    return samples * (2 * seq_len + 2**10) + 2**16


def build_manifest(source: dict, fmt: str, splits: dict) -> dict:
    """The export's manifest from its source's manifest and what was written (`splits` as in the docstring), but
    for the card's entry (`files`), which the caller adds once the card, made from this manifest, is written."""
    module = FORMATS[fmt]
    info = next(iter(source["splits"].values()))
    for split in splits.values():
        split.update(num_shards=len(split["shards"]), **{k: sum(u[k] for u in split["shards"])
                                                          for k in ("samples", "tokens")})
        split["bytes"] = sum(f["bytes"] for u in split["shards"] for f in u["files"]) + \
            sum(f["bytes"] for f in split["files"])
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "export_format": fmt,
        "settings": module.settings(source["sequence"]),
        "config": source["config"],
        "recipe": source["recipe"],
        "sequence": source["sequence"],
        "dataset_digest": dataset_digest(source),
        "source": {"compression": info["compression"], "level": info.get("level"),
                   "zlib": (source.get("provenance") or {}).get("zlib"), "tool_version": source.get("tool_version")},
        "splits": splits,
        "files": {},
        "totals": {k: sum(s[k] for s in splits.values()) for k in COUNTS},
        "provenance": versions(module.LIBRARY),
    }


def versions(library: str) -> dict:
    """Versions that can change an export's bytes: the format's writer library (and numpy, python)."""
    import platform
    from importlib import metadata

    found = {}
    for name in dict.fromkeys(("numpy", library)):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {"python": platform.python_version(), **found}


# ------------------------------------------------------------------------------------------------ reading


def read_export_manifest(url: str, storage_options=None) -> dict:
    """The manifest of the export at `url` (its folder or its manifest.json), checked as untrusted input."""
    data, where = read_manifest_bytes(url, storage_options)
    manifest = json_object(data, where)
    if not is_export_manifest(manifest) or manifest.get("format_version") != FORMAT_VERSION:
        got = (manifest.get("format"), manifest.get("format_version"))
        raise ValueError(f"{where} is not an export manifest this version of nca-datagen reads (format, version: "
                         f"{str(got)[:80]}; this one reads {FORMAT!r} v{FORMAT_VERSION})")
    problem = export_problem(manifest)
    if problem:
        raise ValueError(f"{where} is damaged or not safe to read: {problem}")
    return manifest


def is_export_manifest(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def export_problem(manifest: dict) -> str | None:
    """The first thing a reader could not trust in an export manifest, else None (see the module docstring)."""
    problem = _wrong_field(manifest, _TOP_FIELDS, "") or _wrong_field(manifest["totals"], dict.fromkeys(COUNTS, int),
                                                                         "totals.")
    if problem:
        return problem
    if manifest["export_format"] not in FORMATS:
        return f"export_format {manifest['export_format'][:40]!r} is not one of {', '.join(FORMATS)}"
    config = manifest["config"]
    try:
        layout = sequence_layout(config.get("nca"))
        samples_per_shard = config["rules_per_shard"] * config["sims_per_rule"]
        if not isinstance(samples_per_shard, int):
            raise TypeError("rules_per_shard x sims_per_rule is no integer")
    except (ValueError, KeyError, TypeError) as exc:
        return f"config is not a recipe this version reads ({exc or type(exc).__name__})"
    if manifest["sequence"] != layout:
        return f"sequence {str(manifest['sequence'])[:200]} is not what its config makes ({layout})"
    problem = _recipe_problem(manifest) or _digest_problem(manifest["dataset_digest"], 16, "dataset_digest")
    if problem:
        return problem
    module = FORMATS[manifest["export_format"]]
    for split, info in manifest["splits"].items():
        problem = _split_problem(module, split, info, layout["seq_len"], samples_per_shard)
        if problem:
            return problem
    return _files_problem(manifest["files"], {CARD: MAX_CARD_BYTES}, "files")


def _recipe_problem(manifest: dict) -> str | None:
    recipe, source = manifest["recipe"], manifest["source"]
    if not isinstance(recipe.get("version"), int) or source.get("compression") not in COMPRESSIONS:
        return "recipe.version or source.compression is missing or not one nca-datagen writes"
    if recipe.get("fingerprint") != recipe_fingerprint(manifest["config"], source["compression"], recipe["version"]):
        return "recipe.fingerprint is not its config's"
    level = source.get("level")
    if level is not None and (type(level) is not int or not 1 <= level <= 22):  # zstd's levels
        return f"source.level {str(level)[:20]} is not a zstd level"
    return None


def _split_problem(module, split: str, info, seq_len: int, samples_per_shard: int) -> str | None:
    if split not in SPLITS:
        return f"split {split[:40]!r} is not one of {', '.join(SPLITS)}"
    where = f"splits.{split}."
    problem = _wrong_field(info, {"shards": list, "files": list, **dict.fromkeys(COUNTS, int)}, where)
    if problem:
        return problem
    for i, unit in enumerate(info["shards"]):
        at = f"{where}shards[{i}]."
        problem = _wrong_field(unit, UNIT_FIELDS, at)
        if problem:
            return problem
        if unit["source_shard"] != i:
            return f"{at}source_shard is {unit['source_shard']}, not {i}: one unit per source shard, in order"
        if not 1 <= unit["samples"] <= min(samples_per_shard, MAX_SAMPLES_PER_SHARD) or \
                unit["tokens"] != unit["samples"] * seq_len or unit["tokens"] > MAX_SHARD_TOKENS:
            return f"{at}samples / tokens {unit['samples']} / {unit['tokens']} do not fit its config"
        problem = _digest_problem(unit["source_sha256"], 64, f"{at}source_sha256") or _file_list_problem(
            unit["files"], module.unit_paths(split, i), max_file_bytes(unit["samples"], seq_len), f"{at}files")
        if problem:
            return problem
    bound = MAX_SPLIT_FILE_BYTES * (len(info["shards"]) + 1)
    return _file_list_problem(info["files"], module.split_paths(split), bound, f"{where}files")


def _file_list_problem(files: list, paths: list[str], limit: int, where: str) -> str | None:
    """`files` must name exactly `paths`, in order, each with a size up to `limit` and a sha256."""
    names = [f.get("path") if isinstance(f, dict) else None for f in files]
    if names != paths:
        return f"{where} names {str(names)[:200]}, not {paths}"
    return _files_problem({f["path"]: f for f in files}, dict.fromkeys(paths, limit), where)


def _files_problem(files: dict, limits: dict[str, int], where: str) -> str | None:
    for name, info in files.items():
        if name not in limits:
            return f"{where} names {str(name)[:80]!r}, not one of {', '.join(limits)}"
        problem = _wrong_field(info, FILE_FIELDS, f"{where}.{name}.")
        if problem:
            return problem
        if not 0 <= info["bytes"] <= limits[name]:
            return f"{where}.{name}.bytes {info['bytes']} is more than such a file can take ({limits[name]})"
        problem = _digest_problem(info["sha256"], 64, f"{where}.{name}.sha256")
        if problem:
            return problem
    return None


def _digest_problem(value: str, length: int, where: str) -> str | None:
    if len(value) != length or not set(value) <= _HEX:
        return f"{where} {value[:80]!r} is not {length} hex digits"
    return None


# --------------------------------------------------------------------------------------------- the folder


def check_destination(fs, root: str, wanted: dict) -> None:
    """Accept `root` for the export `wanted` ({export_format, dataset_digest}) or refuse it, writing nothing (see
    the module docstring)."""
    where = storage.url_of(fs, root)
    manifest, marker = _json_or_damaged(fs, root, MANIFEST), _json_or_damaged(fs, root, MARKER)
    ours = [(what, found) for what, found in (("a finished export", manifest), ("an unfinished export", marker))
            if is_export_manifest(found) or _is_marker(found)]
    for what, found in ours:
        have = {key: found.get(key) for key in IDENTITY}
        if have != wanted:
            raise ValueError(f"{where} holds {what} of another dataset or format ({have}; this one is {wanted}): "
                             f"choose another folder, or delete that export first")
    if ours:
        return
    if manifest is not None or marker is not None:
        raise ValueError(f"{where} holds a {MANIFEST} or {MARKER} that is no export of nca-datagen's (a dataset's, "
                         f"or someone else's); nothing was written. An export goes in a folder of its own, beside "
                         f"its source: choose a new or empty folder")
    folder = survey(fs, root)
    if folder.foreign:
        refuse_foreign(where, folder.foreign)
    if folder.marker is not None or folder.record_recipes:
        raise ValueError(f"{where} holds an nca-datagen build; nothing was written. An export goes in a folder of "
                         f"its own, beside its source: choose a new or empty folder")


def _json_or_damaged(fs, root: str, name: str):
    """The JSON of `root/name`; None when missing; a string (never ours) when it is not JSON or too large."""
    try:
        return read_json(fs, storage.join(root, name), MAX_MANIFEST_BYTES)
    except (ValueError, IsADirectoryError):
        return "not JSON"


def _is_marker(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == MARKER_FORMAT and all(k in obj for k in IDENTITY)


def write_marker(fs, root: str, wanted: dict) -> None:
    storage.write_atomic(fs, storage.join(root, MARKER), json_bytes({"format": MARKER_FORMAT, **wanted}))


def write_export_manifest(fs, root: str, manifest: dict) -> None:
    """Write the manifest, then clear what an interrupted export left (temporary files of ours, the marker)."""
    storage.write_atomic(fs, storage.join(root, MANIFEST), json_bytes(manifest))
    listed = listed_paths(manifest)
    prefix = len(root.rstrip("/")) + 1
    fs.invalidate_cache(root)
    stale = [path for split in manifest["splits"] for path in fs.find(storage.join(root, split))
             if TEMPORARY.search(path) and TEMPORARY.sub("", path[prefix:]) in listed]
    storage.remove_files(fs, [*stale, storage.join(root, MARKER)])


def listed_paths(manifest: dict) -> dict[str, dict]:
    """Every file the export lists, {path: {bytes, sha256}}: units', splits' and the card."""
    listed = {name: info for name, info in manifest["files"].items()}
    for info in manifest["splits"].values():
        for f in info["files"] + [f for unit in info["shards"] for f in unit["files"]]:
            listed[f["path"]] = f
    return listed


def card_json(card: dict[str, bytes]) -> dict:
    import hashlib

    return {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in card.items()}
