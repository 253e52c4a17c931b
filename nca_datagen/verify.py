"""`nca-datagen verify`: check a dataset against its manifest, and optionally against its own recipe.

What a reader trusts, each checked (every problem is named, and the command exits non-zero if there is any):
- the manifest: canonical names, sizes the format allows, `sequence` and recipe agreeing with `config`
  (`manifest.read_manifest` refuses it otherwise);
- per shard: present, its recorded size and sha256, a readable tar of the recorded samples and tokens, every
  sequence `seq_len` long; its record nca-datagen's, of the manifest's recipe, agreeing with the manifest;
- per split: the brace pattern expands to exactly the listed shards, the counts add up, and its folder holds no
  shard file the manifest does not list (readers that glob the folder would read it);
- the tables and card files the manifest lists (`files`), at their size and sha256.

`--regenerate N` rebuilds N sampled shards from the manifest's recipe (`generate_shard` + `write_shard` into a
temporary folder) and compares sha256: shards are a pure function of the recipe, so they must match on any
machine with the same zlib (a different zlib runtime version is warned about, since it can change which rules
pass). A dataset made by another recipe version is named as such: this version cannot regenerate it.

The trade-off: verification reads every byte once (from object storage too); it never writes inside the dataset.
"""

from __future__ import annotations

import hashlib
import tempfile

import numpy as np

from nca_datagen import storage
from nca_datagen.config import RECIPE_VERSION, SPLITS
from nca_datagen.manifest import (
    SHARD_FIELDS,
    brace_pattern,
    dataset_root,
    listed_files,
    manifest_recipe,
    read_manifest,
    recipe_version,
)
from nca_datagen.shards import (
    COMPRESSIONS,
    ShardError,
    iter_shard_samples,
    load_record,
    record_name,
    shard_name,
)


def verify_dataset(url: str, storage_options: dict | None = None, *, echo=print) -> list[str]:
    """Problems found (each naming its file, or its split and field); empty when everything a reader trusts
    matches the manifest (see the module docstring)."""
    manifest = read_manifest(url, storage_options)
    fs, root = dataset_root(url, storage_options)
    recipe = manifest_recipe(manifest)
    if recipe is None:
        echo("note: a format-1 manifest (an older nca-datagen): its shard records and tables carry no recipe "
             "fingerprint or sha256, so only the shards are checked")
    problems = _check_counts(manifest)
    seq_len = manifest["sequence"]["seq_len"]
    for split, info in manifest["splits"].items():
        problems += _check_pattern(split, info)
        for index, shard in enumerate(info["shards"]):
            metas: list[dict] = []
            problem = check_shard(fs, root, shard, seq_len, metas)
            if problem is None and recipe is not None:
                problem = _record_problem(fs, root, split, index, shard, recipe, metas)
            echo(f"{'BAD' if problem else 'ok '} {shard['path']}" + (f": {problem}" if problem else ""))
            if problem:
                problems.append(problem)
    return problems + _check_files(fs, root, manifest, echo) + _unlisted_shards(fs, root, manifest)


def listed_but_absent(fs, root: str, manifest: dict) -> list[str]:
    """The shards, tables and card files the manifest lists that are missing or not at their recorded size: a
    listing per folder, no bytes read (what `inspect` can afford; `verify` reads everything)."""
    absent = []
    for split, info in manifest["splits"].items():
        sizes = storage.listing(fs, storage.join(root, split))
        absent += [s["path"] for s in info["shards"] if sizes.get(storage.basename(s["path"])) != s["bytes"]]
    listed = listed_files(manifest).items()
    absent += [rel for rel, f in listed if storage.size(fs, storage.join(root, rel)) != f["bytes"]]
    return absent


def _record_problem(fs, root: str, split: str, index: int, shard: dict, recipe: str, metas: list[dict]) -> str | None:
    """None when the shard's record is nca-datagen's, of `recipe`, says what the manifest says, and its per-sample
    columns (what the samples table is made of) are the shard's own sample metadata `metas`."""
    path = storage.join(root, record_name(split, index))
    record = load_record(fs, root, split, index)
    where = storage.url_of(fs, path)
    if record is None:
        return f"{where}: missing, unreadable or not an nca-datagen shard record"
    if record["recipe"] != recipe:
        return f"{where}: made by another recipe ({record['recipe']}, the manifest's is {recipe})"
    differ = [k for k in SHARD_FIELDS if record[k] != shard[k]]
    if differ:
        return f"{where}: {', '.join(differ)} differ from the manifest"
    if _record_metas(record, split, index) != metas:
        return f"{where}: its per-sample columns differ from the samples in the shard"
    return None


def _record_metas(record: dict, split: str, index: int) -> list[dict] | None:
    """The sample metadata a shard's members hold, as its record's columns describe them (`shards._tar_bytes`)."""
    columns = record["columns"]
    if not isinstance(columns, dict) or not all(isinstance(v, list) for v in columns.values()):
        return None
    names = [c for c in columns if c != "key"]
    return [{"key": key, "split": split, "shard": index, **{c: columns[c][i] for c in names}}
            for i, key in enumerate(columns.get("key", []))]


def _check_files(fs, root: str, manifest: dict, echo) -> list[str]:
    """The tables and card files the manifest lists, at their recorded size and sha256."""
    problems = []
    for rel, info in listed_files(manifest).items():
        path = storage.join(root, rel)
        try:
            data = storage.read_bytes(fs, path, info["bytes"] + 1)
        except FileNotFoundError:
            data = None
        bad = data is None or len(data) != info["bytes"] or hashlib.sha256(data).hexdigest() != info["sha256"]
        echo(f"{'BAD' if bad else 'ok '} {rel}")
        if bad:
            what = "missing" if data is None else "size or sha256 differs from the manifest"
            problems.append(f"{storage.url_of(fs, path)}: {what}")
    return problems


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


def check_shard(fs, root: str, shard: dict, seq_len: int | None = None, metas: list | None = None) -> str | None:
    """None when the shard matches its manifest entry (and holds sequences of `seq_len`), else a message naming
    the file. `metas`, when given, receives each sample's metadata."""
    path = storage.join(root, shard["path"])
    samples = tokens = 0
    try:
        for _, t, meta in iter_shard_samples(path, fs=fs, expected_sha256=shard["sha256"],
                                             expected_bytes=shard["bytes"], seq_len=seq_len):
            samples += 1
            tokens += t.size
            if metas is not None:
                metas.append(meta)
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
    from nca_datagen.config import DatasetConfig, recipe_fingerprint
    from nca_datagen.generate import generate_shard
    from nca_datagen.shards import DEFAULT_LEVEL, write_shard

    manifest = read_manifest(url, storage_options)
    made_by = recipe_version(manifest)
    if made_by != RECIPE_VERSION:
        return [f"made by recipe version {made_by} (nca-datagen {manifest.get('tool_version')}); this nca-datagen "
                f"makes version {RECIPE_VERSION}, so it cannot regenerate these shards (an older dataset, not a "
                f"corrupt one): regenerate with the version that made it"]
    recorded = manifest.get("provenance", {}).get("zlib")
    if recorded and recorded != ZLIB_VERSION:
        echo(f"warning: the dataset was built with zlib {recorded}, this machine has {ZLIB_VERSION}; the "
             f"complexity filter may keep different rules, so shards can differ for that reason alone")
    config = DatasetConfig.from_dict(manifest["config"])
    problems = []
    with tempfile.TemporaryDirectory(prefix="nca-verify-") as tmp:
        for split, i in sampled_shards(manifest, n, seed):
            info = manifest["splits"][split]
            expected = info["shards"][i]
            data = generate_shard(config, split, i, backend=backend, device=device)
            record = write_shard(data, tmp, recipe=recipe_fingerprint(config, info["compression"]),
                                 compression=info["compression"], level=info.get("level") or DEFAULT_LEVEL)
            same = record["sha256"] == expected["sha256"] and record["path"] == expected["path"]
            echo(f"{'ok ' if same else 'BAD'} regenerated {expected['path']}" +
                 ("" if same else f": sha256 {record['sha256'][:16]}... != manifest {expected['sha256'][:16]}..."))
            if not same:
                problems.append(f"{expected['path']}: regenerated from the recipe, sha256 differs from the manifest")
    return problems


def sampled_shards(manifest: dict, n: int, seed: int) -> list[tuple[str, int]]:
    """`n` (split, index) pairs drawn without replacement from a manifest's shards by `seed`, in manifest order."""
    candidates = [(split, i) for split, info in manifest["splits"].items() for i in range(len(info["shards"]))]
    rng = np.random.default_rng(seed)
    return [candidates[j] for j in sorted(rng.choice(len(candidates), min(n, len(candidates)), replace=False))]


def _check_pattern(split: str, info: dict) -> list[str]:
    paths = [s["path"] for s in info["shards"]]
    expected = [shard_name(split, i, info["compression"]) for i in range(len(paths))]
    problems = []
    if paths != expected:
        problems.append(f"{split}: shard paths are not {expected[:1]}..{expected[-1:]} in order")
    if info.get("pattern") != brace_pattern(split, len(paths), info["compression"]):
        problems.append(f"{split}: pattern {info.get('pattern')!r} does not expand to the {len(paths)} listed shards")
    return problems
