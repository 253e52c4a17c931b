"""`nca-datagen verify`: check a dataset against its manifest, and optionally against its own recipe.

Checks per shard: present, recorded size, recorded sha256, a readable tar with the recorded numbers of samples
and tokens; per split: the brace pattern expands to exactly the listed shards. Every bad file is named and the
command exits non-zero if there is any. `--regenerate N` rebuilds N sampled shards from the manifest's recipe
(`generate_shard` + `write_shard` into a temporary folder) and compares sha256: the shards are a pure function of
the recipe, so they must match on any machine with the same zlib (the complexity filter depends on it; a
different zlib runtime version is warned about, since it can change which rules pass).

The trade-off: verification reads every byte once (from object storage too); it never writes inside the dataset.
"""

from __future__ import annotations

import tempfile

import click
import numpy as np

from nca_datagen import storage
from nca_datagen.manifest import brace_pattern, dataset_root, read_manifest
from nca_datagen.shards import ShardError, iter_shard_samples, shard_name


def verify_dataset(url: str, storage_options: dict | None = None, *, echo=print) -> list[str]:
    """Problems found (each naming its file); empty when every shard matches the manifest."""
    manifest = read_manifest(url, storage_options)
    fs, root = dataset_root(url, storage_options)
    problems = []
    for split, info in manifest["splits"].items():
        problems += _check_pattern(split, info)
        for shard in info["shards"]:
            problem = check_shard(fs, root, shard)
            echo(f"{'BAD' if problem else 'ok '} {shard['path']}" + (f": {problem}" if problem else ""))
            if problem:
                problems.append(problem)
    return problems


def check_shard(fs, root: str, shard: dict) -> str | None:
    """None when the shard matches its manifest entry, else a message naming the file."""
    path = storage.join(root, shard["path"])
    samples = tokens = 0
    try:
        for _, t, _ in iter_shard_samples(path, fs=fs, expected_sha256=shard["sha256"], expected_bytes=shard["bytes"]):
            samples += 1
            tokens += t.size
    except ShardError as exc:
        return str(exc)
    if (samples, tokens) != (shard["samples"], shard["tokens"]):
        return (f"{storage.url_of(fs, path)}: {samples} samples / {tokens} tokens, the manifest says "
                f"{shard['samples']} / {shard['tokens']}")
    return None


def regenerate_and_compare(url: str, n: int, storage_options: dict | None = None, *, seed: int = 0,
                           backend=None, device=None, echo=print) -> list[str]:
    """Rebuild `n` randomly chosen shards from the manifest's recipe; problems for those whose sha256 differs."""
    from nca_datagen.complexity import ZLIB_VERSION
    from nca_datagen.config import DatasetConfig
    from nca_datagen.generate import generate_shard
    from nca_datagen.shards import DEFAULT_LEVEL, write_shard

    manifest = read_manifest(url, storage_options)
    recorded = manifest.get("provenance", {}).get("zlib")
    if recorded and recorded != ZLIB_VERSION:
        echo(f"warning: the dataset was built with zlib {recorded}, this machine has {ZLIB_VERSION}; the "
             f"complexity filter may keep different rules, so shards can differ for that reason alone")
    config = DatasetConfig.from_dict(manifest["config"])
    candidates = [(split, i) for split, info in manifest["splits"].items() for i in range(len(info["shards"]))]
    rng = np.random.default_rng(seed)
    picks = [candidates[j] for j in sorted(rng.choice(len(candidates), min(n, len(candidates)), replace=False))]
    problems = []
    with tempfile.TemporaryDirectory(prefix="nca-verify-") as tmp:
        for split, i in picks:
            info = manifest["splits"][split]
            expected = info["shards"][i]
            data = generate_shard(config, split, i, backend=backend, device=device)
            record = write_shard(data, tmp, compression=info["compression"], level=info.get("level") or DEFAULT_LEVEL)
            same = record["sha256"] == expected["sha256"] and record["path"] == expected["path"]
            echo(f"{'ok ' if same else 'BAD'} regenerated {expected['path']}" +
                 ("" if same else f": sha256 {record['sha256'][:16]}... != manifest {expected['sha256'][:16]}..."))
            if not same:
                problems.append(f"{expected['path']}: regenerated from the recipe, sha256 differs from the manifest")
    return problems


def _check_pattern(split: str, info: dict) -> list[str]:
    paths = [s["path"] for s in info["shards"]]
    expected = [shard_name(split, i, info["compression"]) for i in range(len(paths))]
    problems = []
    if paths != expected:
        problems.append(f"{split}: shard paths are not {expected[:1]}..{expected[-1:]} in order")
    if info.get("pattern") != brace_pattern(split, len(paths), info["compression"]):
        problems.append(f"{split}: pattern {info.get('pattern')!r} does not expand to the {len(paths)} listed shards")
    return problems


@click.command("verify")
@click.argument("url")
@click.option("--regenerate", "regenerate", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also rebuild N randomly chosen shards from the manifest's recipe and compare sha256.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which shards --regenerate picks.")
@click.option("--backend", default=None, help="Rollout backend for --regenerate (default: the fastest available).")
@storage.storage_flags
def verify_command(url, regenerate, seed, backend, endpoint_url, profile, s3_checksums):
    """Check every shard of the dataset at URL (folder or manifest.json, local or s3://) against its manifest."""
    opts = storage.storage_options_from_flags(endpoint_url, profile, s3_checksums)
    try:
        problems = verify_dataset(url, opts, echo=click.echo)
        if regenerate:
            problems += regenerate_and_compare(url, regenerate, opts, seed=seed, backend=backend, echo=click.echo)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if problems:
        click.echo(f"{len(problems)} problem(s):", err=True)
        for p in problems:
            click.echo(f"  {p}", err=True)
        raise SystemExit(1)
    click.echo("dataset verified: every shard matches the manifest")
