"""Shard format throughput: write and read speed and bytes per token for each compression, and the loader's
speed into a torch DataLoader with workers.

Real tokens (generate_shard at the paper's sequence shape), generated once and written as several shards so the
timings measure the format, not the generator. Write = tar + compress + hash + atomic write + record; read =
read + sha256 check + decompress + parse (what the loader does per shard). Sizes are small by default because
these machines are shared; numbers scale linearly with shards.

    python -m benchmarks.bench_shards [--rules 8] [--shards 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

from benchmarks.report import peak_rss_mb, write_report
from nca_datagen.config import DatasetConfig, recipe_fingerprint
from nca_datagen.generate import generate_shard
from nca_datagen.ownership import prepare_output
from nca_datagen.pipelines.finish import finish_dataset
from nca_datagen.shards import iter_shard_samples, write_shard


def build(out: str, data, shards: int, compression: str, config) -> tuple[list[dict], float]:
    prepare_output(out, config, compression)
    recipe = recipe_fingerprint(config, compression)
    t0 = time.perf_counter()
    records = [write_shard(dataclasses.replace(data, shard_index=i), out, recipe=recipe, compression=compression)
               for i in range(shards)]
    seconds = time.perf_counter() - t0
    finish_dataset(out, config, {"train": records}, {"device": "cpu"}, figures=False)
    return records, seconds


def read_all(out: str, records: list[dict]) -> float:
    t0 = time.perf_counter()
    for r in records:
        for _ in iter_shard_samples(f"{out}/{r['path']}", expected_sha256=r["sha256"], expected_bytes=r["bytes"]):
            pass
    return time.perf_counter() - t0


def loader_rate(out: str, workers: int, batch_size: int = 32) -> float:
    from torch.utils.data import DataLoader

    from nca_datagen.loader import NCADataset

    loader = DataLoader(NCADataset(out), batch_size=batch_size, num_workers=workers)
    t0 = time.perf_counter()
    tokens = sum(int(b["input_ids"].numel()) for b in loader)
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rules", type=int, default=8, help="rules per shard (x10 simulations)")
    p.add_argument("--shards", type=int, default=8, help="shards written per compression")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader row")
    args = p.parse_args()
    config = DatasetConfig(rules_per_shard=args.rules)
    data = generate_shard(config, "train", 0)
    tokens = data.tokens_NL.size * args.shards
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for compression in ("zstd", "none"):
            out = f"{tmp}/{compression}"
            records, write_s = build(out, data, args.shards, compression, config)
            read_s = read_all(out, records)
            size = sum(r["bytes"] for r in records)
            rows.append({
                "compression": compression,
                "tokens": tokens,
                "bytes_per_token": size / tokens,
                "write_Mtok_s": tokens / write_s / 1e6,
                "write_MB_s": size / write_s / 1e6,
                "read_Mtok_s": tokens / read_s / 1e6,
                "read_MB_s": size / read_s / 1e6,
                "loader_w0_Mtok_s": loader_rate(out, 0) / 1e6,
                f"loader_w{args.workers}_Mtok_s": loader_rate(out, args.workers) / 1e6,
            })
    write_report("bench_shards", rows, meta={**vars(args), "samples_per_shard": data.num_samples,
                                             "seq_len": int(data.tokens_NL.shape[1]), "peak_rss_mb": peak_rss_mb()})


if __name__ == "__main__":
    main()
