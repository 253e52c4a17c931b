"""Generate as you read: does a DataLoader worker generating shards keep up with the trainer?

Two rates, each measured alone on this machine, and their ratio:
- generation: `NCADataset.from_recipe` at the paper's config (50%+, 12x12, 27 frames, 500-sequence shards),
  unbounded, read through a DataLoader with W workers (the workers split the CPUs for the numba kernel); input
  tokens (1024 per sequence, what the trainer consumes) per second after the first sample (which includes the
  workers' start and the kernel's load), total and per worker;
- consumption: the trainer's `train_step` on the NCA shape (`benchmarks.bench_train.bench`, fp32 on CPU).
`workers_needed` = consumption / generation per worker (at the most workers measured, a core each here): how many
CPU workers feed that model. The GPU figure of
the trainer (the H200's, `results/h200/train_gpu.json`) is set against the same per-worker rate.

    python -m benchmarks.bench_generate                 # CPU: 1 and 2 workers; tiny, small and base models
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader

from benchmarks.bench_train import bench
from benchmarks.report import RESULTS, write_report
from nca_datagen.loader import NCADataset

CONTEXT = 1024  # input tokens per sequence at the paper's settings: what the trainer consumes


def generation_rate(workers: int, windows: int, batch: int, backend: str | None) -> dict:
    """Input tokens/s of a generated paper-config stream in batches of `batch` through `workers` DataLoader
    workers (0: in-process), in steady state: a worker makes a window of shuffle_shards shards before it yields
    any of it, so the clock runs from the first batch (every worker's first window made) to the first batch of
    each worker's window `windows` + 1 (`windows` more made by each); the start before it is reported apart.
    Batches, not single samples, cross from the workers: one message per sample costs ~1 ms here."""
    ds = NCADataset.from_recipe("50%+", backend=backend, seed=0)
    window = ds.shuffle_shards * ds.source.samples_in(0)
    assert window % batch == 0, f"batch {batch} must divide the window of {window} samples"
    readers = max(workers, 1)
    it = iter(DataLoader(ds, batch_size=batch, num_workers=workers))  # batches come round-robin from the workers
    t0 = time.perf_counter()
    next(it)
    t1 = time.perf_counter()
    for _ in range(readers * window // batch * windows):
        next(it)
    seconds = time.perf_counter() - t1
    del it
    rate = readers * window * windows * CONTEXT / seconds
    return {"what": "generate", "workers": workers, "batch": batch, "samples": readers * window * (windows + 1),
            "first_batch_s": t1 - t0, "tokens_per_s": rate, "tokens_per_s_per_worker": rate / readers}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="0,1,2", help="Comma list of DataLoader worker counts (0: in-process).")
    p.add_argument("--windows", type=int, default=2, help="Timed windows of 4 shards per worker.")
    p.add_argument("--gen-batch", type=int, default=50, help="Sequences per generated batch (divides a window).")
    p.add_argument("--sizes", default="tiny,small,base", help="Comma list of trainer model sizes.")
    p.add_argument("--batch", type=int, default=4, help="Sequences per trainer step.")
    p.add_argument("--steps", type=int, default=2, help="Timed trainer steps (one warm-up step before them).")
    p.add_argument("--threads", type=int, default=2, help="Trainer CPU threads (the machine's 2 cores).")
    p.add_argument("--backend", default=None, help="Rollout backend for generation (default: numba on CPU).")
    p.add_argument("--name", default="generate_cpu", help="Report name.")
    args = p.parse_args()
    rows = [generation_rate(int(w), args.windows, args.gen_batch, args.backend) for w in args.workers.split(",")]
    per_worker = max(rows, key=lambda r: r["workers"])["tokens_per_s_per_worker"]  # the most workers: a core or
    # less each, what a worker makes beside the others (one worker alone has every core to itself)
    torch.set_num_threads(args.threads)
    for size in args.sizes.split(","):
        row = bench(size, "nca", args.batch, args.batch, args.steps, 1, torch.device("cpu"), compile=False)
        rows.append({"what": "train", "model": size, "params_M": row["params_M"], "device": "cpu",
                     "threads": args.threads, "batch": args.batch, "tokens_per_s": row["tokens_per_s"],
                     "workers_needed": row["tokens_per_s"] / per_worker})
    gpu = RESULTS / "h200" / "train_gpu.json"
    if gpu.exists():
        for row in json.loads(gpu.read_text())["rows"]:
            rows.append({"what": "train (committed H200 run)", "model": row["model"], "params_M": row["params_M"],
                         "device": "cuda", "batch": row["batch"], "tokens_per_s": row["tokens_per_s"],
                         "workers_needed": row["tokens_per_s"] / per_worker})
    meta = {"recipe": "50%+, paper config, 500-sequence shards, unbounded", "per_worker_tokens_per_s": per_worker,
            "tokens": f"input tokens, {CONTEXT} per sequence", "trainer": "benchmarks.bench_train.bench, fp32"}
    write_report(args.name, rows, meta)


if __name__ == "__main__":
    main()
