"""`nca-datagen verify` and `nca-datagen publish`, through the CLI, on local folders and a real S3 server."""

import dataclasses
import json

import pytest
from click.testing import CliRunner
from shard_fixtures import FAKE, REAL, make_dataset, real_shards

import nca_datagen.pipelines.publish as publish_mod
from nca_datagen import storage
from nca_datagen.cli import main
from nca_datagen.ownership import check_output


def cli(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env)


def damage(path, how):
    if how == "missing":
        path.unlink()
        return
    blob = bytearray(path.read_bytes())
    if how == "truncate":
        blob = blob[: len(blob) - 100]
    else:
        blob[len(blob) // 3] ^= 0x10
    path.write_bytes(bytes(blob))


def test_verify_accepts_a_good_dataset(tmp_path):
    make_dataset(str(tmp_path), {"train": 2, "val": 1})
    result = cli("verify", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "ok  train/shard-000001.tar.zst" in result.output and "dataset verified" in result.output


@pytest.mark.parametrize("how", ["truncate", "bitflip", "missing"])
def test_verify_names_each_bad_file(tmp_path, how):
    make_dataset(str(tmp_path), {"train": 3})
    damage(tmp_path / "train" / "shard-000001.tar.zst", how)
    damage(tmp_path / "train" / "shard-000002.tar.zst", "truncate")
    result = cli("verify", str(tmp_path / "manifest.json"))
    assert result.exit_code == 1
    assert "2 problem(s)" in result.output
    assert "BAD train/shard-000001.tar.zst" in result.output and "BAD train/shard-000002.tar.zst" in result.output
    assert "ok  train/shard-000000.tar.zst" in result.output


def test_verify_without_a_dataset_is_a_clear_error(tmp_path):
    result = cli("verify", str(tmp_path))
    assert result.exit_code == 1 and "no dataset at" in result.output


@pytest.mark.slow
def test_regenerate_matches_the_recipe(tmp_path):
    make_dataset(str(tmp_path), {"train": real_shards(1)}, config=REAL)
    result = cli("verify", str(tmp_path), "--regenerate", "1", "--backend", "torch")
    assert result.exit_code == 0, result.output
    assert "ok  regenerated train/shard-000000.tar.zst" in result.output


@pytest.mark.slow
def test_regenerate_catches_shards_that_do_not_follow_the_recipe(tmp_path):
    make_dataset(str(tmp_path), {"train": 1}, config=REAL)  # random tokens: valid shards, wrong content
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["provenance"]["zlib"] = "0.0.0-elsewhere"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    result = cli("verify", str(tmp_path), "--regenerate", "1", "--backend", "torch")
    assert result.exit_code == 1
    assert "zlib 0.0.0-elsewhere" in result.output
    assert "BAD regenerated train/shard-000000.tar.zst" in result.output


def test_publish_to_s3_and_back(tmp_path, s3_server, s3_bucket, monkeypatch):
    src, dst, back = str(tmp_path / "src"), f"{s3_bucket}/nca/v1", str(tmp_path / "back")
    make_dataset(src, {"train": 3, "val": 1})
    first = cli("publish", src, dst, "--endpoint-url", s3_server)
    assert first.exit_code == 0, first.output
    assert "4 shards uploaded, 0 already present" in first.output
    again = cli("publish", src, dst, "--endpoint-url", s3_server)
    assert again.exit_code == 0 and "0 shards uploaded, 4 already present" in again.output

    fs, root = storage.filesystem(dst, {"endpoint_url": s3_server})
    storage.write_atomic(fs, f"{root}/train/shard-000000.tar.zst", b"short")  # wrong size at DST
    fs.rm(f"{root}/train/shard-000001.json")  # record gone at DST
    storage.write_atomic(fs, f"{root}/val/shard-000000.json", b'{"sha256": "0", "bytes": 1}')  # another shard's
    fixed = cli("publish", src, dst, "--endpoint-url", s3_server)
    assert fixed.exit_code == 0 and "3 shards uploaded, 1 already present" in fixed.output

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # the endpoint from the environment this time
    assert cli("verify", dst).exit_code == 0
    copied = cli("publish", dst, back)
    assert copied.exit_code == 0 and "4 shards uploaded" in copied.output
    assert (tmp_path / "back" / "manifest.json").read_bytes() == (tmp_path / "src" / "manifest.json").read_bytes()
    assert (tmp_path / "back" / "samples" / "train.parquet").exists()
    assert cli("verify", back).exit_code == 0


def fail_the_third_upload(monkeypatch):
    """publish's third shard upload raises ConnectionError, as a network gone away; returns the real upload."""
    real_upload, uploads = publish_mod.upload_shard, []

    def fail_third(dfs, path, blob):
        uploads.append(path)
        if len(uploads) == 3:
            raise ConnectionError("network went away")
        real_upload(dfs, path, blob)

    monkeypatch.setattr(publish_mod, "upload_shard", fail_third)
    return real_upload


def test_interrupted_publish_leaves_no_manifest_and_resumes(tmp_path, s3_server, s3_bucket, monkeypatch):
    src, dst = str(tmp_path / "src"), f"{s3_bucket}/nca"
    opts = {"endpoint_url": s3_server}
    make_dataset(src, {"train": 4})
    fs, root = storage.filesystem(dst, opts)
    real_upload = fail_the_third_upload(monkeypatch)
    result = cli("publish", src, dst, "--endpoint-url", s3_server)
    assert result.exit_code == 1 and "ConnectionError: network went away" in result.output  # no traceback
    assert f"publishing {src} -> {dst} failed" in result.output
    assert not fs.exists(f"{root}/manifest.json")
    assert len(fs.glob(f"{root}/train/shard-*.tar.zst")) == 2

    monkeypatch.setattr(publish_mod, "upload_shard", real_upload)
    resumed = cli("publish", src, dst, "--endpoint-url", s3_server)
    assert resumed.exit_code == 0 and "2 shards uploaded, 2 already present" in resumed.output
    assert fs.exists(f"{root}/manifest.json")


def test_publish_to_a_missing_bucket_names_it(tmp_path, s3_server):
    src = str(tmp_path / "src")
    make_dataset(src, {"train": 1})
    result = cli("publish", src, "s3://no-such-bucket/nca", "--endpoint-url", s3_server)
    assert result.exit_code == 1 and result.exception is not None and "Traceback" not in result.output
    assert "cannot write to s3://no-such-bucket/nca" in result.output  # its claim, the first write, fails
    assert "bucket does not exist" in result.output


@pytest.mark.parametrize("failure", ["upload", "corrupt-source"])
def test_a_failed_publish_overwrite_keeps_the_published_dataset(tmp_path, s3_server, s3_bucket, monkeypatch, failure):
    """Replacing a published dataset: SRC is verified whole before DST is touched, and the old dataset stays
    readable (manifest and every shard) until the new one is complete; the rerun then finishes the job."""
    dst, opts = f"{s3_bucket}/nca", {"endpoint_url": s3_server}
    make_dataset(str(tmp_path / "v1"), {"train": 3, "val": 1})
    assert _publish(tmp_path / "v1", dst, opts).exit_code == 0
    fs, root = storage.filesystem(dst, opts)
    before = _tree(fs, root)
    make_dataset(str(tmp_path / "v2"), {"train": 3}, config=dataclasses.replace(FAKE, seed=9))
    if failure == "corrupt-source":
        good = (tmp_path / "v2" / "train" / "shard-000002.tar.zst").read_bytes()
        damage(tmp_path / "v2" / "train" / "shard-000002.tar.zst", "bitflip")
    else:
        fail_the_third_upload(monkeypatch)
    failed = _publish(tmp_path / "v2", dst, opts, "--overwrite")
    assert failed.exit_code == 1, failed.output
    assert storage.read_bytes(fs, f"{root}/manifest.json") == before["manifest.json"]
    assert cli("verify", dst, "--endpoint-url", s3_server).exit_code == 0  # v1, whole and readable
    if failure == "corrupt-source":
        assert "fails verification" in failed.output and "shard-000002.tar.zst" in failed.output
        assert _tree(fs, root) == before  # not a byte written
        (tmp_path / "v2" / "train" / "shard-000002.tar.zst").write_bytes(good)
    monkeypatch.undo()
    assert _publish(tmp_path / "v2", dst, opts, "--overwrite").exit_code == 0
    assert storage.read_bytes(fs, f"{root}/manifest.json") == (tmp_path / "v2" / "manifest.json").read_bytes()
    assert cli("verify", dst, "--endpoint-url", s3_server).exit_code == 0
    assert not any(path.startswith(f"{root}/_publish") for path in fs.find(root))


def test_publish_refuses_a_corrupt_source(tmp_path, s3_server, s3_bucket):
    src = tmp_path / "src"
    make_dataset(str(src), {"train": 2})
    damage(src / "train" / "shard-000001.tar.zst", "bitflip")
    result = cli("publish", str(src), f"{s3_bucket}/x", "--endpoint-url", s3_server)
    assert result.exit_code == 1 and "shard-000001.tar.zst" in result.output
    fs, root = storage.filesystem(f"{s3_bucket}/x", {"endpoint_url": s3_server})
    assert not fs.exists(f"{root}/manifest.json")


def _dst(kind, tmp_path, request):
    """A publish destination and its storage options: a local folder, a memory:// folder of this process, or a
    prefix on the moto S3 server."""
    if kind == "local":
        return str(tmp_path / "dst"), {}
    if kind == "memory":
        return f"memory://{tmp_path.name}/dst", {}
    server = request.getfixturevalue("s3_server")
    return f"{request.getfixturevalue('s3_bucket')}/nca", {"endpoint_url": server}


def _publish(src, dst, opts, *flags):
    return cli("publish", str(src), dst, *flags, *(["--endpoint-url", opts["endpoint_url"]] if opts else []))


@pytest.mark.parametrize("kind", ["local", "memory", "s3"])
def test_publishing_another_dataset_removes_the_old_ones_files(tmp_path, request, kind):
    dst, opts = _dst(kind, tmp_path, request)
    make_dataset(str(tmp_path / "v1"), {"train": 2, "val": 1})
    (tmp_path / "v1" / "preview.png").write_bytes(b"png of v1")  # a card figure v2 will not have
    assert _publish(tmp_path / "v1", dst, opts).exit_code == 0
    fs, root = storage.filesystem(dst, opts)
    theirs = {"notes.txt": b"mine", "_logs/build.jsonl": b"{}", "extra/train/shard-000009.tar": b"not ours"}
    for rel, data in {**theirs, "build.json": b"{}"}.items():
        storage.write_atomic(fs, f"{root}/{rel}", data)

    make_dataset(str(tmp_path / "v2"), {"train": 1}, compression="none")  # no val, .tar instead of .tar.zst
    refused = _publish(tmp_path / "v2", dst, opts)
    assert refused.exit_code == 1 and "holds another finished dataset" in refused.output
    endpoint = ["--endpoint-url", opts["endpoint_url"]] if opts else []
    assert "--overwrite" in refused.output and cli("verify", dst, *endpoint).exit_code == 0  # v1 untouched
    result = _publish(tmp_path / "v2", dst, opts, "--overwrite")
    assert result.exit_code == 0, result.output
    fs.invalidate_cache()
    left = sorted(p[len(root) + 1:] for p in fs.find(root))
    assert left == sorted(["README.md", "manifest.json", "samples/train.parquet", "train/shard-000000.json",
                           "train/shard-000000.tar", *theirs])
    assert all(storage.read_bytes(fs, f"{root}/{rel}") == data for rel, data in theirs.items())
    assert cli("verify", dst, *(["--endpoint-url", opts["endpoint_url"]] if opts else [])).exit_code == 0


def test_republishing_the_same_data_needs_no_flag_and_logs_stay_home(tmp_path):
    make_dataset(str(tmp_path / "v1"), {"train": 2})
    (tmp_path / "v1" / "_logs").mkdir()
    (tmp_path / "v1" / "_logs" / "build-1.jsonl").write_text('{"out": "/home/me/data"}\n')
    dst = str(tmp_path / "dst")
    assert cli("publish", str(tmp_path / "v1"), dst).exit_code == 0
    assert not (tmp_path / "dst" / "_logs").exists()  # this machine's diagnostics are not part of the data
    manifest = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    manifest["provenance"] = {**manifest.get("provenance", {}), "created": "2000-01-01T00:00:00Z"}  # a rebuild
    (tmp_path / "v1" / "manifest.json").write_text(json.dumps(manifest))
    result = cli("publish", str(tmp_path / "v1"), dst)
    assert result.exit_code == 0, result.output
    published = json.loads((tmp_path / "dst" / "manifest.json").read_text())
    assert published["provenance"]["created"] == "2000-01-01T00:00:00Z"


def test_a_publish_to_a_destination_being_written_fails_until_the_writer_dies(tmp_path):
    """The claim is a kernel lock in DST: a writer killed with SIGKILL leaves its file, but no lock, behind."""
    import subprocess
    import sys

    from nca_datagen.claim import CLAIM

    make_dataset(str(tmp_path / "src"), {"train": 1})
    dst = str(tmp_path / "dst")
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from nca_datagen.claim import claim
with claim({dst!r}, doing="publish", command="nca-datagen publish src dst"):
    print("held", flush=True)
    time.sleep(120)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = cli("publish", str(tmp_path / "src"), dst)
        assert busy.exit_code == 1 and f"is being written by nca-datagen publish (pid {holder.pid} on " in busy.output
        assert [p.name for p in (tmp_path / "dst").iterdir()] == [CLAIM]  # the publish wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert cli("publish", str(tmp_path / "src"), dst).exit_code == 0
    assert not (tmp_path / "dst" / CLAIM).exists()


@pytest.mark.parametrize("src, dst", [("x", "x/mirror"), ("x", "x"), ("x/manifest.json", "x/"), ("x", "."),
                                      ("x", "x/../x/sub")])
def test_publish_refuses_a_destination_overlapping_the_source(tmp_path, monkeypatch, src, dst):
    monkeypatch.chdir(tmp_path)
    make_dataset("x", {"train": 1})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = cli("publish", src, dst)
    assert result.exit_code == 1 and "overlap" in result.output, result.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert cli("publish", "x", "x-copy").exit_code == 0  # a sibling whose name starts with SRC's is fine


def test_publish_refuses_overlapping_s3_prefixes(s3_server, s3_bucket):
    result = cli("publish", f"{s3_bucket}/nca", f"{s3_bucket}/nca/mirror", "--endpoint-url", s3_server)
    assert result.exit_code == 1 and "overlap" in result.output, result.output


def test_publish_rehash_repairs_a_shard_corrupt_in_place(tmp_path, s3_server, s3_bucket):
    src, dst, opts = tmp_path / "src", f"{s3_bucket}/nca", {"endpoint_url": s3_server}
    make_dataset(str(src), {"train": 2})
    assert _publish(src, dst, opts).exit_code == 0
    fs, root = storage.filesystem(dst, opts)
    blob = bytearray(storage.read_bytes(fs, f"{root}/train/shard-000001.tar.zst"))
    blob[len(blob) // 3] ^= 0x10  # same size, one bit flipped
    storage.write_atomic(fs, f"{root}/train/shard-000001.tar.zst", bytes(blob))

    cheap = _publish(src, dst, opts)
    assert cheap.exit_code == 0 and "0 shards uploaded, 2 already present" in cheap.output  # default: size only
    assert cli("verify", dst, "--endpoint-url", s3_server).exit_code == 1
    rehashed = _publish(src, dst, opts, "--rehash")
    assert rehashed.exit_code == 0 and "1 shard uploaded, 1 already present" in rehashed.output, rehashed.output
    assert cli("verify", dst, "--endpoint-url", s3_server).exit_code == 0

    storage.write_atomic(fs, f"{root}/train/shard-000000.json", b'{"sha2')  # a damaged record at DST
    repaired = _publish(src, dst, opts)
    assert repaired.exit_code == 0 and "1 shard uploaded, 1 already present" in repaired.output, repaired.output


def _set(*keys_value):
    *keys, value = keys_value

    def edit(manifest):
        for key in keys[:-1]:
            manifest = manifest[key]
        manifest[keys[-1]] = value(manifest[keys[-1]]) if callable(value) else value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("splits", "train", "num_shards", 3), "train: num_shards is 3, but 2 shards are listed"),
    (_set("splits", "train", "samples", lambda v: v + 1), "train: samples is 9, the sum over its shards is 8"),
    (_set("splits", "train", "tokens", lambda v: v - 1), "train: tokens is"),
    (_set("splits", "val", "bytes", 0), "val: bytes is 0, the sum over its shards is"),
    (_set("totals", "num_shards", 4), "totals: num_shards is 4, the sum over the splits is 3"),
    (_set("totals", "samples", lambda v: v * 2), "totals: samples is 24, the sum over the splits is 12"),
    (_set("splits", {}), "splits: empty"),
], ids=["num_shards", "split-samples", "split-tokens", "split-bytes", "total-shards", "total-samples",
        "no-splits"])
def test_verify_catches_inconsistent_counts(tmp_path, edit, message):
    make_dataset(str(tmp_path), {"train": 2, "val": 1})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    edit(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    result = cli("verify", str(tmp_path))
    assert result.exit_code == 1 and message in result.output, result.output


def test_verify_names_shard_files_the_manifest_does_not_list(tmp_path):
    make_dataset(str(tmp_path), {"train": 2})
    shard = (tmp_path / "train" / "shard-000000.tar.zst").read_bytes()
    (tmp_path / "train" / "shard-000000.tar").write_bytes(shard)  # what a webdataset glob of train/ would read
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "shard-000000.tar.zst").write_bytes(shard)
    result = cli("verify", str(tmp_path))
    assert result.exit_code == 1 and "2 problem(s)" in result.output, result.output
    assert "train/shard-000000.tar: " in result.output and "val/shard-000000.tar.zst: " in result.output


def test_verify_rejects_an_unknown_backend_before_reading(tmp_path):
    result = cli("verify", str(tmp_path), "--backend", "bogus")  # no dataset there: only the option can fail
    assert result.exit_code == 2 and "Invalid value for '--backend'" in result.output, result.output
    make_dataset(str(tmp_path), {"train": 1})
    assert cli("verify", str(tmp_path), "--backend", "auto").exit_code == 0


def _tree(fs, root) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {p[len(root) + 1:]: storage.read_bytes(fs, p) for p in sorted(fs.find(root))}


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_publish_refuses_a_destination_of_someone_elses_files(tmp_path, request, kind):
    dst, opts = _dst(kind, tmp_path, request)
    make_dataset(str(tmp_path / "src"), {"train": 2})
    fs, root = storage.filesystem(dst, opts)
    theirs = {"README.md": b"readme", "train/notes.txt": b"notes", "samples/mine.csv": b"x", "other.txt": b"keep"}
    for rel, data in theirs.items():
        storage.write_atomic(fs, f"{root}/{rel}", data)
    for flags in ((), ("--overwrite",)):  # --overwrite replaces a dataset, never files that are not one's
        result = _publish(tmp_path / "src", dst, opts, *flags)
        assert result.exit_code == 1 and "holds no nca-datagen dataset" in result.output, result.output
        assert "README.md" in result.output and "train/notes.txt" in result.output
    assert _tree(fs, root) == theirs


def test_publish_deletes_only_our_files_and_copies_only_the_datasets(tmp_path):
    """A dataset at DST may have other files beside it, in its split folders too: publish replaces the dataset's
    files and leaves those alone, and it carries SRC's dataset, not whatever else lies in SRC's folder."""
    dst = tmp_path / "dst"
    make_dataset(str(tmp_path / "v1"), {"train": 2, "val": 1})
    assert cli("publish", str(tmp_path / "v1"), str(dst)).exit_code == 0
    theirs = {"train/notes.txt": b"notes", "val/shard-000007.txt": b"mine", "samples/mine.csv": b"x",
              "notes.txt": b"dst notes"}
    for rel, data in theirs.items():
        (dst / rel).write_bytes(data)
    make_dataset(str(tmp_path / "v2"), {"train": 1}, compression="none")
    (tmp_path / "v2" / "notes.txt").write_bytes(b"src notes")  # not part of the dataset
    result = cli("publish", str(tmp_path / "v2"), str(dst), "--overwrite")
    assert result.exit_code == 0, result.output
    fs, root = storage.filesystem(str(dst))
    assert _tree(fs, root) == {**theirs, **{rel: (tmp_path / "v2" / rel).read_bytes() for rel in (
        "README.md", "manifest.json", "samples/train.parquet", "train/shard-000000.json", "train/shard-000000.tar")}}


def test_a_publish_interrupted_between_a_shard_and_its_record_resumes(tmp_path, monkeypatch):
    """While a publish runs DST holds a build marker, so a shard uploaded without its record yet is not taken
    for someone else's file by the rerun; the marker goes once the manifest is written."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_dataset(str(src), {"train": 2})
    real_upload = publish_mod.upload_shard

    def upload_then_fail(dfs, path, blob):
        real_upload(dfs, path, blob)
        raise ConnectionError("network went away")

    monkeypatch.setattr(publish_mod, "upload_shard", upload_then_fail)
    assert cli("publish", str(src), str(dst)).exit_code == 1
    assert (dst / "train" / "shard-000000.tar.zst").exists() and not (dst / "train" / "shard-000000.json").exists()
    assert (dst / "build.json").exists() and not (dst / "manifest.json").exists()
    with pytest.raises(ValueError, match="a publish into this folder was interrupted; rerun that publish"):
        check_output(str(dst), FAKE, "zstd")  # a build there is told what the folder holds
    monkeypatch.setattr(publish_mod, "upload_shard", real_upload)
    result = cli("publish", str(src), str(dst))
    assert result.exit_code == 0 and "2 shards uploaded" in result.output, result.output
    assert not (dst / "build.json").exists() and cli("verify", str(dst)).exit_code == 0
    assert (dst / "train" / "shard-000000.json").read_bytes() == (src / "train" / "shard-000000.json").read_bytes()
