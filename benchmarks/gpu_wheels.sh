#!/usr/bin/env bash
# Fill .whl/ with the wheels the H200 device image lacks, for the device scripts (benchmarks/gpu_check.sh,
# experiment_gpu.sh) to install offline.
#
#   bash benchmarks/gpu_wheels.sh              # here (network / pip index): download, strip Ray, size-check .whl/
#   bash benchmarks/gpu_wheels.sh --selftest   # manual proof of the mechanism on this machine (see below)
#
# The device image (python 3.12.3, torch 2.11+cu130, triton 3.6, numba, pyarrow, click, fsspec, rich, msgpack,
# protobuf, pyyaml, requests, filelock, packaging, attrs, typing_extensions, ...) has no network and lacks Ray
# and what Ray / this project need beyond it: jsonschema (+ jsonschema-specifications, referencing, rpds-py),
# zstandard, webdataset (+ braceexpand). WHEELS pins them to the versions the dev venv runs; each one's
# Requires-Dist was checked against the image (`unzip -p X.whl '*/METADATA' | grep ^Requires-Dist`).
# All are cp312 manylinux x86_64 or pure-python wheels, downloaded with --no-deps.
#
# The device tool carries at most 64 MiB (tracked tree + .whl/). Ray 2.60's wheel is 79 MB: strip_wheel.py
# drops ray/jars/ (31 MB, Java workers only) and the dashboard's *.js.map, rewrites RECORD, and keeps every
# file's unix mode (raylet, gcs_server stay executable). The script fails if .whl/ exceeds 56 MiB.
# .whl/ is rebuilt from scratch (its old *.whl are replaced) and is git-ignored via .git/info/exclude.
#
# --selftest [PYTHON]: the same pins for PYTHON's version (default /usr/bin/python3, a python without Ray),
# stripped by the same script and installed with gpu_check.sh's exact `pip install --target` command into a
# temp dir; stand-ins for the image's packages (Ray's other dependencies) go to a second temp dir. Then, in a
# clean environment (env -i, PYTHONPATH = those two dirs only), ray.init(address='local', ...) like the
# project's executor, remote tasks and an actor, checking that workers import the stripped Ray too. With
# SELFTEST_BUILD_PYTHON=/path/to/venv/bin/python (same python version, project installed), it also runs a
# small `python -m nca_datagen build --executor ray` on the CPU with the stripped Ray shadowing the venv's.
# Downloads go through PYTHON=python3 (any python with pip and index access). No test runs this (no network).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
MAX_WHL_BYTES=$((56 * 1024 * 1024))
WHEELS=(
    ray==2.60.0
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
    zstandard==0.25.0
    webdataset==1.0.2 braceexpand==0.1.7
)
# What the image has and Ray needs (its Requires-Dist), for --selftest on a python that lacks them too.
IMAGE_STANDINS=(click filelock msgpack "packaging>=24.2" protobuf pyyaml requests attrs typing_extensions)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# download PYVER DIR SPEC...: binary wheels for CPython PYVER, linux x86_64, no dependency resolution.
download() {
    local pyver="$1" dir="$2"
    shift 2
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
        "${PLATFORMS[@]}" -d "$dir" "$@"
}

strip_ray() {
    local wheel
    for wheel in "$1"/ray-*.whl; do
        "$PY" benchmarks/strip_wheel.py "$wheel"
    done
}

# device_steps.sh's install command (gpu_check.sh, experiment_gpu.sh), verbatim but for the python and the target dir.
install_target() {
    local python="$1" target="$2"
    shift 2
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@"
}

fill() {
    local tmp="$TMP/fill"
    download 3.12 "$tmp" "${WHEELS[@]}"
    strip_ray "$tmp"
    if [[ $(find "$tmp" -name '*.whl' | wc -l) -ne ${#WHEELS[@]} ]]; then
        echo "expected ${#WHEELS[@]} wheels, got: $(ls "$tmp")" >&2
        return 1
    fi
    mkdir -p .whl
    rm -f .whl/*.whl
    mv "$tmp"/*.whl .whl/
    if ! git check-ignore -q .whl/x.whl; then  # never commit 50 MB of wheels by accident
        echo "/.whl/" >>"$(git rev-parse --git-path info/exclude)"
    fi
    local whl tree
    whl=$(du -cb .whl/*.whl | tail -1 | cut -f1)
    tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
    ls -l .whl/
    awk -v w="$whl" -v t="$tree" -v m="$MAX_WHL_BYTES" 'BEGIN { M = 1048576; printf ".whl/: %d bytes (%.1f MiB; \
limit %d MiB); tracked tree: %d bytes (%.1f MiB); together %.1f of the 64 MiB carried\n", w, w / M, m / M, t, t / M, \
(w + t) / M }'
    if ((whl > MAX_WHL_BYTES)); then
        echo "FAIL: .whl/ exceeds $((MAX_WHL_BYTES / 1048576)) MiB" >&2
        return 1
    fi
}

selftest() {
    local tpy="${1:-/usr/bin/python3}" tmp="$TMP/selftest" pyver
    pyver=$("$tpy" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    echo "== selftest: $tpy (python $pyver), work dir $tmp"
    download "$pyver" "$tmp/whl" "${WHEELS[@]}"
    strip_ray "$tmp/whl"
    # stand-ins for the image's packages, with their own dependencies (requests -> urllib3, idna, ...)
    "$PY" -m pip download -q --only-binary=:all: --python-version "$pyver" --implementation cp "${PLATFORMS[@]}" \
        -d "$tmp/image" "${IMAGE_STANDINS[@]}"
    install_target "$tpy" "$tmp/site" "$tmp"/whl/*.whl
    install_target "$tpy" "$tmp/image-site" "$tmp"/image/*.whl
    local f
    for f in ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server; do
        [[ -x "$tmp/site/$f" ]] || { echo "FAIL: $f is not executable after install" >&2; return 1; }
    done
    [[ ! -e "$tmp/site/ray/jars" ]] || { echo "FAIL: ray/jars was installed" >&2; return 1; }
    echo "installed: $(du -sh "$tmp/site" | cut -f1) in site/; raylet and gcs_server executable; no ray/jars"
    env -i HOME="$HOME" PATH=/usr/bin:/bin PYTHONNOUSERSITE=1 PYTHONPATH="$tmp/site:$tmp/image-site" \
        SITE="$tmp/site" "$tpy" - <<'EOF'
import os, sys
import ray

site = os.environ["SITE"]
assert ray.__file__.startswith(site), ray.__file__
ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)

@ray.remote
def square(x):
    import ray as worker_ray
    return x * x, worker_ray.__file__

@ray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n

results = ray.get([square.remote(i) for i in range(8)])
assert [r[0] for r in results] == [i * i for i in range(8)], results
assert all(r[1].startswith(site) for r in results), {r[1] for r in results}
counter = Counter.remote()
assert ray.get([counter.add.remote(2) for _ in range(3)])[-1] == 6
print("ok:", sys.executable, "ray", ray.__version__, "from", os.path.dirname(ray.__file__),
      "| tasks and an actor ran; workers imported the same ray;", ray.cluster_resources())
ray.shutdown()
EOF
    local bpy="${SELFTEST_BUILD_PYTHON:-}"
    if [[ -n "$bpy" ]]; then
        if [[ $("$bpy" -c 'import sys; print("%d.%d" % sys.version_info[:2])') != "$pyver" ]]; then
            echo "SELFTEST_BUILD_PYTHON is not python $pyver: build check skipped" >&2
            return 1
        fi
        echo "== selftest build: $bpy -m nca_datagen build --executor ray, stripped ray first on PYTHONPATH"
        (
            cd "$tmp"  # not the checkout: nca_datagen comes from the python's install
            export PYTHONPATH="$tmp/site${PYTHONPATH:+:$PYTHONPATH}"
            unset RAY_ADDRESS
            "$bpy" -c "import ray; assert ray.__file__.startswith('$tmp/site'), ray.__file__; print('ray from', ray.__file__)"
            "$bpy" -m nca_datagen build --out "$tmp/ds" --tokens 100K --executor ray --workers 2 --device cpu --quiet
            "$bpy" -m nca_datagen verify "$tmp/ds"
        )
    fi
    echo "== selftest passed"
}

case "${1:-}" in
    --selftest) selftest "${2:-}" ;;
    "") fill ;;
    *) sed -n '2,27p' "$0"; exit 2 ;;
esac
