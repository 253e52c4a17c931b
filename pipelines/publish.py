"""`nca-datagen publish SRC DST`: copy a finished dataset between local disk and object storage, manifest last.

Idempotent and restartable: a shard is skipped when DST already holds its record with the same sha256 and size
and the shard object has that size, so a second publish of the same dataset uploads nothing. By default that is
all that is checked for a shard already there (its record and one listing; no shard bytes read): a shard
damaged in place at DST, same size, is not noticed. `--rehash` also re-reads and re-hashes each such shard and
re-uploads it when it differs; it is the repair after `verify` reports a BAD shard at DST. Each uploaded shard is
checked against the manifest before upload (a corrupt source is never published) and re-read and re-hashed
after it. DST must be empty, a dataset or a build: a DST holding files that are not nca-datagen's and no
manifest or build marker is refused, `--overwrite` or not, before anything is written (the rule `build` follows,
`manifest.check_not_foreign`). A DST that holds a finished dataset with other data (other shard hashes) is replaced
only with `--overwrite`, as `build` asks; the same data with another manifest (a deterministic rebuild) needs no
flag. Unless DST already holds this very manifest, publish first marks DST as a build in progress (`build.json`,
removed once the manifest is written), so an interrupted publish leaves a DST that the rerun recognises as
nca-datagen's, and then deletes DST's manifest of another dataset version, so no visible manifest names shards
that are not there yet. `manifest.json` goes last. Just before it, the dataset files at DST that this dataset
does not have (shards and records in the split folders, samples tables, card files: `manifest.owned_path`) are
deleted, so an older dataset's shards cannot outlive it there; any other file under DST is left alone, in the
split folders too. From SRC only the dataset travels (shards, records, tables, card), never other files beside
it. SRC and DST must not overlap (one inside the other would copy the dataset into itself). The build's event log
(`_logs/`, this machine's diagnostics with its local paths) is not published.

The trade-off: everything streams through this machine (no server-side copy between different stores), one
shard in memory at a time; shards are small, so that is cheap, and it is what makes the hash checks exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex

import click

from nca_datagen import storage
from nca_datagen.claim import claim
from nca_datagen.config import SPLITS
from nca_datagen.manifest import (
    BUILD,
    MANIFEST,
    TEMPORARY,
    check_not_foreign,
    dataset_digest,
    dataset_root,
    owned_path,
    read_json,
    read_manifest,
    remove_build_marker,
    write_build_marker,
)
from nca_datagen.shards import ShardError, check_blob, compact_json, record_name
from nca_datagen.units import plural


def publish(src: str, dst: str, storage_options: dict | None = None, *, rehash: bool = False,
            overwrite: bool = False, echo=print) -> dict:
    """Copy the dataset at `src` to `dst`; returns {"uploaded", "skipped", "files"} (shards, shards, other files).
    `rehash`: re-hash the shards DST already holds instead of trusting their record and size. `overwrite`:
    replace a finished dataset with other data at DST (refused otherwise)."""
    sfs, sroot = dataset_root(src, storage_options)
    dfs, droot = storage.filesystem(dst, storage_options)
    check_no_overlap(sfs, sroot, dfs, droot)
    manifest = read_manifest(src, storage_options)
    manifest_bytes = storage.read_bytes(sfs, storage.join(sroot, MANIFEST))
    check_not_foreign(dfs, droot)  # DST is empty, a dataset or a build: nothing there is someone else's to lose
    dst_manifest = storage.join(droot, MANIFEST)
    old_manifest = storage.read_bytes(dfs, dst_manifest) if storage.exists(dfs, dst_manifest) else None
    if old_manifest != manifest_bytes:
        if old_manifest is not None and not overwrite:
            _refuse_other_data(dst, old_manifest, manifest)
        _mark_in_progress(dfs, droot, manifest)
        storage.remove_files(dfs, [dst_manifest])  # another version's: hidden until every new shard is in place
    stats = {"uploaded": 0, "skipped": 0, "files": 0}
    shard_files = set()
    for split, info in manifest["splits"].items():
        present = storage.listing(dfs, storage.join(droot, split))  # one request: what DST holds, with sizes
        for index, shard in enumerate(info["shards"]):
            shard_files |= {shard["path"], record_name(split, index)}
            copied = _publish_shard(sfs, sroot, dfs, droot, split, index, shard, present, rehash)
            stats["uploaded" if copied else "skipped"] += 1
            echo(f"{'uploaded' if copied else 'skipped '} {shard['path']}")
    others = _other_files(sfs, sroot)
    stats["files"] = _copy_other_files(sfs, sroot, dfs, droot, others)
    _remove_unpublished(dfs, droot, published=shard_files | set(others) | {BUILD})  # the marker goes last
    storage.write_atomic(dfs, dst_manifest, manifest_bytes)
    remove_build_marker(dfs, droot)
    return stats


def _mark_in_progress(dfs, droot: str, manifest: dict) -> None:
    """DST's build marker while this publish writes it: the dataset's config, with settings saying a publish is
    under way (no local path: an interrupted publish leaves it at DST). A `build` there sees another config's
    build and does not take the half-published shards for its own; it asks for --overwrite."""
    write_build_marker(dfs, droot, manifest["config"], {"publish": "in progress"})


def _refuse_other_data(dst: str, old_manifest: bytes, manifest: dict) -> None:
    """ValueError unless DST's manifest lists the same shards (a rebuild of the same data may differ only in
    provenance): replacing another published dataset takes --overwrite."""
    try:
        same = dataset_digest(json.loads(old_manifest)) == dataset_digest(manifest)
    except (ValueError, KeyError, TypeError, AttributeError):  # not a dataset manifest
        same = False
    if not same:
        raise ValueError(f"{dst} holds another finished dataset (its manifest.json lists other shards); pass "
                         f"--overwrite to replace it, or publish to another prefix")


def check_no_overlap(sfs, sroot: str, dfs, droot: str) -> None:
    """ValueError when SRC and DST are the same folder or one holds the other (publishing would copy the dataset
    into itself, one level deeper each run, or delete SRC's files as DST's stale ones)."""
    src, dst = _resolved_url(sfs, sroot), _resolved_url(dfs, droot)
    if src == dst or dst.startswith(src + "/") or src.startswith(dst + "/"):
        raise ValueError(f"SRC {src} and DST {dst} overlap (the same folder, or one inside the other); publish to "
                         f"a folder outside the dataset")


def _resolved_url(fs, root: str) -> str:
    """The URL of `root` with local symlinks resolved and no trailing slash (the filesystem root becomes '')."""
    return storage.url_of(fs, os.path.realpath(root) if storage.is_local(fs) else root).rstrip("/")


def _publish_shard(sfs, sroot, dfs, droot, split: str, index: int, shard: dict, present: dict[str, int],
                   rehash: bool) -> bool:
    """Make DST hold this shard and its record; False when it already did. `present`: DST's listing of the
    split's folder (names and sizes), so only records that exist are read."""
    dst_path, dst_record_path = storage.join(droot, shard["path"]), storage.join(droot, record_name(split, index))
    if _already_there(dfs, dst_path, dst_record_path, shard, present, rehash):
        return False
    src_path = storage.join(sroot, shard["path"])
    try:
        blob = storage.read_bytes(sfs, src_path)
    except FileNotFoundError as exc:
        raise ShardError(f"{storage.url_of(sfs, src_path)}: shard is missing; nothing was published for it") from exc
    check_blob(blob, storage.url_of(sfs, src_path), shard["sha256"], shard["bytes"])
    upload_shard(dfs, dst_path, blob)
    after = storage.read_bytes(dfs, dst_path)
    if hashlib.sha256(after).hexdigest() != shard["sha256"]:
        raise ShardError(f"{storage.url_of(dfs, dst_path)}: read back after upload, sha256 differs; publish again")
    record = read_json(sfs, storage.join(sroot, record_name(split, index))) or {"split": split, "index": index,
                                                                                 **shard}
    storage.write_atomic(dfs, dst_record_path, compact_json(record))  # the bytes build writes
    return True


def _already_there(dfs, dst_path: str, dst_record_path: str, shard: dict, present: dict[str, int],
                   rehash: bool) -> bool:
    """DST's object has the shard's size and DST's record its sha256 and size; with `rehash`, the object's bytes
    also hash to that sha256 (one more read of the whole shard)."""
    if present.get(storage.basename(dst_path)) != shard["bytes"] or storage.basename(dst_record_path) not in present:
        return False
    try:
        dst_record = read_json(dfs, dst_record_path)
    except ValueError:  # a damaged record (not JSON): publish the shard and its record again
        return False
    wanted = (shard["sha256"], shard["bytes"])
    if not isinstance(dst_record, dict) or (dst_record.get("sha256"), dst_record.get("bytes")) != wanted:
        return False
    return not rehash or hashlib.sha256(storage.read_bytes(dfs, dst_path)).hexdigest() == shard["sha256"]


def upload_shard(dfs, path: str, blob: bytes) -> None:
    """One shard to its final name (a separate function so tests can interrupt a publish here)."""
    storage.write_atomic(dfs, path, blob)


def _other_files(sfs, sroot: str) -> list[str]:
    """SRC's tables, card and figures (paths relative to SRC): the dataset's files outside the split folders
    (`owned_path`), not a file of someone's beside them. Split folders are left out: what they carry to DST is
    the manifest's shards and their records only, so a stray file beside them is never published."""
    prefix = len(sroot.rstrip("/")) + 1
    rels = [path[prefix:] for path in sorted(sfs.find(sroot))]
    return [rel for rel in rels if owned_path(rel) and rel != BUILD and not TEMPORARY.search(rel)
            and rel.split("/", 1)[0] not in SPLITS]


def _copy_other_files(sfs, sroot, dfs, droot, rels: list[str]) -> int:
    """Copy these files when missing or different at DST. Returns how many were copied."""
    copied = 0
    for rel in rels:
        data = storage.read_bytes(sfs, storage.join(sroot, rel))
        target = storage.join(droot, rel)
        if storage.size(dfs, target) == len(data) and storage.read_bytes(dfs, target) == data:
            continue
        storage.write_atomic(dfs, target, data)
        copied += 1
    return copied


def _remove_unpublished(dfs, droot: str, published: set[str]) -> None:
    """Delete the dataset files at DST (`owned_path`: shards, records, tables, card files, leftovers of killed
    writes) that this publish did not write or keep: an older dataset's. One listing, one batched delete.
    Anything else stays, in the split folders too."""
    dfs.invalidate_cache(droot)
    prefix = len(droot.rstrip("/")) + 1
    stale = [path for path in dfs.find(droot) if owned_path(path[prefix:]) and path[prefix:] not in published]
    storage.remove_files(dfs, stale)


@click.command("publish")
@click.argument("src")
@click.argument("dst")
@click.option("--overwrite", is_flag=True,
              help="Replace a finished dataset with other data at DST (without it, publish refuses).")
@click.option("--rehash", is_flag=True,
              help="Re-read and re-hash every shard DST already holds (default: trust its record and size), "
                   "re-uploading those that differ: repairs a shard `verify` reports BAD at DST.")
@storage.storage_flags
def publish_command(src, dst, overwrite, rehash, endpoint_url, profile, s3_checksums):
    """Copy the finished dataset at SRC to DST (e.g. a folder to s3://bucket/prefix), manifest last."""
    opts = storage.storage_options_from_flags(endpoint_url, profile, s3_checksums)
    command = shlex.join(["nca-datagen", "publish", src, dst, *(["--overwrite"] if overwrite else []),
                          *(["--rehash"] if rehash else [])])
    try:
        dfs, droot = storage.filesystem(dst, opts)  # publish's refusals that need no claim, before it writes to DST:
        check_no_overlap(*dataset_root(src, opts), dfs, droot)
        check_not_foreign(dfs, droot)
        with claim(dst, opts, doing="publish", command=command):  # two publishes to one DST would mix datasets
            stats = publish(src, dst, opts, rehash=rehash, overwrite=overwrite, echo=click.echo)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except storage.errors() as exc:  # a missing bucket, permissions, credentials, an endpoint that went away
        raise click.ClickException(f"publishing {src} -> {dst} failed: {type(exc).__name__}: {exc}. No manifest was "
                                   f"written at DST; fix the cause and rerun: shards already uploaded are "
                                   f"skipped") from exc
    click.echo(f"published {src} -> {dst}: {plural(stats['uploaded'], 'shard')} uploaded, {stats['skipped']:,} "
               f"already present, {plural(stats['files'], 'other file')} copied; manifest written last")
