"""The attack sweep: what an attacker's bucket or an unlucky user can do to us, through the CLI and the loader.

Classes of attack, by harm (each case names what must hold):
- escape: a manifest names files outside the dataset; nothing is read or written there;
- foreign: a folder of someone else's files; nothing there is written, overwritten or deleted;
- wrong data: a dataset that is not what it claims; no command reports it as fine;
- memory: a size that a header or manifest claims; bounded by the format, refused by name.

Everything goes through `nca-datagen` (click's runner, in this process) or `NCADataset`, on folders made by a
real tiny build: the sweep needs no library internals, so it runs unchanged against any version of the tool.
Keep it growing: every new attack class gets a case here. Budget: well under a minute on 2 cores.
"""

import hashlib
import json
import shutil
import tarfile

import pytest
import zstandard
from click.testing import CliRunner

from nca_datagen.cli import main

TINY = ["--frames", "4", "--samples-per-shard", "4", "--sims-per-rule", "2", "--tokens", "1216",
        "--val-tokens", "608", "--executor", "inline", "--quiet"]  # train 2 shards, val 1, 4 x 152 tokens each


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "ds"
    result = cli("build", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    shutil.rmtree(out / "_logs")
    return out


@pytest.fixture
def dataset(built, tmp_path):
    """A fresh copy of a finished tiny dataset, deep enough that '../..' stays inside tmp_path."""
    out = tmp_path / "a" / "b" / "ds"
    shutil.copytree(built, out)
    return out


def edit_manifest(root, edit) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def point_shard_at(root, rel: str) -> None:
    """Make train shard 0's manifest entry name `rel` (relative to the dataset), and put a valid copy of the
    shard there: a reader that follows the name sees a shard whose hash matches."""
    shutil.copy(root / "train" / "shard-000000.tar.zst", (root / rel).resolve())
    edit_manifest(root, lambda m: m["splits"]["train"]["shards"][0].__setitem__("path", rel))


# -- escape -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", ["../../escaped.tar.zst", "val/shard-000000.tar.zst"], ids=["dotdot", "other-name"])
def test_escape_verify_and_loader_refuse_a_manifest_naming_other_files(dataset, rel):
    point_shard_at(dataset, rel)
    result = cli("verify", dataset)
    assert result.exit_code == 1 and "not safe to read" in result.output, result.output
    from nca_datagen.loader import NCADataset

    with pytest.raises(ValueError, match="not safe to read"):
        NCADataset(str(dataset), split="train")


def test_escape_publish_writes_nothing_outside_dst(dataset, tmp_path):
    point_shard_at(dataset, "../../escaped.tar.zst")  # SRC/../../escaped.tar.zst holds a valid shard
    dst = tmp_path / "x" / "y" / "dst"
    result = cli("publish", dataset, dst)
    assert result.exit_code == 1 and "not safe to read" in result.output, result.output
    assert not (tmp_path / "x" / "escaped.tar.zst").exists() and not dst.exists()


def test_escape_an_absolute_path_is_refused(dataset, tmp_path):
    target = tmp_path / "elsewhere.tar.zst"
    shutil.copy(dataset / "train" / "shard-000001.tar.zst", target)
    edit_manifest(dataset, lambda m: m["splits"]["train"]["shards"][1].__setitem__("path", str(target)))
    result = cli("verify", dataset)
    assert result.exit_code == 1 and "not safe to read" in result.output, result.output


# -- foreign ----------------------------------------------------------------------------------------------


SIDECARS = {
    "webdataset-json": '{"caption": "a cat", "width": 12}',
    "not-json": "shard zero",
    "json-list": "[]",
    "record-like": json.dumps({"split": "train", "index": 0, "path": "train/shard-000000.tar", "sha256": "0",
                               "bytes": 9}),
}


@pytest.mark.parametrize("flags", [(), ("--overwrite",)], ids=["plain", "overwrite"])
@pytest.mark.parametrize("sidecar", SIDECARS.values(), ids=SIDECARS)
def test_foreign_webdataset_folder_with_sidecars_is_left_as_it_was(tmp_path, sidecar, flags):
    out = tmp_path / "theirs"
    (out / "train").mkdir(parents=True)
    (out / "train" / "shard-000000.tar").write_bytes(b"their data")
    (out / "train" / "shard-000000.json").write_text(sidecar)
    before = files(out)
    result = cli("build", *TINY, "--compression", "none", *flags, "--out", out)
    assert result.exit_code == 1 and "holds no nca-datagen dataset" in result.output, result.output
    assert files(out) == before  # nothing overwritten, no build.json: the folder never counts as ours
    again = cli("build", *TINY, "--compression", "none", "--overwrite", "--out", out)
    assert again.exit_code == 1 and files(out) == before


def test_foreign_another_recipes_shards_are_not_adopted(dataset):
    """Split folders copied without their manifest (or a lost build.json): a build of another seed must not
    claim them as its own."""
    for path in dataset.iterdir():
        if path.name not in ("train", "val"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = files(dataset)
    result = cli("build", *TINY, "--seed", "1", "--out", dataset)
    assert result.exit_code == 1 and "another recipe" in result.output, result.output
    assert files(dataset) == before
    adopted = cli("build", *TINY, "--out", dataset)  # the recipe that made them resumes
    assert adopted.exit_code == 0 and cli("verify", dataset).exit_code == 0


def test_foreign_a_failed_publish_overwrite_keeps_the_published_dataset(built, tmp_path):
    src, dst = tmp_path / "v2", tmp_path / "dst"
    assert cli("publish", built, dst).exit_code == 0
    before = files(dst)
    assert cli("build", *TINY, "--seed", "3", "--out", src).exit_code == 0
    blob = bytearray((src / "train" / "shard-000001.tar.zst").read_bytes())
    blob[len(blob) // 2] ^= 1
    (src / "train" / "shard-000001.tar.zst").write_bytes(bytes(blob))
    result = cli("publish", src, dst, "--overwrite")
    assert result.exit_code == 1, result.output
    assert files(dst) == before and cli("verify", dst).exit_code == 0


# -- wrong data -------------------------------------------------------------------------------------------


LIES = {
    "seq_len": lambda m: m["sequence"].__setitem__("seq_len", 120),
    "tokens_per_frame": lambda m: m["sequence"].__setitem__("tokens_per_frame", 18),
    "vocab": lambda m: m["sequence"].__setitem__("vocab_size", 5),
}


@pytest.mark.parametrize("lie", LIES.values(), ids=LIES)
def test_wrong_data_an_edited_sequence_block_fails_verify_and_the_loader(dataset, lie):
    edit_manifest(dataset, lie)
    assert cli("verify", dataset).exit_code == 1
    from nca_datagen.loader import NCADataset

    with pytest.raises(ValueError):
        NCADataset(str(dataset), split="train")


@pytest.mark.parametrize("victim", ["samples/train.parquet", "README.md", "train/shard-000001.json"])
def test_wrong_data_tables_card_and_records_are_checked(dataset, victim):
    path = dataset / victim
    text = path.read_bytes()
    path.write_bytes(text.replace(b'"rule_id":[', b'"rule_id":[7,', 1) if victim.endswith("json")
                     else text[:-7] + b"edited!")
    result = cli("verify", dataset)
    assert result.exit_code == 1 and victim in result.output, result.output


def test_wrong_data_a_rebuild_repairs_a_damaged_dataset(dataset):
    shutil.rmtree(dataset / "val")
    (dataset / "train" / "shard-000001.tar.zst").write_bytes(b"garbage")
    inspect = cli("inspect", dataset)
    assert "DAMAGED" in inspect.output and "val/shard-000000.tar.zst" in inspect.output, inspect.output
    rebuilt = cli("build", *TINY, "--out", dataset)
    assert rebuilt.exit_code == 0 and "rebuilding 2 shards" in rebuilt.output, rebuilt.output
    assert cli("verify", dataset).exit_code == 0
    again = cli("build", *TINY, "--out", dataset)
    assert again.exit_code == 0 and "nothing to do" in again.output


# -- memory -----------------------------------------------------------------------------------------------


def huge_member_shard(root) -> None:
    """Replace train shard 0 with a zstd tar whose first member's header claims 60 GiB (12 octal digits fill the
    size field), and make the manifest and record agree with the new bytes (an attacker writes all three)."""
    header = bytearray(tarfile.TarInfo("train-000000-000000.json").tobuf(format=tarfile.USTAR_FORMAT))
    header[124:136] = b"%012o" % (60 * 2**30)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    tar = bytes(header) + b"{}" + bytes(510) + bytes(1024)
    blob = zstandard.ZstdCompressor().compress(tar)
    (root / "train" / "shard-000000.tar.zst").write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    edit_manifest(root, lambda m: m["splits"]["train"]["shards"][0].update(sha256=digest, bytes=len(blob)))
    record = json.loads((root / "train" / "shard-000000.json").read_text())
    record.update(sha256=digest, bytes=len(blob))
    (root / "train" / "shard-000000.json").write_text(json.dumps(record))


def test_memory_a_tar_header_claiming_60_gib_is_a_named_shard_error(dataset):
    huge_member_shard(dataset)
    result = cli("verify", dataset)
    assert result.exit_code == 1 and "BAD train/shard-000000.tar.zst" in result.output, result.output
    assert "MemoryError" not in result.output
    from nca_datagen.loader import NCADataset
    from nca_datagen.shards import ShardError

    with pytest.raises(ShardError, match=r"shard-000000\.tar\.zst"):
        list(NCADataset(str(dataset), split="train", shuffle=False))
    with pytest.warns(UserWarning, match="skipping bad shard"):
        kept = list(NCADataset(str(dataset), split="train", shuffle=False, skip_bad_shards=True))
    assert len(kept) == 4  # shard 1's samples


def test_memory_a_shard_larger_than_its_manifest_says_is_not_read_whole(dataset):
    import tracemalloc

    shard = dataset / "train" / "shard-000000.tar.zst"
    shard.write_bytes(shard.read_bytes() + bytes(50 * 2**20))  # 50 MiB more than the manifest's ~1.5 KiB
    tracemalloc.start()
    result = cli("verify", dataset)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.exit_code == 1 and "truncated or replaced" in result.output, result.output
    assert peak < 10 * 2**20, f"verify held {peak / 2**20:.0f} MiB"


# -- messages ---------------------------------------------------------------------------------------------


def test_an_empty_out_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("build", *TINY, "--out", "")
    assert result.exit_code == 2 and "--out" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags", [(), ("--overwrite",)], ids=["rerun", "overwrite"])
def test_a_killed_writes_temporary_files_do_not_outlive_a_rerun(dataset, flags):
    """A SIGKILL inside an atomic write leaves NAME.tmp-PID-XXXXXXXX; whichever way the build is rerun, the
    finished dataset keeps none of them (someone's own file that merely looks similar stays)."""
    litter = ["manifest.json.tmp-4242-deadbeef", "README.md.tmp-4242-0123abcd", "samples/train.parquet.tmp-1-00000000",
              "train/shard-000000.json.tmp-7-abcdef01"]
    for rel in litter:
        (dataset / rel).write_bytes(b"half written")
    (dataset / "notes.txt.tmp-1-0123abcd").write_bytes(b"mine")
    result = cli("build", *TINY, *flags, "--out", dataset)
    assert result.exit_code == 0, result.output
    assert not [rel for rel in litter if (dataset / rel).exists()]
    assert (dataset / "notes.txt.tmp-1-0123abcd").exists()


def test_verify_after_an_interrupted_publish_says_to_rerun_the_publish(built, tmp_path):
    marker = json.loads(json.dumps({"format": "nca-datagen-build", "recipe": None, "settings": {"publish": "x"},
                                    "config": json.loads((built / "manifest.json").read_text())["config"]}))
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "build.json").write_text(json.dumps(marker))
    result = cli("verify", tmp_path / "dst")
    assert result.exit_code == 1 and "rerun that publish" in result.output, result.output
    assert "build command" not in result.output


@pytest.fixture(scope="module")
def strict_s3():
    """A moto S3 server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0): unknown keys are refused."""
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while socket.socket().connect_ex(("127.0.0.1", port)) and time.monotonic() < deadline:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.kill()


@pytest.mark.parametrize("command", ["verify", "build", "publish"])
def test_wrong_credentials_name_the_url_and_where_the_credentials_came_from(built, strict_s3, monkeypatch, command):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    url = "s3://their-bucket/ds"
    args = {"verify": ["verify", url], "build": ["build", *TINY, "--out", url], "publish": ["publish", built, url]}
    result = cli(*args[command], "--endpoint-url", strict_s3)
    assert result.exit_code == 1, result.output
    assert url in result.output and "AWS_ACCESS_KEY_ID from the environment" in result.output, result.output
    assert strict_s3 in result.output and "Traceback" not in result.output
