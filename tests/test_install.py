"""Packaging: `pip install .` gives nca_datagen.kernels / nca_datagen.pipelines and no top-level `kernels`."""

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fresh_venv_install_maps_kernels_and_pipelines_under_the_package(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # Build the wheel with this interpreter's setuptools (no download), then install it alone: the layout is
    # what is under test; the dependencies are the CI venv's business.
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(ROOT)], check=True, cwd=tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    *map(str, wheels.glob("*.whl"))], check=True, cwd=tmp_path)
    ok = subprocess.run([str(python), "-c", "import nca_datagen.kernels, nca_datagen.pipelines; "
                         "print(nca_datagen.kernels.__file__)"], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "site-packages/nca_datagen/kernels" in ok.stdout
    for top in ("kernels", "pipelines"):
        bad = subprocess.run([str(python), "-c", f"import {top}"], capture_output=True, text=True, cwd=tmp_path)
        assert bad.returncode != 0 and "No module named" in bad.stderr
