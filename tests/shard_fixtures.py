"""Small datasets for the shard, manifest, loader, verify and publish tests.

`fake_shard` builds a `ShardData` with random tokens in the real layout (frame delimiters included) and the
columns `generate_shard` returns, in microseconds: the loader's partitioning tests need many shards, and
`generate_shard` costs about a second each on these machines. Tests that need the real recipe (rebuilding a
shard, byte-identical reruns) call `generate_shard` with `REAL`.
"""

import numpy as np

from nca_datagen.config import DatasetConfig, NCAConfig, recipe_fingerprint
from nca_datagen.generate import ShardData
from nca_datagen.ownership import prepare_output
from nca_datagen.pipelines.finish import finish_dataset
from nca_datagen.shards import write_shard
from nca_datagen.tokenizer import end_grid_token, grid_token

REAL = DatasetConfig(rules_per_shard=2, sims_per_rule=2, nca=NCAConfig(frames=4))  # 4 samples x 152 tokens
FAKE = REAL  # same shapes: fake shards are indistinguishable in layout from real ones


def fake_shard(split: str, index: int, config: DatasetConfig = FAKE) -> ShardData:
    rng = np.random.default_rng([index, len(split)])
    n, sims, cfg = config.samples_per_shard, config.sims_per_rule, config.nca
    frames = rng.integers(0, grid_token(cfg), (n, cfg.frames, cfg.tokens_per_frame), dtype=np.uint16)
    frames[..., 0], frames[..., -1] = grid_token(cfg), end_grid_token(cfg)
    rules = index * 2**20 + np.arange(config.rules_per_shard)
    columns = {
        "rule_id": np.repeat(rules, sims),
        "sim": np.tile(np.arange(sims), config.rules_per_shard),
        "complexity": rng.uniform(0.5, 0.7, n),
        "probe_complexity": np.repeat(rng.uniform(0.5, 0.7, config.rules_per_shard), sims),
        "cell_change_rate": rng.uniform(0, 1, n),
        "colors_last_frame": rng.integers(1, cfg.states + 1, n),
    }
    counts = {"candidates": 5, "kept": config.rules_per_shard, "too_simple": 3, "too_complex": 0}
    return ShardData(split, index, frames.reshape(n, -1), columns, rng.uniform(0, 0.7, 5), counts)


def real_shards(count: int, split: str = "train", config: DatasetConfig = REAL) -> list[ShardData]:
    from nca_datagen.generate import generate_shard

    return [generate_shard(config, split, i, backend="torch") for i in range(count)]


def make_dataset(out: str, shards: dict[str, int | list[ShardData]], *, compression: str = "zstd",
                 config: DatasetConfig = FAKE, storage_options=None) -> dict:
    """Write a finished dataset; `shards[split]` is a number of fake shards or a list of ShardData to write."""
    prepare_output(out, config, compression, storage_options=storage_options)
    records = {}
    for split, datas in shards.items():
        if isinstance(datas, int):
            datas = [fake_shard(split, i, config) for i in range(datas)]
        records[split] = [write_fake(d, out, config, compression, storage_options) for d in datas]
    return finish_dataset(out, config, records, {"device": "cpu", "test": True}, storage_options, figures=False)


def write_fake(data: ShardData, out: str, config: DatasetConfig = FAKE, compression: str = "zstd",
               storage_options=None) -> dict:
    """`write_shard` with the record naming `config`'s recipe, as a build of it writes."""
    return write_shard(data, out, recipe=recipe_fingerprint(config, compression), compression=compression,
                       storage_options=storage_options)
