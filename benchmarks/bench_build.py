"""End-to-end throughput and memory of `nca-datagen build`, run as users run it: a fresh process per build.

Rows: the inline executor, Ray with 1 and 2 workers (and, with --gpus, Ray with GPU actors), each reporting
- `e2e_tok_s`: stored tokens / wall time of the whole command (Ray start, kernel warm-up, manifest included);
- `steady_tok_s`: tokens / time once every worker has finished its first shard (warm-up excluded), from the
  build's own event log;
- `tok_per_cpu_s`: tokens per CPU-second the workers spent on shards (all threads): what a core delivers when
  the machine is not shared, the number to trust on a busy box;
- the per-stage split of worker time (probe+filter, rollout+tokenize — one fused kernel call —, stats,
  compress+write, from `ShardData.timings` and the writer), plus compress vs write measured apart on one shard;
- peak RSS of the driver (`wait4` of the command) and of the largest worker (from the event log);
- a timeline of the wall time: start-up (imports, Ray, actors), first shard, all shards, finish (see `timeline`).
A second inline run with 10x the tokens checks that memory stays flat as the dataset grows.

    python -m benchmarks.bench_build                       # CPU: --tokens 4M, and 40M for the flat-RSS check
    python -m benchmarks.bench_build --preset paper        # the paper's 164M-token dataset (GPU machine: H200)
    python -m benchmarks.bench_build --preset paper --ray-only   # the same, Ray + GPU actors only (a short check)

Targets (2 CPU cores): >= 1M tokens/s end to end, peak RSS < 2 GB, 2 workers >= 1.7x one worker. The H200
target: the paper's dataset in under 10 s. These machines are shared: quote ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchmarks.report import write_report
from nca_datagen.units import parse_count

# The console script's entry point through this interpreter: `nca-datagen` itself may be on no PATH (a GPU image's
# python3 with `pip install --target` installs no scripts; pip may put them beside another interpreter).
CONSOLE = [sys.executable, "-m", "nca_datagen"]


def run_build(out: Path, args: list[str]) -> dict:
    """Run one build; return wall seconds, driver peak RSS and the parsed event log."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "NCA_DATAGEN_FAIL_SHARDS")}
    log = out.with_name(out.name + ".console.txt")
    with open(log, "wb") as console:
        launched = time.time()  # wall clock, to place the event log's first timestamp
        t0 = time.perf_counter()
        # cwd: not the checkout, which `-m` would put first on sys.path (the console script does not)
        proc = subprocess.Popen([*CONSOLE, "build", "--out", str(out), "--quiet", *args], env=env, stdout=console,
                                stderr=subprocess.STDOUT, cwd=out.parent)
        _, status, rusage = os.wait4(proc.pid, 0)  # rusage of this command alone: the driver's peak RSS
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"build failed ({proc.returncode}): {log.read_text()[-3000:]}")
    events = [json.loads(line) for log in sorted((out / "_logs").glob("*.jsonl"))
              for line in log.read_text().splitlines()]
    return {"wall": wall, "launched": launched, "driver_rss_mb": rusage.ru_maxrss / 1024, "events": events,
            "manifest": json.loads((out / "manifest.json").read_text())}


def summarise(name: str, result: dict) -> dict:
    done = [e for e in result["events"] if e["event"] == "shard_done"]
    tokens = sum(e["tokens"] for e in done)
    stages: dict[str, float] = {}
    for e in done:
        for k, v in e["timings"].items():
            stages[k] = stages.get(k, 0.0) + v
    busy = sum(stages.values()) or 1.0
    # steady state: after the last worker's first shard (numba/Triton warm-up, Ray worker start excluded)
    first_by_pid: dict = {}
    for e in done:
        first_by_pid.setdefault((e["node"], e["pid"]), e)
    warm = max(e["t"] for e in first_by_pid.values())
    later = [e for e in done if e["t"] > warm]
    steady = sum(e["tokens"] for e in later) / (later[-1]["t"] - warm) if len(later) >= 2 else float("nan")
    row = {
        "run": name,
        "shards": len(done),
        "tokens": tokens,
        "wall_s": round(result["wall"], 2),
        "e2e_tok_s": tokens / result["wall"],
        "steady_tok_s": steady,
        "tok_per_cpu_s": tokens / (sum(e.get("cpu_s", 0.0) for e in done) or float("nan")),
        "driver_rss_mb": round(result["driver_rss_mb"]),
        "worker_rss_mb": round(max(e["peak_rss_mb"] for e in done)),
        **timeline(result, done),
    }
    for stage in ("probe_filter", "rollout_tokenize", "stats", "compress_write"):
        row[f"{stage}_%"] = round(100 * stages.get(stage, 0.0) / busy, 1)
    return row


def timeline(result: dict, done: list[dict]) -> dict:
    """Where the wall time went, in seconds: `startup_s` (process start, imports, Ray start and generator actors:
    everything before the event log's `build_start`), `first_shard_s` (until the first shard is written: worker
    start, kernel load or compile), `shards_s` (first to last shard), `finish_s` (manifest, Ray shutdown, exit)."""
    start = next(e for e in result["events"] if e["event"] == "build_start")
    startup = datetime.fromisoformat(start["time"].replace("Z", "+00:00")).timestamp() - result["launched"]
    first, last = min(e["t"] for e in done), max(e["t"] for e in done)
    return {"startup_s": round(startup, 2), "first_shard_s": round(first - start["t"], 2),
            "shards_s": round(last - first, 2), "finish_s": round(result["wall"] - startup - (last - start["t"]), 2)}


def compress_vs_write(config_args: list[str]) -> dict:
    """Split the writer's time: tar + zstd of one default-sized shard vs writing its bytes (local disk)."""
    from nca_datagen import shards, storage
    from nca_datagen.config import DatasetConfig
    from nca_datagen.generate import generate_shard

    config = DatasetConfig(rules_per_shard=50, sims_per_rule=10)
    data = generate_shard(config, "train", 0)
    t0 = time.perf_counter()
    blob = shards.shard_bytes(data)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fs, root = storage.filesystem(tmp)
        storage.write_atomic(fs, storage.join(root, "x.tar.zst"), blob)
    t2 = time.perf_counter()
    return {"compress_s_per_shard": t1 - t0, "write_s_per_shard": t2 - t1, "compressed_bytes_per_token":
            len(blob) / data.tokens_NL.size}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="4M", help="training tokens per run (the flat-RSS run uses 10x)")
    ap.add_argument("--preset", choices=["paper"], default=None, help="build the paper's 164M-token dataset")
    ap.add_argument("--gpus", type=int, default=None, help="also run Ray with this many GPU actors (default: all)")
    ap.add_argument("--skip-10x", action="store_true", help="skip the 10x flat-RSS run")
    ap.add_argument("--ray-only", action="store_true", help="GPU machine: skip the inline GPU run (a short check)")
    ap.add_argument("--keep", action="store_true", help="keep the built datasets (printed paths)")
    args = ap.parse_args(argv)

    import torch

    has_gpu = torch.cuda.is_available()
    data_args = ["--preset", "paper"] if args.preset else ["--tokens", args.tokens]
    work = Path(tempfile.mkdtemp(prefix="bench-build-"))
    rows = []
    try:
        run_build(work / "warmup", ["--tokens", "20K", "--executor", "inline", "--device", "cpu"])  # compile caches
        if has_gpu:  # Triton's on-disk cache: the probe and token kernels compile once per machine (~20 s each)
            run_build(work / "warmup-gpu", ["--tokens", "20K", "--executor", "inline", "--device", "cuda"])
            gpu_args = ["--device", "cuda"] + (["--gpus", str(args.gpus)] if args.gpus else [])
            rows.append(summarise("ray gpu", run_build(work / "gpu", [*data_args, *gpu_args])))
            if not args.ray_only:
                rows.append(summarise("inline gpu", run_build(work / "inline-gpu", [*data_args, "--executor",
                                                                                     "inline", "--device", "cuda"])))
        if not (args.preset and has_gpu):  # the paper's dataset on 2 CPU cores takes minutes per run
            cpu = [*data_args, "--device", "cpu"]
            rows.append(summarise("inline", run_build(work / "inline", [*cpu, "--executor", "inline"])))
            rows.append(summarise("ray 1 worker", run_build(work / "ray1", [*cpu, "--workers", "1"])))
            rows.append(summarise("ray 2 workers", run_build(work / "ray2", [*cpu, "--workers", "2"])))
            if not args.skip_10x and not args.preset:
                big = str(10 * parse_count(args.tokens))
                rows.append(summarise("inline 10x tokens", run_build(work / "inline10", ["--tokens", big,
                                                                                         "--executor", "inline",
                                                                                         "--device", "cpu"])))
        meta = {"tokens": args.tokens if not args.preset else "paper preset (164.16M train + 20.52M val)",
                **compress_vs_write(data_args)}
        by = {r["run"]: r for r in rows}
        if "ray 1 worker" in by and "ray 2 workers" in by:
            meta["speedup_2_vs_1_steady"] = by["ray 2 workers"]["steady_tok_s"] / by["ray 1 worker"]["steady_tok_s"]
            meta["speedup_2_vs_1_e2e"] = by["ray 2 workers"]["e2e_tok_s"] / by["ray 1 worker"]["e2e_tok_s"]
        if "inline 10x tokens" in by:
            meta["rss_growth_10x_tokens"] = by["inline 10x tokens"]["driver_rss_mb"] / by["inline"]["driver_rss_mb"]
        write_report("build" + ("_paper" if args.preset else ""), rows, meta)
        print(json.dumps(meta, indent=2))
    finally:
        if args.keep:
            print(f"datasets kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
