"""`generate_shard`: the data flow for one shard, as a pure function of (config, split, shard index).

    candidate rules -> probe rollout -> gzip ratio -> keep? -> rollouts -> patch tokens -> sample stats

The last stage needs only the tokens, so it can run elsewhere: `generate_shard(..., stats=False)` stops before
it and `add_sample_stats` finishes the shard later (GPU builds do that in the CPU writer tasks, keeping the
generator actors, one CPU each, for work that feeds the GPU). Either way the shard's bytes are the same.

Shard `i` owns candidate rule ids `i * RULE_ID_STRIDE + j`, j = 0, 1, 2, ...; it probes them in order and keeps
the first `rules_per_shard` whose ratio falls inside the band. Candidates are probed in batches for speed, but
the kept set is always the first K in id order, so the output does not depend on batch size, backend, device
or which machine runs it. Validation rules differ from training rules because the split is part of every seed.
Writing the shard to disk is `nca_datagen.shards`' job; this returns arrays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from nca_datagen.complexity import grid_stats, gzip_ratio, sequence_ratios
from nca_datagen.config import RULE_ID_STRIDE, DatasetConfig, split_id
from nca_datagen.errors import BandUnreachable
from nca_datagen.rollout import rollout_frames, rollout_tokens
from nca_datagen.rules import PROBE_SIM, RuleTables, sample_rules
from nca_datagen.seeds import trajectory_inputs
from nca_datagen.tokenizer import encode_patches, sequence_to_frames

PROBE_BATCH_MIN = 64  # probe at least this many candidates per batch (amortises kernel launches)
PROBE_BATCH_BYTES = 256 * 2**20  # ... but hold at most this much of their frames and tokens at once (large grids)


@dataclass
class ShardData:
    """What one shard holds before it is written. Legend: N samples, L tokens, M candidates probed."""

    split: str
    shard_index: int
    tokens_NL: np.ndarray  # uint16 token sequences
    columns: dict[str, np.ndarray]  # per-sample metadata, each (N,): rule_id, sim, complexity, ...
    candidate_ratio_M: np.ndarray  # probe ratio of every candidate, in id order
    counts: dict[str, int]  # candidates, kept, too_simple, too_complex
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (not part of the data)

    @property
    def num_samples(self) -> int:
        return self.tokens_NL.shape[0]


def probe_rollouts(config: DatasetConfig, split: str, rule_ids, *, frames: int | None = None, backend=None,
                   device=None, tables: RuleTables | None = None):
    """Probe trajectories (B, F, H, W) of the candidates and their filter ratios (B,).

    The ratio always uses the first `probe_frames` frames; `frames` (for pictures) may roll out longer, which
    leaves those frames unchanged (frame k is the state after burn-in + k steps). `tables`: the candidates'
    rules, if the caller has them already (else sampled here).
    """
    cfg = config.nca.probe(max(frames or 0, config.probe_frames))
    sid = split_id(split)
    if tables is None:
        tables = sample_rules(cfg, config.seed, sid, rule_ids)
    states, keys = trajectory_inputs(cfg, config.seed, sid, rule_ids, [PROBE_SIM] * len(rule_ids), probe=True)
    frames_BFHW = rollout_frames(cfg, tables, np.arange(len(rule_ids)), states, keys, backend=backend, device=device)
    ratios = np.array([gzip_ratio(ids) for ids in encode_patches(frames_BFHW[:, : config.probe_frames], cfg)])
    return frames_BFHW[:, : frames or config.probe_frames], ratios


def probe_ratios(config: DatasetConfig, split: str, rule_ids, *, backend=None, device=None,
                 tables: RuleTables | None = None) -> np.ndarray:
    """The paper's filter statistic for each candidate: gzip ratio of its probe trajectory's patch tokens."""
    return probe_rollouts(config, split, rule_ids, backend=backend, device=device, tables=tables)[1]


@dataclass
class Selection:
    """The outcome of a shard's filter: kept rule ids (with their rule tables), every considered candidate's
    probe ratio, and the filter's counts."""

    rule_ids: np.ndarray
    tables: RuleTables
    considered_ratios: np.ndarray
    counts: dict[str, int]


def select_rules(config: DatasetConfig, split: str, shard_index: int, *, backend=None, device=None) -> Selection:
    """Probe candidates in id order until `rules_per_shard` are kept.

    The kept rules' tables come back too: the shard's rollouts reuse them rather than sampling the same rules
    again (a rule depends only on its id, and the probe differs from the main rollout only in frames; that
    saved ~7 ns of host time per stored token)."""
    need, limit = config.rules_per_shard, config.candidate_limit
    first = shard_index * RULE_ID_STRIDE
    ratios: list[np.ndarray] = []
    kept: list[int] = []
    kept_tables: list[RuleTables] = []
    probed = 0
    while len(kept) < need:
        if probed >= limit:
            raise _unreachable(config, np.concatenate(ratios), split, shard_index)
        batch = min(limit - probed, max(PROBE_BATCH_MIN, 2 * (need - len(kept))), _probe_batch_cap(config))
        ids = np.arange(first + probed, first + probed + batch)
        tables = sample_rules(config.nca, config.seed, split_id(split), ids)
        r = probe_ratios(config, split, ids, backend=backend, device=device, tables=tables)
        ratios.append(r)
        inside = np.flatnonzero(config.band.contains(r))
        kept.extend(int(i) for i in ids[inside])
        kept_tables.append(tables.select(inside))
        probed += batch
    all_ratios = np.concatenate(ratios)
    last = kept[need - 1] - first + 1  # candidates up to and including the K-th kept one
    considered = all_ratios[:last]  # candidates after the K-th kept one were probed but do not count
    counts = {
        "candidates": last,
        "kept": need,
        "too_simple": int((considered <= config.band.lo).sum()),
        "too_complex": int((considered >= config.band.hi).sum()),
    }
    tables = RuleTables.concat(kept_tables).select(slice(0, need))
    return Selection(np.array(kept[:need], dtype=np.int64), tables, considered, counts)


def _probe_batch_cap(config: DatasetConfig) -> int:
    """Candidates whose probe frames (uint8 cells) and tokens (int32 for gzip) fit `PROBE_BATCH_BYTES`."""
    per_candidate = config.probe_frames * config.nca.grid[0] * config.nca.grid[1] * 5
    return max(1, PROBE_BATCH_BYTES // per_candidate)


def _unreachable(config, ratios, split, shard_index) -> BandUnreachable:
    lo, hi = (float(ratios.min()), float(ratios.max())) if len(ratios) else (float("nan"),) * 2
    kept = int(config.band.contains(ratios).sum())
    return BandUnreachable(
        f"{split} shard {shard_index}: band {config.band} kept {kept} of {len(ratios)} candidate rules, fewer "
        f"than the {config.rules_per_shard} a shard needs; observed probe ratios span {lo:.3f}..{hi:.3f} "
        f"(uniform random tokens score about 0.669). Choose a band inside that range, or fewer rules per shard.")


def generate_shard(config: DatasetConfig, split: str, shard_index: int, *, backend=None, device=None,
                   stats: bool = True) -> ShardData:
    """Sample, filter, roll out and tokenize one shard. Same arguments, same bytes, on any backend.

    `stats=False` leaves the per-sample statistics to a later `add_sample_stats` (same result)."""
    if shard_index < 0:
        raise ValueError(f"shard_index={shard_index}: must be >= 0")
    sid = split_id(split)
    cfg = config.nca
    t0 = time.perf_counter()
    chosen = select_rules(config, split, shard_index, backend=backend, device=device)
    rule_ids, candidate_ratios, counts = chosen.rule_ids, chosen.considered_ratios, chosen.counts
    t1 = time.perf_counter()
    sims = config.sims_per_rule
    rule_of_sample = np.repeat(np.arange(len(rule_ids)), sims)
    sample_rule_ids = rule_ids[rule_of_sample]
    sample_sims = np.tile(np.arange(sims), len(rule_ids))
    states, keys = trajectory_inputs(cfg, config.seed, sid, sample_rule_ids, sample_sims)
    tokens = rollout_tokens(cfg, chosen.tables, rule_of_sample, states, keys, backend=backend, device=device)
    t2 = time.perf_counter()
    probe_of_rule = dict(zip(_candidate_ids(shard_index, len(candidate_ratios)), candidate_ratios, strict=True))
    columns = {
        "rule_id": sample_rule_ids,
        "sim": sample_sims,
        "probe_complexity": np.array([probe_of_rule[r] for r in sample_rule_ids], dtype=np.float64),
    }
    data = ShardData(split, shard_index, tokens, columns, candidate_ratios, counts,
                     timings={"probe_filter": t1 - t0, "rollout_tokenize": t2 - t1})
    return add_sample_stats(data, config) if stats else data


def add_sample_stats(data: ShardData, config: DatasetConfig) -> ShardData:
    """Add the per-sample statistics of the tokens (gzip complexity, grid dynamics); idempotent, in place."""
    if "complexity" in data.columns:
        return data
    t0 = time.perf_counter()
    cfg = config.nca
    data.columns["complexity"] = sequence_ratios(data.tokens_NL, cfg.tokens_per_frame, config.probe_frames)
    data.columns.update(grid_stats(sequence_to_frames(data.tokens_NL, cfg)))
    data.timings["stats"] = time.perf_counter() - t0
    return data


def _candidate_ids(shard_index: int, count: int) -> np.ndarray:
    return shard_index * RULE_ID_STRIDE + np.arange(count)
