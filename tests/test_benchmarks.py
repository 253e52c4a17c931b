"""The benchmark scripts the README points to still start: each parses --help (imports included), and the
device scripts are valid bash. Their measurements are not tests (benchmarks/results/ holds them)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in ("__init__", "report"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_parses_help(name):
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_wheels.sh"])
def test_device_scripts_are_valid_bash(script):
    done = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
