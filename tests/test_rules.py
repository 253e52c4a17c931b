"""The rule family (paper-facts.md §1) and the fixed-point format's overflow proof."""

import numpy as np
import pytest
import torch

from nca_datagen.config import MAX_STATES, NCAConfig
from nca_datagen.kernels.common import INT32_LIMIT, RolloutSpec
from nca_datagen.kernels.reference import logits_reference, rollout_reference, step_reference
from nca_datagen.rules import (
    TRUNC_STD_CORRECTION,
    fixed_point_bounds,
    float_logits,
    fold_first_layer,
    sample_floats,
    sample_rule_floats,
    sample_rules,
)
from nca_datagen.seeds import trajectory_inputs

PAPER = NCAConfig()


def test_folded_lookup_equals_wrap_padded_conv():
    """The lookup tables in float64 give the reference network's logits (`float_logits`, the conv itself)."""
    n = 10
    k1, k2, k3 = sample_rule_floats(PAPER, 0, 0, 7)
    table = fold_first_layer(k1)
    state = np.random.default_rng(1).integers(0, n, (12, 12))
    hid_lookup = np.zeros((12, 12, k1.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            hid_lookup += table[3 * dy + dx][np.roll(state, (1 - dy, 1 - dx), axis=(0, 1))]
    logits_lookup = np.maximum(hid_lookup @ k2, 0) @ k3
    logits_conv = float_logits(state[None], k1[None], k2[None], k3[None])[0]
    np.testing.assert_allclose(logits_lookup, logits_conv, rtol=0, atol=1e-12)
    # states 0 and n-1 light two padded channels, the others one
    assert np.allclose(table[:, 0], k1[:, :, 1].reshape(9, -1) + k1[:, :, n + 1].reshape(9, -1))
    assert np.allclose(table[:, n - 1], k1[:, :, 0].reshape(9, -1) + k1[:, :, n].reshape(9, -1))
    assert np.allclose(table[:, 3], k1[:, :, 4].reshape(9, -1))


def test_float_network_wraps_the_channel_axis():
    """A rule whose only nonzero first-layer weight reads padded channel 0 (state n-1 wrapped in) and sees it
    at the centre: a cell's logits move iff it is in state n-1; without the channel wrap nothing would."""
    n = 4
    k1 = np.zeros((1, 3, 3, n + 2, 1))
    k1[0, 1, 1, 0, 0] = 1.0
    k2, k3 = np.ones((1, 1, 1)), np.arange(n, dtype=float).reshape(1, 1, n)
    state = np.random.default_rng(0).integers(0, n, (1, 5, 6))
    logits = float_logits(state, k1, k2, k3)
    assert np.array_equal(logits.argmax(-1), np.where(state == n - 1, n - 1, 0))


def test_sample_floats_stacks_the_per_rule_draws():
    ids = [5, 0, 123456]
    stacked = sample_floats(PAPER, 3, 1, ids)
    for i, r in enumerate(ids):
        for layer, one in zip(stacked, sample_rule_floats(PAPER, 3, 1, r), strict=True):
            assert np.array_equal(layer[i], one)


def test_kernel_stds_match_lecun_normal():
    draws = [sample_rule_floats(PAPER, 3, 0, r) for r in range(300)]
    for layer, target, fan_in in zip(range(3), (0.096, 0.5, 0.25), (108, 4, 16), strict=True):
        w = np.concatenate([d[layer].ravel() for d in draws])
        assert abs(w.std() / target - 1) < 0.05, (layer, w.std(), target)
        limit = 2 * fan_in**-0.5 / TRUNC_STD_CORRECTION  # truncated at +-2 units of the pre-scaling std
        assert limit * 0.95 < np.abs(w).max() <= limit
        assert abs(w.mean()) < 0.05 * target


@pytest.mark.parametrize("states", range(2, MAX_STATES + 1))
def test_no_intermediate_can_overflow_int32(states):
    """The proof: worst-case magnitudes from the truncation bounds stay inside int32 for every alphabet."""
    cfg = NCAConfig(states=states, patch=1)
    bounds = fixed_point_bounds(cfg)
    assert max(bounds.values()) <= INT32_LIMIT, bounds
    # ... and the sampler never exceeds the per-weight bound the proof assumes
    t = sample_rules(cfg, 0, 0, range(50))
    assert np.abs(t.w1_RKSC).max() <= bounds["w1_entry"]
    assert np.abs(t.w2_RCJ).max() <= bounds["w2"] and np.abs(t.w3_RJS).max() <= bounds["w3"]


@pytest.mark.parametrize("states", [2, 10])
def test_adversarial_rule_reaches_but_never_exceeds_the_bound(states):
    """All weights at their maximum, all aligned: the reference's int64 logits equal the proven bound."""
    cfg = NCAConfig(states=states, patch=1, grid=(3, 3), temperature=0.0)
    b = fixed_point_bounds(cfg)
    c1, c2 = cfg.hidden
    w1 = torch.full((1, 9, states, c1), b["w1_entry"], dtype=torch.long)
    w2 = torch.full((1, c1, c2), b["w2"], dtype=torch.long)
    w3 = torch.full((1, c2, states), b["w3"], dtype=torch.long)
    spec = RolloutSpec.from_config(cfg)
    state = torch.zeros(1, 3, 3, dtype=torch.long)
    assert int(logits_reference(state, w1, w2, w3, spec).max()) == b["logits"] <= INT32_LIMIT
    assert b["hidden_preact"] == c1 * b["w2"] * b["h"] + spec.hidden_round <= INT32_LIMIT
    step_reference(state, w1, w2, w3, torch.zeros(1, dtype=torch.long), 0, spec, torch.zeros(4096, dtype=torch.long))


def test_config_that_could_overflow_is_rejected():
    with pytest.raises(ValueError, match="overflow int32"):
        NCAConfig(temperature=100.0)
    with pytest.raises(ValueError, match="overflow int32"):
        NCAConfig(identity_bias=1000.0)


def test_rule_draws_depend_only_on_their_ids():
    a = sample_rules(PAPER, 5, 0, [3, 9, 4])
    b = sample_rules(PAPER, 5, 0, [4, 3])
    assert np.array_equal(a.w1_RKSC[0], b.w1_RKSC[1]) and np.array_equal(a.w3_RJS[2], b.w3_RJS[0])
    val = sample_rules(PAPER, 5, 1, [3])
    other_seed = sample_rules(PAPER, 6, 0, [3])
    assert not np.array_equal(a.w1_RKSC[0], val.w1_RKSC[0])
    assert not np.array_equal(a.w1_RKSC[0], other_seed.w1_RKSC[0])


def test_initial_state_is_softmax_of_one_gaussian():
    states, keys = trajectory_inputs(PAPER, 0, 0, [0] * 400, range(400))
    assert states.dtype == np.uint8 and states.shape == (400, 12, 12) and keys.dtype == np.uint32
    assert len(set(keys.tolist())) == 400
    counts = np.stack([np.bincount(s.ravel(), minlength=10) for s in states])
    # one dominant colour per simulation on average, never a uniform draw: softmax(z) with z ~ N(0, I)
    top_share = counts.max(1) / 144
    assert 0.25 < top_share.mean() < 0.5
    again, _ = trajectory_inputs(PAPER, 0, 0, [0], [17])
    assert np.array_equal(again[0], states[17])


class FloatWatch(torch.overrides.TorchFunctionMode):
    """Records the dtype of every tensor a torch function returns."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor):
                self.dtypes.add(t.dtype)
        return out


@pytest.mark.parametrize("temperature", [0.0, 1e-4, 1.0])
def test_rollout_never_touches_floats(temperature):
    cfg = NCAConfig(frames=3, temperature=temperature, identity_bias=0.5)
    spec = RolloutSpec.from_config(cfg)
    t = sample_rules(cfg, 0, 0, [0, 1])
    states, keys = trajectory_inputs(cfg, 0, 0, [0, 1], [0, 0])
    args = [torch.from_numpy(a) for a in (t.w1_RKSC, t.w2_RCJ, t.w3_RJS, np.arange(2), states, keys.astype(np.int64))]
    with FloatWatch() as watch:
        rollout_reference(*args, spec)
    assert watch.dtypes and not any(d.is_floating_point for d in watch.dtypes), watch.dtypes
