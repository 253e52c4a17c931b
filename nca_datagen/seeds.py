"""Per-trajectory randomness: initial states and noise keys, derived from (run seed, split, rule id, sim).

Nothing here touches global RNG state. Each trajectory has its own numpy SeedSequence, so a sequence is the
same whichever batch, shard order, worker or device produces it. The initial state follows the reference:
z ~ N(0, I_n) once per trajectory, then every cell i.i.d. ~ softmax(z). The noise key seeds the rollout's
counter-based hash (see `nca_datagen.kernels.common`).
"""

from __future__ import annotations

import numpy as np

from nca_datagen.rules import STREAM_INIT, STREAM_NOISE, STREAM_PROBE


def _entropy(seed: int, split_id: int, rule_id: int, sim: int, probe: bool) -> list[int]:
    return [seed, split_id, rule_id, STREAM_PROBE if probe else STREAM_INIT, sim]


def initial_state(cfg, seed: int, split_id: int, rule_id: int, sim: int, probe: bool = False) -> np.ndarray:
    """(H, W) uint8 cells: z ~ N(0, I_n), cells i.i.d. ~ softmax(z)."""
    rng = np.random.default_rng(np.random.SeedSequence(_entropy(seed, split_id, rule_id, sim, probe)))
    z = rng.standard_normal(cfg.states)
    p = np.exp(z - z.max())
    cdf = np.cumsum(p / p.sum())
    u = rng.random(cfg.grid)
    # inverse-CDF draw; the clip guards the last bin against cdf[-1] rounding to just below 1
    return np.minimum(np.searchsorted(cdf, u, side="right"), cfg.states - 1).astype(np.uint8)


def noise_key(seed: int, split_id: int, rule_id: int, sim: int, probe: bool = False) -> int:
    """A uint32 key for the rollout's hash noise, on its own stream."""
    entropy = [*_entropy(seed, split_id, rule_id, sim, probe), STREAM_NOISE]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])


def trajectory_inputs(cfg, seed: int, split_id: int, rule_ids, sims, probe: bool = False):
    """Initial states (B, H, W) uint8 and noise keys (B,) uint32 for the (rule id, sim) pairs given."""
    pairs = list(zip(rule_ids, sims, strict=True))
    states = np.empty((len(pairs), *cfg.grid), dtype=np.uint8)
    keys = np.empty(len(pairs), dtype=np.uint32)
    for i, (rule_id, sim) in enumerate(pairs):
        states[i] = initial_state(cfg, seed, split_id, int(rule_id), int(sim), probe)
        keys[i] = noise_key(seed, split_id, int(rule_id), int(sim), probe)
    return states, keys
