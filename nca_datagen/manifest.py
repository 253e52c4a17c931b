"""The manifest: the single file that turns a folder of shards into a dataset, written last.

A dataset folder holds, once finished:

    manifest.json           format version, tool version, the full resolved config and the recipe (version and
                            fingerprint: enough to regenerate every shard), per split: brace pattern, per-shard
                            {path, samples, tokens, bytes, sha256}, totals, filter counts, complexity histograms;
                            `files`: bytes and sha256 of the tables and the card; provenance (versions, zlib, times)
    samples/{split}.parquet every sample: key, shard, sample, rule_id, sim and its statistics
    README.md (+ figures)   the dataset card (nca_datagen.card)
    {split}/shard-NNNNNN.tar.zst and {split}/shard-NNNNNN.json (shard records, see nca_datagen.shards)

While a build (or a publish) runs, the folder holds `build.json` instead of a manifest (`nca_datagen.ownership`).

A manifest from elsewhere is untrusted input, and `read_manifest` is every command's one way in. It refuses a
manifest that names any file but the canonical ones (`<split>/shard-NNNNNN.<ext>`, `samples/<split>.parquet`, the
card), claims sizes the format cannot have (`shards.max_shard_bytes`), is larger than `MAX_MANIFEST_BYTES`, or
whose `sequence` block or recipe fingerprint disagrees with its `config`. Version 1 manifests (no `recipe`, no
`files`) are still read.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import re
import sys
from importlib import metadata

import numpy as np

from nca_datagen import __version__, storage
from nca_datagen.config import RECIPE_VERSION, SPLITS, DatasetConfig, recipe_fingerprint
from nca_datagen.errors import DatasetError, StorageError
from nca_datagen.shards import COMPRESSIONS, max_shard_bytes, shard_name

FORMAT = "nca-datagen-dataset"
FORMAT_VERSION = 2  # 2 added `recipe` and `files`
MANIFEST = "manifest.json"
BUILD = "build.json"  # the marker of a build or publish in progress (nca_datagen.ownership)
CARD_FILES = ("README.md", "preview.png", "complexity.png", "token-frequency.png")  # what nca_datagen.card writes
LOGS = "_logs"  # the build's event logs (diagnostics of the machine that built it: never removed, never published)
TABLES = tuple(f"{split}.parquet" for split in SPLITS)  # samples/TABLE
SHARD_FILE = re.compile(r"shard-(\d+)(\.json|" + "|".join(re.escape(s) for s in COMPRESSIONS.values()) + ")")
TEMPORARY = re.compile(r"\.tmp-\d+-[0-9a-f]{8}$")  # storage.write_atomic's name for a file being written
SHARD_FIELDS = ("path", "samples", "tokens", "bytes", "sha256")
MAX_MANIFEST_BYTES = 256 * 2**20  # ~1.4M shard entries; the paper's dataset needs 360
SEED_DERIVATION = ("numpy SeedSequence / integer hash of (seed, split id, rule id, sim index); "
                   "split ids: " + ", ".join(f"{s}={i}" for i, s in enumerate(SPLITS)))


def describe_dataset(fs, root: str, config: DatasetConfig, records: dict[str, list[dict]],
                     provenance: dict) -> dict:
    """The manifest of a dataset whose every shard is written (`records`, per split); its `files` and `card`
    are added by whoever writes them. ValueError when a shard is missing, not at its recorded size, numbered with
    a gap or made by another recipe: a reader that sees a manifest sees every shard it names."""
    splits = {}
    for split, recs in records.items():
        recs = sorted(recs, key=lambda r: r["index"])
        _check_complete(fs, root, split, recs, recipe_fingerprint(config, recs[0]["compression"]) if recs else None)
        splits[split] = split_summary(split, recs, f"samples/{split}.parquet")
    compression = next((s["compression"] for s in splits.values()), "zstd")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "config": config.to_dict(),
        "recipe": {"version": RECIPE_VERSION, "fingerprint": recipe_fingerprint(config, compression)},
        "sequence": sequence_layout(config.to_dict()["nca"]),
        "seeds": {"seed": config.seed, "derivation": SEED_DERIVATION},
        "splits": splits,
        "totals": {k: sum(s[k] for s in splits.values()) for k in ("num_shards", "samples", "tokens", "bytes")},
        "provenance": {**environment(), **provenance},
    }


def write_tables(fs, root: str, records: dict[str, list[dict]]) -> dict[str, dict]:
    """Write samples/SPLIT.parquet for each split; returns the manifest's `files`: {name: {bytes, sha256}}."""
    files = {}
    for split, recs in records.items():
        name = f"samples/{split}.parquet"
        files[name] = write_hashed(fs, root, name, samples_table(sorted(recs, key=lambda r: r["index"])))
    return dict(sorted(files.items()))


def write_hashed(fs, root: str, rel: str, data: bytes) -> dict:
    """Write `data` to `rel` under `root`; returns its {bytes, sha256}, as the manifest lists files."""
    storage.write_atomic(fs, storage.join(root, rel), data)
    return file_entry(data)


def file_entry(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_manifest(fs, root: str, manifest: dict) -> None:
    """Write `manifest.json`, atomically: the last file of a dataset."""
    storage.write_atomic(fs, storage.join(root, MANIFEST), json_bytes(manifest))


def sequence_layout(nca: dict) -> dict:
    """What a reader needs to cut sequences into examples, from a config's `nca` block (a dict: readers never
    build the generator's config). ValueError when the block is not one a recipe has."""
    try:
        (h, w), p, states, frames = nca["grid"], nca["patch"], nca["states"], nca["frames"]
        if not all(type(v) is int and v >= 1 for v in (h, w, p, states, frames)) or h % p or w % p:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise ValueError("its nca block has no valid grid, patch, states and frames") from None
    tokens_per_frame, vocab = (h // p) * (w // p) + 2, states ** (p * p) + 2
    return {"seq_len": frames * tokens_per_frame, "tokens_per_frame": tokens_per_frame, "frames": frames,
            "vocab_size": vocab, "grid_token": vocab - 2, "end_grid_token": vocab - 1, "dtype": "uint16"}


def split_summary(split: str, recs: list[dict], table: str) -> dict:
    """The manifest's entry for one split, from its shard records (sorted by index)."""
    compression = recs[0]["compression"] if recs else "zstd"
    counts: dict[str, int] = {}
    hists: dict[str, dict] = {}
    for r in recs:
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
        for k, h in r["histograms"].items():
            hists[k] = add_histograms(hists.get(k), h, f"{split} shard {r['index']}")
    return {
        "pattern": brace_pattern(split, len(recs), compression),
        "compression": compression,
        "level": recs[0]["level"] if recs else None,
        "seq_len": recs[0]["seq_len"] if recs else None,
        "shards": [{k: r[k] for k in SHARD_FIELDS} for r in recs],
        "table": table,
        "num_shards": len(recs),
        **{k: sum(r[k] for r in recs) for k in ("samples", "tokens", "bytes")},
        "counts": counts,
        "acceptance_rate": counts.get("kept", 0) / counts["candidates"] if counts.get("candidates") else None,
        "histograms": hists,
    }


def brace_pattern(split: str, n: int, compression: str) -> str | None:
    """'train/shard-{000000..000011}.tar.zst': expands (webdataset / braceexpand) to exactly the n shards; None
    for n = 0 (no brace pattern expands to nothing)."""
    if n == 0:
        return None
    return f"{split}/shard-{{{0:06d}..{n - 1:06d}}}{COMPRESSIONS[compression]}"


def samples_table(recs: list[dict]) -> bytes:
    """Parquet bytes: one row per sample of these shard records (key, shard, sample, rule_id, sim, stats)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list] = {"shard": []}
    for r in recs:
        n = r["samples"]
        columns["shard"] += [r["path"]] * n
        for name, values in r["columns"].items():
            columns.setdefault(name, []).extend(values)
    order = ["key", "shard", "sample", *sorted(c for c in columns if c not in ("key", "shard", "sample"))]
    table = pa.table({c: columns[c] for c in order if c in columns})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_manifest(url: str, storage_options=None) -> dict:
    """The manifest of the dataset at `url` (its folder or its manifest.json), checked as untrusted input (see
    the module docstring); a clear error if there is none or it is not one this version reads."""
    return parse_manifest(*read_manifest_bytes(url, storage_options))


def read_manifest_bytes(url: str, storage_options=None) -> tuple[bytes, str]:
    """(the bytes of the dataset's manifest.json, its URL), at most `MAX_MANIFEST_BYTES`; a clear error if there
    is none."""
    fs, root = dataset_root(url, storage_options)
    path = storage.join(root, MANIFEST)
    where = storage.url_of(fs, path)
    try:
        data = storage.read_bytes(fs, path, MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        hint = unfinished_hint(fs, root)
        raise DatasetError(f"no dataset at {storage.url_of(fs, root)}: {where} does not exist. A finished dataset "
                         f"has {MANIFEST} at its root.{' ' + hint if hint else ''}") from None
    except storage.errors() as exc:  # permissions, credentials, an endpoint that does not answer
        raise StorageError(f"cannot read {storage.describe_failure(fs, path, exc)}") from exc
    if len(data) > MAX_MANIFEST_BYTES:
        raise DatasetError(f"{where} is damaged: more than {MAX_MANIFEST_BYTES:,} bytes, larger than any manifest "
                         f"nca-datagen writes")
    return data, where


def json_object(data: bytes, where: str) -> dict:
    """The JSON object in `data` (read from `where`); DatasetError when it is not JSON or not an object."""
    try:
        obj = json.loads(data)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise DatasetError(f"{where} is damaged: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where} is damaged: JSON {type(obj).__name__}, not an object")
    return obj


def parse_manifest(data: bytes, where: str) -> dict:
    """The manifest in `data` (read from `where`), checked as untrusted input (see the module docstring)."""
    manifest = json_object(data, where)
    version = manifest.get("format_version")
    if manifest.get("format") != FORMAT or not isinstance(version, int) or version > FORMAT_VERSION:
        raise DatasetError(f"{where} is not a manifest this version of nca-datagen reads "
                           f"(format {manifest.get('format')!r} v{version!r}); upgrade nca-datagen")
    if problem := manifest_problem(manifest):
        raise DatasetError(f"{where} is damaged or not safe to read: {problem}")
    return manifest


def unfinished_hint(fs, root: str) -> str:
    """What the marker at `root` says is unfinished there ("" without one): advice for a reader finding no
    manifest."""
    try:
        marker = read_json(fs, storage.join(root, BUILD), 2**20)
    except (ValueError, IsADirectoryError):
        return ""
    settings = marker.get("settings") if isinstance(marker, dict) else None
    if not isinstance(settings, dict):
        return ""
    if "publish" in settings:
        return f"A publish into this folder is in progress or was interrupted ({BUILD}): rerun that publish."
    if "replacing" in settings:
        return f"A build --overwrite is in progress or was interrupted there ({BUILD}): rerun it."
    return f"A build is in progress or was interrupted there ({BUILD}): rerun the same build command to finish it."


# What readers index without further checks: each field and the type it must have.
_TOP_FIELDS = {"config": dict, "sequence": dict, "splits": dict, "totals": dict}
_SPLIT_FIELDS = {"shards": list, "compression": str, "num_shards": int, "samples": int, "tokens": int, "bytes": int}
_SHARD_TYPES = {"path": str, "samples": int, "tokens": int, "bytes": int, "sha256": str}
_FILE_TYPES = {"bytes": int, "sha256": str}
_RECIPE_TYPES = {"version": int, "fingerprint": str}
_DIGEST = re.compile(r"[0-9a-f]{64}")


def manifest_problem(manifest: dict) -> str | None:
    """The first thing a reader could not trust in `manifest`, else None: a field missing or of the wrong type,
    a name other than the canonical one, a size the format cannot have, a `sequence` or recipe that is not its
    config's. Readers then fail with this message, not deep inside (or outside the dataset). Plain arithmetic on
    the config's numbers: a reader never imports the generator to read a manifest."""
    if problem := _wrong_field(manifest, _TOP_FIELDS, ""):
        return problem
    config = manifest["config"]
    try:
        layout = sequence_layout(config.get("nca"))
        samples_per_shard = config["rules_per_shard"] * config["sims_per_rule"]
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        return f"config is not a recipe this version reads ({exc or type(exc).__name__})"
    if manifest["sequence"] != layout:
        return f"sequence {str(manifest['sequence'])[:200]} is not what its config makes ({layout})"
    for split, info in manifest["splits"].items():
        if problem := _split_problem(split, info, layout["seq_len"], samples_per_shard):
            return problem
    if manifest["format_version"] >= 2:
        return _recipe_problem(manifest) or _files_problem(manifest)
    return None


def _split_problem(split: str, info, seq_len: int, samples_per_shard) -> str | None:
    if split not in SPLITS:
        return f"split {split!r} is not one of {', '.join(SPLITS)}"
    where = f"splits.{split}."
    if problem := _wrong_field(info, _SPLIT_FIELDS, where):
        return problem
    if info["compression"] not in COMPRESSIONS:
        return f"{where}compression {info['compression']!r} is not one of {', '.join(COMPRESSIONS)}"
    if info.get("table", f"samples/{split}.parquet") != f"samples/{split}.parquet":
        return f"{where}table {info.get('table')!r} is not samples/{split}.parquet"
    for i, shard in enumerate(info["shards"]):
        at = f"{where}shards[{i}]."
        if problem := _wrong_field(shard, _SHARD_TYPES, at):
            return problem
        if shard["path"] != shard_name(split, i, info["compression"]):
            return f"{at}path {shard['path']!r} is not {shard_name(split, i, info['compression'])!r}"
        if not 0 <= shard["samples"] <= samples_per_shard or shard["tokens"] != shard["samples"] * seq_len:
            return f"{at}samples / tokens {shard['samples']} / {shard['tokens']} do not fit its config"
        if not 0 <= shard["bytes"] <= max_shard_bytes(shard["samples"], seq_len):
            return f"{at}bytes {shard['bytes']} is more than {shard['samples']} samples can take"
        if not _DIGEST.fullmatch(shard["sha256"]):
            return f"{at}sha256 {shard['sha256'][:80]!r} is not a sha256 digest"
    return None


def _recipe_problem(manifest: dict) -> str | None:
    if problem := _wrong_field(manifest.get("recipe"), _RECIPE_TYPES, "recipe."):
        return problem
    compressions = {info["compression"] for info in manifest["splits"].values()} or {"zstd"}
    recipe = manifest["recipe"]
    if len(compressions) > 1 or recipe["fingerprint"] != recipe_fingerprint(manifest["config"], compressions.pop(),
                                                                            recipe["version"]):
        return "recipe.fingerprint is not its config's"
    return None


def _files_problem(manifest: dict) -> str | None:
    """`files` may name the tables only, `card` the card's files only, each with a size and a sha256."""
    for key, allowed in (("files", {f"samples/{table}" for table in TABLES}), ("card", set(CARD_FILES))):
        listed = manifest.get(key)
        if not isinstance(listed, dict):
            return f"{key} is {str(listed)[:80]}, expected an object"
        for name, info in listed.items():
            if name not in allowed:
                return f"{key} names {name[:80]!r}, not one of the dataset's {'tables' if key == 'files' else key}"
            if problem := _wrong_field(info, _FILE_TYPES, f"{key}.{name}."):
                return problem
            if not _DIGEST.fullmatch(info["sha256"]) or info["bytes"] < 0:
                return f"{key}.{name} has no valid size and sha256"
    return None


def listed_files(manifest: dict) -> dict[str, dict]:
    """Every file besides shards and records that a manifest lists, {name: {"bytes", "sha256"}}: the tables and
    the card (none for version 1)."""
    return {**(manifest.get("files") or {}), **(manifest.get("card") or {})}


def _wrong_field(obj, fields: dict, where: str) -> str | None:
    if not isinstance(obj, dict):
        return f"{where.rstrip('.')} is {str(obj)[:80]}, expected an object"
    for key, kind in fields.items():
        value = obj.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{where}{key} is {str(value)[:80]!r}, expected {'an' if kind is int else 'a'} {kind.__name__}"
    return None


def manifest_recipe(manifest: dict) -> str | None:
    """The recipe fingerprint a manifest records (None for version 1, which records none)."""
    recipe = manifest.get("recipe")
    return recipe.get("fingerprint") if isinstance(recipe, dict) else None


def recipe_version(manifest: dict) -> int:
    """The recipe version that made a dataset (1 for manifests older than the field)."""
    recipe = manifest.get("recipe")
    return recipe.get("version", 1) if isinstance(recipe, dict) else 1


def dataset_digest(manifest: dict) -> str:
    """`shards_digest` over every split's shards: which data a manifest describes, whatever else it says."""
    return shards_digest([shard for split in manifest["splits"].values() for shard in split["shards"]])


def shards_digest(shards: list[dict]) -> str:
    """A short digest of shard records' sha256s, in order: the identity of data by content, whatever folder or
    bucket holds it (a deterministic rebuild gets the same digest; any other data, another)."""
    return hashlib.sha256("".join(shard["sha256"] for shard in shards).encode()).hexdigest()[:16]


def dataset_root(url: str, storage_options=None):
    """(fs, root) of a dataset given its folder or its manifest.json."""
    url = str(url).rstrip("/")
    if url.endswith("/" + MANIFEST) or url == MANIFEST:
        url = url[: -len(MANIFEST)].rstrip("/") or "."
    return storage.filesystem(url, storage_options)


def environment() -> dict:
    """Versions that can change the bytes of a shard (zlib changes the filter; the rest is for the record)."""
    from nca_datagen.complexity import ZLIB_VERSION

    return {"python": sys.version.split()[0], "platform": platform.platform(), "zlib": ZLIB_VERSION,
            **{name: _version(name) for name in ("numpy", "torch", "triton", "zstandard", "pyarrow")}}


def _check_complete(fs, root: str, split: str, recs: list[dict], recipe: str | None) -> None:
    indices = [r["index"] for r in recs]
    if indices != list(range(len(recs))):
        missing = sorted(set(range(max(indices, default=-1) + 1)) - set(indices))
        raise ValueError(f"{split}: shard records must be numbered 0..{len(recs) - 1} without gaps; missing "
                         f"{missing[:10]} (rerun the build to finish them)")
    if len({r["compression"] for r in recs}) > 1:
        raise ValueError(f"{split}: shards were written with different compressions; rebuild with --overwrite")
    other = next((r for r in recs if r["recipe"] != recipe), None)
    if other is not None:
        raise ValueError(f"{split}: shard {other['index']} was made by another recipe ({other['recipe']}, not "
                         f"{recipe}); rebuild with --overwrite")
    sizes = storage.listing(fs, storage.join(root, split))  # one request, not one per shard on object storage
    for r in recs:
        have = sizes.get(storage.basename(r["path"]))
        if have != r["bytes"]:
            raise ValueError(f"{storage.url_of(fs, storage.join(root, r['path']))}: "
                             f"{'missing' if have is None else f'{have} bytes'}, its record says {r['bytes']}; "
                             f"rerun the build to rewrite it")


def add_histograms(total: dict | None, h: dict, where: str = "") -> dict:
    """`total` + `h`, bin by bin. Histograms add only over the same bins (nca-datagen's are fixed on [0, 1]):
    others are refused, naming `where`, whoever asks (the build, the card, `inspect`)."""
    if not isinstance(h, dict) or not isinstance(h.get("counts"), list):
        raise ValueError(f"{where}: a histogram without counts")
    if total is None:
        return {"lo": h.get("lo", 0.0), "hi": h.get("hi", 1.0), "counts": list(h["counts"])}
    if (total["lo"], total["hi"], len(total["counts"])) != (h.get("lo", 0.0), h.get("hi", 1.0), len(h["counts"])):
        raise ValueError(f"{where}: histograms over other bins do not add up")
    return {**total, "counts": (np.asarray(total["counts"]) + np.asarray(h["counts"])).tolist()}


def merged_histograms(manifest: dict) -> dict:
    """Each histogram kind (candidates, kept, samples) summed over the splits."""
    out: dict[str, dict] = {}
    for name, split in manifest["splits"].items():
        for kind, h in (split.get("histograms") or {}).items():
            out[kind] = add_histograms(out.get(kind), h, f"splits.{name}.histograms.{kind}")
    return out


def band_of(manifest: dict):
    """The `complexity.Band` a dataset was filtered to."""
    from nca_datagen.complexity import Band

    return Band.from_dict(manifest["config"]["band"])


def read_json(fs, path: str, limit: int = MAX_MANIFEST_BYTES, *, missing_ok: bool = True):
    """The JSON at `path` (None when missing and `missing_ok`); ValueError when it is not JSON or holds more than
    `limit` bytes (a file from elsewhere may be any size)."""
    try:
        data = storage.read_bytes(fs, path, limit + 1)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    if len(data) > limit:
        raise ValueError(f"more than {limit:,} bytes, larger than any such file nca-datagen writes")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None


def _version(name: str):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
