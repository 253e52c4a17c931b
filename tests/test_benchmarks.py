"""The benchmark scripts the README points to still start: each parses --help (imports included), and the
device scripts are valid bash. Their measurements are not tests (benchmarks/results/ holds them)."""

import json
import math
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


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_wheels.sh", "experiment_gpu.sh", "device_steps.sh"])
def test_device_scripts_are_valid_bash(script):
    done = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_gpu_check_builds_with_the_fastest_exact_default_mode():
    """gpu_check.sh builds the paper's dataset with the neighbour mode `best_neighbours` picks from the sweep: only
    a mode's default launch counts, only if it matched the reference; gather (the shipped default) otherwise."""
    from benchmarks import gpu_check

    defaults = [i for i, v in enumerate(gpu_check.VARIANTS) if set(v) == {"neighbours"}]
    assert [gpu_check.VARIANTS[i]["neighbours"] for i in defaults] == ["gather", "scratch"]

    def rows(**by_index):
        return [by_index.get(f"v{i}", {"skipped": "time budget"}) for i in range(len(gpu_check.VARIANTS))]

    fast, slow = {"equal_to_reference": True, "tokens_per_s": 3e9}, {"equal_to_reference": True, "tokens_per_s": 1e9}
    g, s = defaults
    assert gpu_check.best_neighbours(rows(**{f"v{g}": slow, f"v{s}": fast})) == "scratch"
    assert gpu_check.best_neighbours(rows(**{f"v{g}": fast, f"v{s}": slow})) == "gather"
    wrong = {**fast, "equal_to_reference": False}
    assert gpu_check.best_neighbours(rows(**{f"v{g}": slow, f"v{s}": wrong})) == "gather"
    tuned = next(i for i, v in enumerate(gpu_check.VARIANTS) if v.get("neighbours") == "scratch" and len(v) > 1)
    assert gpu_check.best_neighbours(rows(**{f"v{g}": slow, f"v{tuned}": fast})) == "gather"  # not a default launch
    assert gpu_check.best_neighbours(rows()) == "gather"


def test_bench_build_times_a_real_build(tmp_path):
    """bench_build's row for one small real build: tokens from the event log, and a timeline that adds up to the
    wall time (start-up before the log, first shard, the other shards, finish)."""
    from benchmarks import bench_build

    result = bench_build.run_build(tmp_path / "out", ["--tokens", "40K", "--executor", "inline", "--device", "cpu"])
    row = bench_build.summarise("inline", result)
    assert row["tokens"] == sum(split["tokens"] for split in result["manifest"]["splits"].values())
    parts = [row[k] for k in ("startup_s", "first_shard_s", "shards_s", "finish_s")]
    assert all(p >= 0 for p in parts) and row["startup_s"] > 0.1, row  # a fresh interpreter imports for > 0.1 s
    assert abs(sum(parts) - row["wall_s"]) < 0.1, row


def test_dry_run_estimates_follow_the_committed_build_benchmark():
    """`--dry-run`'s speed and size constants stay within reach of what bench_build last measured (45M tokens,
    2 cores): an estimate drifting off its measurement fails here instead of misleading users."""
    from nca_datagen.pipelines import plan

    result = json.loads((ROOT / "benchmarks/results/build-40M.json").read_text())
    rows = {r["run"]: r for r in result["rows"]}
    per_worker = [rows["ray 1 worker"]["steady_tok_s"], rows["ray 2 workers"]["steady_tok_s"] / 2]
    assert all(0.6 < plan.EST_TOKENS_PER_S_PER_CPU / rate < 1.5 for rate in per_worker), per_worker
    fixed = [r["startup_s"] + r["first_shard_s"] + r["finish_s"] for r in rows.values() if r["run"].startswith("ray")]
    assert all(0.6 < plan.EST_STARTUP_S / s < 1.5 for s in fixed), fixed
    measured = result["meta"]["compressed_bytes_per_token"]
    assert 0.9 < plan.EST_BYTES_PER_TOKEN["zstd"] / measured < 1.1, measured


@pytest.mark.slow  # 8 s on 2 idle cores, 20-60 s beside another test run
def test_experiment_gpu_quick_runs_end_to_end(tmp_path):
    """`experiment_gpu --quick`: the GPU experiment's whole pipeline on the CPU at a tiny scale (both bands built,
    pre-pre-trained on and transferred from, one scratch run, the report), with outputs that agree."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.experiment_gpu", "--quick", "--work", str(tmp_path / "w"),
                           "--results", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "experiment_gpu-quick.json").read_text())
    bands = {"30-40%", "50%+"}
    assert set(record["nca"]) == set(record["text"]) == bands and record["cuts"] == []
    assert (tmp_path / "experiment_gpu-quick.png").stat().st_size > 10_000
    steps = record["sizing"]["steps"]
    for band, report in record["text"].items():
        assert report["scratch_val_loss"] == record["scratch"]["final_val_loss"]  # one scratch run for both
        assert report["curves"]["scratch"] == record["text"]["30-40%"]["curves"]["scratch"]
        assert report["steps"] == steps["text_run"] and "speedup" in report
        assert math.isclose(report["ppl_change"], math.exp(report["nca_val_loss"] - report["scratch_val_loss"]) - 1)
        nca = record["nca"][band]
        assert nca["steps"] == steps["nca"] and len(nca["val_loss_by_frame"]) == 8  # frames 0..7, 0 unscored
    md = (tmp_path / "experiment_gpu-quick.md").read_text()
    assert all(f"| NCA {band} |" in md for band in bands) and "| scratch |" in md and "Cut for time: nothing." in md


def test_experiment_gpu_sizes_runs_to_the_time_left():
    """Text gets up to its epoch, the NCA stage the rest up to one pass, and the five runs fit the time."""
    from benchmarks.experiment_gpu import run_cost, size_runs

    step_s, limits = {"nca": 0.03, "text": 0.025}, {"nca": 2400, "text": 900}
    assert size_runs(1e6, step_s, 25, limits) == limits
    tight = size_runs(300, step_s, 25, limits)
    assert tight["text"] == 900 and 0 < tight["nca"] < 2400
    used = 2 * run_cost(tight["nca"], step_s["nca"], 25) + 3 * run_cost(tight["text"], step_s["text"], 25)
    assert 280 < used <= 300


def test_experiment_gpu_redoes_a_failed_ray_build_inline(tmp_path, monkeypatch):
    """Ray fails on the first band: that band is rebuilt inline in a folder of its own, the next band skips Ray."""
    from benchmarks import experiment_gpu as eg

    calls = []

    def fake_build(band, out, tokens, plan, executor, timeout_s):
        calls.append((band, out.name, executor))
        return {"band": band, "executor": executor, "rc": 1 if executor == "ray" else 0, "out": str(out)}

    monkeypatch.setattr(eg, "build_band", fake_build)
    monkeypatch.setattr(eg, "built", lambda url: {"out": url})
    builds = eg.build_all(tmp_path, 1000, eg.QUICK, "ray", eg.Clock(300))
    assert calls == [("30-40%", "30-40pct", "ray"), ("30-40%", "30-40pct-inline", "inline"),
                     ("50%+", "50pctplus", "inline")]
    assert all(b["ok"] for b in builds.values()) and builds["30-40%"]["out"].endswith("30-40pct-inline")


def test_the_cpu_experiments_analyse_a_real_dataset(tmp_path):
    """experiment_nca_long's NCA stage on experiment_compare's quick data, with its floor and evidence (the
    compare's own analysis), and the markdown note drawn from them."""
    from benchmarks import experiment_nca_long
    from benchmarks.experiment_compare import QUICK

    record = experiment_nca_long.run(4, tmp_path, "cpu", plan=QUICK)
    assert record["floor"]["floor"] >= 0 and record["floor"]["neighbourhood_seen_before_by_frame"][0] is None
    assert sorted(int(s) for s in record["val_loss_by_frame"]) == [0, 1, 2, 3, 4]  # every steps // 8, at least 1
    assert record.pop("figure").axes and "| 7 |" in experiment_nca_long.note(record)
    record["transfer"] = experiment_nca_long.transfer(record, tmp_path, "cpu", plan=QUICK)
    assert set(record["transfer"]) == {"scratch_val_loss", "all", "attn"}
    assert "`--transfer attn`" in experiment_nca_long.note(record)
