"""Shard format: round trip, byte-identical rebuilds, records, and a reader that refuses unsafe or broken input."""

import io
import tarfile

import numpy as np
import pytest
import zstandard
from shard_fixtures import write_fake

from nca_datagen import storage
from nca_datagen.config import DatasetConfig, NCAConfig
from nca_datagen.generate import generate_shard
from nca_datagen.shards import (
    ShardError,
    iter_shard_samples,
    load_record,
    record_name,
    shard_bytes,
    shard_name,
)

CONFIG = DatasetConfig(rules_per_shard=2, sims_per_rule=2, nca=NCAConfig(frames=4))


@pytest.fixture(scope="module")
def data():
    return generate_shard(CONFIG, "train", 0, backend="torch")


def test_shard_names():
    assert shard_name("train", 0, "zstd") == "train/shard-000000.tar.zst"
    assert shard_name("val", 12, "none") == "val/shard-000012.tar"
    assert record_name("train", 3) == "train/shard-000003.json"
    with pytest.raises(ValueError, match=r"choose one of"):
        shard_name("train", 0, "gzip")


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_round_trip(tmp_path, data, compression):
    record = write_fake(data, str(tmp_path), CONFIG, compression)
    assert (tmp_path / record["path"]).stat().st_size == record["bytes"]
    assert load_record(*storage.filesystem(str(tmp_path)), "train", 0) == record
    assert record["samples"] == data.num_samples and record["tokens"] == data.tokens_NL.size
    assert record["counts"] == data.counts
    assert sum(record["histograms"]["candidates"]["counts"]) == len(data.candidate_ratio_M)
    assert sum(record["histograms"]["kept"]["counts"]) == CONFIG.rules_per_shard

    samples = list(iter_shard_samples(str(tmp_path / record["path"]), expected_sha256=record["sha256"]))
    assert [k for k, _, _ in samples] == [f"train-000000-{i:06d}" for i in range(data.num_samples)]
    for i, (key, tokens, meta) in enumerate(samples):
        assert tokens.dtype == np.uint16 and np.array_equal(tokens, data.tokens_NL[i])
        assert meta["key"] == key and meta["sample"] == i and meta["shard"] == 0 and meta["split"] == "train"
        for name, values in data.columns.items():
            assert meta[name] == values[i].item(), name


def test_tar_members_are_deterministic_and_contiguous(data):
    with tarfile.open(fileobj=io.BytesIO(shard_bytes(data, "none"))) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert names[:2] == ["train-000000-000000.json", "train-000000-000000.tokens.npy"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
    assert all("." not in n.split(".", 1)[0] for n in names)  # keys without dots


def test_tar_matches_the_standard_library_writer(data):
    """Our direct ustar writer produces exactly what `tarfile` writes for the same members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(shard_bytes(data, "none"))) as ours, \
            tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as ref:
        for member in ours.getmembers():
            ref.addfile(member, ours.extractfile(member))
    assert buf.getvalue() == shard_bytes(data, "none")
    tokens = np.load(io.BytesIO(ours_npy(data)), allow_pickle=False)
    assert np.array_equal(tokens, data.tokens_NL[0])


def ours_npy(data):
    with tarfile.open(fileobj=io.BytesIO(shard_bytes(data, "none"))) as tar:
        return tar.extractfile("train-000000-000000.tokens.npy").read()


def test_same_data_same_bytes(tmp_path, data):
    again = generate_shard(CONFIG, "train", 0, backend="torch")
    a = write_fake(data, str(tmp_path / "a"), CONFIG)
    b = write_fake(again, str(tmp_path / "b"), CONFIG)
    assert a == b
    assert (tmp_path / "a" / a["path"]).read_bytes() == (tmp_path / "b" / b["path"]).read_bytes()
    rec = record_name("train", 0)
    assert (tmp_path / "a" / rec).read_bytes() == (tmp_path / "b" / rec).read_bytes()


@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_damaged_shard_is_named(tmp_path, data, damage):
    record = write_fake(data, str(tmp_path), CONFIG)
    path = tmp_path / record["path"]
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:
        blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(ShardError, match=r"shard-000000.tar.zst"):
        list(iter_shard_samples(str(path), expected_sha256=record["sha256"], expected_bytes=record["bytes"]))
    with pytest.raises(ShardError, match=r"shard-000000.tar.zst"):  # without a hash, zstd/tar notice it themselves
        list(iter_shard_samples(str(path)))


@pytest.mark.parametrize("member, payload", [
    ("tokens.npy", lambda npy: npy.replace(b"(4,)", b"(4, ")),  # numpy's parser: tokenize.TokenError
    ("tokens.npy", lambda npy: npy.replace(b"'<u2'", b"'<u2")),  # SyntaxError
    ("json", lambda npy: b"{not json"),
])
def test_unparseable_member_is_a_shard_error(tmp_path, member, payload):
    """A member whose bytes do not parse is a ShardError naming the shard, whatever numpy or json raise."""
    buf, npy = io.BytesIO(), io.BytesIO()
    np.save(npy, np.arange(4, dtype=np.uint16))
    members = {"tokens.npy": npy.getvalue(), "json": b"{}"}
    members[member] = payload(members["tokens.npy"])
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for suffix in ("json", "tokens.npy"):
            info = tarfile.TarInfo(f"k0.{suffix}")
            info.size = len(members[suffix])
            tar.addfile(info, io.BytesIO(members[suffix]))
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ShardError, match=r"shard-000000.tar: sample k0 is unreadable"):
        list(iter_shard_samples(str(path)))


@pytest.mark.parametrize("bad_name", ["../escape.json", "/abs/path.json", "dir/key.json", "..json"])
def test_reader_refuses_unsafe_member_names(tmp_path, bad_name):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(bad_name)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    path = tmp_path / "evil.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    before = set(tmp_path.parent.rglob("*"))
    with pytest.raises(ShardError, match=r"unsafe"):
        list(iter_shard_samples(str(path)))
    assert set(tmp_path.parent.rglob("*")) == before  # nothing was written anywhere
