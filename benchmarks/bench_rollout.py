"""Rollout throughput: tokens/s and cell-steps/s of every backend at the paper's config.

    python benchmarks/bench_rollout.py [--quick]

Backends: the torch reference on CPU (`nca_datagen.kernels.reference`, imported, never re-implemented), the
numba loop (`nca_datagen.kernels.cpu`), and on a CUDA machine the Triton kernel and the torch reference on
the GPU. Throughput is the best of a few repeats after a warm-up call; the warm-up (numba: compile or cache
load, triton: JIT) is reported separately, and a cold numba compile is timed in a subprocess with an empty
cache. GPU rows time the kernel alone (inputs already on the device, `torch.cuda.synchronize`) and end to end
through `nca_datagen.rollout.rollout_tokens` (host inputs -> device -> uint16 tokens on the host).

Units: a cell-step is one cell update, so cell-steps/s = B * steps * H * W / seconds (36 steps of 144 cells per
trajectory here); tokens/s counts every token of the output, delimiters included (1026 per trajectory).
Results go to benchmarks/results/bench_rollout.{json,md} via `benchmarks.report.write_report`.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `benchmarks.report` when run as a script

from benchmarks.report import peak_rss_mb, write_report  # noqa: E402
from nca_datagen.config import NCAConfig  # noqa: E402
from nca_datagen.kernels.common import RolloutSpec  # noqa: E402
from nca_datagen.rollout import rollout_tokens  # noqa: E402
from nca_datagen.rules import sample_rules  # noqa: E402
from nca_datagen.seeds import trajectory_inputs  # noqa: E402

BASE_TRAJECTORIES = 2048  # derived through seeds.py; bigger batches tile them with fresh noise keys
RULES = 128  # distinct rules in a batch, trajectories assigned round-robin

# Peak rates per GPU, keyed by a substring of torch.cuda.get_device_name (first match wins), in NVIDIA's own
# counting where a multiply-add is 2 ops. Derivation: SMs x lanes/SM x boost clock x 2.
#   H100 SXM / H200 (GH100, 132 SMs, 1.98 GHz): FP32 128 lanes -> 66.9 TFLOP/s; INT32 64 lanes -> 33.5 TOPS.
#   H100 PCIe (114 SMs, 1.755 GHz): 51.2 TFLOP/s FP32, 25.6 TOPS INT32.
#   A100 (108 SMs, 1.41 GHz, 64 FP32 + 64 INT32 lanes): 19.5 TFLOP/s FP32, 19.5 TOPS INT32.
# Sources: NVIDIA H100/A100 whitepapers and the H200 datasheet (FP32 67 TFLOP/s, same SM count and clock as
# H100 SXM); INT32 lanes per SM from the Hopper/Ampere SM diagrams. Assumption: these are boost-clock peaks;
# sustained clocks under load are lower, so the fractions below are conservative.
GPU_PEAKS = {  # name substring: (FP32 FLOP/s, INT32 op/s)
    "H100 PCIe": (51.2e12, 25.6e12),
    "H200": (66.9e12, 33.5e12),
    "H100": (66.9e12, 33.5e12),
    "A100": (19.5e12, 19.5e12),
}


def int_ops_per_cell_step(cfg: NCAConfig) -> int:
    """Integer ops one cell update needs, multiply-add = 2 (NVIDIA's convention), loads not counted.

    first layer: 9 neighbour lookups, each adds C1 channels      9 * C1          =  36
    hidden:      C1 x C2 multiply-adds, ReLU (max) and shift       2*C1*C2 + 2*C2  = 160
    logits:      C2 x S multiply-adds                              2*C2*S          = 320
    argmax:      compare + select per state                        2*S             =  20
                                                         paper config (4, 16, S=10): 536
    The hash noise (1 + S hashes of ~8 ops) runs only for the ~0.1% of near-tied cells, so it is left out.
    """
    c1, c2 = cfg.hidden
    return 9 * c1 + 2 * c1 * c2 + 2 * c2 + 2 * c2 * cfg.states + 2 * cfg.states


@functools.lru_cache(maxsize=2)
def base_inputs(cfg: NCAConfig):
    """Tables of RULES rules and BASE_TRAJECTORIES seeded trajectories (rule, initial state), built once."""
    tables = sample_rules(cfg, 0, 0, range(RULES))
    rule_ids = np.arange(BASE_TRAJECTORIES) % RULES
    states, _ = trajectory_inputs(cfg, 0, 0, rule_ids, np.arange(BASE_TRAJECTORIES))
    return tables, rule_ids, states


def make_inputs(cfg: NCAConfig, batch: int):
    """Rule tables, rule_B, initial states and keys for `batch` trajectories (seeded, no global RNG)."""
    tables, rule_ids, states = base_inputs(cfg)
    reps = -(-batch // BASE_TRAJECTORIES)
    rule_B = np.tile(rule_ids, reps)[:batch]
    states = np.tile(states, (reps, 1, 1))[:batch]
    keys = np.random.default_rng(batch).integers(0, 2**32, batch, dtype=np.uint32)  # distinct per trajectory
    return tables, rule_B, states, keys


def best_time(fn, repeats: int, sync=lambda: None) -> tuple[float, float]:
    """(wall, process CPU) seconds of the fastest of `repeats` calls; the caller has warmed `fn` up already.

    CPU seconds (all threads of this process) show how much of the wall time the process really ran on a
    shared box. They are not contention-proof either: OpenMP/torch pools spin while waiting, so under load
    tokens per CPU-second fell 5-7x for torch (measured), less for numba. Quote numbers from quiet runs.
    """
    runs = []
    for _ in range(repeats):
        sync()
        t, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        runs.append((time.perf_counter() - t, time.process_time() - c))
    return min(runs)


def row(cfg, backend, device, batch, times, timing, warmup_s=None, gpu_peak=None) -> dict:
    spec = RolloutSpec.from_config(cfg)
    cell_steps = batch * spec.steps * spec.height * spec.width
    seconds, cpu_s = times
    out = {"backend": backend, "device": device, "timing": timing, "batch": batch, "seconds": seconds,
           "tokens_per_s": batch * cfg.seq_len / seconds, "cell_steps_per_s": cell_steps / seconds}
    if device == "cpu":
        out["tokens_per_cpu_s"] = batch * cfg.seq_len / cpu_s
    if warmup_s is not None:
        out["warmup_s"] = warmup_s
    if gpu_peak is not None:
        ops = cell_steps / seconds * int_ops_per_cell_step(cfg)
        out["int_ops_per_s"] = ops
        out["frac_int32_peak"] = ops / gpu_peak[1]
        out["frac_fp32_peak"] = ops / gpu_peak[0]
    print(out, flush=True)
    return out


def bench_cpu(cfg, backend: str, batches, repeats: int) -> list[dict]:
    rows = []
    warm = None
    for batch in batches:
        tables, rule_B, states, keys = make_inputs(cfg, batch)
        call = functools.partial(rollout_tokens, cfg, tables, rule_B, states, keys, backend=backend, device="cpu")
        if warm is None:  # first call: numba compiles or loads its cache
            t = time.perf_counter()
            rollout_tokens(cfg, tables, rule_B[:2], states[:2], keys[:2], backend=backend, device="cpu")
            warm = time.perf_counter() - t
        else:
            call()
        rows.append(row(cfg, backend, "cpu", batch, best_time(call, repeats), "end_to_end", warm))
    return rows


def cold_numba_compile_s() -> tuple[float, float]:
    """(wall, CPU) seconds for a fresh process to compile the numba kernel with an empty cache (with imports)."""
    code = ("import time, numpy as np; t = time.perf_counter();"
            "from nca_datagen.config import NCAConfig; from nca_datagen.rules import sample_rules;"
            "from nca_datagen.rollout import rollout_tokens; cfg = NCAConfig(frames=2);"
            "rollout_tokens(cfg, sample_rules(cfg, 0, 0, [0]), [0], np.zeros((1, 12, 12), np.uint8), [1],"
            " backend='numba', device='cpu'); print(time.perf_counter() - t)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return float(out.stdout.strip().splitlines()[-1]), cpu


def bench_gpu(cfg, backend: str, batches, repeats: int, peak) -> list[dict]:
    """Kernel-only (device tensors, synchronised) and end-to-end rows for one GPU backend."""
    import torch

    from nca_datagen.kernels import reference

    if backend == "triton":
        try:
            from nca_datagen.kernels import rollout_triton
        except Exception as exc:  # the kernel lives in another module; report its absence, do not fail
            print(f"skipping triton: {exc!r}")
            return []
        kernel = rollout_triton.rollout_tokens_triton  # the function the dispatcher calls
    else:
        kernel = reference.rollout_tokens_reference
    spec = RolloutSpec.from_config(cfg)
    sync = torch.cuda.synchronize
    rows = []
    for batch in batches:
        tables, rule_B, states, keys = make_inputs(cfg, batch)
        dev = [torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in
               (tables.w1_RKSC, tables.w2_RCJ, tables.w3_RJS, rule_B, states, keys.astype(np.int64))]
        try:
            t = time.perf_counter()
            kernel(*dev, spec)
            sync()
            warm = time.perf_counter() - t
            call = functools.partial(kernel, *dev, spec)
            rows.append(row(cfg, backend, "cuda", batch, best_time(call, repeats, sync), "kernel", warm, peak))
            e2e = functools.partial(rollout_tokens, cfg, tables, rule_B, states, keys, backend=backend, device="cuda")
            rows.append(row(cfg, backend, "cuda", batch, best_time(e2e, repeats, sync), "end_to_end", None, peak))
        except torch.cuda.OutOfMemoryError as exc:
            print(f"{backend} batch {batch}: out of memory ({exc})")
            rows.append({"backend": backend, "device": "cuda", "batch": batch, "error": "out of memory"})
        dev = call = None  # free the device inputs before the next batch
        torch.cuda.empty_cache()
    return rows


def gpu_peak(name: str):
    return next((v for k, v in GPU_PEAKS.items() if k in name), None)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches, 2 repeats: fits a shared 2-core box")
    ap.add_argument("--no-cold-compile", action="store_true", help="skip the fresh-cache numba compile timing")
    args = ap.parse_args(argv)
    import torch

    cfg = NCAConfig()  # the paper's: 12x12, 10 states, 2x2 patches, 27 frames, 10 burn-in, tau 1e-4
    repeats = 2 if args.quick else 3
    rows: list[dict] = []
    meta = {"config": "paper: 12x12, n=10, 2x2 patches, 27 frames, burn-in 10, tau 1e-4",
            "steps": cfg.steps, "tokens_per_trajectory": cfg.seq_len, "repeats": repeats, "quick": args.quick,
            "numba_threads": _numba_threads(), "int_ops_per_cell_step": int_ops_per_cell_step(cfg)}

    def flush():  # after every section, so a run cut short by a time limit still leaves its rows
        meta["peak_rss_mb"] = peak_rss_mb()
        write_report("bench_rollout", rows, meta)

    if torch.cuda.is_available():  # GPU first: on a borrowed GPU machine these are the rows that matter
        peak = gpu_peak(torch.cuda.get_device_name(0))
        meta["gpu_peak_fp32_int32"] = peak
        big = [16384, 131072] if args.quick else [16384, 131072, 1048576]
        rows += bench_gpu(cfg, "triton", big, repeats, peak)
        flush()
        rows += bench_gpu(cfg, "torch", big[:2], repeats, peak)  # int64 intermediates: ~70 GB at 1M
        flush()
    rows += bench_cpu(cfg, "numba", [64, 512, 2048] if args.quick else [64, 512, 2048, 8192], repeats)
    flush()
    rows += bench_cpu(cfg, "torch", [16, 64] if args.quick else [16, 64, 256], repeats)
    flush()
    if not args.no_cold_compile:
        meta["numba_cold_compile_wall_s"], meta["numba_cold_compile_cpu_s"] = cold_numba_compile_s()
        flush()


def _numba_threads() -> int:
    import numba

    return numba.get_num_threads()


if __name__ == "__main__":
    main()
