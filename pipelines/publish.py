"""`nca-datagen publish SRC DST`: copy a finished dataset between local disk and object storage, manifest last.

Idempotent and restartable: a shard is skipped when DST already holds its record with the same sha256 and size
and the shard object has that size, so a second publish of the same dataset uploads nothing. Each uploaded
shard is checked against the manifest before upload (a corrupt source is never published) and re-read and
re-hashed after it. `manifest.json` goes last; if DST held the manifest of another dataset version it is
deleted first, so an interrupted publish leaves no visible manifest naming shards that are not there yet.

The trade-off: everything streams through this machine (no server-side copy between different stores), one
shard in memory at a time; shards are small, so that is cheap, and it is what makes the hash checks exact.
"""

from __future__ import annotations

import hashlib
import json

import click

from nca_datagen import storage
from nca_datagen.manifest import BUILD, MANIFEST, dataset_root, read_json, read_manifest, remove_stale_shards
from nca_datagen.shards import ShardError, check_blob, record_name


def publish(src: str, dst: str, storage_options: dict | None = None, *, echo=print) -> dict:
    """Copy the dataset at `src` to `dst`; returns {"uploaded", "skipped", "files"} (shards, shards, other files)."""
    manifest = read_manifest(src, storage_options)
    sfs, sroot = dataset_root(src, storage_options)
    dfs, droot = storage.filesystem(dst, storage_options)
    manifest_bytes = storage.read_bytes(sfs, storage.join(sroot, MANIFEST))
    dst_manifest = storage.join(droot, MANIFEST)
    if storage.exists(dfs, dst_manifest) and storage.read_bytes(dfs, dst_manifest) != manifest_bytes:
        dfs.rm(dst_manifest)  # it describes another version: hide it until every new shard is in place
    stats = {"uploaded": 0, "skipped": 0, "files": 0}
    shard_files = set()
    for split, info in manifest["splits"].items():
        present = storage.listing(dfs, storage.join(droot, split))  # one request: what DST holds, with sizes
        for index, shard in enumerate(info["shards"]):
            shard_files |= {shard["path"], record_name(split, index)}
            copied = _publish_shard(sfs, sroot, dfs, droot, split, index, shard, present)
            stats["uploaded" if copied else "skipped"] += 1
            echo(f"{'uploaded' if copied else 'skipped '} {shard['path']}")
        remove_stale_shards(dfs, droot, split, len(info["shards"]))
    stats["files"] = _copy_other_files(sfs, sroot, dfs, droot, shard_files)
    storage.write_atomic(dfs, dst_manifest, manifest_bytes)
    return stats


def _publish_shard(sfs, sroot, dfs, droot, split: str, index: int, shard: dict, present: dict[str, int]) -> bool:
    """Make DST hold this shard and its record; False when it already did. `present`: DST's listing of the
    split's folder (names and sizes), so only records that exist are read."""
    dst_path, dst_record_path = storage.join(droot, shard["path"]), storage.join(droot, record_name(split, index))
    if present.get(storage.basename(dst_path)) == shard["bytes"] and storage.basename(dst_record_path) in present:
        dst_record = read_json(dfs, dst_record_path)
        if dst_record and (dst_record.get("sha256"), dst_record.get("bytes")) == (shard["sha256"], shard["bytes"]):
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
    storage.write_atomic(dfs, dst_record_path, json.dumps(record, sort_keys=True, separators=(",", ":")).encode())
    return True


def upload_shard(dfs, path: str, blob: bytes) -> None:
    """One shard to its final name (a separate function so tests can interrupt a publish here)."""
    storage.write_atomic(dfs, path, blob)


def _copy_other_files(sfs, sroot, dfs, droot, shard_files: set) -> int:
    """Tables, card and figures: copied when missing or different at DST. Returns how many were copied."""
    copied = 0
    for path in sorted(sfs.find(sroot)):
        rel = path[len(sroot.rstrip("/")) + 1 :]
        if rel in shard_files or rel in (MANIFEST, BUILD) or ".tmp-" in rel:
            continue
        data = storage.read_bytes(sfs, path)
        target = storage.join(droot, rel)
        if storage.size(dfs, target) == len(data) and storage.read_bytes(dfs, target) == data:
            continue
        storage.write_atomic(dfs, target, data)
        copied += 1
    return copied


@click.command("publish")
@click.argument("src")
@click.argument("dst")
@storage.storage_flags
def publish_command(src, dst, endpoint_url, profile, s3_checksums):
    """Copy the finished dataset at SRC to DST (e.g. a folder to s3://bucket/prefix), manifest last."""
    opts = storage.storage_options_from_flags(endpoint_url, profile, s3_checksums)
    try:
        stats = publish(src, dst, opts, echo=click.echo)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"published {src} -> {dst}: {stats['uploaded']} shards uploaded, {stats['skipped']} already "
               f"present, {stats['files']} other files copied; manifest written last")
