#!/usr/bin/env bash
# The GPU experiment (benchmarks/experiment_gpu.py: NCA pre-pre-training of a ~30M-parameter model on the bands
# 30-40% and 50%+, then transfer to the Python standard library's sources, against scratch) on a bare H200
# machine, in one device call of at most 9 minutes, builds and compiles included:
#
#   bash benchmarks/gpu_wheels.sh     # here, once: the wheels the image lacks (Ray, zstandard, ...) into .whl/
#   run(command="bash benchmarks/experiment_gpu.sh", timeout_s=540, carry=[".whl"])    # the device tool
#
# Set-up as in gpu_check.sh (benchmarks/device_steps.sh): no network, the image's python3 (torch, triton, numba,
# matplotlib), the carried wheels installed to /tmp/site, this project with --no-deps. Steps, each with its own
# timeout clipped to a global deadline (EXPERIMENT_GPU_DEADLINE_S, 490 s of the 540 s call; ~50 s of margin for
# the kill, the packing and a slow start):
#   1. nvidia-smi + versions (~5 s)   2. carried wheels + pip install -e . --no-deps (~30 s)
#   3. python -m benchmarks.experiment_gpu --deadline-s <time left - 15> (~440 s; its phases and their budgets are
#      in its docstring). It rewrites its record after every phase, so a timeout still returns what finished.
# EXPERIMENT_GPU_TOKENS: training tokens per band (default 80M). The builds run inline (EXPERIMENT_GPU_ARGS=
# "--executor ray" for Ray, from .whl/); without .whl/ (no zstandard) their shards are plain tar.
# Results come back through $OUT (6 of the 8 files allowed): experiment_gpu.json, .md, .png (written to
# benchmarks/results/h200/ in the machine's copy), summary.json (per-step rc, seconds, timeout; the cuts and the
# headline numbers), log.txt, results.tgz (each run's metrics.jsonl, run.json, compare.json, transfer.json and
# figures, the datasets' manifests, the build and step logs; no checkpoints, no shards).
set -uo pipefail # not -e: a failed step is recorded and the next one runs

DEADLINE_S="${EXPERIMENT_GPU_DEADLINE_S:-490}"
# OUT, WORK, START, PY, STEPS_TSV, the log, and step / machine_steps / install_project (shared with gpu_check.sh)
source "$(dirname "$0")/device_steps.sh" experiment_gpu

finish() {
    # only what this run wrote (results/h200 holds the checkout's own files too)
    find benchmarks/results/h200 -maxdepth 1 -type f -name 'experiment_gpu*' -newer "$WORK/.start" \
        -exec cp -f {} "$OUT/" \; 2>/dev/null
    "$PY" - "$STEPS_TSV" "$OUT" <<'EOF' || echo '{"error": "summary writer failed"}' >"$OUT/summary.json"
import json, sys, pathlib
from benchmarks.report import device_steps
tsv, out = sys.argv[1:3]
summary = device_steps(tsv)
for path in pathlib.Path(out).glob("experiment_gpu*.json"):
    r = json.loads(path.read_text())
    keys = ("scratch_val_loss", "nca_val_loss", "ppl_change", "speedup")
    summary.update(cuts=r.get("cuts"), text={band: {k: t[k] for k in keys} for band, t in r["text"].items()})
json.dump(summary, open(pathlib.Path(out) / "summary.json", "w"), indent=2)
print(json.dumps(summary, indent=1))
EOF
    (cd "$WORK" && find . -type f ! -name 'shard-*' \( -name '*.json' -o -name '*.jsonl' -o -name '*.png' \
        -o -name '*.log' -o -name '*.txt' \) -print | tar -czf "$OUT/results.tgz" -T -) 2>/dev/null
}
trap finish EXIT

# 1-2. The machine, then the install.
machine_steps
install_project

# 3. The experiment, with what is left of the deadline (15 s of it kept for its kill and the packing).
LEFT=$(seconds_left)
# EXPERIMENT_GPU_ARGS: more flags; e.g. a dry run of this script on a CPU machine with the project installed:
#   DEVICE_SKIP_INSTALL=1 EXPERIMENT_GPU_ARGS="--quick --results benchmarks/results/h200" \
#       bash benchmarks/experiment_gpu.sh
# shellcheck disable=SC2086  # EXPERIMENT_GPU_ARGS is split into words on purpose
step experiment "$LEFT" "$PY" -m benchmarks.experiment_gpu --deadline-s $((LEFT - 15)) --work "$WORK/experiment" \
    ${EXPERIMENT_GPU_ARGS:-}
exit 0
