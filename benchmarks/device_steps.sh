# Shared by the device scripts (gpu_check.sh, experiment_gpu.sh): sourced, never run on its own.
#
#   DEADLINE_S=465; source benchmarks/device_steps.sh NAME   # NAME: $OUT's default folder, $PWD/NAME_out
#
# Sets OUT (created), WORK (a temp dir), START, PY (python3 unless PYTHON), STEPS_TSV; sends all further output to
# the terminal and $OUT/log.txt. Defines `step` (a command with its own timeout clipped to the deadline, its rc
# recorded in STEPS_TSV, its output in $WORK/NAME.log), `machine_steps` (nvidia-smi, versions) and
# `install_project` (the carried wheels of .whl/ into /tmp/site, then this project with --no-deps, or laid out by
# hand when pip cannot). A failed step never stops the next one (the callers run `set -uo pipefail`, not -e).

OUT="${OUT:-$PWD/${1:-device}_out}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
START=$(date +%s)
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
unset TRITON_INTERPRET
STEPS_TSV="$WORK/steps.tsv"
touch "$WORK/.start" # results newer than this were written by this run
: >"$STEPS_TSV"
exec > >(tee -a "$OUT/log.txt") 2>&1

# seconds_left: what is left of DEADLINE_S since START.
seconds_left() {
    echo $((DEADLINE_S - ($(date +%s) - START)))
}

# step NAME MAX_SECONDS CMD...: run CMD with timeout min(MAX, time left), log to $WORK/NAME.log, record rc.
step() {
    local name="$1" max="$2"
    shift 2
    local left
    left=$(seconds_left)
    local limit=$((max < left ? max : left))
    if ((limit < 10)); then
        echo "== $name: skipped (deadline)"
        printf '%s\t%s\t%s\t%s\n' "$name" "skipped" 0 "$max" >>"$STEPS_TSV"
        return
    fi
    echo "== $name (timeout ${limit}s): $*"
    local t0
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
    local rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" $(($(date +%s) - t0)) "$limit" >>"$STEPS_TSV"
    echo "== $name: rc=$rc after $(($(date +%s) - t0))s"
}

# The machine and the versions it runs.
machine_steps() {
    step nvidia_smi 20 bash -c "nvidia-smi; nvidia-smi -q -d CLOCK,POWER | head -60"
    cp -f "$WORK/nvidia_smi.log" "$WORK/nvidia-smi.txt" 2>/dev/null
    step versions 60 "$PY" -c "
import sys, torch, triton, numpy
print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda)
print('triton', triton.__version__); print('numpy', numpy.__version__)
print('gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
try:
    import numba; print('numba', numba.__version__)
except ImportError:
    print('numba missing')
"
}

# Carried wheels first (optional), then this project without touching the image's torch/triton.
install_project() {
    if compgen -G ".whl/*.whl" >/dev/null; then
        step wheels 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    # DEVICE_SKIP_INSTALL (or GPU_CHECK_SKIP_INSTALL): a dry run in an environment that has the project
    if [[ -z "${DEVICE_SKIP_INSTALL:-${GPU_CHECK_SKIP_INSTALL:-}}" ]]; then
        step install 120 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .
    fi
    if ! "$PY" -c "import nca_datagen.kernels.common" 2>/dev/null; then
        # Fallback when the editable install is impossible: lay the package out by hand (kernels/ and pipelines/
        # are sub-packages of nca_datagen, as pyproject's package-dir says).
        mkdir -p /tmp/nca_src && cp -r nca_datagen /tmp/nca_src/ && cp -r kernels /tmp/nca_src/nca_datagen/kernels \
            && cp -r pipelines /tmp/nca_src/nca_datagen/pipelines
        export PYTHONPATH="/tmp/nca_src${PYTHONPATH:+:$PYTHONPATH}"
        echo "editable install failed: using PYTHONPATH=$PYTHONPATH"
    fi
}
