"""The local cache of remote shards: epoch 2 over s3:// downloads nothing it cached, the limit holds by evicting the
least recently used shards (counted), and a damaged cached file is never served. S3 is a real moto server."""

import boto3
import pytest
from shard_fixtures import FAKE, make_dataset

from nca_datagen.cache import ShardCache, cache_limit
from nca_datagen.loader import NCADataset
from nca_datagen.shards import ShardError

N = FAKE.samples_per_shard


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    """The cache under this test's own folder (storage.cache_folder honours XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "nca-datagen" / "shards"


@pytest.fixture
def remote(s3_server, s3_bucket):
    url, opts = f"{s3_bucket}/ds", {"endpoint_url": s3_server}
    make_dataset(url, {"train": 5}, storage_options=opts)
    return url, opts, s3_server


def delete_shards(url: str, endpoint: str) -> None:
    """Remove every shard object, leaving the manifest: any GET of a shard now fails."""
    bucket, prefix = url[len("s3://"):].split("/", 1)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/train/")["Contents"]:
        if obj["Key"].endswith(".tar.zst"):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])


def keys(ds) -> list[str]:
    return [item["key"] for item in ds]


def test_second_epoch_reads_no_shard_from_s3(remote, cache_home):
    url, opts, endpoint = remote
    ds = NCADataset(url, raw=True, storage_options=opts, cache_bytes="100M")
    first = keys(ds)
    assert ds.cache_stats == {"hits": 0, "misses": 5, "evictions": 0}
    delete_shards(url, endpoint)  # epoch 2 can only succeed from the cache
    ds.set_epoch(1)
    second = keys(ds)
    assert sorted(second) == sorted(first) and second != first
    assert ds.cache_stats == {"hits": 5, "misses": 5, "evictions": 0}
    uncached = NCADataset(url, raw=True, storage_options=opts, cache_bytes=0)
    with pytest.raises(ShardError, match="shard is missing"):  # the shards really are gone from S3
        keys(uncached)


def test_the_limit_holds_by_evicting_the_least_recently_used(remote, cache_home):
    url, opts, _ = remote
    one_shard = max(p.stat().st_size for p in _cached_after_one_read(url, opts, cache_home))
    limit = int(2.5 * one_shard)  # room for two shards
    ds = NCADataset(url, raw=True, storage_options=opts, cache_bytes=limit, shuffle=False)
    assert len(keys(ds)) == 5 * N
    stats = ds.cache_stats
    assert stats["misses"] == 5 - 1 and stats["hits"] == 1  # shard 0 was cached by the first reader
    assert stats["evictions"] == 3  # 5 shards through room for 2
    files = list(cache_home.iterdir())
    assert len(files) == 2 and sum(p.stat().st_size for p in files) <= limit
    assert all(p.name.endswith(".tar.zst") and ds.dataset_id in p.name for p in files)
    ds.set_epoch(0)
    keys(ds)  # the same order again: LRU holds 3 and 4 when 0 is wanted, and each miss evicts the next one wanted
    assert ds.cache_stats["misses"] - stats["misses"] == 5


def _cached_after_one_read(url, opts, folder):
    """Read shard 0 through a large cache; the cached files."""
    ds = NCADataset(url, raw=True, storage_options=opts, cache_bytes="100M", shuffle=False, shuffle_shards=1)
    next(iter(ds))
    return list(folder.iterdir())


def test_a_damaged_cached_shard_is_downloaded_again_not_served(remote, cache_home):
    url, opts, _ = remote
    ds = NCADataset(url, raw=True, storage_options=opts, cache_bytes="100M", shuffle=False)
    want = [(x["key"], x["tokens"].tolist()) for x in ds]
    for path in cache_home.iterdir():
        blob = bytearray(path.read_bytes())
        blob[100] ^= 0xFF
        path.write_bytes(bytes(blob))
    again = NCADataset(url, raw=True, storage_options=opts, cache_bytes="100M", shuffle=False)
    assert [(x["key"], x["tokens"].tolist()) for x in again] == want
    assert again.cache_stats == {"hits": 0, "misses": 5, "evictions": 0}
    assert [(x["key"], x["tokens"].tolist()) for x in again] == want and again.cache_stats["hits"] == 5  # repaired


def test_local_datasets_and_a_zero_limit_cache_nothing(tmp_path, monkeypatch):
    make_dataset(str(tmp_path / "ds"), {"train": 1})
    assert NCADataset(str(tmp_path / "ds"), cache_bytes="1G").cache_stats is None
    assert cache_limit("0") == 0 and cache_limit("10G") == 10**10
    monkeypatch.setenv("NCA_DATAGEN_CACHE_BYTES", "5M")
    assert cache_limit(None) == 5 * 10**6
    with pytest.raises(ValueError, match="NCA_DATAGEN_CACHE_BYTES"):
        cache_limit("lots")


def test_lru_order_is_use_not_insertion(tmp_path):
    cache = ShardCache(250, tmp_path)
    for name in ("a", "b"):
        cache.put("ds", _digest(name), ".tar", _blob(name))
    assert cache.get("ds", _digest("a"), 100, ".tar") == _blob("a")  # a is now the most recently used
    cache.put("ds", _digest("c"), ".tar", _blob("c"))  # 300 bytes > 250: the least recently used, b, goes
    assert cache.get("ds", _digest("b"), 100, ".tar") is None
    assert cache.get("ds", _digest("a"), 100, ".tar") == _blob("a")
    cache.put("ds", _digest("big"), ".tar", b"x" * 251)  # larger than the whole cache: not cached, nothing evicted
    assert cache.stats == {"hits": 2, "misses": 1, "evictions": 1}


def _blob(name: str) -> bytes:
    return name.encode().ljust(100, b".")


def _digest(name: str) -> str:
    import hashlib

    return hashlib.sha256(_blob(name)).hexdigest()
