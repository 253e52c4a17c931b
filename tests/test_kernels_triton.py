"""The fused Triton rollout equals the torch reference bit for bit: whole trajectories and whole token sequences.

Without a GPU the kernel runs in the Triton interpreter (conftest sets TRITON_INTERPRET=1 before anything
imports the kernel module). The interpreter's cost is per operation and per time step, not per cell, so these
cases keep rollouts short (a few steps) and each one a single program, except where the test is about blocks.
The interpreter runs the kernel as Python, so one test also compiles it for sm_90 (no GPU needed) to catch what
Triton's compiler rejects.
GPU tests (`-m gpu`) check 100,000 paper-config sequences against the reference on the GPU and the numba
backend on the CPU, a non-paper config, and that backend="auto" on CUDA dispatches here.
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nca_datagen.config import NCAConfig
from nca_datagen.kernels import reference
from nca_datagen.kernels.common import RolloutSpec
from nca_datagen.rollout import rollout_tokens
from nca_datagen.rules import sample_rules
from nca_datagen.seeds import trajectory_inputs

ROOT = Path(__file__).resolve().parent.parent
SHORT = dict(burn_in=2, frames=3)  # 4 steps: a paper rollout is 36, far too slow for the interpreter


def make_inputs(cfg, rules=2, sims=2, seed=0, device="cpu"):
    """(w1, w2, w3, rule_B, states_BHW, keys_B) as the dispatcher passes them: torch, contiguous, one device."""
    ids = np.arange(rules)
    tables = sample_rules(cfg, seed, 0, ids)
    rule_B = np.repeat(ids, sims).astype(np.int64)
    states, keys = trajectory_inputs(cfg, seed, 0, rule_B, np.tile(np.arange(sims), rules))
    arrays = (tables.w1_RKSC, tables.w2_RCJ, tables.w3_RJS, rule_B, states, keys.astype(np.int64))
    return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]


def triton_mod():
    from nca_datagen.kernels import rollout_triton

    return rollout_triton


def assert_same(got: torch.Tensor, want: torch.Tensor, what: str):
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, got.dtype, want.shape, want.dtype)
    bad = (got != want).nonzero()
    assert len(bad) == 0, (f"{what}: {len(bad)} of {want.numel()} entries differ; first at {bad[0].tolist()}: "
                           f"triton {got[tuple(bad[0])].item()} vs reference {want[tuple(bad[0])].item()}")


CASES = {
    # id: (config, rules, sims, block_t)
    "paper-12x12-n10-p2": (NCAConfig(**SHORT), 2, 2, None),
    "odd-7x9-p1": (NCAConfig(grid=(7, 9), patch=1, **SHORT), 2, 1, None),
    "odd-12x18-p3-n3": (NCAConfig(grid=(12, 18), patch=3, states=3, **SHORT), 1, 2, None),
    "n2-tau1": (NCAConfig(grid=(8, 8), states=2, temperature=1.0, **SHORT), 2, 1, None),
    "n15-p2-max-uint16": (NCAConfig(grid=(6, 6), states=15, **SHORT), 2, 1, None),
    "tau0-beta2": (NCAConfig(grid=(6, 8), temperature=0.0, identity_bias=2.0, **SHORT), 2, 1, None),
    "tau1-beta2": (NCAConfig(grid=(6, 6), temperature=1.0, identity_bias=2.0, **SHORT), 2, 1, None),
    "burn0-stride2": (NCAConfig(grid=(6, 6), burn_in=0, frames=3, frame_stride=2, temperature=1.0), 1, 2, None),
    "one-frame-no-steps": (NCAConfig(grid=(6, 6), burn_in=0, frames=1), 2, 1, None),
    "batch5-block2": (NCAConfig(grid=(6, 6), temperature=1.0, burn_in=1, frames=2), 5, 1, 2),
}


NEIGHBOURS = ["gather", "scratch"]  # the kernel's two ways to read neighbours (rollout_triton.NEIGHBOURS)
# (neighbours, sparse_noise): the default, and the variants benchmarks/gpu_check.py times on a GPU
VARIANTS = [("gather", False), ("scratch", False), ("scratch", True)]


@pytest.mark.parametrize("neighbours, sparse_noise", VARIANTS, ids=["gather", "scratch", "scratch-sparse-noise"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_tokens_match_reference(case, neighbours, sparse_noise):
    cfg, rules, sims, block_t = CASES[case]
    spec = RolloutSpec.from_config(cfg)
    args = make_inputs(cfg, rules, sims)
    want = reference.rollout_tokens_reference(*args, spec)
    got = triton_mod().rollout_tokens_triton(*args, spec, block_t=block_t, neighbours=neighbours,
                                             sparse_noise=sparse_noise)
    assert_same(got, want, f"tokens {case} ({neighbours}, sparse_noise={sparse_noise})")


def test_sparse_noise_follows_the_noise_where_it_matters():
    """At the paper's tau = 1e-4 noise decides ~1% of updates (near-ties); sparse noise must get those right,
    and here they change tokens, so this is no vacuous pass. A span of -1 (noise never applied) must differ."""
    cfg = NCAConfig(**SHORT)
    spec = RolloutSpec.from_config(cfg)
    args = make_inputs(cfg, 4, 2)
    want = reference.rollout_tokens_reference(*args, spec)
    argmax = reference.rollout_tokens_reference(*args, RolloutSpec.from_config(NCAConfig(**SHORT, temperature=0.0)))
    assert int((want != argmax).sum()) > 0
    assert_same(triton_mod().rollout_tokens_triton(*args, spec, neighbours="scratch", sparse_noise=True), want,
                "sparse noise at tau 1e-4")
    never = dataclasses.replace(spec, noise_q=spec.noise_q)  # same table ...
    object.__setattr__(never, "noise_span", -1)  # ... but no gap counts as close: noise is never read
    assert not torch.equal(triton_mod().rollout_tokens_triton(*args, never, neighbours="scratch",
                                                              sparse_noise=True), want)


@pytest.mark.parametrize("neighbours", NEIGHBOURS)
@pytest.mark.parametrize("case", ["odd-7x9-p1", "batch5-block2"])
def test_frames_match_reference(case, neighbours):
    cfg, rules, sims, block_t = CASES[case]
    spec = RolloutSpec.from_config(cfg)
    args = make_inputs(cfg, rules, sims)
    got = triton_mod().rollout_triton(*args, spec, block_t=block_t, neighbours=neighbours)
    assert_same(got, reference.rollout_reference(*args, spec), f"frames {case} ({neighbours})")


# "scratch" packs trajectories into tile rows of `cells_per_row` cells (rollout_triton.tile_layout). These cases
# leave a part row (cells not a multiple of it), padding rows (block_t * rows per trajectory not a power of 2)
# and a part program (batch not a multiple of block_t), each checked on tokens and frames from one launch.
PACKED = {
    # id: (config, rules, sims, block_t, cells_per_row, sparse_noise)
    "7x9-p1-row4-block3": (NCAConfig(grid=(7, 9), patch=1, temperature=1.0, burn_in=1, frames=2), 5, 1, 3, 4, False),
    "12x18-p3-row16-block2": (NCAConfig(grid=(12, 18), patch=3, states=3, **SHORT), 3, 1, 2, 16, False),
    "paper-row2-block3": (NCAConfig(**SHORT), 2, 2, 3, 2, True),
    "6x6-beta2-row8-block5": (NCAConfig(grid=(6, 6), identity_bias=2.0, burn_in=1, frames=2), 7, 1, 5, 8, True),
}


@pytest.mark.parametrize("case", list(PACKED), ids=list(PACKED))
def test_scratch_packing_matches_reference(case):
    cfg, rules, sims, block_t, cells_per_row, sparse_noise = PACKED[case]
    spec = RolloutSpec.from_config(cfg)
    args = make_inputs(cfg, rules, sims)
    tokens, frames = triton_mod()._launch(*args, spec, write_tokens=True, write_frames=True, neighbours="scratch",
                                          block_t=block_t, cells_per_row=cells_per_row, sparse_noise=sparse_noise)
    assert_same(tokens, reference.rollout_tokens_reference(*args, spec), f"tokens {case}")
    assert_same(frames, reference.rollout_reference(*args, spec), f"frames {case}")


@pytest.mark.parametrize("rows_first", [False, True])
def test_scratch_tile_orientation_does_not_change_results(monkeypatch, rows_first):
    """The scratch tile's orientation follows the Triton version (scratch_rows_first); both must be exact."""
    monkeypatch.setattr(triton_mod(), "scratch_rows_first", lambda: rows_first)
    cfg, rules, sims, block_t, cells_per_row, sparse_noise = PACKED["7x9-p1-row4-block3"]
    spec = RolloutSpec.from_config(cfg)
    args = make_inputs(cfg, rules, sims)
    got = triton_mod().rollout_tokens_triton(*args, spec, neighbours="scratch", block_t=block_t,
                                             cells_per_row=cells_per_row, sparse_noise=sparse_noise)
    assert_same(got, reference.rollout_tokens_reference(*args, spec), f"tokens, rows_first={rows_first}")


def test_scratch_orientation_follows_the_triton_version(monkeypatch):
    rt = triton_mod()
    for version, rows_first in [("3.4.0", True), ("3.6.0+git1234", True), ("3.7.0", False), ("3.10.1", False)]:
        monkeypatch.setattr(rt.triton, "__version__", version)
        assert rt.scratch_rows_first() is rows_first, version


COMPILE_FOR_SM90 = """
from benchmarks.kernel_sass import compile_for_sm90
from nca_datagen.config import NCAConfig
from nca_datagen.kernels import rollout_triton as rt

cfg = NCAConfig(grid=(12, 18), patch=3, states=3, temperature=1.0, identity_bias=2.0)
for neighbours, rows_first in [("gather", True), ("scratch", False), ("scratch", True)]:
    rt.scratch_rows_first = lambda: rows_first  # compile both scratch orientations, whatever Triton this is
    layout = rt.tile_layout(*cfg.grid, 1000, neighbours=neighbours)
    kernel = compile_for_sm90(layout, None, neighbours == "scratch", cfg=cfg, write_frames=True)
    print(neighbours, rows_first, len(kernel.asm["cubin"]), "cubin bytes")
"""


@pytest.mark.slow
def test_kernel_compiles_for_sm90_without_a_gpu():
    """The interpreter runs the kernel as Python, so only Triton's compiler catches what it rejects (types,
    shapes, layouts). Compile ahead of time for sm_90 (ptxas ships with Triton): both neighbour modes, both
    scratch orientations, frames and tokens, noise, identity bias and sparse noise, on an odd config."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_SM90], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("cubin bytes") == 3, done.stdout


def test_tile_layout_defaults_and_knobs(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the GPU defaults
    rt = triton_mod()
    gather = rt.tile_layout(12, 12, 10_000, neighbours="gather")
    assert (gather.rows, gather.cells_per_row, gather.trajectories, gather.num_warps) == (2, 256, 2, 4)
    packed = rt.tile_layout(12, 12, 10_000, neighbours="scratch")
    assert (packed.rows, packed.cells_per_row, packed.rows_per_trajectory, packed.trajectories) == (256, 4, 36, 7)
    assert packed.num_warps == 8 and packed.cells_per_thread == 4 and packed.token_rows == 8
    assert packed.programs(10_000) == 1429  # ceil(10000 / 7)
    odd = rt.tile_layout(7, 9, 100, neighbours="scratch")  # 63 cells: 16 rows of 4, the last one part-empty
    assert (odd.rows_per_trajectory, odd.trajectories, odd.rows) == (16, 16, 256)
    with pytest.raises(ValueError, match="cells_per_row=3 must be a power of 2"):
        rt.tile_layout(12, 12, 10, neighbours="scratch", cells_per_row=3)
    with pytest.raises(ValueError, match="block_t=3 must be a power of 2"):
        rt.tile_layout(12, 12, 10, neighbours="gather", block_t=3)
    with pytest.raises(ValueError, match="cells_per_row is a scratch knob"):
        rt.tile_layout(12, 12, 10, neighbours="gather", cells_per_row=4)


def test_noise_is_exercised():
    """Guard against a vacuous pass: at tau = 1 the noise keys change the tokens, and triton follows them."""
    cfg = NCAConfig(grid=(6, 6), temperature=1.0, burn_in=1, frames=2)
    spec = RolloutSpec.from_config(cfg)
    args = make_inputs(cfg, 1, 2)
    a = triton_mod().rollout_tokens_triton(*args, spec)
    args[5] = args[5] ^ 1
    b = triton_mod().rollout_tokens_triton(*args, spec)
    assert not torch.equal(a, b)
    assert_same(b, reference.rollout_tokens_reference(*args, spec), "tokens with flipped keys")


def test_dispatcher_and_empty_batch():
    cfg = NCAConfig(grid=(6, 6), burn_in=1, frames=2)
    tables = sample_rules(cfg, 0, 0, [0])
    states, keys = trajectory_inputs(cfg, 0, 0, [0, 0], [0, 1])
    got = rollout_tokens(cfg, tables, [0, 0], states, keys, backend="triton", device="cpu")
    want = rollout_tokens(cfg, tables, [0, 0], states, keys, backend="torch", device="cpu")
    assert got.dtype == np.uint16 and np.array_equal(got, want)
    spec = RolloutSpec.from_config(cfg)
    args = make_inputs(cfg, 1, 1)
    empty = [args[0], args[1], args[2], args[3][:0], args[4][:0], args[5][:0]]
    assert triton_mod().rollout_tokens_triton(*empty, spec).shape == (0, cfg.seq_len)


def test_launcher_rejects_wrong_dtypes_and_modes(monkeypatch):
    cfg = NCAConfig(grid=(6, 6), burn_in=1, frames=2)
    spec = RolloutSpec.from_config(cfg)
    args = make_inputs(cfg, 1, 1)
    with pytest.raises(ValueError, match="neighbours='shared'"):
        triton_mod().rollout_tokens_triton(*args, spec, neighbours="shared")
    monkeypatch.setenv("NCA_TRITON_NEIGHBOURS", "smem")
    with pytest.raises(ValueError, match="NCA_TRITON_NEIGHBOURS='smem'"):
        triton_mod().rollout_tokens_triton(*args, spec)
    args[4] = args[4].to(torch.int32)
    with pytest.raises(ValueError, match="states_BHW"):
        triton_mod().rollout_tokens_triton(*args, spec, neighbours="gather")


# ------------------------------------------------------------------------------------------------------------
# GPU: the compiled kernel on a real device
# ------------------------------------------------------------------------------------------------------------


def _paper_batch(n_rules: int, sims: int):
    cfg = NCAConfig()
    ids = np.arange(n_rules)
    tables = sample_rules(cfg, 1234, 0, ids)
    rule_B = np.repeat(ids, sims)
    states, keys = trajectory_inputs(cfg, 1234, 0, rule_B, np.tile(np.arange(sims), n_rules))
    return cfg, tables, rule_B, states, keys


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_100k_paper_sequences_match_reference_on_gpu_and_numba_on_cpu():
    cfg, tables, rule_B, states, keys = _paper_batch(10_000, 10)  # 100,000 sequences, 102.6M tokens
    spec = RolloutSpec.from_config(cfg)
    args = [torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in
            (tables.w1_RKSC, tables.w2_RCJ, tables.w3_RJS, rule_B.astype(np.int64), states, keys.astype(np.int64))]
    outputs = {v: triton_mod().rollout_tokens_triton(*args, spec, neighbours=v[0], sparse_noise=v[1])
               for v in VARIANTS}
    got = outputs[VARIANTS[0]]  # the default
    torch.cuda.synchronize()
    chunk = 20_000  # the reference materialises (B, C, C2, S) int64 products: ~3.7 GB per 20k sequences
    for lo in range(0, len(rule_B), chunk):
        part = [a[lo : lo + chunk] for a in args[3:]]
        want = reference.rollout_tokens_reference(*args[:3], *part, spec)
        for variant, tokens in outputs.items():
            assert_same(tokens[lo : lo + chunk], want, f"{variant} tokens vs GPU reference, {lo}..{lo + chunk}")
    pytest.importorskip("numba")
    cpu = rollout_tokens(cfg, tables, rule_B, states, keys, backend="numba", device="cpu")
    assert_same(torch.from_numpy(cpu.astype(np.int32)), got.cpu(), "tokens vs numba on CPU")


@pytest.mark.gpu
def test_gpu_auto_backend_dispatches_to_triton(monkeypatch):
    mod = triton_mod()
    calls = []
    real = mod.rollout_tokens_triton

    def spy(*args, **kwargs):
        calls.append(args[4].device.type)
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "rollout_tokens_triton", spy)
    cfg, tables, rule_B, states, keys = _paper_batch(50, 4)
    got = rollout_tokens(cfg, tables, rule_B, states, keys, backend="auto", device="cuda")
    assert calls == ["cuda"]
    want = rollout_tokens(cfg, tables, rule_B, states, keys, backend="torch", device="cpu")
    assert got.dtype == np.uint16 and np.array_equal(got, want)


@pytest.mark.gpu
def test_gpu_odd_config_frames_and_tokens_match_reference():
    cfg = NCAConfig(grid=(12, 18), patch=3, states=3, temperature=1.0, identity_bias=2.0, burn_in=3, frames=9)
    spec = RolloutSpec.from_config(cfg)
    args = make_inputs(cfg, rules=100, sims=7, device="cuda")  # 700 sequences: no multiple of any block
    # One launch writes both outputs: one specialisation to compile (each costs a minute or more of ptxas).
    want_tokens, want_frames = reference.rollout_tokens_reference(*args, spec), reference.rollout_reference(*args, spec)
    for neighbours, sparse_noise in VARIANTS:
        tokens, frames = triton_mod()._launch(*args, spec, write_tokens=True, write_frames=True, neighbours=neighbours,
                                              sparse_noise=sparse_noise)
        assert_same(tokens, want_tokens, f"tokens 12x18/p3/n3 ({neighbours}, {sparse_noise})")
        assert_same(frames, want_frames, f"frames 12x18/p3/n3 ({neighbours}, {sparse_noise})")
