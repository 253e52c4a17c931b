"""`nca-datagen verify`: check a dataset against its manifest, and optionally against its own recipe.

Checks per shard: present, recorded size, recorded sha256, a readable tar with the recorded numbers of samples
and tokens; per split: the brace pattern expands to exactly the listed shards, num_shards and the samples /
tokens / bytes agree with the shards, and its folder holds no shard file the manifest does not list (one
listing per split folder; readers that glob the folder would read such a file); the totals agree with the
splits, and there is at least one split. Every problem is named and the command exits non-zero if there is
any. `--regenerate N` rebuilds N sampled shards from the manifest's recipe (`generate_shard` + `write_shard` into
a temporary folder) and compares sha256: the shards are a pure function of the recipe, so they must match on any
machine with the same zlib (the complexity filter depends on it; a different zlib runtime version is warned
about, since it can change which rules pass).

The trade-off: verification reads every byte once (from object storage too); it never writes inside the dataset.
"""

from __future__ import annotations

import tempfile

import click
import numpy as np

from nca_datagen import storage
from nca_datagen.config import SPLITS
from nca_datagen.manifest import brace_pattern, dataset_root, read_manifest
from nca_datagen.rollout import BACKENDS
from nca_datagen.shards import COMPRESSIONS, ShardError, iter_shard_samples, shard_name


def verify_dataset(url: str, storage_options: dict | None = None, *, echo=print) -> list[str]:
    """Problems found (each naming its file, or its split and field); empty when the manifest is consistent and
    every shard matches it."""
    manifest = read_manifest(url, storage_options)
    fs, root = dataset_root(url, storage_options)
    problems = _check_counts(manifest)
    for split, info in manifest["splits"].items():
        problems += _check_pattern(split, info)
        for shard in info["shards"]:
            problem = check_shard(fs, root, shard)
            echo(f"{'BAD' if problem else 'ok '} {shard['path']}" + (f": {problem}" if problem else ""))
            if problem:
                problems.append(problem)
    return problems + _unlisted_shards(fs, root, manifest)


def _check_counts(manifest: dict) -> list[str]:
    """The manifest's numbers agree with each other: per split with its shards, the totals with the splits."""
    splits = manifest["splits"]
    if not splits:
        return ["splits: empty, the manifest lists no shards"]
    problems = []
    for split, info in splits.items():
        if info["num_shards"] != len(info["shards"]):
            problems.append(f"{split}: num_shards is {info['num_shards']}, but {len(info['shards'])} shards are listed")
        for field in ("samples", "tokens", "bytes"):
            total = sum(shard[field] for shard in info["shards"])
            if info[field] != total:
                problems.append(f"{split}: {field} is {info[field]}, the sum over its shards is {total}")
    for field in ("num_shards", "samples", "tokens", "bytes"):
        total = sum(info[field] for info in splits.values())
        if manifest["totals"].get(field) != total:
            problems.append(f"totals: {field} is {manifest['totals'].get(field)}, the sum over the splits is {total}")
    return problems


def _unlisted_shards(fs, root: str, manifest: dict) -> list[str]:
    """Shard files in a split folder that the manifest does not list (an older dataset's, another compression's):
    one listing per split folder, named in the manifest or not."""
    listed = {shard["path"] for info in manifest["splits"].values() for shard in info["shards"]}
    problems = []
    for split in sorted(set(SPLITS) | set(manifest["splits"])):
        for name in storage.listing(fs, storage.join(root, split)):
            path = f"{split}/{name}"
            if name.endswith(tuple(COMPRESSIONS.values())) and path not in listed:
                problems.append(f"{storage.url_of(fs, storage.join(root, path))}: a shard file the manifest does not "
                                f"list; readers that glob {split}/ would read it: delete it")
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
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="Rollout backend for --regenerate; auto: the fastest available.")
@storage.storage_flags
def verify_command(url, regenerate, seed, backend, endpoint_url, profile, s3_checksums):
    """Check every shard of the dataset at URL (folder or manifest.json, local or s3://) against its manifest."""
    opts = storage.storage_options_from_flags(endpoint_url, profile, s3_checksums)
    try:
        problems = verify_dataset(url, opts, echo=click.echo)
        if regenerate:
            problems += regenerate_and_compare(url, regenerate, opts, seed=seed,
                                               backend=None if backend == "auto" else backend, echo=click.echo)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if problems:
        click.echo(f"{len(problems)} problem(s):", err=True)
        for p in problems:
            click.echo(f"  {p}", err=True)
        raise SystemExit(1)
    click.echo("dataset verified: every shard matches the manifest")
