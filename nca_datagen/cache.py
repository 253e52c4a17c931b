"""A size-bounded local cache of remote shards: the second epoch over s3:// reads this machine's disk.

- One file per shard, `~/.cache/nca-datagen/shards/<dataset id>-<sha256><suffix>`, written under a temporary
  name and renamed, so the processes sharing the folder (DataLoader workers, ranks on one machine) never see half
  a file.
- A hit is served only when its bytes have the manifest's size and sha256; a file that does not is deleted (and
  the shard downloaded again), so a damaged cache costs a download, never wrong data.
- Bounded: after each insert the least recently used files (by mtime, which a hit refreshes) are evicted until the
  folder holds at most `limit_bytes`; a shard larger than the whole limit is not cached. The folder is scanned at
  each insert, so the bound holds across processes sharing it (give them the same limit).
- Counted: hits, misses and evictions of this process (`stats`); a DataLoader worker's counts live in the worker.

The trade-off: hashing each hit costs ~1 ms per MB of shard (what the loader checks of every shard anyway), and the
scan at each insert ~1 ms per 1,000 cached shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from pathlib import Path

from nca_datagen import storage
from nca_datagen.units import format_bytes, parse_count

CACHE_BYTES_ENV = "NCA_DATAGEN_CACHE_BYTES"
DEFAULT_CACHE_BYTES = 10**10  # 10 GB: ~5.9B tokens of 50%+ shards at 1.69 bytes/token, 36 paper-sized datasets
TEMPORARY_MARK = ".tmp-"  # a file being written (never counted, never served)


def cache_limit(cache_bytes=None) -> int:
    """The limit in bytes: `cache_bytes` (an int or a count such as "10G", "500M"), else the environment's
    NCA_DATAGEN_CACHE_BYTES, else 10G. 0 turns the cache off."""
    if cache_bytes is None:
        cache_bytes = os.environ.get(CACHE_BYTES_ENV, DEFAULT_CACHE_BYTES)
    try:
        return parse_count(cache_bytes, "cache size")
    except ValueError as exc:
        raise ValueError(f"{exc} (cache_bytes or {CACHE_BYTES_ENV}; 0 turns the cache off)") from None


class ShardCache:
    """Whole shards by (dataset id, sha256), least recently used evicted beyond `limit_bytes`."""

    def __init__(self, limit_bytes: int, folder: Path | None = None):
        self.limit_bytes = int(limit_bytes)
        self._folder = folder
        self.stats = {"hits": 0, "misses": 0, "evictions": 0}

    @property
    def folder(self) -> Path:
        if self._folder is None:  # resolved on first use: constructing a dataset writes nothing
            self._folder = storage.cache_folder("shards")
        return self._folder

    def get(self, dataset_id: str, sha256: str, size: int, suffix: str) -> bytes | None:
        """The shard's bytes if cached whole and intact (a hit, which makes it the most recently used); else None
        (a miss)."""
        path = self._path(dataset_id, sha256, suffix)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:  # never cached, or evicted (by this process or another)
            blob = None
        if blob is not None and (len(blob) != size or hashlib.sha256(blob).hexdigest() != sha256):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # damaged on disk: downloaded again
            blob = None
        if blob is None:
            self.stats["misses"] += 1
            return None
        _touch(path)
        self.stats["hits"] += 1
        return blob

    def put(self, dataset_id: str, sha256: str, suffix: str, blob: bytes) -> None:
        """Cache a shard the caller has checked, then evict down to the limit."""
        if len(blob) > self.limit_bytes:
            return
        path = self._path(dataset_id, sha256, suffix)
        tmp = path.with_name(f"{path.name}{TEMPORARY_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_bytes(blob)
            os.replace(tmp, path)
            _touch(path)
        except OSError:  # a full or read-only disk costs the cache, not the training run
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        self._evict(keep=path)

    def _evict(self, keep: Path) -> None:
        files = []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if TEMPORARY_MARK in entry.name:
                    continue
                with contextlib.suppress(FileNotFoundError):  # evicted by another process meanwhile
                    st = entry.stat()
                    files.append((st.st_mtime_ns, entry.name, st.st_size))
        total = sum(size for _, _, size in files)
        for _, name, size in sorted(files):  # oldest first
            if total <= self.limit_bytes:
                break
            if name == keep.name:
                continue
            with contextlib.suppress(FileNotFoundError):
                (self.folder / name).unlink()
                self.stats["evictions"] += 1
            total -= size

    def _path(self, dataset_id: str, sha256: str, suffix: str) -> Path:
        return self.folder / f"{dataset_id}-{sha256}{suffix}"

    def __repr__(self) -> str:
        return f"ShardCache({str(self._folder or '~/.cache/nca-datagen/shards')!r}, {format_bytes(self.limit_bytes)})"


def _touch(path: Path) -> None:
    """Stamp `path` as used now: the LRU clock. Explicit nanoseconds, as the kernel's own file times tick only
    every few milliseconds, too coarse to order shards read one after another."""
    now = time.time_ns()
    with contextlib.suppress(FileNotFoundError):  # evicted by another process meanwhile
        os.utime(path, ns=(now, now))
