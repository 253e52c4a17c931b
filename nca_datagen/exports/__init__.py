"""Exports: a verified dataset rewritten in another library's format, as a sibling dataset with its own manifest.

    export_dataset(SRC, DST, "parquet" | "megatron" | "mds")   -> the export's manifest
    verify_export(DST)                                         -> problems (each naming its file)
    regenerate_export(DST, n)                                  -> problems: n sampled units rebuilt from the recipe
    is_export(URL)                                             -> whether `verify` should call the two above

The WebDataset shards stay the canonical form; an export is derived from them, one unit per source shard:

| format | a unit (source shard `<split>` i) | read by |
|---|---|---|
| parquet | `<split>/shard-NNNNNN.parquet` | pyarrow, `datasets.load_dataset(DST)` (the card's `configs`) |
| megatron | `<split>/shard-NNNNNN.bin` + `.idx` | megatron-core's `IndexedDataset(prefix)` |
| mds | `<split>/shard-NNNNNN/` (+ `<split>/index.json`) | mosaicml-streaming's `StreamingDataset` |

Each format's module states the layout it writes (`parquet`, `megatron` with the `.idx` header byte by byte,
`mds`); `manifest` the export's manifest and whose folder an export may write.

Rules:
- the source must pass `verify` whole first, and is read only through its manifest and checked shard reader;
- the same source gives the same bytes: every writer knob is fixed, the writer library's version is recorded,
  so `regenerate_export` rebuilds sampled source shards from the recipe (`generate_shard`), checks them against
  the sha256 the source had, re-exports them and compares every file's sha256 with the export's manifest;
- files are written atomically, the manifest last; a rerun over an unfinished or finished export of the same
  source and format rewrites it; anything else in DST is refused before a byte is written.

Trade-off: an export reads the source twice (once to verify it, once to convert it) rather than trusting a
shard it has not hashed; converting is a small share of either read.
"""

from __future__ import annotations

import hashlib
import json
import tempfile

from nca_datagen import storage
from nca_datagen.card import DATASET_DIR, render_export_card
from nca_datagen.claim import claim
from nca_datagen.config import RECIPE_VERSION
from nca_datagen.exports.manifest import (
    CARD,
    COUNTS,
    FORMATS,
    MAX_SPLIT_FILE_BYTES,
    build_manifest,
    card_json,
    check_destination,
    format_module,
    is_export_manifest,
    listed_paths,
    read_export_manifest,
    versions,
    write_export_manifest,
    write_marker,
)
from nca_datagen.exports.samples import read_unit
from nca_datagen.manifest import (
    MANIFEST,
    dataset_digest,
    dataset_root,
    manifest_recipe,
    read_manifest,
    read_manifest_bytes,
    shards_digest,
)
from nca_datagen.shards import ShardError
from nca_datagen.verify import sampled_shards, verify_dataset

__all__ = ["FORMATS", "export_dataset", "is_export", "read_export_manifest", "regenerate_export", "verify_export"]


def export_dataset(src_url: str, dst_url: str, fmt: str, storage_options: dict | None = None, *,
                   echo=print) -> dict:
    """Export the dataset at `src_url` to `dst_url` in format `fmt` (see the module docstring); returns the
    export's manifest. ValueError, writing nothing, when the source does not verify or DST is not ours to write."""

    module = format_module(fmt)
    module.ready()
    source = read_manifest(src_url, storage_options)
    if manifest_recipe(source) is None:
        raise ValueError(f"{src_url}: a format-1 dataset (an nca-datagen older than recipes) cannot be exported: "
                         f"rebuild it with this version")
    problems = verify_dataset(src_url, storage_options, echo=echo)
    if problems:
        raise ValueError(f"{src_url} does not verify ({len(problems)} problem(s); the first: {problems[0]}): "
                         f"nothing was exported. Rebuild or republish what `nca-datagen verify` names, then export")
    src_fs, src_root = dataset_root(src_url, storage_options)
    fs, root = storage.filesystem(dst_url, storage_options)
    _refuse_inside(src_fs, src_root, fs, root)
    wanted = {"export_format": fmt, "dataset_digest": dataset_digest(source)}
    with claim(dst_url, storage_options, doing="export", command=f"export --format {fmt}"):
        check_destination(fs, root, wanted)
        write_marker(fs, root, wanted)
        storage.remove_files(fs, [storage.join(root, MANIFEST)])  # an older export of ours: no reader sees it mixed
        splits = {split: _export_split(src_fs, src_root, fs, root, split, info, source["sequence"], module, echo)
                  for split, info in source["splits"].items()}
        manifest = build_manifest(source, fmt, splits)
        card = render_export_card(manifest, _data_files(module, splits), module.card_body(manifest, DATASET_DIR))
        storage.write_atomic(fs, storage.join(root, CARD), card.encode())
        manifest["files"] = card_json({CARD: card.encode()})
        write_export_manifest(fs, root, manifest)
    echo(f"exported {manifest['totals']['samples']:,} sequences to {storage.url_of(fs, root)} as {fmt}")
    return manifest


def _export_split(src_fs, src_root: str, fs, root: str, split: str, info: dict, sequence: dict, module,
                  echo) -> dict:
    """Write one split's units, then its own files; returns its manifest entry (shards, files)."""
    units = []
    for index, shard in enumerate(info["shards"]):
        unit = read_unit(src_fs, src_root, split, index, shard, sequence["seq_len"])
        if not len(unit.tokens_NL):
            raise ValueError(f"{shard['path']}: no samples, not a shard nca-datagen builds; rebuild the dataset")
        files = module.write_unit(unit, sequence, module.settings(sequence))
        for path, data in files.items():
            storage.write_atomic(fs, storage.join(root, path), data)
        units.append({"source_shard": index, "source_sha256": shard["sha256"], "samples": len(unit.tokens_NL),
                      "tokens": int(unit.tokens_NL.size), "files": _file_entries(files)})
        echo(f"ok  {' '.join(files)}")
    own = module.split_files(split, len(units), lambda path: storage.read_bytes(fs, storage.join(root, path)))
    for path, data in own.items():
        storage.write_atomic(fs, storage.join(root, path), data)
    return {"shards": units, "files": _file_entries(own)}


def _file_entries(files: dict[str, bytes]) -> list[dict]:
    return [{"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for path, data in files.items()]


def _data_files(module, splits: dict) -> dict[str, str] | None:
    """What the card's `configs` name: the format's files per split, when Hugging Face reads the format."""
    glob = getattr(module, "DATA_FILES", None)
    return {split: f"{split}/{glob}" for split, info in splits.items() if info["shards"]} if glob else None


def _refuse_inside(src_fs, src_root: str, fs, root: str) -> None:
    """An export goes beside its source: inside it, `build --overwrite` and `publish` would meet files not theirs."""
    same_store = storage.is_local(src_fs) == storage.is_local(fs)
    if same_store and (root == src_root or root.startswith(src_root.rstrip("/") + "/")):
        source = storage.url_of(fs, src_root)
        raise ValueError(f"{storage.url_of(fs, root)} is inside the dataset it exports ({source}): write the export "
                         f"beside it, e.g. {source}-parquet")


def is_export(url: str, storage_options: dict | None = None) -> bool:
    """Whether the manifest at `url` is an export's (else a dataset's, or damaged): what `verify` dispatches on.
    ValueError when there is no manifest to read."""
    data, _ = read_manifest_bytes(url, storage_options)
    try:
        return is_export_manifest(json.loads(data))
    except ValueError:  # not JSON: the dataset reader names the damage
        return False


# ------------------------------------------------------------------------------------------------ verify


def verify_export(url: str, storage_options: dict | None = None, *, echo=print) -> list[str]:
    """Problems found (each naming its file); empty when every file the manifest lists is there at its size and
    sha256, reads as its format says (rows, header, index), the counts add up and no other file sits in a split
    folder (readers that glob it would read it)."""
    manifest = read_export_manifest(url, storage_options)
    fs, root = dataset_root(url, storage_options)
    module = FORMATS[manifest["export_format"]]
    problems = _check_counts(manifest)
    for split, info in manifest["splits"].items():
        for unit in info["shards"]:
            files, problem = _read_files(fs, root, unit["files"])
            if problem is None and (wrong := module.check(files, unit, manifest["sequence"])):
                problem = storage.url_of(fs, storage.join(root, wrong))  # `wrong` starts with the file's path
            echo(f"{'BAD' if problem else 'ok '} {' '.join(f['path'] for f in unit['files'])}" +
                 (f": {problem}" if problem else ""))
            problems += [problem] if problem else []
        problems += _check_small_files(fs, root, {f["path"]: f for f in info["files"]}, echo)
        problems += _split_files_problems(fs, root, module, split, info)
    return problems + _check_small_files(fs, root, manifest["files"], echo) + _unlisted(fs, root, manifest)


def _read_files(fs, root: str, files: list[dict]) -> tuple[dict[str, bytes], str | None]:
    """({path: bytes}, None) when every file is there at its recorded size and sha256, else (..., the problem)."""
    found = {}
    for f in files:
        path = storage.join(root, f["path"])
        try:
            data = storage.read_bytes(fs, path, f["bytes"] + 1)
        except FileNotFoundError:
            return found, f"{storage.url_of(fs, path)}: missing"
        if len(data) != f["bytes"] or hashlib.sha256(data).hexdigest() != f["sha256"]:
            return found, f"{storage.url_of(fs, path)}: size or sha256 differs from the manifest (corrupt or replaced)"
        found[f["path"]] = data
    return found, None


def _check_small_files(fs, root: str, files: dict[str, dict], echo) -> list[str]:
    problems = []
    for name, info in files.items():
        _, problem = _read_files(fs, root, [{**info, "path": name}])
        echo(f"{'BAD' if problem else 'ok '} {name}")
        problems += [problem] if problem else []
    return problems


def _split_files_problems(fs, root: str, module, split: str, info: dict) -> list[str]:
    """A split's own files (MDS's joined index) must be what its units' files make, as the export wrote them."""
    if not info["files"]:
        return []
    try:
        made = module.split_files(split, len(info["shards"]), lambda path: storage.read_bytes(
            fs, storage.join(root, path), MAX_SPLIT_FILE_BYTES))
    except (FileNotFoundError, ValueError, KeyError, TypeError):  # a unit's index is missing or damaged: named above
        return []
    return [f"{storage.url_of(fs, storage.join(root, f['path']))}: not what the split's unit files make"
            for f in info["files"] if hashlib.sha256(made.get(f["path"], b"")).hexdigest() != f["sha256"]]


def _check_counts(manifest: dict) -> list[str]:
    """The manifest's numbers agree: splits with their units, totals with the splits, the source digest with the
    units' source shards."""
    splits, problems = manifest["splits"], []
    if not splits:
        return ["splits: empty, the export lists no files"]
    for split, info in splits.items():
        sums = {"num_shards": len(info["shards"]), "samples": sum(u["samples"] for u in info["shards"]),
                "tokens": sum(u["tokens"] for u in info["shards"]),
                "bytes": sum(f["bytes"] for u in info["shards"] for f in u["files"]) + sum(f["bytes"]
                                                                                           for f in info["files"])}
        problems += [f"{split}: {k} is {info[k]}, its files add up to {v}" for k, v in sums.items() if info[k] != v]
    for k in COUNTS:
        total = sum(info[k] for info in splits.values())
        if manifest["totals"][k] != total:
            problems.append(f"totals: {k} is {manifest['totals'][k]}, the splits add up to {total}")
    units = [{"sha256": u["source_sha256"]} for info in splits.values() for u in info["shards"]]
    if shards_digest(units) != manifest["dataset_digest"]:
        problems.append("dataset_digest is not the digest of the source shards the units list")
    return problems


def _unlisted(fs, root: str, manifest: dict) -> list[str]:
    """Files in a split folder the manifest does not list (a reader globbing the folder would read them)."""
    listed = set(listed_paths(manifest))
    prefix = len(root.rstrip("/")) + 1
    fs.invalidate_cache(root)  # a fresh listing, as storage.listing takes
    found = [path[prefix:] for split in sorted(manifest["splits"]) for path in fs.find(storage.join(root, split))]
    return [f"{storage.url_of(fs, storage.join(root, rel))}: not part of the export (readers that glob its folder "
            f"would read it): delete it" for rel in found if rel not in listed]


# ------------------------------------------------------------------------------------------------ regenerate


def regenerate_export(url: str, n: int, storage_options: dict | None = None, *, seed: int = 0, backend=None,
                      device=None, echo=print) -> list[str]:
    """Rebuild `n` randomly chosen units from the manifest's recipe: each source shard by `generate_shard`, checked
    against the sha256 the source had, then re-exported; problems for every file whose sha256 differs from the
    export's manifest (and for a source shard the recipe no longer makes)."""
    manifest = read_export_manifest(url, storage_options)
    module = FORMATS[manifest["export_format"]]
    refused = _cannot_regenerate(manifest, module, echo)
    if refused:
        return [refused]
    problems = []
    with tempfile.TemporaryDirectory(prefix="nca-export-regenerate-") as tmp:
        for split, i in sampled_shards(manifest, n, seed):
            problem = _regenerate_unit(manifest, module, split, i, tmp, backend, device)
            unit_files = " ".join(f["path"] for f in manifest["splits"][split]["shards"][i]["files"])
            echo(f"{'BAD' if problem else 'ok '} regenerated {unit_files}" + (f": {problem}" if problem else ""))
            problems += [problem] if problem else []
    return problems


def _cannot_regenerate(manifest: dict, module, echo) -> str | None:
    """Why this nca-datagen cannot rebuild the export's bytes (another recipe version or writer), else None;
    warns where a version could change them."""
    from nca_datagen.complexity import ZLIB_VERSION

    version = manifest["recipe"]["version"]
    if version != RECIPE_VERSION:
        return (f"made from recipe version {version}; this nca-datagen makes version {RECIPE_VERSION}, so it cannot "
                f"regenerate these shards (an older export, not a corrupt one): regenerate with the version that "
                f"made it ({manifest.get('tool_version')})")
    if manifest["settings"] != module.settings(manifest["sequence"]):
        return (f"written with writer settings {manifest['settings']}; this nca-datagen writes "
                f"{module.settings(manifest['sequence'])}: regenerate with the version that wrote it "
                f"({manifest.get('tool_version')})")
    zlib = manifest["source"].get("zlib")
    if zlib and zlib != ZLIB_VERSION:
        echo(f"warning: the source was built with zlib {zlib}, this machine has {ZLIB_VERSION}; the complexity "
             f"filter may keep different rules, so shards can differ for that reason alone")
    recorded, here = (manifest.get("provenance") or {}).get(module.LIBRARY), versions(module.LIBRARY)[module.LIBRARY]
    if recorded != here:
        echo(f"warning: the export was written with {module.LIBRARY} {recorded}, this machine has {here}; its files "
             f"can differ for that reason alone")
    return None


def _regenerate_unit(manifest: dict, module, split: str, index: int, tmp: str, backend, device) -> str | None:
    """Rebuild source shard (split, index) into `tmp`, re-export it, compare; the problem, else None."""
    from nca_datagen.config import DatasetConfig
    from nca_datagen.generate import generate_shard
    from nca_datagen.shards import DEFAULT_LEVEL, write_shard

    entry, source, sequence = manifest["splits"][split]["shards"][index], manifest["source"], manifest["sequence"]
    config = DatasetConfig.from_dict(manifest["config"])
    data = generate_shard(config, split, index, backend=backend, device=device)
    record = write_shard(data, tmp, recipe=manifest["recipe"]["fingerprint"], compression=source["compression"],
                         level=source["level"] or DEFAULT_LEVEL)
    shard = {"path": record["path"], "sha256": entry["source_sha256"], "bytes": record["bytes"]}
    try:
        unit = read_unit(storage.filesystem(tmp)[0], tmp, split, index, shard, sequence["seq_len"])
    except ShardError:
        return (f"{split} shard {index}: rebuilt from the recipe, its sha256 is not the one the exported source "
                f"shard had (the recipe no longer makes that shard here)")
    files = module.write_unit(unit, sequence, manifest["settings"])
    differ = [f["path"] for f in entry["files"] if hashlib.sha256(files[f["path"]]).hexdigest() != f["sha256"]]
    return f"{', '.join(differ)}: re-exported from the recipe, sha256 differs from the manifest" if differ else None
