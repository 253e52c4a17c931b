"""The numba CPU rollout (`nca_datagen.kernels.cpu`) against the plain-torch reference, bit for bit.

Every case builds its inputs through the package's public functions (`sample_rules`, `trajectory_inputs`),
maps trajectories to rules in shuffled order with repeats, and compares whole frame stacks and token
sequences with `np.array_equal`. Configs are small (few frames) so the torch reference stays fast; the
numba kernel compiles once per machine (`cache=True`), which dominates this file's first run.
"""

import numpy as np
import pytest
import torch

from nca_datagen.config import NCAConfig
from nca_datagen.kernels import cpu, reference
from nca_datagen.kernels.common import RolloutSpec, hash32
from nca_datagen.rollout import rollout_frames, rollout_tokens
from nca_datagen.rules import sample_rules
from nca_datagen.seeds import trajectory_inputs
from nca_datagen.tokenizer import frames_to_sequence


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The reference's small int64 ops gain nothing from threads, and on a busy 2-core box spinning torch
    threads made it 10x slower (measured 5.7 s vs 0.5 s for 37 trajectories); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(cfg: NCAConfig, batch: int, rules: int = 4, seed: int = 7):
    """Tables for `rules` rules, and `batch` trajectories mapped to them shuffled, several per rule."""
    rule_ids = np.arange(100, 100 + rules)
    tables = sample_rules(cfg, seed, 0, rule_ids)
    rng = np.random.default_rng(batch)
    rule_B = rng.permutation(np.arange(batch) % rules)
    states, keys = trajectory_inputs(cfg, seed, 0, rule_ids[rule_B], np.arange(batch))
    return tables, rule_B, states, keys


def run_both(cfg: NCAConfig, tables, rule_B, states, keys):
    """(numba frames, numba tokens, reference frames, reference tokens) as numpy arrays."""
    spec = RolloutSpec.from_config(cfg)
    args = (tables.w1_RKSC, tables.w2_RCJ, tables.w3_RJS, rule_B, states, keys)
    t_args = [torch.from_numpy(np.ascontiguousarray(a)) for a in (*args[:5], keys.astype(np.int64))]
    return (cpu.rollout_cpu(*args, spec), cpu.rollout_tokens_cpu(*args, spec),
            reference.rollout_reference(*t_args, spec).numpy(),
            reference.rollout_tokens_reference(*t_args, spec).numpy())


def assert_same(cfg: NCAConfig, batch: int, rules: int = 4):
    frames, tokens, ref_frames, ref_tokens = run_both(cfg, *make_inputs(cfg, batch, rules))
    assert frames.shape == ref_frames.shape == (batch, cfg.frames, *cfg.grid)
    bad = np.argwhere(frames != ref_frames)
    assert bad.size == 0, f"{len(bad)} cells differ, first (b, f, y, x) = {bad[:5].tolist()}"
    assert tokens.shape == ref_tokens.shape == (batch, cfg.seq_len)
    assert np.array_equal(tokens, ref_tokens)
    assert np.array_equal(tokens, frames_to_sequence(frames, cfg))  # fused tokens == tokenizer.py


SMALL = dict(burn_in=3, frames=5)  # 8 steps: enough to leave the initial state, cheap for the reference

CASES = {
    "paper-12x12-n10-p2": (NCAConfig(), 37),
    "odd-7x9-p1": (NCAConfig(grid=(7, 9), patch=1, **SMALL), 3),
    "wide-12x18-p3-n3": (NCAConfig(grid=(12, 18), patch=3, states=3, **SMALL), 3),  # 3^9 + 2 ids fit uint16
    "alphabet-2": (NCAConfig(states=2, **SMALL), 3),
    "alphabet-15-p2-single-lookups": (NCAConfig(states=15, **SMALL), 3),  # past TRIPLE_MAX_STATES
    "alphabet-64-p1": (NCAConfig(states=64, grid=(6, 6), patch=1, **SMALL), 3),
    "tau-0": (NCAConfig(temperature=0.0, **SMALL), 37),
    "tau-1": (NCAConfig(temperature=1.0, **SMALL), 3),
    "identity-bias-2": (NCAConfig(identity_bias=2.0, **SMALL), 3),
    "burn-in-0-stride-2": (NCAConfig(burn_in=0, frames=4, frame_stride=2), 3),
    "hidden-3x8": (NCAConfig(hidden=(3, 8), **SMALL), 3),
    "hidden-6x5-two-words": (NCAConfig(hidden=(6, 5), **SMALL), 3),  # 6 channels need 2 packed words
    "batch-1": (NCAConfig(**SMALL), 1),
    "smallest-3x5-p1": (NCAConfig(grid=(3, 5), patch=1, **SMALL), 3),
    "big-24x20-three-chunks": (NCAConfig(grid=(24, 20), **SMALL), 3),  # 526 positions > CHUNK = 256
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name):
    cfg, batch = CASES[name]
    assert_same(cfg, batch)


def test_noise_path_is_exercised_at_paper_tau():
    """At tau = 1e-4 a few near-ties are decided by the hash noise: the result must differ from tau = 0
    somewhere (so the skip-the-noise shortcut is really tested) and still match the reference."""
    cfg = NCAConfig(frames=12)
    inputs = make_inputs(cfg, 37)
    noisy, _, ref_noisy, _ = run_both(cfg, *inputs)
    plain, _, ref_plain, _ = run_both(NCAConfig(frames=12, temperature=0.0), *inputs)
    assert np.array_equal(noisy, ref_noisy) and np.array_equal(plain, ref_plain)
    assert not np.array_equal(noisy, plain)


def test_independent_of_batch_composition():
    cfg = NCAConfig(**SMALL)
    tables, rule_B, states, keys = make_inputs(cfg, 9)
    spec = RolloutSpec.from_config(cfg)
    batch = cpu.rollout_cpu(tables.w1_RKSC, tables.w2_RCJ, tables.w3_RJS, rule_B, states, keys, spec)
    for b in (0, 4, 8):
        alone = cpu.rollout_cpu(tables.w1_RKSC, tables.w2_RCJ, tables.w3_RJS, rule_B[b:b + 1], states[b:b + 1],
                                keys[b:b + 1], spec)
        assert np.array_equal(alone[0], batch[b])
    # reordering the batch only reorders the output
    order = np.arange(9)[::-1]
    flipped = cpu.rollout_cpu(tables.w1_RKSC, tables.w2_RCJ, tables.w3_RJS, rule_B[order], states[order],
                              keys[order], spec)
    assert np.array_equal(flipped, batch[order])


def test_dispatcher_numba_equals_torch():
    cfg = NCAConfig(grid=(8, 10), **SMALL)
    tables, rule_B, states, keys = make_inputs(cfg, 5)
    kw = dict(device="cpu")
    frames = rollout_frames(cfg, tables, rule_B, states, keys, backend="numba", **kw)
    assert frames.dtype == np.uint8
    assert np.array_equal(frames, rollout_frames(cfg, tables, rule_B, states, keys, backend="torch", **kw))
    tokens = rollout_tokens(cfg, tables, rule_B, states, keys, backend="numba", **kw)
    assert tokens.dtype == np.uint16
    assert np.array_equal(tokens, rollout_tokens(cfg, tables, rule_B, states, keys, backend="torch", **kw))


def test_empty_batch():
    cfg = NCAConfig(**SMALL)
    tables, _, states, keys = make_inputs(cfg, 2)
    spec = RolloutSpec.from_config(cfg)
    out = cpu.rollout_tokens_cpu(tables.w1_RKSC, tables.w2_RCJ, tables.w3_RJS, np.zeros(0, np.int64),
                                 states[:0], keys[:0], spec)
    assert out.shape == (0, cfg.seq_len)


def test_hash_matches_common():
    from numba import njit

    @njit
    def many(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = cpu._hash32(x[i])
        return out

    x = np.array([0, 1, 2**31, 2**32 - 1, 123456789, 0xDEADBEEF], np.int64)
    assert np.array_equal(many(x), hash32(x).astype(np.int64))


def test_packed_first_layer_roundtrip():
    """Unpacking every lane of the packed table gives back the int32 entries (plus the bias)."""
    cfg = NCAConfig(hidden=(6, 5))
    w1 = sample_rules(cfg, 0, 0, [1, 2]).w1_RKSC
    packed_RWKS, bits, bias9 = cpu.pack_first_layer(w1)
    lanes = 64 // bits
    unpacked = [(packed_RWKS[:, c // lanes] >> (bits * (c % lanes))) & ((1 << bits) - 1) for c in range(6)]
    assert np.array_equal(np.stack(unpacked, -1) - bias9 // 9, w1)
    assert 18 * (bias9 // 9) < 2**bits


def test_overflow_guard():
    cfg = NCAConfig(**SMALL)
    tables, rule_B, states, keys = make_inputs(cfg, 1)
    spec = RolloutSpec.from_config(cfg)
    with pytest.raises(AssertionError, match="overflow int32"):
        cpu.rollout_cpu(tables.w1_RKSC, tables.w2_RCJ * 1000, tables.w3_RJS, rule_B, states, keys, spec)
