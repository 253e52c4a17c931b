#!/usr/bin/env bash
# Prepared device check for a bare H200 machine (see /work/.library/device/README.md): one call, < 8 minutes.
#
#   bash benchmarks/gpu_check.sh          # via the device tool: run(command="bash benchmarks/gpu_check.sh", timeout_s=540)
#
# The machine has no network: it uses the image's own python3 (torch + CUDA + triton + numba preinstalled) and
# installs only this project, with --no-deps. Wheels of the packages the image lacks (Ray, stripped to fit the
# 64 MiB carry limit; zstandard, webdataset, jsonschema, ...) are carried in .whl/, which
# `bash benchmarks/gpu_wheels.sh` fills (git-ignored: pass carry=[".whl"] to the device tool); they are
# installed to /tmp/site when present. Steps in priority order, each with its own timeout, all clipped to a
# global deadline (GPU_CHECK_DEADLINE_S, 465 s of a 540 s call); a failing step never stops the next one:
#   1. nvidia-smi + versions     2. carried wheels + pip install -e . --no-deps     3. pytest -m gpu (GPU tests)
#   4. benchmarks/gpu_check.py (kernel variants: compile/regs/spills, exactness, tokens/s; compiled in parallel
#      processes while step 3 runs)
#   5. build_paper: bench_build --preset paper --ray-only (the paper's 164M tokens through Ray + GPU actors;
#      target < 10 s; needs Ray from .whl/), with the neighbour mode step 4 found exact and fastest
#   5b. same_bytes: a GPU-built dataset verified by regeneration on the CPU, and its sha256 equal to a CPU build's
#   5c. bench_host: host CPU per stored token on this machine's cores (can 16 cores feed the GPU?)
#   6. benchmarks/bench_rollout.py   7. bench_train --gpu only with GPU_CHECK_TRAIN=1 (its number is committed)
# Results come back through $OUT (at most 8 files): summary.json (per-step rc, seconds, timeout; result rows of
# gpu_check_triton, build_paper, bench_rollout), log.txt, and results.tgz (benchmark JSON/markdown, pytest
# junit XML, nvidia-smi, versions, per-step logs).
set -uo pipefail  # not -e: a failed step is recorded and the next one runs

DEADLINE_S="${GPU_CHECK_DEADLINE_S:-465}"  # leave ~75 s of the 540 s call for packing and transfer
# OUT, WORK, START, PY, STEPS_TSV, the log, and step / machine_steps / install_project (shared with experiment_gpu.sh)
source "$(dirname "$0")/device_steps.sh" gpu_check

finish() {
    # only what this run wrote (results/ may hold older CPU numbers from the checkout)
    find benchmarks/results -maxdepth 1 -type f -newer "$WORK/.start" \( -name '*.json' -o -name '*.md' \) \
        -exec cp -f {} "$WORK/" \; 2>/dev/null
    "$PY" - "$STEPS_TSV" "$OUT/summary.json" "$WORK" <<'EOF' || echo '{"error": "summary writer failed"}' >"$OUT/summary.json"
import json, sys, pathlib
from benchmarks.report import device_steps
tsv, out, work = sys.argv[1:4]
summary = device_steps(tsv)
for name in ("gpu_check_triton", "build_paper", "bench_rollout", "host_stages"):  # build_paper.json: bench_build --preset paper
    p = pathlib.Path(work) / f"{name}.json"
    if p.exists():
        try:
            summary[name] = json.loads(p.read_text()).get("rows")
        except Exception as exc:
            summary[name] = f"unreadable: {exc!r}"
ray_gpu = [r for r in summary.get("build_paper") or [] if isinstance(r, dict) and r.get("run") == "ray gpu"]
if ray_gpu:
    summary["build_paper_under_10s"] = ray_gpu[0]["wall_s"] < 10
mode = pathlib.Path(work) / "build_neighbours.txt"
if mode.exists():
    summary["build_paper_neighbours"] = mode.read_text().strip()
json.dump(summary, open(out, "w"), indent=2)
print(json.dumps({k: v for k, v in summary.items() if k in ("ok", "steps")}, indent=1))
EOF
    tar -czf "$OUT/results.tgz" -C "$WORK" . 2>/dev/null
}
trap finish EXIT

# 1. The machine and the versions it runs.
machine_steps

# 2. Install: carried wheels first (optional), then this project without touching the image's torch/triton.
install_project

# Compile every kernel variant of step 4 now, in parallel processes (ptxas is single-threaded, ~20 s a variant),
# into Triton's on-disk cache, while the GPU tests run; step 4 waits for them and then only loads kernels.
N_VARIANTS=$("$PY" -c "import benchmarks.gpu_check as g; print(len(g.VARIANTS))" 2>/dev/null || echo 0)
WARM_PIDS=()
for ((i = 0; i < N_VARIANTS; i++)); do
    timeout 200 "$PY" benchmarks/gpu_check.py --warm "$i" >"$WORK/warm_$i.log" 2>&1 &
    WARM_PIDS+=($!)
done

# 3. GPU tests (other modules may fail to import on the image: keep collecting).
step pytest_gpu 200 "$PY" -m pytest -m gpu tests -q -p no:cacheprovider --continue-on-collection-errors \
    --junitxml="$WORK/pytest_gpu.xml"

# 4. Kernel facts and the variant sweep (bounded by its own budget), once the parallel compiles are done.
# (by pid: a bare `wait` would also wait for the log's `tee`, which only ends with this script)
((${#WARM_PIDS[@]})) && wait "${WARM_PIDS[@]}"
step gpu_check_triton 150 "$PY" benchmarks/gpu_check.py --budget-s 100

# 5. The paper's dataset built end to end through Ray with GPU actors (Ray comes from the carried wheels), with
# the neighbour mode whose default launch was exact and fastest in step 4 (gather unless scratch beat it).
if [[ -f benchmarks/bench_build.py ]]; then
    NEIGHBOURS=$("$PY" benchmarks/gpu_check.py --best-neighbours 2>/dev/null | tail -1)
    [[ "$NEIGHBOURS" == scratch ]] || NEIGHBOURS=gather
    echo "$NEIGHBOURS" >"$WORK/build_neighbours.txt"
    NCA_TRITON_NEIGHBOURS="$NEIGHBOURS" step build_paper 150 "$PY" -m benchmarks.bench_build --preset paper --ray-only
fi

# 5b. The same bytes on any device: a dataset built on the GPU (inline, Triton) passes `verify --regenerate` on
# the CPU (numba), and its shards' sha256 equal those of the same build on the CPU.
step same_bytes 120 bash -c "
    set -e
    args='--tokens 1M --samples-per-shard 100 --executor inline --quiet'
    \"$PY\" -m nca_datagen build \$args --device cuda --out '$WORK/gpu_ds'
    \"$PY\" -m nca_datagen build \$args --device cpu --backend numba --out '$WORK/cpu_ds'
    NCA_DEVICE=cpu \"$PY\" -m nca_datagen verify '$WORK/gpu_ds' --regenerate 3 --backend numba
    cmp <(cd '$WORK/gpu_ds' && sha256sum */shard-*.tar.zst) <(cd '$WORK/cpu_ds' && sha256sum */shard-*.tar.zst)
    echo same bytes on cuda and cpu: \$(ls '$WORK'/gpu_ds/*/shard-*.tar.zst | wc -l) shards"

# 5c. The host's share: CPU time per stored token of what stays on the CPUs when the GPU rolls out, on this
# machine's cores (benchmarks/results/host.md turns it into the rate 16 cores can feed).
step bench_host 90 "$PY" -m benchmarks.bench_host

# 6. The project's rollout benchmark (triton + torch on CUDA when available).
step bench_rollout 90 "$PY" benchmarks/bench_rollout.py --no-cold-compile

# 7. The trainer (already measured: benchmarks/results/h200/train_gpu.md); only when asked, and only with time.
if [[ -n "${GPU_CHECK_TRAIN:-}" && -f benchmarks/bench_train.py ]]; then
    step bench_train 150 "$PY" -m benchmarks.bench_train --gpu
fi
exit 0
