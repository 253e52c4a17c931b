"""Manifest: resume-or-refuse on the output folder, a manifest that names exactly the files, written last."""

import dataclasses
import json

import pyarrow.parquet as pq
import pytest
from braceexpand import braceexpand
from shard_fixtures import FAKE, fake_shard, make_dataset

from nca_datagen import storage
from nca_datagen.complexity import ZLIB_VERSION
from nca_datagen.config import NCAConfig
from nca_datagen.manifest import (
    BUILD,
    MANIFEST,
    brace_pattern,
    prepare_output,
    read_manifest,
    remove_stale_shards,
    split_summary,
    write_manifest,
)
from nca_datagen.shards import write_shard


def test_manifest_describes_exactly_the_files(tmp_path):
    m = make_dataset(str(tmp_path), {"train": 3, "val": 1})
    assert (tmp_path / MANIFEST).exists() and not (tmp_path / BUILD).exists()
    for split, n in (("train", 3), ("val", 1)):
        info = m["splits"][split]
        expanded = list(braceexpand(info["pattern"]))
        assert expanded == [s["path"] for s in info["shards"]]
        assert sorted(expanded) == sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / split).glob("*.tar.zst"))
        assert info["samples"] == n * FAKE.samples_per_shard
        assert info["counts"] == {"candidates": 5 * n, "kept": 2 * n, "too_simple": 3 * n, "too_complex": 0}
        assert sum(info["histograms"]["candidates"]["counts"]) == 5 * n
        assert set(info["shards"][0]) == {"path", "samples", "tokens", "bytes", "sha256"}
        table = pq.read_table(tmp_path / info["table"]).to_pylist()
        assert len(table) == info["samples"]
        assert table[0]["key"] == f"{split}-000000-000000" and table[0]["shard"] == f"{split}/shard-000000.tar.zst"
        assert {"rule_id", "sim", "complexity", "probe_complexity"} <= set(table[0])
    assert m["totals"]["samples"] == 4 * FAKE.samples_per_shard
    assert m["config"] == FAKE.to_dict() and m["seeds"]["seed"] == FAKE.seed
    assert m["provenance"]["zlib"] == ZLIB_VERSION and m["provenance"]["device"] == "cpu"
    assert read_manifest(str(tmp_path)) == m == read_manifest(str(tmp_path / MANIFEST))
    assert (tmp_path / "README.md").exists()  # the dataset card


def test_read_manifest_names_the_missing_path(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}/manifest.json does not exist"):
        read_manifest(str(tmp_path))
    prepare_output(str(tmp_path), FAKE)
    with pytest.raises(ValueError, match=r"rerun the same build command"):
        read_manifest(str(tmp_path))
    (tmp_path / MANIFEST).write_text('{"format": "nca-da')  # truncated
    with pytest.raises(ValueError, match=f"{tmp_path}/manifest.json is damaged: not valid JSON"):
        read_manifest(str(tmp_path))
    (tmp_path / MANIFEST).write_text("[]")
    with pytest.raises(ValueError, match="is damaged: JSON list, not an object"):
        read_manifest(str(tmp_path))


def test_prepare_output_resumes_same_config_and_refuses_another(tmp_path):
    out = str(tmp_path / "ds")
    prepare_output(out, FAKE, settings={"compression": "zstd"})
    prepare_output(out, FAKE, settings={"compression": "zstd"})  # a rerun resumes
    other = dataclasses.replace(FAKE, seed=3, nca=NCAConfig(frames=5))
    with pytest.raises(ValueError, match=r"(?s)nca\.frames: 4 -> 5.*seed: 0 -> 3"):
        prepare_output(out, other, settings={"compression": "zstd"})
    with pytest.raises(ValueError, match=r"settings.compression: 'zstd' -> 'none'"):
        prepare_output(out, FAKE, settings={"compression": "none"})
    prepare_output(out, other, overwrite=True)
    assert json.loads((tmp_path / "ds" / BUILD).read_text())["config"] == other.to_dict()


def test_finished_dataset_is_not_overwritten_by_accident(tmp_path):
    make_dataset(str(tmp_path), {"train": 2})
    with pytest.raises(ValueError, match=r"already holds a finished dataset.*--overwrite"):
        prepare_output(str(tmp_path), FAKE)
    (tmp_path / "notes.txt").write_text("mine")
    prepare_output(str(tmp_path), FAKE, overwrite=True)
    assert not (tmp_path / MANIFEST).exists() and not (tmp_path / "train").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only our files are deleted


def test_a_folder_with_other_files_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "README.md").write_text("my notes")  # a dataset card would replace it
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"is not empty \(README.md\) and holds no nca-datagen dataset"):
            prepare_output(str(tmp_path), FAKE, overwrite=overwrite)
    assert (tmp_path / "README.md").read_text() == "my notes" and not (tmp_path / BUILD).exists()
    (tmp_path / "README.md").unlink()
    (tmp_path / "_logs").mkdir()  # logs of an abandoned build, and the folders a build writes, do not count
    (tmp_path / "train").mkdir()
    prepare_output(str(tmp_path), FAKE)


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"cannot write to .*check a writable output folder"):
        prepare_output(str(blocker / "ds"), FAKE)


def test_write_manifest_refuses_a_shard_that_is_missing_or_the_wrong_size(tmp_path):
    out = str(tmp_path)
    recs = [write_shard(fake_shard("train", i), out) for i in range(2)]
    (tmp_path / recs[1]["path"]).write_bytes(b"short")
    with pytest.raises(ValueError, match=r"shard-000001.tar.zst: 5 bytes, its record says"):
        write_manifest(out, FAKE, {"train": recs}, {}, figures=False)
    (tmp_path / recs[0]["path"]).unlink()
    with pytest.raises(ValueError, match=r"shard-000000.tar.zst: missing, its record says"):
        write_manifest(out, FAKE, {"train": recs}, {}, figures=False)
    assert not (tmp_path / MANIFEST).exists()


def test_write_manifest_refuses_gaps_and_drops_stale_shards(tmp_path):
    out = str(tmp_path)
    recs = [write_shard(fake_shard("train", i), out) for i in range(3)]
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        write_manifest(out, FAKE, {"train": [recs[0], recs[2]]}, {}, figures=False)
    m = write_manifest(out, FAKE, {"train": recs[:2]}, {}, figures=False)  # a smaller rebuild: shard 2 is stale
    assert list(braceexpand(m["splits"]["train"]["pattern"])) == [p.name and f"train/{p.name}" for p in
                                                                   sorted((tmp_path / "train").glob("*.tar.zst"))]
    assert not (tmp_path / "train" / "shard-000002.json").exists()


def _write(folder, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


THEIRS = {  # folders another tool made: nothing in them was written by nca-datagen
    "webdataset": {f"train/shard-00000{i}.tar": f"data {i}" for i in range(4)} | {"train/labels.csv": "x"},
    "shard-without-record": {"val/shard-000000.tar.zst": "no record says it is ours"},
    "samples-table": {"samples/train.parquet": "their table"},
    "their-manifest": {"manifest.json": '{"name": "theirs"}', "train/shard-000000.tar": "data"},
    "their-build-json": {"build.json": '{"target": "x"}'},
    "their-logs": {"_logs/run.log": "x"},
}


@pytest.mark.parametrize("files", THEIRS.values(), ids=THEIRS)
def test_someone_elses_folder_is_refused_even_with_overwrite_and_left_as_it_was(tmp_path, files):
    _write(tmp_path, files)
    before = _files(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"is not empty \(.*\) and holds no nca-datagen dataset") as refused:
            prepare_output(str(tmp_path), FAKE, overwrite=overwrite)
        assert sorted(files)[0] in str(refused.value) and "--overwrite replaces only" in str(refused.value)
    assert _files(tmp_path) == before


def test_records_and_their_shards_are_ours_without_a_build_marker(tmp_path):
    """Shards written through the library before `prepare_output` (each with its record) are a build's; a shard
    file with no record beside it is not."""
    write_shard(fake_shard("train", 0), str(tmp_path))
    _write(tmp_path, {"train/shard-000001.tar": "a webdataset shard", "_logs/build-1.jsonl": "{}"})
    with pytest.raises(ValueError, match=r"is not empty \(train/shard-000001.tar\)"):
        prepare_output(str(tmp_path), FAKE)
    (tmp_path / "train" / "shard-000001.tar").unlink()
    prepare_output(str(tmp_path), FAKE)


def test_overwrite_and_a_smaller_rebuild_delete_only_our_files(tmp_path):
    out = str(tmp_path)
    recs = [write_shard(fake_shard("train", i), out) for i in range(3)]
    theirs = {"train/notes.txt": "mine", "train/shard-000009.txt": "mine too", "samples/mine.csv": "x",
              "notes.txt": "mine", "_logs/run.log": "x"}
    _write(tmp_path, theirs)
    write_manifest(out, FAKE, {"train": recs[:2]}, {}, figures=False)  # shard 2 is stale, shard-000009.txt not
    assert not (tmp_path / "train" / "shard-000002.tar.zst").exists()
    assert (tmp_path / "train" / "shard-000009.txt").exists()
    prepare_output(out, FAKE, overwrite=True)
    assert _files(tmp_path) == {BUILD: (tmp_path / BUILD).read_bytes(), **{k: v.encode() for k, v in theirs.items()}}


def test_an_interrupted_overwrite_leaves_a_folder_that_overwrite_can_finish(tmp_path, monkeypatch):
    """Between deleting the old dataset's manifest and its other files the folder is still ours (a marker says
    what is going on): a rerun with --overwrite finishes the job; one without is refused, not resumed."""
    out = str(tmp_path)
    make_dataset(out, {"train": 2})
    deletions = []

    def interrupted(real):
        def delete(*args):
            deletions.append(args)
            if len(deletions) == 2:
                raise KeyboardInterrupt
            return real(*args)
        return delete

    monkeypatch.setattr(storage, "remove", interrupted(storage.remove))
    monkeypatch.setattr(storage, "remove_files", interrupted(storage.remove_files))
    with pytest.raises(KeyboardInterrupt):
        prepare_output(out, FAKE, overwrite=True)
    monkeypatch.undo()
    assert not (tmp_path / MANIFEST).exists() and (tmp_path / "train" / "shard-000000.json").exists()
    with pytest.raises(ValueError, match=r"an --overwrite was interrupted .* pass --overwrite again to finish"):
        prepare_output(out, FAKE)
    prepare_output(out, FAKE, overwrite=True)
    assert _files(tmp_path) == {BUILD: (tmp_path / BUILD).read_bytes()}


def test_brace_pattern_names_exactly_the_shards():
    assert brace_pattern("train", 2, "zstd") == "train/shard-{000000..000001}.tar.zst"
    assert list(braceexpand(brace_pattern("val", 1, "none"))) == ["val/shard-000000.tar"]
    assert brace_pattern("val", 0, "zstd") is None  # no brace pattern expands to nothing
    assert split_summary("val", [], "samples/val.parquet")["pattern"] is None


def test_a_killed_writes_temporary_files_do_not_outlive_the_build(tmp_path):
    """A SIGKILL inside `storage.write_atomic` leaves NAME.tmp-PID-XXXXXXXX; the finished dataset must not keep
    it, whatever the shard's index (a rerun rewrites the shard under a new temporary name)."""
    from fsspec.implementations.local import LocalFileSystem

    folder = tmp_path / "train"
    folder.mkdir()
    names = ["shard-000000.tar.zst", "shard-000000.json", "shard-000000.tar.zst.tmp-99999-deadbeef",
             "shard-000000.json.tmp-4242-0123abcd", "notes.txt.tmp-1-0123abcd", "shard-000003.tar.zst"]
    for name in names:
        (folder / name).write_bytes(b"x")
    remove_stale_shards(LocalFileSystem(), str(tmp_path), "train", 1)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt.tmp-1-0123abcd", "shard-000000.json",
                                                        "shard-000000.tar.zst"]
