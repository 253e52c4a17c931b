"""Triton kernel facts on a real GPU: compile time, registers, spills, and tokens/s per kernel variant.

    python benchmarks/gpu_check.py [--budget-s 150] [--batch 131072]
    python benchmarks/gpu_check.py --warm I      # only compile variant I (run them in parallel beforehand)

Run by `benchmarks/gpu_check.sh` on the H200. For each variant in VARIANTS (neighbour exchange, launch shape,
register cap; the default first) it compiles the paper-config token kernel, records the compiled kernel's
registers and spills, checks the tokens of a small batch against the torch reference on the same GPU (bit
equality), then times a large batch (best of 3 after a warm-up, CUDA events). Variants that would start after
`--budget-s` are skipped, so the step always finishes in time. Compiling is ptxas-bound (~20 s a variant,
single-threaded), so gpu_check.sh first compiles every variant in parallel processes (`--warm I`) into
Triton's on-disk cache, and the sweep then loads them. Inputs for the timing are synthetic (random rules out
of 256, random states and keys): throughput does not depend on which seeds made them.
Output: benchmarks/results/gpu_check_triton.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_report  # noqa: E402
from nca_datagen.config import NCAConfig  # noqa: E402
from nca_datagen.kernels import reference  # noqa: E402
from nca_datagen.kernels import rollout_triton as rt  # noqa: E402
from nca_datagen.kernels.common import RolloutSpec  # noqa: E402
from nca_datagen.rules import sample_rules  # noqa: E402

# Launch variants, default first (None = the launcher's default for that field). Measured on the H200 before
# (gather): (2, 4) 1.12e9 tokens/s, (1, 2) 1.11e9, (1, 4) 0.68e9, (2, 8) 0.71e9. Left out: 4 rows per
# program, which ptxas 13 (triton 3.9) compiled to 32 registers and a 5-7 KB stack per thread.
VARIANTS = [
    {"neighbours": "gather"},  # the default: (2, 4)
    {"neighbours": "scratch"},  # its default: (1, 2)
    {"neighbours": "scratch", "block_t": 2, "num_warps": 4},
    {"neighbours": "scratch", "block_t": 1, "num_warps": 4},
    {"neighbours": "gather", "maxnreg": 168},
    {"neighbours": "scratch", "maxnreg": 168},  # 255 registers uncapped: 8 warps/SM; 168 gives 12, 128 gives 16
    {"neighbours": "scratch", "maxnreg": 128},
    {"neighbours": "gather", "block_t": 1, "num_warps": 2},
    {"neighbours": "scratch", "sparse_noise": True},  # noise-table reads only near ties (~1% of cells)
    {"neighbours": "scratch", "sparse_noise": True, "maxnreg": 168},
]


def synthetic_inputs(cfg: NCAConfig, batch: int, rules: int = 256, seed: int = 0):
    rng = np.random.default_rng(seed)
    tables = sample_rules(cfg, seed, 0, range(rules))
    arrays = (tables.w1_RKSC, tables.w2_RCJ, tables.w3_RJS, rng.integers(0, rules, batch, dtype=np.int64),
              rng.integers(0, cfg.states, (batch, *cfg.grid), dtype=np.uint8),
              rng.integers(0, 2**32, batch, dtype=np.int64))
    return [torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in arrays]


def kernel_facts() -> dict:
    """Registers/spills of the most recently compiled specialisation (triton's per-device cache)."""
    try:
        cache = rt.nca_rollout_kernel.device_caches[torch.cuda.current_device()][0]
        kernel = list(cache.values())[-1]
        kernel._init_handles()
        return {"regs": kernel.n_regs, "spills": kernel.n_spills, "shared_bytes": kernel.metadata.shared}
    except Exception as exc:  # facts are a bonus: report why they are missing, never fail the run on them
        return {"facts_error": repr(exc)[:200]}


def time_launch(fn, reps: int = 3) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best


def shown(variant: dict, batch: int) -> dict:
    """The variant with the launcher's defaults filled in (for the report)."""
    neighbours = variant.get("neighbours") or rt.default_neighbours()
    block_t = variant.get("block_t") or rt._default_block_t(batch, 256, neighbours)  # 256 = padded 12x12
    return {"neighbours": neighbours, "block_t": block_t,
            "num_warps": variant.get("num_warps") or rt._default_num_warps(block_t * 256),
            "maxnreg": variant.get("maxnreg"), "sparse_noise": bool(variant.get("sparse_noise"))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=150.0, help="start no new variant after this many seconds")
    ap.add_argument("--batch", type=int, default=131072, help="trajectories per timed launch")
    ap.add_argument("--warm", type=int, default=None, metavar="I", help="only compile VARIANTS[I], then exit")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    cfg = NCAConfig()
    spec = RolloutSpec.from_config(cfg)
    check = synthetic_inputs(cfg, 1000, seed=1)
    if args.warm is not None:  # same specialisation as the sweep's first call: the cache entry it will load
        rt.rollout_tokens_triton(*check, spec, **VARIANTS[args.warm])
        torch.cuda.synchronize()
        print(f"compiled {VARIANTS[args.warm]} in {time.perf_counter() - t_start:.1f} s")
        return
    want = reference.rollout_tokens_reference(*check, spec)
    big = synthetic_inputs(cfg, args.batch)
    rows = []
    for variant in VARIANTS:
        row = shown(variant, args.batch)
        if time.perf_counter() - t_start > args.budget_s:
            rows.append({**row, "skipped": "time budget"})
            continue
        try:
            t0 = time.perf_counter()
            got = rt.rollout_tokens_triton(*check, spec, **variant)
            torch.cuda.synchronize()
            row["first_call_s"] = round(time.perf_counter() - t0, 2)  # compile (or cache load) + 1000 sequences
            row.update(kernel_facts())
            row["equal_to_reference"] = bool(torch.equal(got, want))
            sec = time_launch(lambda v=variant: rt.rollout_tokens_triton(*big, spec, **v))
            row["seconds"] = sec
            row["tokens_per_s"] = args.batch * cfg.seq_len / sec
            row["cell_steps_per_s"] = args.batch * cfg.steps * cfg.grid[0] * cfg.grid[1] / sec
            row["vs_2e9_target"] = row["tokens_per_s"] / 2e9
        except Exception as exc:
            row["error"] = repr(exc)[:300]
        print(row, flush=True)
        rows.append(row)
    write_report("gpu_check_triton", rows, meta={"config": "paper 12x12 n10 p2 27 frames + 10 burn-in, tau 1e-4",
                                                 "batch": args.batch, "target_tokens_per_s": 2e9})


if __name__ == "__main__":
    main()
