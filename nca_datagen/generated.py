"""Shards generated as they are read: a dataset's samples without storage (`NCADataset.from_recipe`).

A shard is a pure function of (recipe, split, index) (`generate.generate_shard`), so a `GeneratedShards` source
gives `NCADataset` the shards `build` would write, by generating them; the loader's one plan then yields the same
samples (keys, tokens, metadata) in the same order as the stored dataset, epoch for epoch, rank for rank, worker
for worker, with the same resume positions.

What a recipe is (`generated_shards(recipe, ...)`):
- a band (`"50%+"`, `"30-40%"`, `"code"`, a `Band`), `build`'s other options in `build_options` by flag name
  (`{"frames": 4, "seed": 1}`; `build`'s defaults otherwise) and its budget in `tokens` (`val_tokens`,
  `val_fraction`): the shards `nca-datagen build` plans for them. Without `tokens` a split is unbounded, shards
  0, 1, 2, ... for ever (scaling studies);
- a config file (`*.json`): a `DatasetConfig` as a manifest's `config` block holds it, or an object holding such a
  block under "config"; the budget as for a band;
- a `DatasetConfig`, the same way;
- a dataset (folder, URL such as s3:// or hf://, or its manifest.json): only its manifest is read, for the recipe
  and the shard counts; `check_sha256=True` checks each generated shard's sha256 against it (training as a
  continuous `verify --regenerate`). A manifest made by another recipe version is refused, naming the version.

Where shards are generated: in the process that iterates. In DataLoader workers that is the CPU (numba), each
worker's kernel using its share of the CPUs; in a process with a GPU, the Triton kernel (`device="cuda"`, or
the default outside workers; CUDA does not survive the fork into DataLoader workers). Memory: one shard's arrays
while it is generated (with `check_sha256`, also its tar and zstd bytes), beside the loader's window of samples.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from nca_datagen.config import RECIPE_VERSION, DatasetConfig, recipe_fingerprint
from nca_datagen.manifest import MANIFEST, read_manifest, recipe_version, sequence_layout
from nca_datagen.shards import DEFAULT_COMPRESSION, DEFAULT_LEVEL, ShardError
from nca_datagen.sources import ShardSource
from nca_datagen.units import parse_count, parse_grid


# `nca-datagen build`'s defaults, by flag name (tests/test_generated.py checks them against build's options)
class GeneratedShards(ShardSource):
    """Shards of one split made by `generate_shard` on demand; `num_shards=None` for an unbounded split.
    `expected`: the manifest's entries for the split's shards (sizes and sha256), when reproducing one."""

    def __init__(self, config: DatasetConfig, split: str, num_shards: int | None, *, name: str,
                 expected: list[dict] | None = None, compression: str = DEFAULT_COMPRESSION,
                 level: int | None = DEFAULT_LEVEL, check_sha256: bool = False, backend=None, device=None):
        if check_sha256 and expected is None:
            raise ValueError("check_sha256 needs a manifest to check against: give the dataset's URL as the recipe")
        self.config, self.split, self.num_shards, self.name = config, split, num_shards, name
        self.expected, self.compression, self.level = expected, compression, level
        self.check_sha256, self.backend, self.device = bool(check_sha256), backend, device
        self.layout = sequence_layout(config.to_dict()["nca"])
        self.identity = _identity(config, num_shards, expected)
        self.stats = {"generated": 0, "checked": 0}

    def samples_in(self, index: int) -> int:
        return self.expected[index]["samples"] if self.expected else self.config.samples_per_shard

    def read(self, index: int) -> list:
        from nca_datagen.generate import generate_shard  # the generator proper: only when a shard is generated
        from nca_datagen.shards import shard_samples

        device = _device(self.device)
        if device == "cpu":
            _share_cpus()
        data = generate_shard(self.config, self.split, index, backend=self.backend, device=device)
        self.stats["generated"] += 1
        if self.check_sha256:
            self._check(data, index)
        return shard_samples(data)

    def _check(self, data, index: int) -> None:
        from nca_datagen.shards import shard_bytes

        want = self.expected[index]
        digest = hashlib.sha256(shard_bytes(data, self.compression, self.level or DEFAULT_LEVEL)).hexdigest()
        if digest != want["sha256"]:
            raise ShardError(f"{self.name}: {want['path']} regenerated from the recipe has sha256 {digest[:16]}..., "
                             f"the manifest says {want['sha256'][:16]}...: this machine does not reproduce the "
                             f"dataset (another zlib changes which rules pass), or its shard is not this recipe's")
        self.stats["checked"] += 1


def generated_shards(recipe, split: str = "train", *, tokens=None, val_tokens=None, val_fraction=None,
                     build_options: dict | None = None, check_sha256: bool = False, backend=None, device=None,
                     storage_options: dict | None = None) -> GeneratedShards:
    """The source `NCADataset.from_recipe` reads: `recipe` as the module docstring says."""
    kind = recipe_kind(recipe)
    if kind == "dataset":
        if tokens is not None or val_tokens is not None or val_fraction is not None or build_options:
            raise ValueError(f"{recipe}: a dataset's manifest fixes its recipe and shards; drop tokens, val_tokens, "
                             f"val_fraction and build_options (or give its config file instead)")
        return _from_manifest(str(recipe), split, check_sha256, backend, device, storage_options)
    if kind == "band":
        config, name = _band_config(recipe, build_options or {}), f"recipe {_band_label(recipe)}"
    else:
        if build_options:
            raise ValueError(f"build_options {sorted(build_options)} go with a band; a config fixes them all: "
                             f"edit the config instead")
        config = recipe if kind == "config" else read_config_file(recipe)
        name = "recipe " + (config.band.label if kind == "config" else str(recipe))
    shards = None if tokens is None else _planned_shards(config, split, tokens, val_tokens, val_fraction)
    return GeneratedShards(config, split, shards, name=f"{name} ({split}, {_shards_text(shards)})",
                           check_sha256=check_sha256, backend=backend, device=device)


def recipe_kind(recipe) -> str:
    """'band', 'config' (a DatasetConfig), 'file' (a config file: *.json other than a manifest) or 'dataset'."""
    from nca_datagen.complexity import Band

    if isinstance(recipe, Band):
        return "band"
    if isinstance(recipe, DatasetConfig):
        return "config"
    text = str(recipe)
    if text.endswith(".json") and Path(text).name != MANIFEST:
        return "file"
    if "/" not in text and not os.path.exists(text):
        try:
            Band.parse(text)
            return "band"
        except ValueError:
            pass
    return "dataset"


def read_config_file(path) -> DatasetConfig:
    """The DatasetConfig in a JSON file: a manifest's `config` block, or an object with one under "config"."""
    try:
        d = json.loads(Path(path).read_text())
        d = d.get("config", d) if isinstance(d, dict) else d
        return DatasetConfig.from_dict(d)
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{path} is not a recipe config ({type(exc).__name__}: {exc}): write it as a manifest's "
                         f"\"config\" block, e.g. json.dumps(DatasetConfig(...).to_dict())") from None


def _band_config(band, options: dict) -> DatasetConfig:
    """The config `build --complexity BAND` with these options makes (`pipelines.plan`, the one place)."""
    from nca_datagen.pipelines.plan import RECIPE_ARGS, recipe_config

    budget = {"tokens", "val_tokens", "val_fraction", "complexity"}
    unknown = set(options) - (set(RECIPE_ARGS) - budget)
    if unknown:
        raise ValueError(f"build_options {sorted(unknown)}: not build options; choose from "
                         f"{', '.join(sorted(set(RECIPE_ARGS) - budget))}")
    grid = options.get("grid")
    grid = parse_grid(grid) if isinstance(grid, int | str) else grid
    return recipe_config(complexity=band, **{**options, "grid": grid})


def _band_label(band) -> str:
    from nca_datagen.complexity import Band

    return band.label if isinstance(band, Band) else str(band)


def _planned_shards(config: DatasetConfig, split: str, tokens, val_tokens, val_fraction) -> int:
    from nca_datagen.pipelines.plan import plan_build

    val = None if val_tokens is None else parse_count(val_tokens, "val_tokens")
    plan = plan_build(config, parse_count(tokens, "tokens"), val, val_fraction)
    shards = plan.shards.get(split, 0)
    if not shards:
        raise ValueError(f"the budget plans no {split} shards: give a {'val_tokens' if split == 'val' else 'tokens'} "
                         f"budget for it")
    return shards


def _from_manifest(url: str, split: str, check_sha256: bool, backend, device, storage_options) -> GeneratedShards:
    manifest = read_manifest(url, storage_options)
    made_by = recipe_version(manifest)
    if made_by != RECIPE_VERSION:
        raise ValueError(f"{url} was made by recipe version {made_by} (nca-datagen {manifest.get('tool_version')}); "
                         f"this nca-datagen makes version {RECIPE_VERSION}, other bytes from the same config: read the "
                         f"stored shards (NCADataset), or generate with the version that made it")
    if split not in manifest["splits"]:
        raise ValueError(f"split {split!r} is not in {url}: it has {', '.join(manifest['splits'])}")
    info = manifest["splits"][split]
    config = DatasetConfig.from_dict(manifest["config"])
    _warn_other_zlib(manifest, url)
    return GeneratedShards(config, split, len(info["shards"]), name=f"{url} regenerated ({split})",
                           expected=info["shards"], compression=info["compression"], level=info.get("level"),
                           check_sha256=check_sha256, backend=backend, device=device)


def _warn_other_zlib(manifest: dict, url: str) -> None:
    import warnings

    from nca_datagen.complexity import ZLIB_VERSION

    recorded = manifest.get("provenance", {}).get("zlib")
    if recorded and recorded != ZLIB_VERSION:
        warnings.warn(f"{url} was built with zlib {recorded}, this machine has {ZLIB_VERSION}: the complexity filter "
                      f"may keep other rules, so regenerated shards can differ (check_sha256=True says which)",
                      stacklevel=4)


def _identity(config: DatasetConfig, num_shards: int | None, expected: list[dict] | None) -> str:
    """A manifest's shard digest when reproducing one (so positions saved on the stored dataset resume here, and
    back); else the recipe's fingerprint and the shard count."""
    if expected is not None:
        from nca_datagen.manifest import shards_digest

        return shards_digest(expected)
    return f"recipe-{recipe_fingerprint(config, DEFAULT_COMPRESSION)}-{num_shards or 'unbounded'}"


def _shards_text(num_shards: int | None) -> str:
    return "unbounded" if num_shards is None else f"{num_shards} shards"


def _device(device) -> str:
    """None: the CPU in DataLoader workers (CUDA does not survive their fork), else a GPU when one is visible."""
    from torch.utils.data import get_worker_info

    from nca_datagen.rollout import resolve_device

    if device is None and get_worker_info() is not None:
        return "cpu"
    return resolve_device(device)


def _share_cpus() -> None:
    """In each of W DataLoader workers, numba's kernel gets 1/W of the machine's CPUs (all of them in every worker
    would oversubscribe them W times). numba keeps the count per thread, so it is set before every shard (cheap)."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    if info is None:
        return
    try:
        import numba
    except ImportError:
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    numba.set_num_threads(max(1, min(cpus // info.num_workers, numba.config.NUMBA_NUM_THREADS)))
