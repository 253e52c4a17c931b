"""Where an `NCADataset`'s shards come from: a `ShardSource` numbers the shards of one split and reads each whole.

- `StoredShards`: a built dataset's shards, each checked against its manifest size and sha256 before use; remote
  shards pass through a size-bounded local cache (`cache.py`);
- `generated.GeneratedShards`: the same shards, generated from their recipe as they are read.

The loader plans, orders and resumes over any source the same way, so both yield the same samples in the same
order.
"""

from __future__ import annotations

import os

import numpy as np

from nca_datagen import storage
from nca_datagen.manifest import dataset_root, read_manifest, shards_digest
from nca_datagen.shards import ShardError, iter_blob_samples, read_shard_blob


class ShardSource:
    """Where an NCADataset's shards come from: the numbered shards of one split, each read whole.

    `name` (messages), `split`, `layout` (a manifest's `sequence` block), `identity` (what a saved position is
    valid for), `num_shards` (None: unbounded), `samples_in(index)`, and `read(index)`: the shard's (key, tokens
    uint16, metadata) in file order, or ShardError naming the shard."""

    name: str
    split: str
    layout: dict
    identity: str
    num_shards: int | None

    def samples_in(self, index: int) -> int:
        raise NotImplementedError

    def read(self, index: int) -> list[tuple[str, np.ndarray, dict]]:
        raise NotImplementedError


class StoredShards(ShardSource):
    """A built dataset's shards, each checked against the manifest's size and sha256 before it is used. Remote
    shards pass through a `cache.ShardCache` of `cache_bytes` (see `cache.cache_limit`; 0: none)."""

    def __init__(self, url, split: str = "train", storage_options: dict | None = None, cache_bytes=None):
        from nca_datagen.cache import ShardCache, cache_limit

        self.url, self.split, self.storage_options = str(url), split, storage_options
        self.name = self.url
        self.manifest = read_manifest(self.url, storage_options)
        self.shards = split_shards(self.manifest, split, self.url)
        self.layout = self.manifest["sequence"]
        self.num_shards = len(self.shards)
        self.identity = shards_digest(self.shards)  # a saved position only fits the shards it was saved over
        limit = cache_limit(cache_bytes)
        fs, _ = dataset_root(self.url, storage_options)
        self.cache = ShardCache(limit) if limit and storage.is_remote(fs) else None
        self._root: tuple | None = None  # (pid, fs, root): opened once per process

    @property
    def cache_stats(self) -> dict | None:
        """This process's cache hits, misses and evictions (None without a cache: local data, or cache_bytes=0)."""
        return None if self.cache is None else dict(self.cache.stats)

    def samples_in(self, index: int) -> int:
        return self.shards[index]["samples"]

    def read(self, index: int) -> list:
        fs, root = self._open()
        shard = self.shards[index]
        path = storage.join(root, shard["path"])
        suffix = "." + shard["path"].split(".", 1)[1]  # .tar.zst or .tar
        blob = self.cache.get(self.identity, shard["sha256"], shard["bytes"], suffix) if self.cache else None
        if blob is None:
            try:
                blob = read_shard_blob(fs, path, shard["sha256"], shard["bytes"])
            except FileNotFoundError as exc:
                raise ShardError(f"{storage.url_of(fs, path)}: shard is missing") from exc
            if self.cache:
                self.cache.put(self.identity, shard["sha256"], suffix, blob)
        samples = list(iter_blob_samples(blob, storage.url_of(fs, path), self.layout["seq_len"]))
        if len(samples) != shard["samples"]:
            raise ShardError(f"{storage.url_of(fs, path)}: {len(samples)} samples, the manifest says "
                             f"{shard['samples']}")
        return samples

    def _open(self) -> tuple:
        if self._root is None or self._root[0] != os.getpid():  # DataLoader workers open their own
            self._root = (os.getpid(), *dataset_root(self.url, self.storage_options))
        return self._root[1:]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_root": None}  # filesystems are reopened where the copy runs


def split_shards(manifest: dict, split: str, url) -> list[dict]:
    if split not in manifest["splits"]:
        raise ValueError(f"split {split!r} is not in {url}: it has {', '.join(manifest['splits'])}")
    return manifest["splits"][split]["shards"]
