"""Rollout dispatch: one call, three interchangeable backends with bit-identical output.

- `triton`: the fused GPU kernel (CUDA only; or the Triton interpreter under TRITON_INTERPRET=1).
- `numba`: a compiled per-cell loop for CPUs, the fast path when there is no GPU.
- `torch`: the plain-torch reference (`nca_datagen.kernels.reference`), on CPU or CUDA.

`auto` picks triton on a CUDA device, numba on CPU (torch if numba is missing). Force one with the `backend`
argument or the NCA_BACKEND environment variable; tests and benchmarks use both switches. The device (`auto`,
`cpu`, `cuda`) likewise comes from the `device` argument or NCA_DEVICE (`auto`: cuda when one is visible).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from nca_datagen.errors import ConfigError
from nca_datagen.kernels.common import RolloutSpec, triton_interpreting
from nca_datagen.rules import RuleTables

BACKENDS = ("auto", "triton", "numba", "torch")


# Files a GPU driver creates: NVIDIA's control node and driver version, WSL2's GPU paravirtualisation, AMD's ROCm
# (whose torch also answers to "cuda"). With none of them no torch build can see a GPU, so `auto` needs no torch
# import; any one of them only means "ask torch" (the safe direction when a container shows the driver alone).
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/dxg", "/dev/kfd")
NO_CUDA_GPU = ("a CUDA GPU was requested (device 'cuda', or --gpus) but no CUDA GPU is visible here: use --device cpu "
               "or auto, without --gpus")


def gpu_driver_present() -> bool:
    """Whether a GPU driver is installed. False is certain; True only means "ask torch"."""
    return any(os.path.exists(path) for path in GPU_DRIVER_FILES)


def resolve_device(device: str | None = None) -> str:
    """'auto' (or None) -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without a GPU is an error.

    torch is imported only when a GPU driver is present (~2 s per process on 2 cores): the numba backend on a
    CPU machine never needs it."""
    device = device or os.environ.get("NCA_DEVICE", "auto")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError(f"device {device!r}: choose auto, cpu or cuda")
    if device != "cpu" and visible_gpus():
        return "cuda" if device == "auto" else device
    if device.startswith("cuda"):
        raise ConfigError(NO_CUDA_GPU)
    return "cpu"


def visible_gpus() -> int:
    """CUDA GPUs torch sees on this machine; 0 without importing torch when no GPU driver is installed."""
    if not gpu_driver_present():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpu_flags(device: str, gpus: int | None) -> None:
    """Refuse a --device and --gpus that contradict each other (ValueError): GPUs on a CPU, no GPU for CUDA."""
    if gpus and device == "cpu":
        raise ConfigError(f"--gpus {gpus} with --device cpu: drop one of them")
    if gpus == 0 and device.startswith("cuda"):
        raise ConfigError("--gpus 0 with --device cuda: drop one of them (--gpus 0 alone builds on CPUs)")


def gpus_to_use(device: str, gpus: int | None, visible: int | Callable[[], int]) -> int:
    """The GPUs a build uses: the one reading of --device and --gpus, shared by the plan's estimate, the CPUs a
    local Ray gets and the Ray executor. None for --device cpu or --gpus 0; N for --gpus N (whether there are N
    is checked where they are counted: the Ray cluster); otherwise every `visible` GPU. `visible` is that count
    or a function returning it, called only when the answer needs it (counting this machine's GPUs imports
    torch). Contradictory flags raise ValueError (`check_gpu_flags`)."""
    check_gpu_flags(device, gpus)
    if device == "cpu" or gpus == 0:
        return 0
    if gpus is not None:
        return gpus
    return visible() if callable(visible) else visible


def resolve_backend(backend: str | None, device: str) -> str:
    backend = backend or os.environ.get("NCA_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "triton" and not device.startswith("cuda") and not triton_interpreting():
        raise ConfigError(f"backend 'triton' needs a CUDA device (this one is {device!r}); use numba or torch on "
                         "CPU, or set TRITON_INTERPRET=1 to run the kernel in Triton's interpreter")
    if backend != "auto":
        return backend
    if device.startswith("cuda"):
        return "triton"
    try:
        import numba  # noqa: F401
    except ImportError:
        return "torch"
    return "numba"


def compile_cpu_kernel() -> bool:
    """Compile the numba rollout kernel, or load it from numba's on-disk cache, through one tiny rollout of the
    real code path (its one specialisation: the argument types never change). True when it had to compile
    (~20-30 s on 2 cores, once per machine and kernel version), False when the cache had it (under a second)."""
    from nca_datagen.config import NCAConfig
    from nca_datagen.kernels import cpu
    from nca_datagen.rules import sample_rules
    from nca_datagen.seeds import trajectory_inputs

    cfg = NCAConfig(grid=(4, 4), frames=1, burn_in=0)
    misses = sum(cpu._rollout_kernel.stats.cache_misses.values())
    tables = sample_rules(cfg, 0, 0, np.arange(1))
    states, keys = trajectory_inputs(cfg, 0, 0, np.zeros(1, np.int64), np.zeros(1, np.int64))
    rollout_tokens(cfg, tables, np.zeros(1, np.int64), states, keys, backend="numba", device="cpu")
    return sum(cpu._rollout_kernel.stats.cache_misses.values()) > misses


def rollout_frames(cfg, tables: RuleTables, rule_B, states_BHW, keys_B, *, backend=None, device=None):
    """Frames (B, F, H, W) uint8 numpy for trajectories `rule_B` (indices into `tables`)."""
    return _run("frames", cfg, tables, rule_B, states_BHW, keys_B, backend, device)


def rollout_tokens(cfg, tables: RuleTables, rule_B, states_BHW, keys_B, *, backend=None, device=None):
    """Token sequences (B, L) uint16 numpy: the rollout with patch tokens and frame delimiters."""
    return _run("tokens", cfg, tables, rule_B, states_BHW, keys_B, backend, device)


def _run(kind, cfg, tables, rule_B, states_BHW, keys_B, backend, device):
    device = resolve_device(device)
    backend = resolve_backend(backend, device)
    spec = RolloutSpec.from_config(cfg)
    rule_B = np.asarray(rule_B, dtype=np.int64)
    if backend == "numba":
        from nca_datagen.kernels import cpu

        fn = cpu.rollout_tokens_cpu if kind == "tokens" else cpu.rollout_cpu
        out = fn(tables.w1_RKSC, tables.w2_RCJ, tables.w3_RJS, rule_B, np.asarray(states_BHW, np.uint8),
                 np.asarray(keys_B, np.uint32), spec)
    else:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in
                (tables.w1_RKSC, tables.w2_RCJ, tables.w3_RJS, rule_B, np.asarray(states_BHW, np.uint8),
                 np.asarray(keys_B, np.int64))]
        if backend == "triton":
            from nca_datagen.kernels import rollout_triton as mod

            fn = mod.rollout_tokens_triton if kind == "tokens" else mod.rollout_triton
        else:
            from nca_datagen.kernels import reference as mod

            fn = mod.rollout_tokens_reference if kind == "tokens" else mod.rollout_reference
        out = fn(*args, spec)
        if kind == "tokens":  # narrow on the device: half the bytes to copy back, no host-side conversion
            return out.to(torch.int16).cpu().numpy().view(np.uint16)  # ids < 2^16 (config-checked) wrap back
        out = out.cpu().numpy()
    return out.astype(np.uint16) if kind == "tokens" else out
