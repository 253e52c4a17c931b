"""`nca-datagen publish SRC DST`: copy a finished dataset between local disk and object storage, manifest last.

A Hugging Face dataset repo (`hf://datasets/ORG/NAME`) is written in one commit instead (`hub.py`); what follows
is every other DST's way.

- SRC is verified whole (`verify.verify_dataset`) before anything at DST is touched: a damaged source is never
  published, and a failed publish never costs DST its dataset.
- DST follows the build's ownership rules (`nca_datagen.ownership`): empty, or a dataset or build of ours.
  Someone else's files are refused, `--overwrite` or not; another finished dataset, an unfinished build or
  another publish is replaced only with `--overwrite`; the same data (a deterministic rebuild) needs no flag.
- A finished dataset at DST stays readable until the new one is complete: the new files go to `DST/_publish/`
  first, verified, and only then move into place (a rename locally, a server-side copy on object stores): the old
  manifest goes first, the new one last.
- Otherwise files go straight to their names, under the marker (`build.json`, naming the dataset published), so
  a rerun recognises an interrupted publish and finishes it.
- Idempotent: a shard is skipped when DST holds its record with the same sha256 and size and the shard has that
  size (`--rehash` also re-reads and re-hashes it: the repair after `verify` reports a BAD shard at DST). Each
  upload is re-read and re-hashed.
- Only the dataset travels: its shards, their records and the files its manifest lists; not the event log
  (`_logs/`) or other files beside it. Files at DST that the dataset does not have are deleted only when they are
  dataset files of ours (`ownership.owned_path`); anything else there stays. SRC and DST must not overlap.

The trade-off: everything streams through this machine, one shard in memory at a time, and SRC is read twice
(verified, then copied): the price of never publishing a byte that was not checked.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from nca_datagen import storage
from nca_datagen.claim import claim
from nca_datagen.errors import DatasetError, OutputRefused, ShardError, StorageError
from nca_datagen.manifest import (
    MANIFEST,
    dataset_digest,
    dataset_root,
    listed_files,
    manifest_recipe,
    parse_manifest,
    read_manifest_bytes,
)
from nca_datagen.ownership import (
    BUILD,
    STAGING,
    check_not_foreign,
    digest_or_none,
    owned_path,
    refuse_foreign,
    remove_build_marker,
    remove_empty_folders,
    survey,
    write_marker,
)
from nca_datagen.pipelines import hub
from nca_datagen.shards import check_blob, compact_json, load_record, record_name


def publish(src: str, dst: str, storage_options: dict | None = None, *, rehash: bool = False,
            overwrite: bool = False, echo=print, command: str = "", hub_api=None) -> dict:
    """Copy the dataset at `src` to `dst`; returns {"uploaded", "skipped", "files"} (shards, shards, other files).
    `rehash`: re-hash the shards DST already holds instead of trusting their record and size. `overwrite`:
    replace another dataset or build at DST (refused otherwise). DST is claimed for the copy (`claim.py`), after
    the refusals that need no write; `command` names this publish in the claim. A `hf://datasets/ORG/NAME` DST
    is written in one commit instead (`hub.py`), through `hub_api` (default: a `huggingface_hub.HfApi`)."""
    if (target := hub.hub_target(dst)) is not None:
        return _publish_to_hub(src, target, storage_options, overwrite, echo, hub_api, command)
    sfs, sroot = dataset_root(src, storage_options)
    dfs, droot = storage.filesystem(dst, storage_options)
    check_no_overlap(sfs, sroot, dfs, droot)
    try:
        check_not_foreign(dfs, droot)  # the claim is a write: someone else's folder is refused before it
        with claim(dst, storage_options, doing="publish", command=command):
            return _publish(sfs, sroot, dfs, droot, src, storage_options, rehash, overwrite, echo)
    except storage.errors() as exc:  # a missing bucket, permissions, credentials, an endpoint that went away
        hints = {storage.access_hint(fs) for fs in (sfs, dfs)}
        raise StorageError(f"publishing {src} -> {dst} failed: {type(exc).__name__}: {exc}. Check "
                           f"{' and '.join(sorted(hints))}; no new manifest was written at DST. Rerun once "
                           f"fixed: shards already uploaded are skipped") from exc


def _publish(sfs, sroot, dfs, droot, src, storage_options, rehash, overwrite, echo) -> dict:
    """`publish` once DST is claimed."""
    manifest_bytes, manifest = _verified_source(src, storage_options)
    replacing = _check_destination(dfs, droot, manifest, overwrite)
    copy = _Copy(sfs, sroot, dfs, droot, manifest, rehash, echo)
    write_marker(dfs, droot, manifest["config"], manifest_recipe(manifest), {"publish": dataset_digest(manifest)})
    if replacing:  # the old dataset stays readable until every new file is in place beside it
        copy.to(storage.join(droot, STAGING))
        storage.remove_files(dfs, [storage.join(droot, MANIFEST)])
        _move_staged(dfs, droot)
    stats = copy.to(droot)
    _remove_unpublished(dfs, droot, published=copy.published | {BUILD})  # the marker goes last
    storage.write_atomic(dfs, storage.join(droot, MANIFEST), manifest_bytes)
    remove_build_marker(dfs, droot)
    return stats


def _publish_to_hub(src: str, target, storage_options, overwrite: bool, echo, api, command: str) -> dict:
    """`publish` to a Hugging Face dataset repo: SRC verified, then staged on local disk, then one commit."""
    sfs, sroot = dataset_root(src, storage_options)
    try:
        manifest_bytes, manifest = _verified_source(src, storage_options)
        api = hub.client(api)
        state = hub.read_state(api, target)
        stale = hub.stale_files(state, target, manifest, _dataset_files(manifest), overwrite)
        shards = sum(len(info["shards"]) for info in manifest["splits"].values())
        stats = {"uploaded": 0, "skipped": shards, "files": 0}
        if stale is None and state.manifest_bytes == manifest_bytes:
            echo(f"{target.url} holds this dataset already (commit {state.head[:12]}): nothing to commit")
            return stats
        # a large dataset is staged beside the event-log spools, not in a small /tmp
        with tempfile.TemporaryDirectory(prefix="publish-", dir=storage.cache_folder("hub-staging")) as staging:
            files: set[str] = set()  # this very dataset: only its manifest changes
            if stale is not None:
                copy = _Copy(sfs, sroot, storage.filesystem(staging)[0], staging, manifest, False, lambda line: None)
                stats, files = copy.to(staging), copy.published
            oid = hub.commit(api, target, state.head, staging, files, stale or set(), manifest_bytes,
                             message=f"nca-datagen: {command or 'publish'}")
    except storage.errors() as exc:  # the Hub's HTTP errors are OSErrors too
        hints = {storage.access_hint(sfs), storage.HINTS["hf"]}
        raise StorageError(f"publishing {src} -> {target.url} failed: {type(exc).__name__}: {exc}. Check "
                           f"{' and '.join(sorted(hints))}; nothing was committed") from exc
    echo(f"committed {len(files) + 1} files ({len(stale or ())} deleted) to {target.url} in one commit, "
         f"{oid[:12]}, manifest last")
    return stats


def _dataset_files(manifest: dict) -> set[str]:
    """Every file of the dataset but its manifest: shards, their records, and the tables and card files."""
    shards = {(split, index, shard["path"]) for split, info in manifest["splits"].items()
              for index, shard in enumerate(info["shards"])}
    return ({path for *_, path in shards} | {record_name(split, index) for split, index, _ in shards}
            | set(listed_files(manifest)))


def _verified_source(src: str, storage_options) -> tuple[bytes, dict]:
    """(manifest bytes, manifest) of SRC, once `verify` finds nothing wrong with it (ValueError naming its problems
    otherwise): nothing at DST has been touched yet."""
    from nca_datagen.verify import verify_dataset

    manifest_bytes, where = read_manifest_bytes(src, storage_options)
    manifest = parse_manifest(manifest_bytes, where)
    if manifest_recipe(manifest) is None:
        raise DatasetError(f"{src} is a format-1 dataset (an older nca-datagen), whose records and tables carry no "
                           f"recipe or sha256 to check: rebuild it with this version to publish it")
    problems = verify_dataset(src, storage_options, echo=lambda line: None)
    if problems:
        shown = "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else "")
        raise ShardError(f"{src} fails verification, so nothing was published (DST is untouched):\n  {shown}\n"
                         f"`nca-datagen verify {src}` lists every problem; rebuild or repair SRC first")
    return manifest_bytes, manifest


def _check_destination(dfs, droot: str, manifest: dict, overwrite: bool) -> bool:
    """Refuse a DST the ownership rules do not let this publish write; True when DST holds another finished
    dataset that `overwrite` replaces (it stays readable until the new one is complete)."""
    folder = survey(dfs, droot)
    where, digest = storage.url_of(dfs, droot), dataset_digest(manifest)
    if folder.foreign:
        refuse_foreign(where, folder.foreign)
    if folder.manifest is not None:
        if digest_or_none(folder.manifest) == digest:
            return False  # the same data: a republish or a deterministic rebuild
        if not overwrite:
            raise OutputRefused(f"{where} holds another finished dataset (its manifest.json lists other "
                             f"shards); pass --overwrite to replace it, or publish to another prefix")
        return True
    if folder.marker is not None and folder.marker["settings"].get("publish") != digest and not overwrite:
        raise OutputRefused(f"{where} holds an unfinished build or another dataset's unfinished publish "
                         f"({BUILD}); pass --overwrite to replace it, or publish to another prefix")
    if folder.record_recipes - {manifest_recipe(manifest)} and not overwrite:
        raise OutputRefused(f"{where} holds shards of another recipe; pass --overwrite to replace them, or "
                         f"publish to another prefix")
    return False


class _Copy:
    """Copies SRC's dataset files to a folder (DST, or its staging folder) and remembers what it placed."""

    def __init__(self, sfs, sroot, dfs, droot, manifest, rehash, echo):
        self.sfs, self.sroot, self.dfs, self.droot = sfs, sroot, dfs, droot
        self.manifest, self.rehash, self.echo = manifest, rehash, echo
        self.published: set[str] = set()

    def to(self, target: str) -> dict:
        """Make `target` hold every shard, record and listed file; returns the counts."""
        stats = {"uploaded": 0, "skipped": 0, "files": 0}
        staging = target != self.droot
        for split, info in self.manifest["splits"].items():
            present = storage.listing(self.dfs, storage.join(target, split))
            final = storage.listing(self.dfs, storage.join(self.droot, split)) if staging else present
            for index, shard in enumerate(info["shards"]):
                self.published |= {shard["path"], record_name(split, index)}
                if staging and self._already_there(self.droot, split, index, shard, final):
                    continue  # DST holds this very shard already: it stays where it is
                copied = self._shard(target, split, index, shard, present)
                stats["uploaded" if copied else "skipped"] += 1
                if not staging:
                    self.echo(f"{'uploaded' if copied else 'skipped '} {shard['path']}")
        for rel, info in listed_files(self.manifest).items():
            self.published.add(rel)
            stats["files"] += self._file(target, rel, info)
        return stats

    def _shard(self, target: str, split: str, index: int, shard: dict, present: dict[str, int]) -> bool:
        """Make `target` hold this shard and its record; False when it already did."""
        if self._already_there(target, split, index, shard, present):
            return False
        src_path = storage.join(self.sroot, shard["path"])
        blob = storage.read_bytes(self.sfs, src_path, shard["bytes"] + 1)
        check_blob(blob, storage.url_of(self.sfs, src_path), shard["sha256"], shard["bytes"])  # SRC changed since?
        dst_path = storage.join(target, shard["path"])
        upload_shard(self.dfs, dst_path, blob)
        if hashlib.sha256(storage.read_bytes(self.dfs, dst_path)).hexdigest() != shard["sha256"]:
            raise ShardError(f"{storage.url_of(self.dfs, dst_path)}: read back after upload, sha256 differs; "
                             f"publish again")
        record = load_record(self.sfs, self.sroot, split, index, manifest_recipe(self.manifest))
        if record is None or record["sha256"] != shard["sha256"]:
            raise ShardError(f"{storage.url_of(self.sfs, self.sroot)}: the record of {shard['path']} changed since "
                             f"it was verified; nothing more was published")
        storage.write_atomic(self.dfs, storage.join(target, record_name(split, index)), compact_json(record))
        return True

    def _already_there(self, root: str, split: str, index: int, shard: dict, present: dict[str, int]) -> bool:
        """`root` holds the shard at its size and its record (ours, of this recipe) with its sha256; with
        `rehash`, the shard's bytes also hash to it (one more read of the whole shard)."""
        if present.get(storage.basename(shard["path"])) != shard["bytes"]:
            return False
        record = load_record(self.dfs, root, split, index, manifest_recipe(self.manifest))
        if record is None or (record["sha256"], record["bytes"]) != (shard["sha256"], shard["bytes"]):
            return False
        if not self.rehash:
            return True
        data = storage.read_bytes(self.dfs, storage.join(root, shard["path"]))
        return hashlib.sha256(data).hexdigest() == shard["sha256"]

    def _file(self, target: str, rel: str, info: dict) -> int:
        """Copy a listed table or card file unless `target` (or DST itself, when staging) holds it already."""
        for root in dict.fromkeys((self.droot, target)):
            path = storage.join(root, rel)
            if storage.size(self.dfs, path) == info["bytes"] and _sha256(self.dfs, path) == info["sha256"]:
                return 0
        data = storage.read_bytes(self.sfs, storage.join(self.sroot, rel), info["bytes"] + 1)
        check_blob(data, storage.url_of(self.sfs, storage.join(self.sroot, rel)), info["sha256"], info["bytes"])
        storage.write_atomic(self.dfs, storage.join(target, rel), data)
        return 1


def _sha256(fs, path: str) -> str:
    return hashlib.sha256(storage.read_bytes(fs, path)).hexdigest()


def _move_staged(dfs, droot: str) -> None:
    """Move every file under DST/_publish/ to its place in DST (records after their shards: the tables and card,
    then each split's shards, then their records)."""
    staging = storage.join(droot, STAGING)
    prefix = len(staging.rstrip("/")) + 1
    staged = sorted((path[prefix:] for path in dfs.find(staging)), key=lambda rel: (rel.endswith(".json"), rel))
    for rel in staged:
        storage.move(dfs, storage.join(staging, rel), storage.join(droot, rel))
    remove_empty_folders(dfs, droot, [f"{STAGING}/{split}" for split in ("train", "val", "samples")] + [STAGING])


def upload_shard(dfs, path: str, blob: bytes) -> None:
    """One shard to its final name (a separate function so tests can interrupt a publish here)."""
    storage.write_atomic(dfs, path, blob)


def check_no_overlap(sfs, sroot: str, dfs, droot: str) -> None:
    """ValueError when SRC and DST are the same folder or one holds the other (publishing would copy the dataset
    into itself, one level deeper each run, or delete SRC's files as DST's stale ones)."""
    src, dst = _resolved_url(sfs, sroot), _resolved_url(dfs, droot)
    if src == dst or dst.startswith(src + "/") or src.startswith(dst + "/"):
        raise OutputRefused(f"SRC {src} and DST {dst} overlap (the same folder, or one inside the other); publish to "
                         f"a folder outside the dataset")


def _resolved_url(fs, root: str) -> str:
    """The URL of `root` with local symlinks resolved and no trailing slash (the filesystem root becomes '')."""
    return storage.url_of(fs, os.path.realpath(root) if storage.is_local(fs) else root).rstrip("/")


def _remove_unpublished(dfs, droot: str, published: set[str]) -> None:
    """Delete the dataset files at DST (`owned_path`: shards, records, tables, card files, staged files, leftovers
    of killed writes) that this publish did not write or keep: an older dataset's. One listing, one batched
    delete. Anything else stays, in the split folders too."""
    dfs.invalidate_cache(droot)
    prefix = len(droot.rstrip("/")) + 1
    stale = [path for path in dfs.find(droot) if owned_path(path[prefix:]) and path[prefix:] not in published
             and path[prefix:] != MANIFEST]
    storage.remove_files(dfs, stale)
