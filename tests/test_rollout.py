"""Determinism of the rollout: frames, seeds, batches, orderings and devices (reference backend)."""

import numpy as np
import pytest
import torch

from nca_datagen.config import NCAConfig
from nca_datagen.rollout import resolve_backend, resolve_device, rollout_frames, rollout_tokens
from nca_datagen.rules import sample_rules
from nca_datagen.seeds import trajectory_inputs
from nca_datagen.tokenizer import frames_to_sequence

HAS_CUDA = torch.cuda.is_available()


def inputs(cfg, rules=3, sims=2, seed=0):
    ids = np.arange(rules)
    tables = sample_rules(cfg, seed, 0, ids)
    rule_B = np.repeat(ids, sims)
    states, keys = trajectory_inputs(cfg, seed, 0, rule_B, np.tile(np.arange(sims), rules))
    return tables, rule_B, states, keys


@pytest.mark.parametrize("k", [0, 3, 7])
def test_frame_k_is_the_state_after_burn_in_plus_k_steps(k):
    cfg = NCAConfig(frames=8, temperature=1e-4)
    args = inputs(cfg)
    full = rollout_frames(cfg, *args, backend="torch")
    alone = rollout_frames(NCAConfig(frames=1, burn_in=10 + k), *args, backend="torch")
    assert np.array_equal(full[:, k], alone[:, 0])


def test_burn_in_zero_starts_from_the_initial_state_and_stride_skips_steps():
    cfg = NCAConfig(frames=3, burn_in=0, frame_stride=2)
    tables, rule_B, states, keys = inputs(cfg)
    frames = rollout_frames(cfg, tables, rule_B, states, keys, backend="torch")
    assert np.array_equal(frames[:, 0], states)
    dense = rollout_frames(NCAConfig(frames=5, burn_in=0), tables, rule_B, states, keys, backend="torch")
    assert np.array_equal(frames, dense[:, ::2])


def test_same_seeds_same_bytes_across_runs_batches_and_orderings():
    cfg = NCAConfig(frames=6, temperature=1.0)  # tau = 1: the noise decides many cells
    tables, rule_B, states, keys = inputs(cfg, rules=4, sims=3)
    ref = rollout_tokens(cfg, tables, rule_B, states, keys, backend="torch")
    assert np.array_equal(ref, rollout_tokens(cfg, tables, rule_B, states, keys, backend="torch"))
    perm = np.random.default_rng(0).permutation(len(rule_B))
    shuffled = rollout_tokens(cfg, tables, rule_B[perm], states[perm], keys[perm], backend="torch")
    assert np.array_equal(shuffled, ref[perm])
    singles = [rollout_tokens(cfg, tables, rule_B[i : i + 1], states[i : i + 1], keys[i : i + 1], backend="torch")
               for i in range(len(rule_B))]
    assert np.array_equal(np.concatenate(singles), ref)


def test_noise_matters_at_high_temperature_and_keys_select_it():
    cfg = NCAConfig(frames=4, temperature=1.0)
    tables, rule_B, states, keys = inputs(cfg, rules=2, sims=1)
    a = rollout_frames(cfg, tables, rule_B, states, keys, backend="torch")
    b = rollout_frames(cfg, tables, rule_B, states, keys + 1, backend="torch")
    assert not np.array_equal(a, b)
    argmax = rollout_frames(NCAConfig(frames=4, temperature=0.0), tables, rule_B, states, keys, backend="torch")
    assert np.array_equal(argmax, rollout_frames(NCAConfig(frames=4, temperature=0.0), tables, rule_B, states,
                                                 keys + 1, backend="torch"))


@pytest.mark.parametrize("cfg", [NCAConfig(frames=3), NCAConfig(grid=(6, 6), states=15, frames=3)],
                         ids=["paper", "ids-above-int16"])  # 15 states, 2x2 patches: ids up to 50,626
def test_tokens_are_the_tokenized_frames(cfg):
    args = inputs(cfg)
    tokens = rollout_tokens(cfg, *args, backend="torch")
    assert tokens.dtype == np.uint16
    assert np.array_equal(tokens, frames_to_sequence(rollout_frames(cfg, *args, backend="torch"), cfg))


def test_backend_and_device_resolution(monkeypatch):
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cuda") == "triton"
    monkeypatch.setenv("NCA_BACKEND", "torch")
    assert resolve_backend(None, "cpu") == "torch"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("jax", "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not HAS_CUDA:
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
        assert resolve_device("auto") == "cpu"


@pytest.mark.gpu
def test_torch_on_cuda_equals_torch_on_cpu():
    cfg = NCAConfig(temperature=1e-4)
    args = inputs(cfg, rules=64, sims=10)
    cpu = rollout_tokens(cfg, *args, backend="torch", device="cpu")
    assert np.array_equal(cpu, rollout_tokens(cfg, *args, backend="torch", device="cuda"))
    assert torch.cuda.is_available()
