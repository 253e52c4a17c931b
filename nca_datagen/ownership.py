"""Whose files are whose in an output folder, and what `build` and `publish` may do there.

A folder is nca-datagen's by proof, never by its file names: another tool's WebDataset folder looks much like ours.

| the output holds | `build` | `build --overwrite` |
|---|---|---|
| nothing, or does not exist | builds | builds |
| a dataset of this recipe (`manifest.json`) | verifies it; rebuilds what is missing or damaged | replaces it |
| a dataset of another recipe | refused | replaces it |
| a build of this recipe (`build.json`) | resumes | replaces it |
| a build of another recipe, an interrupted `--overwrite` or `publish` | refused, naming the difference | replaces it |
| only shard records (and their shards) of this recipe | resumes, adopting them | replaces them |
| only shard records (and their shards) of another recipe | refused | replaces them |
| a file not proven ours, and no manifest or `build.json` | refused | refused |

`publish` follows the same table for its DST, with the dataset it copies as "this recipe".

Rules:
- proof: a `manifest.json` or `build.json` in our format, or a shard record that `shards.record_problem` accepts
  (our fields, the canonical shard name, a recipe fingerprint) with the shard it names at its recorded size.
  Event logs (`_logs/build-*.jsonl`) and the writer's claim pass by name: nothing ever modifies or deletes them.
- the marker (`build.json`, naming the recipe) goes in only once the folder is accepted, before anything else is
  written or deleted there, and comes out once the manifest is written.
- deletions: only the files a dataset of ours has (`owned_path`), in a folder proven ours. Anyone else's files
  stay, in our split folders too.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from nca_datagen import storage
from nca_datagen.claim import CLAIM
from nca_datagen.config import SPLITS, DatasetConfig, recipe_fingerprint
from nca_datagen.errors import OutputRefused, StorageError
from nca_datagen.manifest import (
    BUILD,
    CARD_FILES,
    FORMAT,
    LOGS,
    MANIFEST,
    SHARD_FILE,
    TABLES,
    TEMPORARY,
    dataset_digest,
    json_bytes,
    manifest_recipe,
    read_json,
)
from nca_datagen.shards import MAX_RECORD_BYTES, record_problem

BUILD_FORMAT = "nca-datagen-build"
MARKER_FIELDS = frozenset({"format", "recipe", "config", "settings"})
OWNED_FOLDERS = (*SPLITS, "samples")  # a dataset folder's folders nca-datagen writes (plus LOGS)
OWNED_FILES = (BUILD, MANIFEST, *CARD_FILES)  # ... and its files at the root
STAGING = "_publish"  # where `publish` puts a dataset's new files while an older one stays readable
FOREIGN_SHOWN = 5  # file names a refusal quotes


@dataclass
class Folder:
    """What an output folder holds, read and never written: our manifest and marker (parsed, else None), the
    recipes of the shard records found when there is neither, and files not proven ours (a few)."""

    manifest: dict | None = None
    marker: dict | None = None
    record_recipes: set[str] = field(default_factory=set)
    foreign: list[str] = field(default_factory=list)


def survey(fs, root: str) -> Folder:
    """Read what `root` holds (see `Folder`). Without a manifest or marker every file must be proven ours; the
    walk stops once a few are not (a folder given by mistake may be large)."""
    marker = _json_or_none(fs, storage.join(root, BUILD))
    folder = Folder(manifest=our_manifest(fs, storage.join(root, MANIFEST)),
                    marker=marker if _is_our_marker(marker) else None)
    if folder.manifest is None and folder.marker is None:
        folder.record_recipes, folder.foreign = _unmarked_files(fs, root)
    return folder


def check_output(out_url: str, config: DatasetConfig, compression: str, *, overwrite: bool = False,
                 storage_options=None, planned: dict[str, int] | None = None) -> Folder:
    """What `prepare_output` would refuse, writing nothing; returns the folder's state. A build asks before it
    starts Ray, so a taken output fails in a second, not after the cluster's start-up. `planned` (shards per
    split): a finished dataset of this recipe may grow to it, never shrink without `overwrite`."""
    fs, root = storage.filesystem(out_url, storage_options)
    with _as_unwritable(fs, root):
        folder = survey(fs, root)
    where, recipe = storage.url_of(fs, root), recipe_fingerprint(config, compression)
    if folder.foreign:
        refuse_foreign(where, folder.foreign)
    if overwrite:
        return folder
    if folder.manifest is not None and manifest_recipe(folder.manifest) != recipe:
        raise OutputRefused(f"{where} already holds a finished dataset of another recipe ({MANIFEST}); pass "
                         f"--overwrite to replace it, or choose another output folder")
    if folder.manifest is not None and planned is not None:
        _refuse_shrinking(where, folder.manifest, planned)
    if folder.manifest is None and folder.marker is not None:
        _refuse_other_build(where, folder.marker, _marker(config, recipe, {"compression": compression}))
    others = folder.record_recipes - {recipe}
    if others:
        raise OutputRefused(f"{where} holds shards of another recipe (fingerprint {sorted(others)[0]}; this build's is "
                         f"{recipe}): pass --overwrite to replace them, or choose another output folder")
    return folder


def prepare_output(out_url: str, config: DatasetConfig, compression: str, *, overwrite: bool = False,
                   storage_options=None, planned: dict[str, int] | None = None) -> Folder:
    """Accept `out_url` for a build of `config` (see the module's table) or refuse, then mark it: the marker goes
    in only now, before anything else is written. With `overwrite` the older dataset's files are deleted first,
    under a marker that says so (an interrupted deletion is finished by --overwrite and refused otherwise)."""
    folder = check_output(out_url, config, compression, overwrite=overwrite, storage_options=storage_options,
                          planned=planned)
    fs, root = storage.filesystem(out_url, storage_options)
    recipe, settings = recipe_fingerprint(config, compression), {"compression": compression}
    with _as_unwritable(fs, root):
        if storage.is_local(fs):
            os.makedirs(root, exist_ok=True)
        if overwrite and (folder.manifest or folder.marker or folder.record_recipes):
            write_marker(fs, root, config.to_dict(), recipe, {**settings, "replacing": "an older dataset"})
            remove_dataset(fs, root)
        write_marker(fs, root, config.to_dict(), recipe, settings)
    return folder


def _refuse_shrinking(where: str, manifest: dict, planned: dict[str, int]) -> None:
    """A finished dataset grows with a larger budget (its shards are kept), but a smaller one would delete shards."""
    for split, info in manifest["splits"].items():
        if planned.get(split, 0) < info["num_shards"]:
            raise OutputRefused(f"{where} holds this recipe's dataset with {info['num_shards']} {split} shards, more "
                             f"than this build plans ({planned.get(split, 0)}): pass --overwrite to replace it with "
                             f"the smaller one, or ask for at least as many tokens")


def check_not_foreign(fs, root: str) -> None:
    """Refuse `root` when it holds files not proven ours and no manifest or marker of ours (writing nothing): the
    one refusal that comes before a writer claims the folder (the claim is a file written there)."""
    folder = survey(fs, root)
    if folder.foreign:
        refuse_foreign(storage.url_of(fs, root), folder.foreign)


def refuse_foreign(where: str, foreign: list[str]) -> None:
    shown = ", ".join(foreign[:FOREIGN_SHOWN]) + (", ..." if len(foreign) > FOREIGN_SHOWN else "")
    raise OutputRefused(f"{where} is not empty ({shown}) and holds no nca-datagen dataset or build ({MANIFEST}, "
                     f"{BUILD} or shard records of ours), so these files are someone else's; nothing was written or "
                     f"deleted. Choose a new or empty folder (--overwrite replaces only an nca-datagen dataset, never "
                     f"other files)")


def _refuse_other_build(where: str, previous: dict, wanted: dict) -> None:
    """A marker of another build, or one left by an interrupted `--overwrite` or `publish`: refused, saying which."""
    settings = previous["settings"]
    if "replacing" in settings:
        raise OutputRefused(f"{where}: an --overwrite was interrupted while it deleted the older dataset there; pass "
                         f"--overwrite again to finish replacing it, or choose another output folder")
    if "publish" in settings:
        raise OutputRefused(f"{where}: a publish into this folder was interrupted; rerun that publish to finish it, "
                         f"pass --overwrite to build here instead, or choose another output folder")
    if previous != wanted:
        diff = "\n  ".join(config_diff(_comparable(previous), _comparable(wanted))) or "(formatting only)"
        raise OutputRefused(f"{where} holds an unfinished build made with a different config:\n  {diff}\n"
                         f"rerun with the old settings to resume it, pass --overwrite to discard it, "
                         f"or choose another output folder")


def _comparable(marker: dict) -> dict:
    return {"config": marker["config"], "settings": marker["settings"]}


# ------------------------------------------------------------------------------------------------ proof


def our_manifest(fs, path: str) -> dict | None:
    """The manifest at `path` when it is in our format (parsed, not yet checked), else None."""
    manifest = _json_or_none(fs, path)
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def digest_or_none(manifest: dict) -> str | None:
    """`dataset_digest` of a manifest of ours; None for one too damaged to describe its data."""
    try:
        return dataset_digest(manifest)
    except (KeyError, TypeError, AttributeError):
        return None


def _is_our_marker(marker) -> bool:
    return (isinstance(marker, dict) and set(marker) == MARKER_FIELDS and marker["format"] == BUILD_FORMAT
            and isinstance(marker["config"], dict) and isinstance(marker["settings"], dict))


def _unmarked_files(fs, root: str) -> tuple[set[str], list[str]]:
    """(recipes of the shard records under `root`, files there not proven ours) for a folder with no manifest or
    marker of ours; ([], []) when `root` does not exist."""
    recipes: set[str] = set()
    foreign: list[str] = []
    prefix = len(root.rstrip("/")) + 1
    for folder, _, names in fs.walk(root, detail=True):  # nothing for a missing root
        rel = folder.rstrip("/")[prefix:]
        proven = _proven_in_split(fs, folder, rel, names, recipes) if rel in SPLITS else set()
        foreign += [f"{rel}/{n}" if rel else n for n in sorted(names)
                    if n not in proven and not _passes_by_name(rel, n)]
        if len(foreign) > FOREIGN_SHOWN:
            break
    return recipes, foreign


def _proven_in_split(fs, folder: str, split: str, entries: dict, recipes: set[str]) -> set[str]:
    """The names in a split folder proven ours: records `record_problem` accepts (their recipes are added to
    `recipes`) and the shards they name, present at the recorded size."""
    proven = set()
    for name, entry in entries.items():
        match = SHARD_FILE.fullmatch(name)
        if match is None or match.group(2) != ".json" or entry.get("size", 0) > MAX_RECORD_BYTES:
            continue
        try:
            record = read_json(fs, storage.join(folder, name))
        except ValueError:
            continue
        if record_problem(record, split, int(match.group(1))) is not None:
            continue
        proven.add(name)
        recipes.add(record["recipe"])
        shard = storage.basename(record["path"])
        if shard in entries and entries[shard].get("size") == record["bytes"]:
            proven.add(shard)
    return proven


def _passes_by_name(folder: str, name: str) -> bool:
    """Files let through by name alone: the writer's claim and build event logs, which no cleanup ever modifies or
    deletes (so taking one for ours harms no one)."""
    if (folder, name) == ("", CLAIM):
        return True
    return folder == LOGS and name.startswith("build-") and name.endswith(".jsonl")  # driver._log_path's names


def owned_path(rel: str) -> bool:
    """Whether a dataset of ours has the file `rel` (relative to its folder, '/'-separated): the marker, the
    manifest, the card, samples/SPLIT.parquet, the split folders' shards and records, each also under the
    temporary name a killed writer leaves and under `STAGING/`. The only files a cleanup of a folder proven ours
    deletes."""
    rel = TEMPORARY.sub("", rel)
    if rel.startswith(STAGING + "/"):
        rel = rel[len(STAGING) + 1:]
    folder, _, name = rel.rpartition("/")
    if not folder:
        return name in OWNED_FILES
    if folder == "samples":
        return name in TABLES
    return folder in SPLITS and SHARD_FILE.fullmatch(name) is not None


# ------------------------------------------------------------------------------------------------ writing


def write_marker(fs, root: str, config: dict, recipe: str | None, settings: dict) -> None:
    """Mark `root` as a build (or publish) in progress of `config`: before anything else is written or deleted
    there, so a folder without a marker or manifest never holds a writer's half-done work."""
    storage.write_atomic(fs, storage.join(root, BUILD), json_bytes(_marker(config, recipe, settings)))


def _marker(config, recipe: str | None, settings: dict) -> dict:
    config = config.to_dict() if isinstance(config, DatasetConfig) else config
    return {"format": BUILD_FORMAT, "recipe": recipe, "config": config, "settings": settings}


def read_marker(fs, root: str) -> dict | None:
    marker = _json_or_none(fs, storage.join(root, BUILD))
    return marker if _is_our_marker(marker) else None


def remove_build_marker(fs, root: str) -> None:
    """Remove the marker (build.json), if there is one: the dataset at `root` is no build in progress."""
    storage.remove_files(fs, [storage.join(root, BUILD)])


def remove_dataset(fs, root: str) -> None:
    """Delete the dataset's files in `root` but its marker: the manifest first (no reader sees a manifest whose
    shards are going), then every other file `owned_path` names, then split folders and samples/ left empty on
    local disk. Other files stay, in those folders too, and so does the marker: the caller, which wrote it first,
    replaces it."""
    storage.remove_files(fs, [storage.join(root, MANIFEST)])
    fs.invalidate_cache(root)
    prefix = len(root.rstrip("/")) + 1
    storage.remove_files(fs, [path for path in fs.find(root) if path[prefix:] != BUILD and owned_path(path[prefix:])])
    remove_empty_folders(fs, root, (*(f"{STAGING}/{name}" for name in OWNED_FOLDERS), STAGING, *OWNED_FOLDERS))


def remove_empty_folders(fs, root: str, names) -> None:
    """Remove the folders `names` of `root` that are empty (on local disk; object stores have no folders)."""
    if storage.is_local(fs):
        for name in names:
            with contextlib.suppress(OSError):  # missing, or not empty: someone's file is in it
                os.rmdir(storage.join(root, name))


def remove_stale_files(fs, root: str, shards: dict[str, int]) -> None:
    """Delete, in a folder proven ours, the shards and records numbered beyond `shards[split]` that an earlier,
    larger build left (so the pattern matches the files), and every file a killed write left under a temporary
    name (`owned_path`'s only: a shard-000009.txt of someone's stays). Called once every shard is written, so no
    write of ours is in flight (the writer's claim keeps others out)."""
    stale = []
    for split in SPLITS:
        folder = storage.join(root, split)
        for name in storage.listing(fs, folder):  # not a glob: the folder's own name may hold [, * or ?
            final = TEMPORARY.sub("", name)
            shard = SHARD_FILE.fullmatch(final)
            if shard is not None and (final != name or int(shard.group(1)) >= shards.get(split, 0)):
                stale.append(storage.join(folder, name))
    for folder in ("", "samples"):
        for name in storage.listing(fs, storage.join(root, folder)):
            rel = f"{folder}/{name}" if folder else name
            if TEMPORARY.search(name) and owned_path(rel):
                stale.append(storage.join(root, rel))
    storage.remove_files(fs, stale)


def config_diff(old, new, prefix: str = "") -> list[str]:
    """Flattened differences between two nested dicts, as 'field: old -> new' lines."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            lines += config_diff(old.get(key, "<unset>"), new.get(key, "<unset>"), f"{prefix}{key}.")
        return lines
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def _json_or_none(fs, path: str):
    """The JSON at `path`; None when it is missing, not JSON, or larger than any file of ours there."""
    try:
        return read_json(fs, path)
    except (ValueError, IsADirectoryError):  # JSONDecodeError, UnicodeDecodeError, too large; a folder of that name
        return None


@contextlib.contextmanager
def _as_unwritable(fs, root: str):
    """A storage error (permissions, a missing bucket, credentials, no endpoint) -> ValueError naming the output
    and the fix."""
    try:
        yield
    except storage.errors() as exc:
        raise StorageError(f"cannot write to {storage.url_of(fs, root)} ({type(exc).__name__}: {exc}); check "
                         f"{storage.access_hint(fs)}") from exc
