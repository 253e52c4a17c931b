"""Host CPU per stored token, stage by stage: what the CPUs must do for each token when a GPU does the rollout.

    python -m benchmarks.bench_host [--shards 6] [--rules-per-shard 50]

A GPU build moves only the rollouts (probe and main) to the device; seeding, rule sampling, the probe's gzip
filter, the per-sample statistics, tar, zstd and the write stay on the host, in the generator actors (one
CPU each) and the CPU writer tasks. This times each of those stages on real paper-config shards, one thread
(NUMBA_NUM_THREADS=1 is set before numba loads), best of `--repeat` per stage, in nanoseconds of CPU time per
stored token, and adds them up per side. The numba rollout is timed too, for scale. With the H200 target
(164M tokens in < 10 s on 16 cores) every stage here is a share of a ~1 us/token/core budget.
Output: benchmarks/results/host_stages.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # before numba is imported: one thread, comparable CPU time

import numpy as np

from benchmarks.report import write_report
from nca_datagen import shards
from nca_datagen.complexity import grid_stats, gzip_ratio, sequence_ratios
from nca_datagen.config import DatasetConfig, split_id
from nca_datagen.generate import RULE_ID_STRIDE, generate_shard, probe_rollouts, select_rules
from nca_datagen.rollout import rollout_tokens
from nca_datagen.rules import PROBE_SIM, sample_rules
from nca_datagen.seeds import trajectory_inputs
from nca_datagen.tokenizer import encode_patches, sequence_to_frames


def cpu_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def shard_stages(config: DatasetConfig, index: int, repeat: int, out: str) -> dict[str, float]:
    """CPU seconds of each host stage of one shard (and of its rollouts, for scale)."""
    cfg, sid = config.nca, split_id("train")
    chosen = select_rules(config, "train", index)
    kept, considered = chosen.rule_ids, chosen.considered_ratios
    candidates = index * RULE_ID_STRIDE + np.arange(len(considered))  # every candidate the filter looked at
    probe_cfg = cfg.probe(config.probe_frames)
    probe_frames, _ = probe_rollouts(config, "train", candidates)
    rule_of_sample = np.repeat(np.arange(len(kept)), config.sims_per_rule)
    sims = np.tile(np.arange(config.sims_per_rule), len(kept))
    tables = chosen.tables
    states, keys = trajectory_inputs(cfg, config.seed, sid, kept[rule_of_sample], sims)
    tokens = rollout_tokens(cfg, tables, rule_of_sample, states, keys)
    data = generate_shard(config, "train", index)
    frames = sequence_to_frames(tokens, cfg)
    probe_ids = encode_patches(probe_frames, probe_cfg)
    return {
        "generator: probe seeding + rules": cpu_time(lambda: (
            trajectory_inputs(probe_cfg, config.seed, sid, candidates, [PROBE_SIM] * len(candidates), probe=True),
            sample_rules(cfg, config.seed, sid, candidates)), repeat),
        "generator: probe gzip filter": cpu_time(lambda: [gzip_ratio(ids) for ids in probe_ids], repeat),
        # the kept rules' tables come from the probe's (select_rules): the main rollout only seeds trajectories
        "generator: seeding": cpu_time(lambda: trajectory_inputs(cfg, config.seed, sid, kept[rule_of_sample], sims),
                                       repeat),
        "writer: decode frames": cpu_time(lambda: sequence_to_frames(tokens, cfg), repeat),
        "writer: gzip complexity": cpu_time(lambda: sequence_ratios(tokens, cfg.tokens_per_frame,
                                                                    config.probe_frames), repeat),
        "writer: grid stats": cpu_time(lambda: grid_stats(frames), repeat),
        "writer: tar + zstd + write": cpu_time(lambda: shards.write_shard(data, out, recipe="0" * 16), repeat),
        "(GPU on a GPU build) numba rollout, main": cpu_time(
            lambda: rollout_tokens(cfg, tables, rule_of_sample, states, keys), repeat),
    }, tokens.size


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--rules-per-shard", type=int, default=50, help="50 x 10 sims = the build's 500-sample shards")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    config = DatasetConfig(rules_per_shard=args.rules_per_shard)
    generate_shard(config, "train", 10_000)  # warm-up: numba compile / cache load
    totals: dict[str, float] = {}
    tokens = 0
    with tempfile.TemporaryDirectory() as out:
        for index in range(args.shards):
            stages, n = shard_stages(config, index, args.repeat, out)
            tokens += n
            for name, seconds in stages.items():
                totals[name] = totals.get(name, 0.0) + seconds
    rows = [{"stage": name, "ns_per_token": round(seconds / tokens * 1e9, 1)} for name, seconds in totals.items()]
    for side in ("generator", "writer"):
        total = sum(r["ns_per_token"] for r in rows if r["stage"].startswith(side))
        rows.append({"stage": f"= {side} total", "ns_per_token": round(total, 1)})
    for row in rows:
        print(row)
    write_report("host_stages", rows, meta={"shards": args.shards, "tokens": tokens, "threads": 1,
                                            "config": "paper 12x12 n10 p2, 50%+, 500-sample shards"})
    host_ns = sum(r["ns_per_token"] for r in rows if r["stage"].startswith("= "))
    write_report("host_feed", feed_rows(host_ns), meta={"host_ns_per_token": host_ns, "cores": CORES,
                                                        "from": "host_stages (one core)"})


CORES = 16  # an H200 machine's CPU cores
# What the host must feed: the paper's 184.7M stored tokens in 10 s (the build target) or 5 s (its moonshot), and
# the kernel's own target rate.
TARGETS = {"paper build in 10 s": 184.68e6 / 10, "paper build in 5 s": 184.68e6 / 5, "kernel target": 2e9}


def feed_rows(host_ns: float, cores: int = CORES) -> list[dict]:
    """The arithmetic: host CPU time per stored token -> the rate `cores` cores sustain, against each target."""
    feed = cores / (host_ns * 1e-9)
    return [{"target": name, "tokens_per_s": f"{rate:.3g}", "cores_needed": round(rate * host_ns * 1e-9, 1),
             f"{cores}_cores_feed_x": round(feed / rate, 2)} for name, rate in TARGETS.items()]


if __name__ == "__main__":
    main()
