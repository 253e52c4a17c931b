"""The dataset card: Hugging Face front matter, tables from the manifest, figures that decode, and no failure on
a sparse manifest."""

import importlib.util
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from nca_datagen.card import DATASET_DIR, DATASET_URL, render_card, write_card
from nca_datagen.card_figures import first_kept_rules, read_samples
from nca_datagen.config import DatasetConfig, NCAConfig

# Datasets for the tests are built with the compiled CPU path when it is installed: after its one-time compile
# (cached on disk) it is ~50x faster than the torch reference on tiny shards; every backend gives the same tokens.
BUILD_BACKEND = "numba" if importlib.util.find_spec("numba") else "torch"
TINY = DatasetConfig(nca=NCAConfig(frames=4), rules_per_shard=2, sims_per_rule=2)


HF_SENTENCE = "Hugging Face `datasets` and the Hub's dataset viewer read only plain-tar WebDataset shards"


def build(out: Path, compression: str, figures: bool = True):
    """A finished two-shard dataset: `finish_dataset` writes the card as part of it."""
    from shard_fixtures import write_fake

    from nca_datagen.generate import generate_shard
    from nca_datagen.pipelines.finish import finish_dataset

    recs = {"train": [write_fake(generate_shard(TINY, "train", i, backend=BUILD_BACKEND), str(out), TINY, compression)
                      for i in range(2)]}
    return out, finish_dataset(str(out), TINY, recs, provenance={}, figures=figures)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """zstd shards, the default."""
    return build(tmp_path_factory.mktemp("ds"), "zstd")


@pytest.fixture(scope="module")
def plain_dataset(tmp_path_factory):
    """Plain .tar shards (`--compression none`), the kind Hugging Face `datasets` reads; no figures (not tested)."""
    return build(tmp_path_factory.mktemp("plain"), "none", figures=False)


def front_matter(text: str) -> dict:
    assert text.startswith("---\n"), text[:40]
    return yaml.safe_load(text.split("---\n")[1])


def png(path: Path) -> Image.Image:
    img = Image.open(io.BytesIO(path.read_bytes()))
    img.load()
    return img


def test_card_front_matter_tables_and_figures(dataset):
    out, manifest = dataset
    text = (out / "README.md").read_text()
    meta = front_matter(text)
    assert meta["task_categories"] == ["text-generation"]
    assert set(meta["tags"]) >= {"synthetic", "cellular-automata", "nca", "pre-pre-training"}
    assert "configs" not in meta  # zstd shards: Hugging Face's WebDataset reader cannot open them
    train = manifest["splits"]["train"]
    assert f"| train | 2 | {train['samples']} | {train['tokens']:,} |" in text  # split, shards, sequences, tokens
    c = train["counts"]
    assert f"| train | {c['candidates']} | {c['kept']} (" in text
    assert "50%+" in text and "arxiv.org/abs/2603.10055" in text
    assert "train/shard-{000000..000001}.tar.zst" in text  # the webdataset example uses the manifest's pattern
    assert "input = seq[0:150], target = seq[1:151]" in text  # 4 frames x 38 = 152 tokens, not the paper's 1026
    for name in ("complexity.png", "preview.png", "token-frequency.png"):
        assert f"]({name})" in text  # embedded beside README.md
        img = png(out / name)
        assert img.format == "PNG" and min(img.size) > 50


def test_zstd_card_names_no_hugging_face_configs_and_says_why(dataset):
    out, _ = dataset
    text = (out / "README.md").read_text()
    assert "configs" not in front_matter(text)
    assert HF_SENTENCE in text and "`nca-datagen build ... --compression none`" in text
    assert "load_dataset(" not in text


def test_plain_tar_card_points_hugging_face_at_the_shards(plain_dataset, tmp_path, monkeypatch):
    """The front matter's configs make `load_dataset(folder)` read every sample of every split."""
    out, manifest = plain_dataset
    text = (out / "README.md").read_text()
    assert front_matter(text)["configs"] == [{"config_name": "default",
                                              "data_files": [{"split": "train", "path": "train/*.tar"}]}]
    assert HF_SENTENCE not in text
    assert "`pipe:`" not in text  # plain-tar shards need no decompressing pipe, and the card does not say they do
    hf_offline(monkeypatch, tmp_path)
    from datasets import load_dataset

    ds = load_dataset(str(out), split="train")
    assert len(ds) == manifest["splits"]["train"]["samples"]
    assert len(ds[0]["tokens.npy"]) == manifest["sequence"]["seq_len"]


def hf_offline(monkeypatch, tmp_path):
    """Hugging Face libraries without the network, caching under tmp_path (read when `datasets` is imported)."""
    for name, value in (("HF_HOME", str(tmp_path / "hf")), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1")):
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("which", ["dataset", "plain_dataset"], ids=["zstd", "plain-tar"])
def test_card_code_snippets_run(request, which, tmp_path, monkeypatch):
    """Every python block of the card runs as printed against its own dataset (its placeholder replaced by the
    dataset's path), reads samples, and warns about nothing (webdataset warns unless shardshuffle is given)."""
    out, _ = request.getfixturevalue(which)
    blocks = re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S)
    assert len(blocks) == (3 if which == "dataset" else 4)  # NCADataset, iter_sequences, webdataset (+ datasets)
    monkeypatch.chdir(out)  # the webdataset snippet names the shards relative to the dataset folder
    hf_offline(monkeypatch, tmp_path)
    for code in blocks:
        scope: dict = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec(compile(code.replace(DATASET_URL, str(out)).replace(DATASET_DIR, str(out)), "card", "exec"), scope)
        # webdataset 1.0.2 leaves plain-tar shard files for the garbage collector to close: a ResourceWarning,
        # which Python's default filters hide. Anything else (its shardshuffle UserWarning) would reach the user.
        assert not [str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)], code
        assert {"input_ids", "tokens"} & set(scope), code  # the loop body ran: samples were read


def test_card_preview_shows_the_first_rules_by_sim_0(dataset):
    out, manifest = dataset
    _, split, samples = read_samples(LocalFileSystem(), str(out), manifest)
    assert split == "train" and len(samples) == manifest["splits"]["train"]["samples"]
    rows = first_kept_rules(samples, 3)
    first_rules = list(dict.fromkeys(int(m["rule_id"]) for _, _, m in samples))[:3]
    assert [r for r, _, _ in rows] == first_rules
    sim0 = {int(m["rule_id"]): t for _, t, m in samples if m["sim"] == 0}
    for rule, ratio, tokens in rows:
        np.testing.assert_array_equal(tokens, sim0[rule])
        assert TINY.band.contains(ratio)


def test_card_survives_a_sparse_manifest(tmp_path):
    with pytest.warns(UserWarning, match="samples"):  # no recipe: the figures that need it are skipped, loudly
        write_card(LocalFileSystem(), str(tmp_path), {"splits": {"val": {"shards": [{"path": "val/a.tar"}]}}})
    text = (tmp_path / "README.md").read_text()
    assert front_matter(text)["configs"][0]["data_files"] == [{"split": "val", "path": "val/*.tar"}]
    assert not list(tmp_path.glob("*.png"))
    assert render_card({}).startswith("---\n")


def test_preload_imports_everything_the_card_draws_with(dataset):
    """The build preloads the card's libraries while Ray makes shards: drawing then imports no new matplotlib,
    pyarrow or PIL module (each one left out would be paid again in the build's closing step)."""
    import subprocess
    import sys

    out, _ = dataset
    code = f"""
import sys
from nca_datagen import card_figures as card, manifest, storage
card.preload()
before = set(sys.modules)
m = manifest.read_manifest({str(out)!r})
card.draw_figures(m, *storage.filesystem({str(out)!r}))
manifest.samples_table([{{"samples": 1, "path": "x", "columns": {{"key": ["k"], "sample": [0]}}}}])
late = sorted(n for n in set(sys.modules) - before if n.split(".")[0] in ("matplotlib", "pyarrow", "PIL"))
print(late)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
