"""The manifest: the single file that turns a folder of shards into a dataset, written last.

A dataset folder holds, once finished:

    manifest.json           format version, tool version, the full resolved config (enough to regenerate
                            every shard), per split: brace pattern, per-shard {path, samples, tokens, bytes,
                            sha256}, totals, filter counts, complexity histograms; provenance (versions, zlib,
                            device, times)
    samples/{split}.parquet every sample: key, shard, sample, rule_id, sim and its statistics
    README.md (+ figures)   the dataset card (nca_datagen.card)
    {split}/shard-NNNNNN.tar.zst and {split}/shard-NNNNNN.json (shard records, see nca_datagen.shards)

While a build (or a publish) runs the folder holds `build.json` (the config being built) and no manifest.
`prepare_output` uses the two to decide: a finished dataset is never overwritten by accident, a build in progress
resumes only with the same config, anything else is refused with the difference spelled out. `write_manifest`
writes the tables and the card, checks every listed shard is present at its recorded size, and writes
`manifest.json` last and atomically: a reader that sees a manifest sees every shard it names.

Whose files are whose (`owned_path`, `check_not_foreign`): writers put the marker in place before they write or
delete anything else and remove it only after the manifest is written, so a folder with neither holds nothing of
nca-datagen's but shards written through the library with their records (`write_shard` before `prepare_output`)
and event logs. Anything else there is someone else's (a WebDataset folder of another tool looks much like
ours), and `build` and `publish` refuse such a folder, `--overwrite` or not: it replaces a dataset, never files
that were not one's. In a dataset's folder, cleanups delete only the files `owned_path` names.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import re
import sys
from importlib import metadata

import numpy as np

from nca_datagen import __version__, storage
from nca_datagen.card import write_card
from nca_datagen.claim import CLAIM
from nca_datagen.config import SPLITS, DatasetConfig
from nca_datagen.shards import COMPRESSIONS

FORMAT = "nca-datagen-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BUILD = "build.json"  # the config of a build in progress; removed when the manifest is written
CARD_FILES = ("README.md", "preview.png", "complexity.png", "token-frequency.png")  # what nca_datagen.card writes
LOGS = "_logs"  # the build's event logs (diagnostics of the machine that built it: never removed, never published)
OWNED_FOLDERS = (*SPLITS, "samples")  # a dataset folder's folders nca-datagen writes (plus LOGS)
OWNED_FILES = (BUILD, *CARD_FILES)  # ... and its files, besides manifest.json
TABLES = tuple(f"{split}.parquet" for split in SPLITS)  # samples/TABLE
SHARD_FILE = re.compile(r"shard-(\d+)(\.json|" + "|".join(re.escape(s) for s in COMPRESSIONS.values()) + ")")
TEMPORARY = re.compile(r"\.tmp-\d+-[0-9a-f]{8}$")  # storage.write_atomic's name for a file being written
SHARD_FIELDS = ("path", "samples", "tokens", "bytes", "sha256")
SEED_DERIVATION = ("numpy SeedSequence / integer hash of (seed, split id, rule id, sim index); "
                   "split ids: " + ", ".join(f"{s}={i}" for i, s in enumerate(SPLITS)))


def prepare_output(out_url: str, config: DatasetConfig, *, overwrite: bool = False, storage_options=None,
                   settings: dict | None = None) -> None:
    """Get `out_url` ready for a build of `config` (and shard `settings` such as compression), or refuse.

    - holds files that are not an nca-datagen dataset's (see `check_not_foreign`): refuse, even with `overwrite`;
    - holds a finished dataset: refuse, unless `overwrite` (then its files are deleted first);
    - holds a build in progress with another config or settings: refuse, showing `field: old -> new`;
    - otherwise record the build (`build.json`) so that rerunning the same command resumes it.

    While `overwrite` deletes an older dataset the marker says so (settings `replacing`), so an interrupted
    deletion leaves a folder that `--overwrite` finishes and a plain rerun refuses rather than resumes.
    """
    check_output(out_url, config, overwrite=overwrite, storage_options=storage_options, settings=settings)
    fs, root = storage.filesystem(out_url, storage_options)
    with _as_unwritable(fs, root):
        if storage.is_local(fs):
            os.makedirs(root, exist_ok=True)
        if overwrite:
            write_build_marker(fs, root, config.to_dict(), {**(settings or {}), "replacing": "an older dataset"})
            remove_dataset(fs, root)
        write_build_marker(fs, root, config.to_dict(), settings)


def check_output(out_url: str, config: DatasetConfig, *, overwrite: bool = False, storage_options=None,
                 settings: dict | None = None) -> None:
    """`prepare_output`'s refusals, writing nothing (someone else's files, a finished dataset unless `overwrite`,
    an unfinished build of another config): a build asks before it starts Ray, so a taken output fails in a
    second, not after the cluster's start-up."""
    fs, root = storage.filesystem(out_url, storage_options)
    where, wanted = storage.url_of(fs, root), _build_marker(config.to_dict(), settings)
    with _as_unwritable(fs, root):
        finished, previous = _ours(fs, root)
        if not finished and previous is None:
            _refuse_foreign(fs, root)  # a build writes README.md, samples/, train/, val/ there
    if overwrite:
        return
    if finished:
        raise ValueError(f"{where} already holds a finished dataset ({MANIFEST}); pass --overwrite to replace "
                         f"it, or choose another output folder")
    if previous is not None and previous != wanted:
        _refuse_interrupted_replacement(where, previous.get("settings") or {})
        diff = "\n  ".join(config_diff(previous, wanted)) or "(formatting only)"
        raise ValueError(f"{where} holds an unfinished build made with a different config:\n  {diff}\n"
                         f"rerun with the old settings to resume it, pass --overwrite to discard it, "
                         f"or choose another output folder")


def _refuse_interrupted_replacement(where: str, settings: dict) -> None:
    """A marker left by an interrupted `--overwrite` or `publish` is no build to resume: say which it was."""
    if "replacing" in settings:
        raise ValueError(f"{where}: an --overwrite was interrupted while it deleted the older dataset there; pass "
                         f"--overwrite again to finish replacing it, or choose another output folder")
    if "publish" in settings:
        raise ValueError(f"{where}: a publish into this folder was interrupted; rerun that publish to finish it, "
                         f"pass --overwrite to build here instead, or choose another output folder")


def check_not_foreign(fs, root: str) -> None:
    """ValueError naming a few of `root`'s files when it holds files that are not nca-datagen's and no dataset or
    build of ours: writing there could replace or delete them. Build (`check_output`) and publish ask first."""
    finished, marker = _ours(fs, root)
    if not finished and marker is None:
        _refuse_foreign(fs, root)


def _refuse_foreign(fs, root: str) -> None:
    """`check_not_foreign` once `root` is known to hold no manifest or marker of ours."""
    foreign = _foreign_files(fs, root)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ValueError(f"{storage.url_of(fs, root)} is not empty ({shown}) and holds no nca-datagen dataset or "
                         f"build ({MANIFEST} or {BUILD}), so these files are someone else's; nothing was written "
                         f"or deleted. Choose a new or empty folder (--overwrite replaces only an nca-datagen "
                         f"dataset, never other files)")


def _foreign_files(fs, root: str, limit: int = 6) -> list[str]:
    """Up to `limit` files under `root`, a folder with no manifest or marker of ours (paths relative to it, sorted
    per folder), that nca-datagen did not write; [] when `root` does not exist.

    Without a manifest or marker (writers put the marker first) ours are only shard records in the split folders,
    shards whose record is beside them, and build event logs. A `limit` stops the walk early: a folder given by
    mistake may be large."""
    found = []
    prefix = len(root.rstrip("/")) + 1
    for folder, _, names in fs.walk(root):  # nothing for a missing root
        rel = folder.rstrip("/")[prefix:]
        siblings = set(names)
        found += [f"{rel}/{name}" if rel else name for name in sorted(names)
                  if not _ours_unmarked(rel, name, siblings)]
        if len(found) >= limit:
            break
    return found[:limit]


def _ours_unmarked(folder: str, name: str, siblings: set[str]) -> bool:
    """Whether file `name` in `folder` (relative to a dataset folder) can be nca-datagen's when there is no
    manifest or build marker: a writer's claim, a shard record, a shard beside its record, an event log."""
    if (folder, name) == ("", CLAIM):
        return True
    if folder == LOGS:
        return name.startswith("build-") and name.endswith(".jsonl")  # driver._log_path's names
    shard = SHARD_FILE.fullmatch(name)
    if folder not in SPLITS or shard is None:
        return False
    return shard.group(2) == ".json" or f"shard-{shard.group(1)}.json" in siblings


def owned_path(rel: str) -> bool:
    """Whether nca-datagen writes the file `rel` (relative to a dataset folder, '/'-separated): the build marker,
    the card, samples/SPLIT.parquet, the split folders' shards and records, each also under the temporary name a
    killed writer leaves; not manifest.json (writers handle it themselves) and not the event logs. The only files
    a cleanup of a dataset folder deletes: anything else there is someone else's."""
    folder, _, name = TEMPORARY.sub("", rel).rpartition("/")
    if not folder:
        return name in OWNED_FILES
    if folder == "samples":
        return name in TABLES
    return folder in SPLITS and SHARD_FILE.fullmatch(name) is not None


def _ours(fs, root: str) -> tuple[bool, dict | None]:
    """(whether `root` holds an nca-datagen manifest, the build marker there or None). Read, not just looked
    for: manifest.json and build.json are common names, and another tool's are not a dataset of ours."""
    manifest = _json_or_none(fs, storage.join(root, MANIFEST))
    marker = _json_or_none(fs, storage.join(root, BUILD))
    finished = isinstance(manifest, dict) and manifest.get("format") == FORMAT
    ours = isinstance(marker, dict) and set(marker) == {"config", "settings"}
    return finished, marker if ours else None


def _json_or_none(fs, path: str):
    """The JSON at `path`; None when it is missing or is not JSON."""
    try:
        return read_json(fs, path)
    except (ValueError, IsADirectoryError):  # JSONDecodeError, UnicodeDecodeError; a folder of that name
        return None


def write_build_marker(fs, root: str, config: dict, settings: dict | None) -> None:
    """Mark `root` as a build in progress of `config` (a dict) with `settings`: before anything else is written
    or deleted there, so a folder without a marker or manifest never holds a writer's half-done work."""
    storage.write_atomic(fs, storage.join(root, BUILD), _json_bytes(_build_marker(config, settings)))


def _build_marker(config: dict, settings: dict | None) -> dict:
    """What `build.json` holds: a resumed build must have the same."""
    return {"config": config, "settings": settings or {}}


@contextlib.contextmanager
def _as_unwritable(fs, root: str):
    """A storage error (permissions, a missing bucket, credentials, no endpoint) -> ValueError naming the output
    and the fix."""
    try:
        yield
    except storage.errors() as exc:
        fix = "a writable output folder" if storage.is_local(fs) else "the bucket name, endpoint and credentials"
        raise ValueError(f"cannot write to {storage.url_of(fs, root)} ({type(exc).__name__}: {exc}); check "
                         f"{fix}") from exc


def config_diff(old, new, prefix: str = "") -> list[str]:
    """Flattened differences between two nested dicts, as 'field: old -> new' lines."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            lines += config_diff(old.get(key, "<unset>"), new.get(key, "<unset>"), f"{prefix}{key}.")
        return lines
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def remove_dataset(fs, root: str) -> None:
    """Delete the dataset's files in `root` but its build marker: the manifest first (no reader sees a manifest
    whose shards are going), then every other file `owned_path` names, then split folders and samples/ left
    empty on local disk. Other files stay, in those folders too, and so does the marker: the caller, which wrote
    it first, replaces it."""
    storage.remove_files(fs, [storage.join(root, MANIFEST)])
    fs.invalidate_cache(root)
    prefix = len(root.rstrip("/")) + 1
    storage.remove_files(fs, [path for path in fs.find(root) if path[prefix:] != BUILD and owned_path(path[prefix:])])
    remove_empty_folders(fs, root, OWNED_FOLDERS)


def remove_empty_folders(fs, root: str, names) -> None:
    """Remove the folders `names` of `root` that are empty (on local disk; object stores have no folders)."""
    if storage.is_local(fs):
        for name in names:
            with contextlib.suppress(OSError):  # missing, or not empty: someone's file is in it
                os.rmdir(storage.join(root, name))


def write_manifest(out_url: str, config: DatasetConfig, records: dict[str, list[dict]], provenance: dict,
                   storage_options=None, *, figures: bool = True) -> dict:
    """Write the Parquet tables, the dataset card and then `manifest.json`; return the manifest.

    `figures=False` writes the card's text without its PNG figures (drawing them reads a few samples and
    imports matplotlib: about a second or more, which tests skip).
    """
    fs, root = storage.filesystem(out_url, storage_options)
    splits = {}
    for split, recs in records.items():
        recs = sorted(recs, key=lambda r: r["index"])
        _check_complete(fs, root, split, recs)
        remove_stale_shards(fs, root, split, len(recs))
        table = f"samples/{split}.parquet"
        storage.write_atomic(fs, storage.join(root, table), samples_table(recs))
        splits[split] = split_summary(split, recs, table)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "config": config.to_dict(),
        "sequence": sequence_layout(config),
        "seeds": {"seed": config.seed, "derivation": SEED_DERIVATION},
        "splits": splits,
        "totals": {k: sum(s[k] for s in splits.values()) for k in ("num_shards", "samples", "tokens", "bytes")},
        "provenance": {**environment(), **provenance},
    }
    write_card(fs, root, manifest, figures=figures)
    storage.write_atomic(fs, storage.join(root, MANIFEST), _json_bytes(manifest))
    remove_build_marker(fs, root)
    return manifest


def remove_build_marker(fs, root: str) -> None:
    """Remove the build marker (build.json), if there is one: the dataset at `root` is no build in progress."""
    storage.remove_files(fs, [storage.join(root, BUILD)])  # nothing there: nothing to do


def sequence_layout(config: DatasetConfig) -> dict:
    """What a reader needs to cut sequences into examples, so readers never rebuild the generator's config."""
    nca = config.nca
    return {"seq_len": nca.seq_len, "tokens_per_frame": nca.tokens_per_frame, "frames": nca.frames,
            "vocab_size": nca.vocab_size, "grid_token": nca.vocab_size - 2, "end_grid_token": nca.vocab_size - 1,
            "dtype": "uint16"}


def split_summary(split: str, recs: list[dict], table: str) -> dict:
    """The manifest's entry for one split, from its shard records (sorted by index)."""
    compression = recs[0]["compression"] if recs else "zstd"
    counts: dict[str, int] = {}
    hists: dict[str, dict] = {}
    for r in recs:
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
        for k, h in r["histograms"].items():
            hists[k] = _add_hist(hists.get(k), h)
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
    """The manifest of the dataset at `url` (its folder or its manifest.json); a clear error if there is none."""
    fs, root = dataset_root(url, storage_options)
    path = storage.join(root, MANIFEST)
    try:
        manifest = json.loads(storage.read_bytes(fs, path))
    except FileNotFoundError:
        hint = (" A build is in progress or was interrupted there (build.json): rerun the same build command "
                "to finish it.") if storage.exists(fs, storage.join(root, BUILD)) else ""
        raise ValueError(f"no dataset at {storage.url_of(fs, root)}: {storage.url_of(fs, path)} does not exist. "
                         f"A finished dataset has {MANIFEST} at its root.{hint}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{storage.url_of(fs, path)} is damaged: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{storage.url_of(fs, path)} is damaged: JSON {type(manifest).__name__}, not an object")
    version = manifest.get("format_version")
    if manifest.get("format") != FORMAT or not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{storage.url_of(fs, path)} is not a manifest this version of nca-datagen reads "
                         f"(format {manifest.get('format')!r} v{version!r}); upgrade nca-datagen")
    problem = _structure_problem(manifest)
    if problem:
        raise ValueError(f"{storage.url_of(fs, path)} is damaged: {problem}")
    return manifest


# What readers index without further checks: each field and the type it must have.
_TOP_FIELDS = {"config": dict, "sequence": dict, "splits": dict, "totals": dict}
_SPLIT_FIELDS = {"shards": list, "compression": str, "num_shards": int, "samples": int, "tokens": int, "bytes": int}
_SHARD_TYPES = {"path": str, "samples": int, "tokens": int, "bytes": int, "sha256": str}


def _structure_problem(manifest: dict) -> str | None:
    """The first field a reader needs that is missing or of the wrong type, else None (JSON edited by hand, or
    written by something else): readers then fail with this message, not a KeyError deep inside."""
    problem = _wrong_field(manifest, _TOP_FIELDS, "")
    if problem:
        return problem
    for split, info in manifest["splits"].items():
        problem = _wrong_field(info, _SPLIT_FIELDS, f"splits.{split}.")
        if problem:
            return problem
        for i, shard in enumerate(info["shards"]):
            problem = _wrong_field(shard, _SHARD_TYPES, f"splits.{split}.shards[{i}].")
            if problem:
                return problem
    return None


def _wrong_field(obj, fields: dict, where: str) -> str | None:
    if not isinstance(obj, dict):
        return f"{where.rstrip('.')} is {obj!r}, expected an object"
    for key, kind in fields.items():
        value = obj.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{where}{key} is {value!r}, expected {'an' if kind is int else 'a'} {kind.__name__}"
    return None


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

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "zlib": ZLIB_VERSION,
        **{name: _version(name) for name in ("numpy", "torch", "triton", "zstandard", "pyarrow")},
    }


def _check_complete(fs, root: str, split: str, recs: list[dict]) -> None:
    indices = [r["index"] for r in recs]
    if indices != list(range(len(recs))):
        missing = sorted(set(range(max(indices, default=-1) + 1)) - set(indices))
        raise ValueError(f"{split}: shard records must be numbered 0..{len(recs) - 1} without gaps; missing "
                         f"{missing[:10]} (rerun the build to finish them)")
    if len({r["compression"] for r in recs}) > 1:
        raise ValueError(f"{split}: shards were written with different compressions; rebuild with --overwrite")
    sizes = storage.listing(fs, storage.join(root, split))  # one request, not one per shard on object storage
    for r in recs:
        have = sizes.get(storage.basename(r["path"]))
        if have != r["bytes"]:
            raise ValueError(f"{storage.url_of(fs, storage.join(root, r['path']))}: "
                             f"{'missing' if have is None else f'{have} bytes'}, its record says {r['bytes']}; "
                             f"rerun the build to rewrite it")


def remove_stale_shards(fs, root: str, split: str, n: int) -> None:
    """Delete shards/records numbered >= n left by an earlier, larger build, so the pattern matches the files,
    and any shard or record a killed write left under its temporary name (only names `owned_path` gives a build:
    a shard-000009.txt of someone's stays). Called once every shard is written, so no write is in flight."""
    folder = storage.join(root, split)
    stale = []
    for name in storage.listing(fs, folder):  # not a glob: the folder's own name may hold [, * or ?
        final = TEMPORARY.sub("", name)
        shard = SHARD_FILE.fullmatch(final)
        if shard is not None and (final != name or int(shard.group(1)) >= n):
            stale.append(storage.join(folder, name))
    storage.remove_files(fs, stale)


def _add_hist(total: dict | None, h: dict) -> dict:
    if total is None:
        return {"lo": h["lo"], "hi": h["hi"], "counts": list(h["counts"])}
    assert (total["lo"], total["hi"], len(total["counts"])) == (h["lo"], h["hi"], len(h["counts"])), (total, h)
    return {**total, "counts": (np.asarray(total["counts"]) + np.asarray(h["counts"])).tolist()}


def read_json(fs, path: str):
    try:
        return json.loads(storage.read_bytes(fs, path))
    except FileNotFoundError:
        return None


def _version(name: str):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
