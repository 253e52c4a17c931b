"""The README's reading snippets, run as written: our loader, stock webdataset (also from S3), Hugging Face datasets,
tarfile.

Each snippet below is the exact text the README shows, with `my-dataset` standing for the dataset folder. The
test swaps in a real folder, appends one line inside the snippet's loop that records what it read, runs it, and
compares with the shards' source data: tokens (uint16, every value) and metadata.
"""

import numpy as np
import pytest
from shard_fixtures import REAL, make_dataset, real_shards

SNIPPETS = {
    "loader": '''
from torch.utils.data import DataLoader
from nca_datagen.loader import NCADataset

ds = NCADataset("my-dataset", split="train", seed=0)  # or "s3://bucket/prefix"; rank/world size from torch.distributed
loader = DataLoader(ds, batch_size=32, num_workers=2)
for epoch in range(1):
    ds.set_epoch(epoch)
    for batch in loader:
        input_ids, labels = batch["input_ids"], batch["labels"]  # int64 (32, 1024); labels -100 on frame one
''',
    "webdataset_zst": '''
import webdataset as wds

# webdataset does not decompress zstd itself: a pipe: URL runs `zstd -dc` per shard (after brace expansion)
ds = wds.WebDataset("pipe:zstd -dc my-dataset/train/shard-{000000..000001}.tar.zst", shardshuffle=False).decode()
for sample in ds:
    key, tokens, meta = sample["__key__"], sample["tokens.npy"], sample["json"]  # uint16 array, dict
''',
    "webdataset_tar": '''
import webdataset as wds

ds = wds.WebDataset("my-dataset/train/shard-{000000..000001}.tar", shardshuffle=False).decode()
for sample in ds:
    key, tokens, meta = sample["__key__"], sample["tokens.npy"], sample["json"]  # uint16 array, dict
''',
    "hf_datasets_tar": '''
from datasets import load_dataset

ds = load_dataset("webdataset", data_files={"train": "my-dataset/train/*.tar"}, split="train")
for sample in ds:
    key, tokens, meta = sample["__key__"], sample["tokens.npy"], sample["json"]  # list of ints, dict
''',
    "tarfile_zst": '''
import io, json, tarfile
import numpy as np
import zstandard

with open("my-dataset/train/shard-000000.tar.zst", "rb") as f:  # plain .tar: tarfile.open(path) instead
    tar = tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(f), mode="r|")
    for member in tar:  # KEY.json, then KEY.tokens.npy, for each sample in order
        key, kind = member.name.split(".", 1)
        data = tar.extractfile(member).read()
        value = json.loads(data) if kind == "json" else np.load(io.BytesIO(data), allow_pickle=False)
''',
}

# One line appended inside each snippet's innermost loop: what it read, for the comparison.
COLLECT = {
    "loader": "        seen.extend(zip(input_ids.tolist(), labels.tolist()))",
    "webdataset_zst": "    seen.append((key, tokens, meta))",
    "webdataset_tar": "    seen.append((key, tokens, meta))",
    "hf_datasets_tar": "    seen.append((key, tokens, meta))",
    "tarfile_zst": "        seen.append((key, kind, value))",
}


@pytest.fixture(scope="module")
def shards():
    return real_shards(2)


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory, shards):
    root = tmp_path_factory.mktemp("readers")
    for compression in ("zstd", "none"):
        make_dataset(str(root / compression), {"train": shards}, compression=compression, config=REAL)
    return root


@pytest.fixture(scope="module")
def expected(shards):
    """key -> (tokens, columns) straight from generate_shard."""
    out = {}
    for index, data in enumerate(shards):
        for i in range(data.num_samples):
            cols = {name: values[i].item() for name, values in data.columns.items()}
            out[f"train-{index:06d}-{i:06d}"] = (data.tokens_NL[i], cols)
    return out


def run_snippet(name: str, folder) -> list:
    code = SNIPPETS[name].replace("my-dataset", str(folder)) + COLLECT[name] + "\n"
    scope = {"seen": []}
    exec(compile(code, f"<README snippet {name}>", "exec"), scope)
    return scope["seen"]


def check(seen, expected):
    assert [k for k, _, _ in seen] == sorted(expected)
    for key, tokens, meta in seen:
        want_tokens, want_cols = expected[key]
        assert np.array_equal(np.asarray(tokens), want_tokens) and np.asarray(tokens).dtype in (np.uint16, np.int64)
        assert meta["key"] == key
        for col, value in want_cols.items():
            assert meta[col] == value, (key, col)


@pytest.mark.parametrize("name, compression", [("webdataset_zst", "zstd"), ("webdataset_tar", "none")])
def test_stock_webdataset(datasets_dir, expected, name, compression):
    seen = run_snippet(name, datasets_dir / compression)
    assert all(np.asarray(t).dtype == np.uint16 for _, t, _ in seen)
    check(seen, expected)


def test_stock_webdataset_from_s3(shards, expected, s3_server, s3_bucket, monkeypatch):
    """docs/format.md's recipe as the page shows it, its bucket and prefix swapped for a moto bucket's."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "format.md").read_text()
    (snippet,) = [block for block in page.split("```python\n")[1:] if 'gopen_schemes["s3"]' in block]
    import importlib

    gopen = importlib.import_module("webdataset.gopen")  # (`webdataset.gopen` the attribute is the function)
    monkeypatch.setattr(gopen, "gopen_schemes", dict(gopen.gopen_schemes))  # the recipe's opener: this test's alone
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    make_dataset(f"{s3_bucket}/nca", {"train": shards}, config=REAL)
    code = snippet.split("```")[0].replace("my-bucket/nca-web", f"{s3_bucket[len('s3://'):]}/nca")
    scope = {"seen": []}
    exec(compile(code + COLLECT["webdataset_zst"] + "\n", "<docs/format.md s3 recipe>", "exec"), scope)
    assert all(np.asarray(t).dtype == np.uint16 for _, t, _ in scope["seen"])
    check(scope["seen"], expected)


def test_hugging_face_datasets_on_plain_tar(datasets_dir, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # keep the test's Arrow cache out of the user's
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    check(run_snippet("hf_datasets_tar", datasets_dir / "none"), expected)


def test_tarfile_and_numpy(datasets_dir, expected):
    seen = run_snippet("tarfile_zst", datasets_dir / "zstd")
    samples = {}
    for key, kind, value in seen:
        samples.setdefault(key, {})[kind] = value
    first_shard = {k: v for k, v in expected.items() if k.startswith("train-000000-")}
    check([(k, s["tokens.npy"], s["json"]) for k, s in samples.items()], first_shard)


def test_our_loader(datasets_dir, expected):
    seen = run_snippet("loader", datasets_dir / "zstd")
    tpf = REAL.nca.tokens_per_frame
    want = sorted((t[:-2].tolist(), [-100] * (tpf - 1) + t[tpf:-1].tolist()) for t, _ in expected.values())
    assert sorted(seen) == want
