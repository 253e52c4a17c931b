"""Object storage for real: a moto S3 server on 127.0.0.1, reached through s3:// URLs as users reach it.

The endpoint comes from the environment (AWS_ENDPOINT_URL) or from storage options (what --endpoint-url sets);
a fresh Python process loads the dataset from the bucket, so nothing cached in this process helps it.
"""

import json
import os
import subprocess
import sys

import pytest
from shard_fixtures import FAKE, fake_shard, make_dataset, write_fake

from nca_datagen import storage
from nca_datagen.loader import NCADataset
from nca_datagen.manifest import read_manifest
from nca_datagen.shards import load_record


def test_filesystem_urls(tmp_path):
    fs, root = storage.filesystem(str(tmp_path / "x"))
    assert storage.is_local(fs) and root == str(tmp_path / "x")
    assert storage.filesystem(f"file://{tmp_path}")[1] == str(tmp_path)
    assert storage.join("bucket/prefix", "train", "a.tar") == "bucket/prefix/train/a.tar"
    with pytest.raises(ValueError, match="unknown URL scheme"):
        storage.filesystem("nosuch://host/x")


def test_s3_options_from_env_and_flags(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert storage.s3_kwargs(None)["endpoint_url"] == "http://env:1"
    kw = storage.s3_kwargs(storage.storage_options_from_flags("http://flag:2", "prof", "when_required"))
    assert kw["endpoint_url"] == "http://flag:2" and kw["profile"] == "prof"
    assert kw["config_kwargs"] == {"request_checksum_calculation": "when_required",
                                   "response_checksum_validation": "when_required"}
    with pytest.raises(ValueError, match="choose one of"):
        storage.s3_kwargs({"checksums": "never"})


def test_write_shards_and_manifest_to_s3_with_endpoint_from_env(s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    url = f"{s3_bucket}/ds"
    record = write_fake(fake_shard("train", 0), url)
    assert load_record(*storage.filesystem(url), "train", 0) == record
    assert load_record(*storage.filesystem(url), "train", 1) is None
    manifest = make_dataset(url, {"train": 2})
    assert read_manifest(url + "/manifest.json") == manifest
    keys = sorted(item["key"] for item in NCADataset(url, raw=True))
    assert keys == sorted(f"train-{s:06d}-{i:06d}" for s in range(2) for i in range(FAKE.samples_per_shard))


def test_endpoint_from_options_and_checksum_mode(s3_server, s3_bucket):
    opts = {"endpoint_url": s3_server, "checksums": "when_required"}
    url = f"{s3_bucket}/flagged"
    make_dataset(url, {"train": 1}, storage_options=opts)
    assert len(list(NCADataset(url, storage_options=opts))) == FAKE.samples_per_shard


@pytest.mark.slow
def test_fresh_process_loads_from_s3(s3_server, s3_bucket):
    url = f"{s3_bucket}/ds"
    make_dataset(url, {"train": 2, "val": 1}, storage_options={"endpoint_url": s3_server})
    code = ("import json, sys; from nca_datagen.loader import NCADataset, iter_sequences\n"
            "ds = NCADataset(sys.argv[1], raw=True, shuffle=False)\n"
            "print(json.dumps({'keys': [x['key'] for x in ds], 'val': len(list(iter_sequences(sys.argv[1], 'val')))}))")
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_server}
    out = subprocess.run([sys.executable, "-c", code, url], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["keys"] == [f"train-{s:06d}-{i:06d}" for s in range(2) for i in range(FAKE.samples_per_shard)]
    assert got["val"] == FAKE.samples_per_shard


def test_missing_bucket_is_a_clear_error(s3_server):
    from nca_datagen.ownership import prepare_output

    with pytest.raises(ValueError, match=r"cannot write to s3://no-such-bucket-here/ds.*bucket name"):
        prepare_output("s3://no-such-bucket-here/ds", FAKE, "zstd", storage_options={"endpoint_url": s3_server})


@pytest.mark.parametrize("where", ["local", "s3", "memory"])
def test_glob_characters_in_a_path_are_literal(tmp_path, request, where):
    """[, * and ? are legal in folder names and object keys; fsspec's rm reads them as patterns."""
    from click.testing import CliRunner

    from nca_datagen.cli import main

    server = None
    if where == "s3":
        server = request.getfixturevalue("s3_server")
        out, flags = f"{request.getfixturevalue('s3_bucket')}/run[2]*?", ["--endpoint-url", server]
    elif where == "memory":
        out, flags = f"memory://{tmp_path.name}/run[2]*?", []
    else:
        out, flags = str(tmp_path / "run[2]*?"), []
    tiny = ["--complexity", "0.3:", "--grid", "6", "--states", "3", "--frames", "4", "--sims-per-rule", "2",
            "--samples-per-shard", "8",
            "--tokens", "500", "--executor", "inline", "--quiet", "--out", out, *flags]
    first = CliRunner().invoke(main, ["build", *tiny])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, ["build", *tiny, "--seed", "1", "--overwrite"])  # removes the first one
    assert again.exit_code == 0, again.output
    assert read_manifest(out, {"endpoint_url": server} if server else None)["config"]["seed"] == 1
    fs, root = storage.filesystem(out, {"endpoint_url": server} if server else None)
    assert not storage.exists(fs, storage.join(root, "build.json"))
    assert CliRunner().invoke(main, ["verify", out, *flags]).exit_code == 0


def test_an_empty_segment_in_an_s3_url_is_refused():
    for url in ("s3://bucket//x", "s3://bucket/a//b", "s3://"):
        with pytest.raises(ValueError, match="empty bucket or path segment"):
            storage.filesystem(url)
