"""Determinism of the rollout: frames, seeds, batches, orderings and devices (reference backend)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nca_datagen.config import NCAConfig
from nca_datagen.rollout import gpu_driver_present, resolve_backend, resolve_device, rollout_frames, rollout_tokens
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


def _resolve_in_fresh_process(files: tuple[str, ...], device: str) -> list[str]:
    code = ("import sys\nfrom nca_datagen import rollout\n"
            f"rollout.GPU_DRIVER_FILES = {files!r}\n"
            "try:\n    got = rollout.resolve_device(sys.argv[1])\nexcept ValueError as exc:\n    got = 'error'\n"
            "print(got, 'torch' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "NCA_DEVICE"}
    done = subprocess.run([sys.executable, "-c", code, device], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_device_resolution_imports_torch_only_when_a_gpu_driver_is_present(tmp_path):
    """No GPU driver: `auto` is the CPU and `cuda` an error, without importing torch (~2 s on 2 cores). With a
    driver file present, torch decides."""
    absent = (str(tmp_path / "no-such-device"),)
    assert _resolve_in_fresh_process(absent, "auto") == ["cpu", "False"]
    assert _resolve_in_fresh_process(absent, "cuda") == ["error", "False"]
    node = tmp_path / "nvidiactl"
    node.touch()
    expected = "cuda" if HAS_CUDA else "cpu"
    assert _resolve_in_fresh_process((str(node),), "auto") == [expected, "True"]
    assert _resolve_in_fresh_process((str(node),), "cuda") == [expected if HAS_CUDA else "error", "True"]


@pytest.mark.gpu
def test_a_gpu_machine_has_a_gpu_driver_node():
    """`auto` skips torch when none of GPU_DRIVER_FILES exists: on a real GPU machine one must."""
    assert gpu_driver_present()
    assert resolve_device("auto") == "cuda"


@pytest.mark.gpu
def test_torch_on_cuda_equals_torch_on_cpu():
    cfg = NCAConfig(temperature=1e-4)
    args = inputs(cfg, rules=64, sims=10)
    cpu = rollout_tokens(cfg, *args, backend="torch", device="cpu")
    assert np.array_equal(cpu, rollout_tokens(cfg, *args, backend="torch", device="cuda"))
    assert torch.cuda.is_available()
