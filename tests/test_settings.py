"""Builds from a settings file, reproduced from a published manifest, and grown with a larger budget: each
equals, shard for shard, the same dataset built the plain way."""

import json

import pytest
from click.testing import CliRunner

from nca_datagen.cli import main

TINY = {"frames": 4, "samples_per_shard": 4, "sims_per_rule": 2, "tokens": 1216, "val_tokens": 608,
        "complexity": "40%+", "seed": 3}  # train 2 shards, val 1


def build(*args):
    result = CliRunner().invoke(main, ["build", "--executor", "inline", "--quiet", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def flags(settings: dict) -> list[str]:
    return [word for key, value in settings.items() for word in (f"--{key.replace('_', '-')}", str(value))]


def shards(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("*/shard-*.tar.zst"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ds"
    build(*flags(TINY), "--out", out)
    return out


def _write(path, settings: dict):
    if path.suffix == ".json":
        path.write_text(json.dumps({"build": settings}))
    elif path.suffix == ".yaml":
        path.write_text("".join(f"{k.replace('_', '-')}: {json.dumps(v)}\n" for k, v in settings.items()))
    else:
        path.write_text("[build]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_a_settings_file_builds_what_the_flags_build(tmp_path, reference, suffix):
    path = tmp_path / f"nca{suffix}"
    _write(path, {**TINY, "seed": 9})  # the flag below wins over the file's seed
    build("--config", path, "--seed", TINY["seed"], "--out", tmp_path / "ds")
    assert shards(tmp_path / "ds") == shards(reference)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["config"] == json.loads((reference / "manifest.json").read_text())["config"]


def test_a_settings_file_with_an_unknown_option_is_refused(tmp_path):
    path = tmp_path / "nca.toml"
    path.write_text('complexity = "50%+"\nsampels_per_shard = 4\n')
    result = CliRunner().invoke(main, ["build", "--config", str(path), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 2 and "no option sampels_per_shard" in result.output, result.output
    assert not (tmp_path / "ds").exists()


def test_from_manifest_reproduces_a_published_dataset(tmp_path, reference):
    build("--from-manifest", reference / "manifest.json", "--out", tmp_path / "copy")
    assert shards(tmp_path / "copy") == shards(reference)
    refused = CliRunner().invoke(main, ["build", "--from-manifest", str(reference), "--seed", "1", "--out",
                                        str(tmp_path / "other")])
    assert refused.exit_code == 2 and "--from-manifest fixes the recipe: drop --seed" in refused.output


def test_from_manifest_refuses_another_recipe_version(tmp_path, reference):
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((reference / "manifest.json").read_text())
    manifest["recipe"]["version"] = 1
    from nca_datagen.config import DatasetConfig, recipe_fingerprint

    manifest["recipe"]["fingerprint"] = recipe_fingerprint(DatasetConfig.from_dict(manifest["config"]), "zstd", 1)
    (old / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["build", "--from-manifest", str(old), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 2 and "made by recipe version 1" in result.output, result.output


def test_a_larger_budget_grows_a_dataset_leaving_its_shards_untouched(tmp_path, reference):
    grown = tmp_path / "grown"
    build(*flags(TINY), "--out", grown)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in grown.glob("train/shard-*.tar.zst")}
    bigger = {**TINY, "tokens": 2 * TINY["tokens"]}
    build(*flags(bigger), "--out", grown)
    build(*flags(bigger), "--out", tmp_path / "single")  # the larger dataset built in one run
    assert shards(grown) == shards(tmp_path / "single") and len(shards(grown)) == 5
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in grown.glob("train/shard-00000[01].tar.zst")} \
        == before
    verified = CliRunner().invoke(main, ["verify", str(grown)])
    assert verified.exit_code == 0, verified.output
