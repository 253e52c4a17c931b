"""Config validation: every bad value fails with a message that names it and says how to fix it."""

import pytest

from nca_datagen.config import DatasetConfig, NCAConfig


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"grid": (12, 13)}, "not divisible by patch"),
        ({"grid": (2, 2), "patch": 1}, "at least 3"),
        ({"states": 1}, "states=1"),
        ({"states": 65, "patch": 1}, "states=65"),
        ({"states": 16}, "uint16"),
        ({"patch": 0}, "patch=0"),
        ({"hidden": (4, 0)}, "hidden"),
        ({"burn_in": -1}, "burn_in=-1"),
        ({"frames": 0}, "frames=0"),
        ({"frame_stride": 0}, "frame_stride=0"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"identity_bias": -2.0}, "identity_bias=-2.0"),
        ({"weight_frac_bits": 20}, "weight_frac_bits=20"),
    ],
)
def test_bad_nca_config(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        NCAConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"seed": -1}, "seed=-1"),
        ({"sims_per_rule": 0}, "sims_per_rule=0"),
        ({"rules_per_shard": 0}, "rules_per_shard=0"),
        ({"probe_frames": 0}, "probe_frames=0"),
        ({"band": "1.0:0.5"}, "band"),
        # a shard owns 2^20 candidate ids: 10,486 rules would need 1,048,600 candidates (an assert fired per shard)
        ({"rules_per_shard": 10_486}, "choose at most 10,485 rules per shard"),
        ({"max_candidates_per_shard": 2**20 + 1}, "a shard owns 1,048,576 candidate ids"),
        ({"rules_per_shard": 10_000, "sims_per_rule": 101}, "at most 1,000,000 .sample keys"),
    ],
)
def test_bad_dataset_config(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        DatasetConfig(**kwargs)


def test_the_largest_shard_the_candidate_ids_allow_is_accepted():
    assert DatasetConfig(rules_per_shard=10_485).candidate_limit == 1_048_500


def test_paper_defaults():
    cfg = NCAConfig()
    assert (cfg.grid, cfg.states, cfg.patch, cfg.hidden) == ((12, 12), 10, 2, (4, 16))
    assert (cfg.burn_in, cfg.frames, cfg.frame_stride, cfg.temperature) == (10, 27, 1, 1e-4)
    assert cfg.seq_len == 1026 and cfg.vocab_size == 10002 and cfg.steps == 36
    d = DatasetConfig()
    assert (d.band.lo, d.band.hi, d.sims_per_rule, d.probe_frames) == (0.5, 1.0, 10, 10)


def test_dataset_config_round_trips_through_dict():
    cfg = DatasetConfig(nca=NCAConfig(grid=(12, 18), patch=3, states=3), band="30-40%", seed=7)
    assert DatasetConfig.from_dict(cfg.to_dict()) == cfg
