"""benchmarks/strip_wheel.py on a small synthetic wheel laid out like Ray's (offline): dropped entries leave
the archive and its RECORD, executables stay executable, and pip installs the result the way
benchmarks/gpu_check.sh does (the fake `ray` lands in a temp dir only)."""

import base64
import hashlib
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

from benchmarks.strip_wheel import check_wheel, strip_wheel

FILES = {  # path -> (content, unix mode)
    "ray/__init__.py": (b"VALUE = 42\n", 0o644),
    "ray/core/raylet": (b"#!/bin/sh\necho raylet\n", 0o755),
    "ray/jars/ray_dist.jar": (os.urandom(4096), 0o644),
    "ray/dashboard/main.js.map": (b"{}" * 500, 0o644),
    "fakeray-1.0.dist-info/METADATA": (b"Metadata-Version: 2.1\nName: fakeray\nVersion: 1.0\n", 0o644),
    "fakeray-1.0.dist-info/WHEEL": (b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
                                    0o644),
}
RECORD = "fakeray-1.0.dist-info/RECORD"


def make_wheel(path: Path) -> None:
    lines = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, (data, mode) in FILES.items():
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{name},sha256={digest},{len(data)}")
        z.writestr(RECORD, "\n".join([*lines, f"{RECORD},,"]) + "\n")


def test_strip_keeps_an_installable_wheel_with_executables(tmp_path):
    wheel = tmp_path / "fakeray-1.0-py3-none-any.whl"
    make_wheel(wheel)
    result = strip_wheel(wheel, wheel)  # in place, the default globs
    assert result["dropped_files"] == 2 and result["unmatched_globs"] == []
    check_wheel(wheel)  # RECORD lists exactly what is left
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "ray/jars/ray_dist.jar" not in names and "ray/dashboard/main.js.map" not in names
        assert (z.getinfo("ray/core/raylet").external_attr >> 16) & 0o777 == 0o755
        assert "ray_dist.jar" not in z.read(RECORD).decode()
    assert strip_wheel(wheel, wheel)["dropped_files"] == 0  # stripping again changes nothing

    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--no-cache-dir", "--target", str(target), str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.access(target / "ray/core/raylet", os.X_OK)
    run = subprocess.run([sys.executable, "-c", "import ray; print(ray.__file__, ray.VALUE)"], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(target)})
    assert run.stdout.split() == [str(target / "ray/__init__.py"), "42"], run.stderr
