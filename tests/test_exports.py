"""Exports (`nca_datagen.exports`), each read back by its own library, tokens and metadata compared with the source
read through our readers; `verify_export` and `regenerate_export` on good, damaged and tampered exports; what an
export refuses (a source that does not verify, someone else's folder, a manifest naming `..`).

Readers: pyarrow and Hugging Face `datasets` (test extras) for parquet; megatron-core (test extras) for megatron;
mosaicml-streaming for mds, which needs torchvision at import, so its tests run where `nca-datagen[mds]` is
installed and skip elsewhere, saying why.
"""

import hashlib
import importlib
import json
import shutil
import struct
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from nca_datagen.cli import main
from nca_datagen.exports import export_dataset, is_export, read_export_manifest, regenerate_export, verify_export
from nca_datagen.exports import megatron as megatron_format
from nca_datagen.exports import parquet as parquet_format
from nca_datagen.loader import iter_sequences
from nca_datagen.manifest import read_manifest
from nca_datagen.shards import iter_shard_samples

# 152-token sequences (4 frames x 38), 2 rules x 2 sims per shard: train 2 shards, val 1 shard
TINY = ["--frames", "4", "--samples-per-shard", "4", "--sims-per-rule", "2", "--tokens", "1216", "--val-tokens", "608"]


def quiet(_line):
    pass


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A real dataset, built through the CLI; tests copy it before damaging it."""
    out = tmp_path_factory.mktemp("exports") / "nca"
    result = CliRunner().invoke(main, ["build", *TINY, "--executor", "inline", "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def expected(source):
    """Per split, what the source holds: tokens (N, L) uint16 and each sample's metadata, by our readers."""
    manifest = read_manifest(source)
    found = {}
    for split, info in manifest["splits"].items():
        metas = [meta for shard in info["shards"] for _, _, meta in iter_shard_samples(
            str(source / shard["path"]), expected_sha256=shard["sha256"], expected_bytes=shard["bytes"])]
        found[split] = (np.stack(list(iter_sequences(source, split))), metas)
    return found


@pytest.fixture(scope="module")
def parquet_export(source, tmp_path_factory):
    dst = tmp_path_factory.mktemp("exports") / "nca-parquet"
    export_dataset(str(source), str(dst), "parquet", echo=quiet)
    return dst


def library(name: str, extra: str):
    """The reader library, or a skip naming the extra that installs it."""
    try:
        with warnings.catch_warnings():  # megatron-core warns at import about optional Apex / Transformer Engine
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except ImportError as exc:  # streaming also fails importing torchvision where none matches this torch
        pytest.skip(f"{name} is not importable ({exc}): pip install 'nca-datagen[{extra}]' runs this test")


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def rewrite(export, rel: str, data: bytes) -> None:
    """Replace the export's file `rel` and make its manifest agree (sizes, sha256, sums): a consistent forgery."""
    (export / rel).write_bytes(data)
    manifest = json.loads((export / "manifest.json").read_bytes())
    for info in manifest["splits"].values():
        for f in info["files"] + [f for unit in info["shards"] for f in unit["files"]]:
            if f["path"] == rel:
                f.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        info["bytes"] = sum(f["bytes"] for f in info["files"] + [f for u in info["shards"] for f in u["files"]])
    manifest["totals"]["bytes"] = sum(info["bytes"] for info in manifest["splits"].values())
    (export / "manifest.json").write_text(json.dumps(manifest))


# -- parquet -----------------------------------------------------------------------------------------------


def test_parquet_reads_back_with_pyarrow_and_datasets(parquet_export, expected, tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    from datasets import load_dataset

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    by_card = load_dataset(str(parquet_export))  # the card's front matter `configs` name the files
    assert sorted(by_card) == sorted(expected)
    for split, (tokens_NL, metas) in expected.items():
        table = pq.read_table(sorted((parquet_export / split).glob("*.parquet")))
        assert str(table.schema.field("tokens").type) == f"fixed_size_list<element: uint16>[{tokens_NL.shape[1]}]"
        got = table.column("tokens").combine_chunks().flatten().to_numpy().reshape(tokens_NL.shape)
        np.testing.assert_array_equal(got, tokens_NL)
        assert table.drop_columns(["tokens"]).to_pylist() == [{k: meta[k] for k in table.column_names
                                                               if k != "tokens"} for meta in metas]
        assert table.column_names[:-1] == sorted(metas[0], key=list(table.column_names).index)
        for ds in (by_card[split], load_dataset("parquet", data_files=str(parquet_export / split / "*.parquet"),
                                                split="train")):
            assert ds.features["tokens"].length == tokens_NL.shape[1]
            np.testing.assert_array_equal(np.array(ds["tokens"], dtype=np.uint16), tokens_NL)
            assert ds["rule_id"] == [meta["rule_id"] for meta in metas]


def test_parquet_writer_is_deterministic_and_sizes_row_groups(source, parquet_export, tmp_path):
    import pyarrow.parquet as pq

    again = tmp_path / "again"
    export_dataset(str(source), str(again), "parquet", echo=quiet)
    files = sorted(p.relative_to(parquet_export) for p in parquet_export.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((parquet_export / f).read_bytes() == (again / f).read_bytes() for f in files)
    manifest = read_export_manifest(str(parquet_export))
    sequence = manifest["sequence"]
    assert manifest["settings"]["row_group_rows"] == 2**19 // 152  # 1 MiB of tokens: one group for 4 rows
    assert pq.ParquetFile(parquet_export / "train/shard-000000.parquet").metadata.num_row_groups == 1
    from nca_datagen.exports.samples import read_unit
    from nca_datagen.storage import filesystem

    shard = read_manifest(source)["splits"]["train"]["shards"][0]
    unit = read_unit(filesystem(str(source))[0], str(source), "train", 0, shard, sequence["seq_len"])
    small = {**parquet_format.settings(sequence), "row_group_rows": 3}
    (data,) = parquet_format.write_unit(unit, sequence, small).values()
    (tmp_path / "small.parquet").write_bytes(data)
    assert [pq.ParquetFile(tmp_path / "small.parquet").metadata.row_group(i).num_rows for i in range(2)] == [3, 1]


def test_parquet_tokens_take_the_narrowest_type(tmp_path):
    """2 states with 2x2 patches: 18 token ids, so uint8 items (the shards hold uint16)."""
    import pyarrow.parquet as pq

    from nca_datagen.exports.samples import COLUMNS, Unit

    sequence = {"seq_len": 6, "vocab_size": 18}
    tokens_NL = np.array([[16, 0, 15, 3, 9, 17], [16, 1, 2, 14, 8, 17]], np.uint16)
    columns = {name: (["k0", "k1"] if kind == "string" else [0, 1] if kind.startswith("int") else [0.5, None])
               for name, kind in COLUMNS.items()}
    files = parquet_format.write_unit(Unit("train", 0, tokens_NL, columns), sequence, parquet_format.settings(sequence))
    (tmp_path / "s.parquet").write_bytes(files["train/shard-000000.parquet"])
    table = pq.read_table(tmp_path / "s.parquet")
    assert str(table.schema.field("tokens").type) == "fixed_size_list<element: uint8>[6]"
    np.testing.assert_array_equal(table.column("tokens").combine_chunks().flatten().to_numpy().reshape(2, 6), tokens_NL)
    assert table.column("complexity").to_pylist() == [0.5, None]


# -- megatron ----------------------------------------------------------------------------------------------


def test_megatron_reads_back_with_megatron_core(source, expected, tmp_path):
    indexed = library("megatron.core.datasets.indexed_dataset", "megatron")
    dst = tmp_path / "nca-megatron"
    manifest = export_dataset(str(source), str(dst), "megatron", echo=quiet)
    assert verify_export(str(dst), echo=quiet) == []
    for split, (tokens_NL, _) in expected.items():
        got = []
        for unit in manifest["splits"][split]["shards"]:
            prefix = str(dst / unit["files"][0]["path"]).removesuffix(".bin")
            ds = indexed.IndexedDataset(prefix)
            assert len(ds) == unit["samples"] and ds.index.dtype == np.uint16
            np.testing.assert_array_equal(ds.document_indices, np.arange(unit["samples"] + 1))  # one per sequence
            got += [np.array(ds[i]) for i in range(len(ds))]  # copies: ds closes its mmap when it goes
        np.testing.assert_array_equal(np.stack(got), tokens_NL)


def test_megatron_files_are_what_megatron_cores_own_writer_writes(expected, tmp_path):
    """Our numpy writer against megatron-core's `IndexedDatasetBuilder` on the same sequences: the same bytes."""
    indexed = library("megatron.core.datasets.indexed_dataset", "megatron")
    tokens_NL = expected["train"][0]
    builder = indexed.IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=np.uint16)
    for row in tokens_NL:
        builder.add_document(row, [len(row)])
    builder.finalize(str(tmp_path / "ref.idx"))
    from nca_datagen.exports.samples import Unit

    ours = megatron_format.write_unit(Unit("train", 0, tokens_NL, {}), {"seq_len": tokens_NL.shape[1]}, {})
    assert ours["train/shard-000000.bin"] == (tmp_path / "ref.bin").read_bytes()
    assert ours["train/shard-000000.idx"] == (tmp_path / "ref.idx").read_bytes()
    n = len(tokens_NL)
    assert len(ours["train/shard-000000.idx"]) == 42 + 20 * n  # the docstring's table
    assert struct.unpack("<9sQBQQ", ours["train/shard-000000.idx"][:34]) == (b"MMIDIDX\0\0", 1, 8, n, n + 1)


# -- mds ---------------------------------------------------------------------------------------------------


def test_mds_reads_back_with_streaming(source, expected, tmp_path):
    streaming = library("streaming", "mds")
    from streaming.base.util import merge_index

    dst = tmp_path / "nca-mds"
    export_dataset(str(source), str(dst), "mds", echo=quiet)
    for split, (tokens_NL, metas) in expected.items():
        ds = streaming.StreamingDataset(local=str(dst / split), shuffle=False, batch_size=1)
        samples = [ds[i] for i in range(ds.num_samples)]
        np.testing.assert_array_equal(np.stack([s["tokens"] for s in samples]), tokens_NL)
        assert [{k: v for k, v in s.items() if k != "tokens"} for s in samples] == \
            [{k: (np.nan if v is None else v) for k, v in meta.items()} for meta in metas]
        joined = tmp_path / f"joined-{split}"
        shutil.copytree(dst / split, joined)
        (joined / "index.json").unlink()
        merge_index([str(p) for p in sorted(joined.glob("shard-*/index.json"))], str(joined))
        assert json.loads((joined / "index.json").read_bytes()) == json.loads((dst / split / "index.json").read_bytes())
    assert verify_export(str(dst), echo=quiet) == []  # reading left the export as it was
    assert regenerate_export(str(dst), 3, echo=quiet) == []
    index = json.loads((dst / "train/index.json").read_bytes())
    index["shards"].reverse()  # a joined index that is not its units': caught even when the manifest agrees
    rewrite(dst, "train/index.json", json.dumps(index, sort_keys=True).encode())
    assert [p.split(": ")[1] for p in verify_export(str(dst), echo=quiet)] == ["not what the split's unit files make"]


def test_mds_without_streaming_says_which_extra(source, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "streaming", None)  # `import streaming` raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'nca-datagen\[mds\]'"):
        export_dataset(str(source), str(tmp_path / "mds"), "mds", echo=quiet)
    assert not (tmp_path / "mds").exists()  # refused before anything was written


# -- verify, regenerate ------------------------------------------------------------------------------------


def test_verify_export_passes_then_names_damaged_missing_and_unlisted_files(parquet_export, tmp_path):
    assert verify_export(str(parquet_export), echo=quiet) == []
    dst = copy(parquet_export, tmp_path / "damaged")
    shard = dst / "train/shard-000001.parquet"
    data = bytearray(shard.read_bytes())
    data[100] ^= 1
    shard.write_bytes(bytes(data))
    (dst / "val/shard-000000.parquet").unlink()
    (dst / "train/extra.parquet").write_bytes(b"PAR1")
    problems = verify_export(str(dst), echo=quiet)
    assert len(problems) == 3, problems
    assert "train/shard-000001.parquet: size or sha256 differs" in problems[0]
    assert "val/shard-000000.parquet: missing" in problems[1]
    assert "train/extra.parquet: not part of the export" in problems[2]


def test_verify_export_reads_each_unit_as_its_format_says(source, parquet_export, tmp_path):
    """Forged files whose manifest entries agree (size, sha256) still fail: rows, header and sizes are read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dst = copy(parquet_export, tmp_path / "rows")
    sink = pa.BufferOutputStream()
    pq.write_table(pq.read_table(dst / "val/shard-000000.parquet").slice(0, 3), sink)
    rewrite(dst, "val/shard-000000.parquet", sink.getvalue().to_pybytes())
    assert [p.split(": ", 1)[1] for p in verify_export(str(dst), echo=quiet)] == ["3 rows, the manifest says 4"]
    dst = tmp_path / "megatron"
    export_dataset(str(source), str(dst), "megatron", echo=quiet)
    rewrite(dst, "val/shard-000000.bin", (dst / "val/shard-000000.bin").read_bytes()[:-2])
    (problem,) = verify_export(str(dst), echo=quiet)
    assert problem == f"{dst}/val/shard-000000.bin: 1214 bytes, 4 sequences of 152 uint16 tokens take 1216"


def test_regenerate_export_passes_then_catches_a_tampered_file(parquet_export, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert regenerate_export(str(parquet_export), 3, echo=quiet) == []
    dst = copy(parquet_export, tmp_path / "tampered")
    table = pq.read_table(dst / "val/shard-000000.parquet")  # one token changed, the manifest made to agree
    flat = table.column("tokens").combine_chunks()
    values = flat.flatten().to_numpy().copy()
    values[5] = (values[5] + 1) % 10000
    tokens = pa.FixedSizeListArray.from_arrays(pa.array(values), flat.type.list_size)
    sink = pa.BufferOutputStream()
    pq.write_table(table.set_column(table.column_names.index("tokens"), "tokens", tokens), sink, compression="zstd")
    rewrite(dst, "val/shard-000000.parquet", sink.getvalue().to_pybytes())
    assert verify_export(str(dst), echo=quiet) == []  # consistent with itself ...
    problems = regenerate_export(str(dst), 3, echo=quiet)  # ... but not what the recipe makes
    assert problems == ["val/shard-000000.parquet: re-exported from the recipe, sha256 differs from the manifest"]


# -- refusals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    (lambda m: m["splits"]["train"]["shards"][0]["files"][0].update(path="../evil.parquet"), "names"),
    (lambda m: m["splits"]["train"]["shards"][1].update(source_shard=0), "source_shard"),
    (lambda m: m["splits"]["train"]["shards"][0]["files"][0].update(bytes=2**40), "more than such a file"),
    (lambda m: m["files"].update({"../../etc/passwd": {"bytes": 1, "sha256": "0" * 64}}), "names"),
    (lambda m: m.update(export_format="../x"), "export_format"),
    (lambda m: m["config"].update(seed=1), "fingerprint"),
], ids=["dotdot-unit", "unit-order", "huge-file", "dotdot-card", "format", "recipe"])
def test_crafted_export_manifest_is_refused(parquet_export, tmp_path, change, message):
    dst = copy(parquet_export, tmp_path / "crafted")
    manifest = json.loads((dst / "manifest.json").read_bytes())
    change(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"not safe to read.*{message}"):
        read_export_manifest(str(dst))
    with pytest.raises(ValueError, match=f"not safe to read.*{message}"):
        verify_export(str(dst), echo=quiet)


def test_exporting_a_damaged_source_is_refused(source, tmp_path):
    src = copy(source, tmp_path / "src")
    shard = src / "train/shard-000001.tar.zst"
    data = bytearray(shard.read_bytes())
    data[-20] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"does not verify.*shard-000001\.tar\.zst"):
        export_dataset(str(src), str(tmp_path / "dst"), "parquet", echo=quiet)
    assert not (tmp_path / "dst").exists()


def test_export_writes_only_a_folder_of_its_own(source, parquet_export, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="someone else's"):
        export_dataset(str(source), str(foreign), "parquet", echo=quiet)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    with pytest.raises(ValueError, match="inside the dataset"):
        export_dataset(str(source), str(source / "parquet"), "parquet", echo=quiet)
    with pytest.raises(ValueError, match="no export of nca-datagen's"):
        export_dataset(str(source), str(copy(source, tmp_path / "dataset")), "parquet", echo=quiet)
    with pytest.raises(ValueError, match="another dataset or format"):
        export_dataset(str(source), str(copy(parquet_export, tmp_path / "other")), "megatron", echo=quiet)
    # an interrupted export (files, the marker, no manifest) of the same source and format is finished by a rerun
    rerun = copy(parquet_export, tmp_path / "rerun")
    (rerun / "manifest.json").unlink()
    digest = read_export_manifest(str(parquet_export))["dataset_digest"]
    (rerun / "export.json").write_text(json.dumps({"format": "nca-datagen-export-marker", "export_format": "parquet",
                                                   "dataset_digest": digest}))
    with pytest.raises(ValueError, match=r"manifest\.json does not exist"):
        verify_export(str(rerun), echo=quiet)
    export_dataset(str(source), str(rerun), "parquet", echo=quiet)
    assert verify_export(str(rerun), echo=quiet) == [] and not (rerun / "export.json").exists()
    assert (rerun / "manifest.json").read_bytes() == (parquet_export / "manifest.json").read_bytes()


def test_export_to_s3_verifies_and_regenerates_there(source, s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    dst = f"{s3_bucket}/nca-parquet"
    manifest = export_dataset(str(source), dst, "parquet", echo=quiet)
    assert is_export(dst) and not is_export(str(source))
    assert read_export_manifest(dst) == manifest
    assert verify_export(dst, echo=quiet) == []
    assert regenerate_export(dst, 1, echo=quiet) == []


def test_the_export_command_and_verify_on_an_export(source, tmp_path):
    """`nca-datagen export`, then `verify` and `verify --regenerate` recognise the export by its manifest and
    check it by its own rules; a damaged unit fails verify with its name."""
    out = tmp_path / "megatron"
    exported = CliRunner().invoke(main, ["export", str(source), "--format", "megatron", "--out", str(out)])
    assert exported.exit_code == 0 and "as megatron" in exported.output, exported.output
    verified = CliRunner().invoke(main, ["verify", str(out), "--regenerate", "1"])
    assert verified.exit_code == 0 and "regenerated" in verified.output, verified.output
    (out / "train" / "shard-000000.bin").write_bytes(b"\0" * (out / "train" / "shard-000000.bin").stat().st_size)
    damaged = CliRunner().invoke(main, ["verify", str(out)])
    assert damaged.exit_code == 1 and "train/shard-000000.bin" in damaged.output, damaged.output
