"""Manifest: a manifest that names exactly the files, written last, and read as untrusted input."""

import json

import pyarrow.parquet as pq
import pytest
from braceexpand import braceexpand
from shard_fixtures import FAKE, fake_shard, make_dataset, write_fake

from nca_datagen.complexity import ZLIB_VERSION
from nca_datagen.config import RECIPE_VERSION, recipe_fingerprint
from nca_datagen.manifest import (
    BUILD,
    MANIFEST,
    brace_pattern,
    read_manifest,
    split_summary,
)
from nca_datagen.ownership import prepare_output
from nca_datagen.pipelines.finish import finish_dataset


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
    assert m["recipe"] == {"version": RECIPE_VERSION, "fingerprint": recipe_fingerprint(FAKE, "zstd")}
    assert sorted(m["files"]) == ["samples/train.parquet", "samples/val.parquet"] and sorted(m["card"]) == ["README.md"]
    assert m["card"]["README.md"]["bytes"] == (tmp_path / "README.md").stat().st_size


def test_read_manifest_names_the_missing_path(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}/manifest.json does not exist"):
        read_manifest(str(tmp_path))
    prepare_output(str(tmp_path), FAKE, "zstd")
    with pytest.raises(ValueError, match=r"rerun the same build command"):
        read_manifest(str(tmp_path))
    (tmp_path / MANIFEST).write_text('{"format": "nca-da')  # truncated
    with pytest.raises(ValueError, match=f"{tmp_path}/manifest.json is damaged: not valid JSON"):
        read_manifest(str(tmp_path))
    (tmp_path / MANIFEST).write_text("[]")
    with pytest.raises(ValueError, match="is damaged: JSON list, not an object"):
        read_manifest(str(tmp_path))


def test_write_manifest_refuses_a_shard_that_is_missing_or_the_wrong_size(tmp_path):
    out = str(tmp_path)
    recs = [write_fake(fake_shard("train", i), out) for i in range(2)]
    (tmp_path / recs[1]["path"]).write_bytes(b"short")
    with pytest.raises(ValueError, match=r"shard-000001.tar.zst: 5 bytes, its record says"):
        finish_dataset(out, FAKE, {"train": recs}, {}, figures=False)
    (tmp_path / recs[0]["path"]).unlink()
    with pytest.raises(ValueError, match=r"shard-000000.tar.zst: missing, its record says"):
        finish_dataset(out, FAKE, {"train": recs}, {}, figures=False)
    assert not (tmp_path / MANIFEST).exists()


def test_write_manifest_refuses_gaps_and_drops_stale_shards(tmp_path):
    out = str(tmp_path)
    recs = [write_fake(fake_shard("train", i), out) for i in range(3)]
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        finish_dataset(out, FAKE, {"train": [recs[0], recs[2]]}, {}, figures=False)
    m = finish_dataset(out, FAKE, {"train": recs[:2]}, {}, figures=False)  # a smaller rebuild: shard 2 is stale
    assert list(braceexpand(m["splits"]["train"]["pattern"])) == [p.name and f"train/{p.name}" for p in
                                                                   sorted((tmp_path / "train").glob("*.tar.zst"))]
    assert not (tmp_path / "train" / "shard-000002.json").exists()


def test_brace_pattern_names_exactly_the_shards():
    assert brace_pattern("train", 2, "zstd") == "train/shard-{000000..000001}.tar.zst"
    assert list(braceexpand(brace_pattern("val", 1, "none"))) == ["val/shard-000000.tar"]
    assert brace_pattern("val", 0, "zstd") is None  # no brace pattern expands to nothing
    assert split_summary("val", [], "samples/val.parquet")["pattern"] is None




def _edited(tmp_path, edit) -> str:
    """A finished dataset whose manifest `edit` changed (as an attacker's bucket would serve it)."""
    make_dataset(str(tmp_path), {"train": 2, "val": 1})
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    edit(manifest)
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    return str(tmp_path)


def _shard(split, i, key, value):
    def edit(m):
        m["splits"][split]["shards"][i][key] = value
    return edit


UNSAFE = {  # each edit makes a reader go outside the dataset, trust a wrong layout, or hold unbounded memory
    "dotdot": (_shard("train", 0, "path", "../../evil/shard-000000.tar.zst"), "is not 'train/shard-000000.tar.zst'"),
    "absolute": (_shard("train", 1, "path", "/etc/passwd"), "is not 'train/shard-000001.tar.zst'"),
    "other-split-folder": (_shard("train", 1, "path", "val/shard-000000.tar.zst"), "is not 'train/shard-000001"),
    "renumbered": (_shard("val", 0, "path", "val/shard-000007.tar.zst"), "is not 'val/shard-000000.tar.zst'"),
    "unknown-split": (lambda m: m["splits"].__setitem__("../x", m["splits"].pop("val")), "split '../x' is not one"),
    "compression": (lambda m: m["splits"]["train"].__setitem__("compression", "/../"), "compression '/../' is not"),
    "table": (lambda m: m["splits"]["train"].__setitem__("table", "../t.parquet"), "table '../t.parquet' is not"),
    "files": (lambda m: m["files"].__setitem__("../../x", {"bytes": 1, "sha256": "0" * 64}), "files names '../../x'"),
    "card": (lambda m: m["card"].__setitem__("train/x.tar", {"bytes": 1, "sha256": "0" * 64}), "card names 'train/x"),
    "huge-shard": (_shard("train", 0, "bytes", 60 * 2**30), "bytes 64424509440 is more than 4 samples can take"),
    "seq_len": (lambda m: m["sequence"].__setitem__("seq_len", 986), "sequence {"),
    "tokens_per_frame": (lambda m: m["sequence"].__setitem__("tokens_per_frame", 18), "sequence {"),
    "samples": (_shard("train", 0, "samples", 10**9), "samples / tokens 1000000000"),
    "sha256": (_shard("train", 0, "sha256", "x" * 64), "is not a sha256 digest"),
    "config": (lambda m: m["config"]["nca"].__setitem__("patch", "2"), "config is not a recipe"),
    "recipe": (lambda m: m["config"].__setitem__("seed", 5), "recipe.fingerprint is not its config's"),
}


@pytest.mark.parametrize("edit, message", UNSAFE.values(), ids=UNSAFE)
def test_a_manifest_naming_anything_but_its_own_files_is_refused_when_read(tmp_path, edit, message):
    url = _edited(tmp_path, edit)
    with pytest.raises(ValueError, match="is damaged or not safe to read") as refused:
        read_manifest(url)
    assert message in str(refused.value)


def test_a_manifest_larger_than_any_we_write_is_refused_unread(tmp_path, monkeypatch):
    import nca_datagen.manifest as manifest_mod

    make_dataset(str(tmp_path), {"train": 1})
    monkeypatch.setattr(manifest_mod, "MAX_MANIFEST_BYTES", 100)  # 256 MiB in earnest
    with pytest.raises(ValueError, match="more than 100 bytes"):
        read_manifest(str(tmp_path))


def test_a_version_1_manifest_is_still_read(tmp_path):
    def version_1(m):
        for key in ("recipe", "files", "card"):
            m.pop(key)
        m["format_version"] = 1

    url = _edited(tmp_path, version_1)
    assert read_manifest(url)["format_version"] == 1
