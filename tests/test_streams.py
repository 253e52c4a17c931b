"""Vectorised seeding (`nca_datagen.streams`) against numpy itself, and the batched paths built on it.

The batched functions must give exactly what the one-at-a-time definitions give: they define every dataset's
bytes, so a mismatch would silently change the data.
"""

import numpy as np
import pytest

from nca_datagen import rules, streams
from nca_datagen.config import NCAConfig
from nca_datagen.kernels.common import layer_frac_bits
from nca_datagen.rules import fold_first_layer, quantise, sample_rule_floats, sample_rules
from nca_datagen.seeds import initial_state, noise_key, trajectory_inputs

# values at every word-length edge: 0 is one zero word, 2^32 - 1 the largest one-word value
EDGES = [0, 1, 2**32 - 1, 2**32, 2**63, 2**64 - 1]


def entropy_columns(rows: int, width: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = [rng.integers(0, 2**63, rows, dtype=np.uint64) >> rng.integers(0, 64, rows, dtype=np.uint64)
            for _ in range(width)]
    for i, v in enumerate(EDGES):
        cols[i % width][i] = v
    return cols


@pytest.mark.parametrize("width", [1, 2, 4, 5, 7])  # pools shorter than, equal to and longer than 4 words
def test_seed_states_equal_numpy_seed_sequence(width):
    cols = entropy_columns(60, width, width)
    got = streams.seed_states(cols, 9)
    for i in range(60):
        want = np.random.SeedSequence([int(c[i]) for c in cols]).generate_state(9, np.uint32)
        assert np.array_equal(got[i], want), i


def test_generators_start_where_default_rng_starts():
    cols = entropy_columns(40, 5, 0)
    for i, rng in enumerate(streams.generators(cols)):
        want = np.random.default_rng(np.random.SeedSequence([int(c[i]) for c in cols]))
        assert np.array_equal(rng.standard_normal(13), want.standard_normal(13))
        assert np.array_equal(rng.random(7), want.random(7))
        assert np.array_equal(rng.integers(0, 1000, 5), want.integers(0, 1000, 5))


def test_bad_entropy_is_refused():
    with pytest.raises(ValueError, match="differ in length"):
        streams.seed_states([np.arange(3), np.arange(2)], 1)
    assert streams.seed_states([np.arange(0)], 2).shape == (0, 2)


@pytest.mark.parametrize("cfg", [NCAConfig(), NCAConfig(states=2, grid=(7, 9), patch=1),
                                 NCAConfig(states=64, grid=(12, 18), patch=1)], ids=["paper", "n2-7x9", "n64"])
@pytest.mark.parametrize("probe", [False, True])
def test_trajectory_inputs_equal_the_per_trajectory_definition(cfg, probe):
    rng = np.random.default_rng(cfg.states)
    rule_ids = rng.integers(0, 2**41, 150)
    sims = rng.integers(0, 10, 150)
    seed = 2**33 + 5  # a two-word run seed
    states, keys = trajectory_inputs(cfg, seed, 1, rule_ids, sims, probe)
    for i, (r, s) in enumerate(zip(rule_ids.tolist(), sims.tolist(), strict=True)):
        assert np.array_equal(states[i], initial_state(cfg, seed, 1, r, s, probe)), i
        assert keys[i] == noise_key(seed, 1, r, s, probe), i


@pytest.mark.parametrize("states", [2, 10, 64])
@pytest.mark.parametrize("budget", ["normal", "overrun"])
def test_sample_rules_equal_the_per_rule_definition(states, budget, monkeypatch):
    if budget == "overrun":  # streams read too short: most rules take the fallback path, same values
        monkeypatch.setattr(rules, "_stream_budget", lambda draws: draws + 8)
    cfg = NCAConfig(states=states, patch=1)
    rule_ids = np.random.default_rng(1).integers(0, 2**42, 80)
    tables = sample_rules(cfg, 9, 1, rule_ids)
    f1, f2, f3 = layer_frac_bits(cfg.weight_frac_bits)
    for i, r in enumerate(rule_ids.tolist()):
        k1, k2, k3 = sample_rule_floats(cfg, 9, 1, r)
        assert np.array_equal(tables.w1_RKSC[i], quantise(fold_first_layer(k1), f1))
        assert np.array_equal(tables.w2_RCJ[i], quantise(k2, f2))
        assert np.array_equal(tables.w3_RJS[i], quantise(k3, f3))


def test_empty_batches_keep_their_shapes_and_dtypes():
    tables = sample_rules(NCAConfig(), 0, 0, [])
    assert tables.w1_RKSC.shape == (0, 9, 10, 4) and tables.w1_RKSC.dtype == np.int32
    states, keys = trajectory_inputs(NCAConfig(), 0, 0, [], [])
    assert states.shape == (0, 12, 12) and states.dtype == np.uint8 and keys.dtype == np.uint32
    with pytest.raises(ValueError, match="one sim per trajectory"):
        trajectory_inputs(NCAConfig(), 0, 0, [1, 2], [0])
