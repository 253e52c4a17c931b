"""The dataset card: Hugging Face front matter, tables from the manifest, figures that decode, and no failure on
a sparse manifest."""

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from nca_datagen.card import first_kept_rules, read_samples, render_card, write_card
from nca_datagen.config import DatasetConfig, NCAConfig

# Datasets for the tests are built with the compiled CPU path when it is installed: after its one-time compile
# (cached on disk) it is ~50x faster than the torch reference on tiny shards; every backend gives the same tokens.
BUILD_BACKEND = "numba" if importlib.util.find_spec("numba") else "torch"
TINY = DatasetConfig(nca=NCAConfig(frames=4), rules_per_shard=2, sims_per_rule=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A finished two-shard dataset: `write_manifest` writes the card as part of it."""
    from nca_datagen.generate import generate_shard
    from nca_datagen.manifest import write_manifest
    from nca_datagen.shards import write_shard

    out = tmp_path_factory.mktemp("ds")
    recs = {"train": [write_shard(generate_shard(TINY, "train", i, backend=BUILD_BACKEND), str(out)) for i in range(2)]}
    return out, write_manifest(str(out), TINY, recs, provenance={})


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
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "train/*.tar.zst"}]
    train = manifest["splits"]["train"]
    assert f"| train | 2 | {train['samples']} | {train['tokens']:,} |" in text  # split, shards, sequences, tokens
    c = train["counts"]
    assert f"| train | {c['candidates']} | {c['kept']} (" in text
    assert "50%+" in text and "arxiv.org/abs/2603.10055" in text
    assert "train/shard-{000000..000001}.tar.zst" in text  # the webdataset example uses the manifest's pattern
    for name in ("complexity.png", "preview.png", "token-frequency.png"):
        assert f"]({name})" in text  # embedded beside README.md
        img = png(out / name)
        assert img.format == "PNG" and min(img.size) > 50


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
from nca_datagen import card, manifest, storage
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
