"""Ownership of an output folder: proven by content, resume-or-refuse, deleting only our own files."""

import dataclasses
import json

import pytest
from shard_fixtures import FAKE, fake_shard, make_dataset, write_fake

from nca_datagen import storage
from nca_datagen.config import NCAConfig
from nca_datagen.manifest import BUILD, MANIFEST
from nca_datagen.ownership import check_output, prepare_output, remove_stale_files
from nca_datagen.pipelines.finish import finish_dataset


def test_prepare_output_resumes_same_config_and_refuses_another(tmp_path):
    out = str(tmp_path / "ds")
    prepare_output(out, FAKE, "zstd")
    prepare_output(out, FAKE, "zstd")  # a rerun resumes
    other = dataclasses.replace(FAKE, seed=3, nca=NCAConfig(frames=5))
    with pytest.raises(ValueError, match=r"(?s)nca\.frames: 4 -> 5.*seed: 0 -> 3"):
        prepare_output(out, other, "zstd")
    with pytest.raises(ValueError, match=r"settings.compression: 'zstd' -> 'none'"):
        prepare_output(out, FAKE, "none")
    prepare_output(out, other, "zstd", overwrite=True)
    assert json.loads((tmp_path / "ds" / BUILD).read_text())["config"] == other.to_dict()


def test_finished_dataset_is_not_overwritten_by_accident(tmp_path):
    """Another recipe's dataset is refused; this recipe's may grow (and be repaired), never shrink, without
    --overwrite."""
    make_dataset(str(tmp_path), {"train": 2})
    other = dataclasses.replace(FAKE, seed=1)
    with pytest.raises(ValueError, match=r"already holds a finished dataset of another recipe.*--overwrite"):
        prepare_output(str(tmp_path), other, "zstd")
    with pytest.raises(ValueError, match=r"already holds a finished dataset of another recipe"):
        prepare_output(str(tmp_path), FAKE, "none")  # other bytes: compression is part of the recipe
    with pytest.raises(ValueError, match=r"with 2 train shards, more than this build plans \(1\)"):
        check_output(str(tmp_path), FAKE, "zstd", planned={"train": 1})
    check_output(str(tmp_path), FAKE, "zstd", planned={"train": 3})
    (tmp_path / "notes.txt").write_text("mine")
    prepare_output(str(tmp_path), FAKE, "zstd", overwrite=True)
    assert not (tmp_path / MANIFEST).exists() and not (tmp_path / "train").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only our files are deleted


def test_a_folder_with_other_files_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "README.md").write_text("my notes")  # a dataset card would replace it
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"is not empty \(README.md\) and holds no nca-datagen dataset"):
            prepare_output(str(tmp_path), FAKE, "zstd", overwrite=overwrite)
    assert (tmp_path / "README.md").read_text() == "my notes" and not (tmp_path / BUILD).exists()
    (tmp_path / "README.md").unlink()
    (tmp_path / "_logs").mkdir()  # logs of an abandoned build, and the folders a build writes, do not count
    (tmp_path / "train").mkdir()
    prepare_output(str(tmp_path), FAKE, "zstd")


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"cannot write to .*check a writable output folder"):
        prepare_output(str(blocker / "ds"), FAKE, "zstd")


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
            prepare_output(str(tmp_path), FAKE, "zstd", overwrite=overwrite)
        assert sorted(files)[0] in str(refused.value) and "--overwrite replaces only" in str(refused.value)
    assert _files(tmp_path) == before


def test_records_and_their_shards_are_ours_without_a_build_marker(tmp_path):
    """Shards written through the library before `prepare_output` (each with its record) are a build's; a shard
    file with no record beside it is not."""
    write_fake(fake_shard("train", 0), str(tmp_path))
    _write(tmp_path, {"train/shard-000001.tar": "a webdataset shard", "_logs/build-1.jsonl": "{}"})
    with pytest.raises(ValueError, match=r"is not empty \(train/shard-000001.tar\)"):
        prepare_output(str(tmp_path), FAKE, "zstd")
    (tmp_path / "train" / "shard-000001.tar").unlink()
    prepare_output(str(tmp_path), FAKE, "zstd")


def test_overwrite_and_a_smaller_rebuild_delete_only_our_files(tmp_path):
    out = str(tmp_path)
    recs = [write_fake(fake_shard("train", i), out) for i in range(3)]
    theirs = {"train/notes.txt": "mine", "train/shard-000009.txt": "mine too", "samples/mine.csv": "x",
              "notes.txt": "mine", "_logs/run.log": "x"}
    _write(tmp_path, theirs)
    finish_dataset(out, FAKE, {"train": recs[:2]}, {}, figures=False)  # shard 2 is stale, shard-000009.txt not
    assert not (tmp_path / "train" / "shard-000002.tar.zst").exists()
    assert (tmp_path / "train" / "shard-000009.txt").exists()
    prepare_output(out, FAKE, "zstd", overwrite=True)
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
        prepare_output(out, FAKE, "zstd", overwrite=True)
    monkeypatch.undo()
    assert not (tmp_path / MANIFEST).exists() and (tmp_path / "train" / "shard-000000.json").exists()
    with pytest.raises(ValueError, match=r"an --overwrite was interrupted .* pass --overwrite again to finish"):
        prepare_output(out, FAKE, "zstd")
    prepare_output(out, FAKE, "zstd", overwrite=True)
    assert _files(tmp_path) == {BUILD: (tmp_path / BUILD).read_bytes()}


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
    remove_stale_files(LocalFileSystem(), str(tmp_path), {"train": 1})
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt.tmp-1-0123abcd", "shard-000000.json",
                                                        "shard-000000.tar.zst"]


def _ours_but(**changes) -> str:
    """A shard record of ours for train shard 0, with `changes`: what another tool's sidecar might look like."""
    from nca_datagen.shards import shard_record

    record = shard_record(fake_shard("train", 0), b"data", "none", None, recipe="0" * 16)
    record.update(changes)
    return json.dumps({k: v for k, v in record.items() if v is not None})


SIDECARS = {  # another tool's shard-000000.json beside its shard-000000.tar: none of them proves the folder ours
    "webdataset-meta": '{"url": "http://x", "n": 3}',
    "json-list": "[1, 2, 3]",
    "not-json": "shard 0, written by my tool",
    "our-fields-no-recipe": _ours_but(recipe=None),
    "foreign-path": _ours_but(path="../../etc/shard-000000.tar"),
    "other-index": _ours_but(index=7),
    "bad-digest": _ours_but(sha256="not-a-digest"),
}


@pytest.mark.parametrize("sidecar", SIDECARS.values(), ids=SIDECARS)
def test_a_webdataset_folder_with_sidecars_named_like_our_records_is_refused(tmp_path, sidecar):
    """Ownership is proven by a record's content, never by the names shard-000000.tar and shard-000000.json."""
    _write(tmp_path, {"train/shard-000000.tar": "data", "train/shard-000000.json": sidecar})
    before = _files(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"is not empty \(train/shard-000000.json, train/shard-000000.tar\)"):
            prepare_output(str(tmp_path), FAKE, "none", overwrite=overwrite)
    assert _files(tmp_path) == before  # no marker, nothing deleted


def test_shards_of_another_recipe_are_not_adopted(tmp_path):
    """Split folders copied without their manifest or marker: this recipe's records resume, another's (a seed
    1 build over seed-0 shards) are refused, and --overwrite replaces them."""
    for i in range(2):
        write_fake(fake_shard("train", i), str(tmp_path))
    other = dataclasses.replace(FAKE, seed=1)
    with pytest.raises(ValueError, match=r"holds shards of another recipe .* pass --overwrite"):
        prepare_output(str(tmp_path), other, "zstd")
    assert not (tmp_path / BUILD).exists()
    prepare_output(str(tmp_path), FAKE, "zstd")  # the recipe that wrote them resumes
    prepare_output(str(tmp_path), other, "zstd", overwrite=True)
    assert sorted(_files(tmp_path)) == [BUILD]
