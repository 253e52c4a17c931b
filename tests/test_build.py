"""`nca-datagen build`: plan arithmetic, units, CLI errors (nothing written), an inline build, a local-Ray build
that loads through `NCADataset`, and the README's main command run exactly as written."""

import json
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from nca_datagen.cli import main
from nca_datagen.complexity import Band

# 152-token sequences (4 frames x 38), 2 rules x 2 sims per shard: train 2 shards, val 1 shard
TINY = ["--frames", "4", "--samples-per-shard", "4", "--sims-per-rule", "2", "--tokens", "1216",
        "--val-tokens", "608"]
CONSOLE = str(Path(sys.executable).with_name("nca-datagen"))


def build(*args, out=None):
    argv = ["build", *TINY, *args] + (["--out", str(out)] if out is not None else [])
    return CliRunner().invoke(main, argv, catch_exceptions=False)


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("*/shard-*.tar*"))}


# -- plan ------------------------------------------------------------------------------------------


def test_paper_preset_plans_exactly_the_papers_rules():
    from nca_datagen.pipelines.plan import plan_from

    plan = plan_from("paper")
    train, val = plan.splits
    assert (train.rules, train.sequences, train.tokens) == (16_000, 160_000, 164_160_000)
    assert (val.rules, val.sequences) == (2_000, 20_000)
    assert train.sequences * 1024 == 163_840_000  # the paper's "164M" counts 1024 input tokens per sequence
    assert plan.config.samples_per_shard == 500 and str(plan.config.band) == "(0.5, 1)"


def test_plan_rounds_up_to_whole_shards():
    from nca_datagen.pipelines.plan import dataset_config, plan_build

    config = dataset_config(grid=(12, 12), states=10, patch=2, frames=4, burn_in=10, temperature=1e-4,
                            band=Band.parse("50%+"), seed=0, sims_per_rule=2, samples_per_shard=4)
    plan = plan_build(config, tokens=1217, val_fraction=0.0)  # 1217 > 4 rules x 2 x 152 = 1216: one more shard
    assert plan.shards == {"train": 3}
    assert plan.splits[0].tokens == 3 * 4 * 152


def test_a_split_of_more_shards_than_six_digit_names_allow_is_refused(tmp_path):
    """Past 10^6 shards `braceexpand` pads every name of {000000..1000000} to seven digits: the manifest's
    pattern would name files that do not exist."""
    result = CliRunner().invoke(main, ["build", "--tokens", "1T", "--out", str(tmp_path / "ds"), "--dry-run"])
    assert result.exit_code == 2 and "a split holds at most 1,000,000" in result.output, result.output
    ok = CliRunner().invoke(main, ["build", "--tokens", "500B", "--out", str(tmp_path / "ds"), "--dry-run"])
    assert ok.exit_code == 0, ok.output


def test_a_budget_rounded_up_a_lot_is_pointed_out(tmp_path):
    result = CliRunner().invoke(main, ["build", "--tokens", "300K", "--out", str(tmp_path / "ds"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "whole shards of 500 sequences round the budget up (train 300K -> 513K, val 37.5K -> 513K)" in " ".join(
        line.strip("│ ") for line in result.output.splitlines())
    result = CliRunner().invoke(main, ["build", "--tokens", "20M", "--out", str(tmp_path / "ds"), "--dry-run"])
    assert "round the budget up" not in result.output  # 20M -> 20.5M, 2.5M -> 2.57M val: not worth a word


def test_dry_run_prints_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "ds"
    result = CliRunner().invoke(main, ["build", "--preset", "paper", "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "16,000 rules x 10 sims" in result.output and "2,000 rules" in result.output
    assert "estimated size" in result.output and "estimated time" in result.output
    assert not out.exists()
    odd = CliRunner().invoke(main, ["build", "--preset", "paper", "--samples-per-shard", "300", "--out", str(out)])
    assert odd.exit_code == 2 and "dividing both" in odd.output  # 16,020 rules would not be the paper's data


def test_dry_run_estimates_the_work_not_the_tokens(tmp_path):
    """A long burn-in costs time without adding tokens: the estimate follows the cell updates a build takes."""
    def estimate(*flags):
        result = CliRunner().invoke(main, ["build", "--tokens", "10M", "--samples-per-shard", "10", "--device",
                                           "cpu", "--workers", "1", "--out", str(tmp_path), "--dry-run", *flags])
        assert result.exit_code == 0, result.output
        return _seconds(result.output.split("estimated time", 1)[1].split("on 1 CPU", 1)[0])

    short, long = estimate(), estimate("--burn-in", "2000")
    assert long > 10 * short, (short, long)  # 2,036 steps a sequence instead of 36


def _seconds(text: str) -> float:
    """'12s', '3m 4s', '1h 2m' (format_duration's output) in seconds."""
    import re

    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)([hms])", text))


def _dry_run(tmp_path, *args) -> str:
    result = CliRunner().invoke(main, ["build", "--preset", "paper", "--out", str(tmp_path / "ds"), "--dry-run", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_dry_run_estimates_for_cpu_workers_when_asked_or_without_a_gpu(tmp_path):
    assert "CPU worker(s)" in _dry_run(tmp_path, "--device", "cpu")
    assert "CPU worker(s)" in _dry_run(tmp_path, "--gpus", "0")
    from nca_datagen.rollout import resolve_device

    if resolve_device("auto") == "cpu":
        assert "CPU worker(s)" in _dry_run(tmp_path)


@pytest.mark.gpu
def test_dry_run_estimates_for_the_machines_gpus(tmp_path):
    """Without --gpus the estimate counts every visible GPU (it used to assume CPUs on a GPU machine)."""
    import torch

    assert f"on {torch.cuda.device_count()} GPU(s)" in _dry_run(tmp_path)


def test_help_is_grouped():
    result = CliRunner().invoke(main, ["build", "--help"])
    assert result.exit_code == 0
    for heading in ("What to build:", "Rule family", "Output:", "Execution:"):
        assert heading in result.output
    assert "[default: 50%+]" in result.output
    other = result.output.split("Other:", 1)[1]
    assert "--help" in other and "More:" not in result.output  # every option under its heading, --help too


# -- bad input: a clear message, nothing written -------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--complexity", "0.8:0.2"], "need 0 <= lo < hi <= 1"),
    (["--complexity", "0.5:1.5"], "need 0 <= lo < hi <= 1"),
    (["--complexity", "lots"], "cannot parse complexity band"),
    (["--tokens", "12Q"], "cannot parse"),
    (["--grid", "12", "--patch", "5"], "not divisible by patch 5"),
    (["--grid", "12x"], "HEIGHTxWIDTH"),
    (["--states", "20", "--patch", "2"], "more than uint16"),
    (["--samples-per-shard", "5"], "not a multiple of --sims-per-rule"),
    (["--preset", "paper"], "--preset paper fixes"),
    (["--seed", str(2**64)], "18446744073709551615"),
    (["--device", "cuda", "--executor", "inline"], "no CUDA GPU"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--gpus", "1", "--executor", "inline"], "no CUDA GPU"),
    (["--gpus", "1"], "no CUDA GPU"),
    (["--gpus", "1", "--device", "cpu"], "drop one of them"),
    (["--backend", "triton", "--executor", "inline"], "needs a CUDA device"),
    (["--burn-in", "1000000000"], "more than the 4e+09 one machine does"),  # hours of work per shard
    (["--grid", "100000"], "more than the 65,536 (256x256)"),  # a 7 TiB allocation per shard
    (["--frames", "100000", "--samples-per-shard", "2000", "--sims-per-rule", "2"], "more than the 134,217,728"),
])
def test_bad_input_is_refused_before_writing(tmp_path, monkeypatch, args, message):
    if "cuda" in args or "--gpus" in args or "triton" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    monkeypatch.delenv("TRITON_INTERPRET")  # the tests' own default; the kernel then needs CUDA
    out = tmp_path / "ds"
    result = build(*args, out=out)
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert not out.exists()


def test_seq_len_must_be_whole_frames(tmp_path):
    out = tmp_path / "ds"
    result = CliRunner().invoke(main, ["build", "--tokens", "10K", "--seq-len", "150", "--out", str(out)])
    assert result.exit_code == 2 and "not a multiple of the 38 tokens per frame" in result.output
    assert not out.exists()
    both = CliRunner().invoke(main, ["build", *TINY, "--seq-len", "152", "--out", str(out)])
    assert both.exit_code == 2 and "not both" in both.output


def test_unwritable_output():
    result = build("--executor", "inline", out="/proc/nca-datagen-test/ds")
    assert result.exit_code == 1
    assert "cannot write to /proc/nca-datagen-test/ds" in result.output


def test_unreachable_ray_address(tmp_path):
    out = tmp_path / "ds"
    result = build("--ray-address", "127.0.0.1:1", out=out)
    assert result.exit_code == 1
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in result.output
    assert not out.exists()


def test_a_local_ray_that_cannot_start_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "not-a-folder"))  # where Ray puts its sockets and logs
    (tmp_path / "not-a-folder").write_text("")
    out = tmp_path / "ds"
    result = build("--workers", "1", out=out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: could not start a local Ray (NotADirectoryError" in result.output
    assert "--executor inline builds without Ray" in result.output
    assert not out.exists()


def test_a_second_build_into_the_same_output_fails_at_once(tmp_path):
    """Two builds with other settings into one folder would mix their shards: the claim in the output refuses the
    second before it writes anything (in-process here, as flock locks conflict across open files of one process;
    tests/test_claim.py has other processes, machines' spellings, S3 and takeovers)."""
    import os

    from nca_datagen.claim import CLAIM, claim

    out = tmp_path / "ds"
    with claim(str(out) + "/", doing="build", command="nca-datagen build --first"):  # spelled differently
        result = build("--executor", "inline", out=out)
        assert [p.name for p in out.iterdir()] == [CLAIM]  # the second build wrote nothing
    assert result.exit_code == 1
    assert f"{out} is being written by nca-datagen build (pid {os.getpid()} on " in result.output
    assert "nca-datagen build --first" in result.output
    assert not out.exists()  # the claim made the folder, and took it away with it
    assert build("--executor", "inline", out=out).exit_code == 0
    assert not (out / CLAIM).exists()


def test_a_taken_output_is_refused_before_ray_starts(tmp_path, monkeypatch):
    """The output is checked first: given an unreachable cluster too, the output's refusal is what the user
    sees (before, Ray's start-up, ~6 s, came first), and the dataset is untouched."""
    finished, unfinished = tmp_path / "finished", tmp_path / "unfinished"
    assert build("--executor", "inline", out=finished).exit_code == 0
    monkeypatch.setenv("NCA_DATAGEN_FAIL_SHARDS", "val:0")
    assert build("--executor", "inline", "--retries", "0", out=unfinished).exit_code == 1
    monkeypatch.delenv("NCA_DATAGEN_FAIL_SHARDS")
    before = {out: shard_bytes(out) for out in (finished, unfinished)}
    refused = build("--ray-address", "127.0.0.1:1", "--seed", "1", out=finished)
    assert refused.exit_code == 1 and "already holds a finished dataset" in refused.output
    refused = build("--ray-address", "127.0.0.1:1", "--seed", "4", out=unfinished)
    assert refused.exit_code == 1 and "seed: 0 -> 4" in refused.output
    assert {out: shard_bytes(out) for out in (finished, unfinished)} == before


@pytest.mark.parametrize("flags", [(), ("--overwrite",)], ids=["plain", "overwrite"])
def test_another_tools_webdataset_folder_is_refused_and_left_as_it_was(tmp_path, flags):
    """A folder of WebDataset shards that nca-datagen did not write (no manifest, no build marker, no shard
    records) is someone else's: the build writes nothing there, with or without --overwrite."""
    out = tmp_path / "foreign"
    (out / "train").mkdir(parents=True)
    for i in range(4):
        (out / "train" / f"shard-{i:06d}.tar").write_text(f"data {i}")
    (out / "train" / "labels.csv").write_text("x")
    before = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    result = build("--executor", "inline", *flags, out=out)
    assert result.exit_code == 1 and "holds no nca-datagen dataset" in result.output, result.output
    assert "train/labels.csv" in result.output and "train/shard-000000.tar" in result.output
    assert {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_unreachable_band_leaves_nothing(tmp_path):
    out = tmp_path / "ds"
    result = build("--complexity", "0.9:1.0", "--executor", "inline", out=out)
    assert result.exit_code == 1
    assert "band (0.9, 1) kept 0 of 2000 candidate rules" in result.output
    assert "fix --complexity" in result.output
    assert not out.exists()


def test_unreachable_band_in_an_existing_folder_leaves_it_as_it_was(tmp_path):
    """The folder stays (the user made it) but the build's marker goes, so the fixed command is not refused."""
    out = tmp_path / "ds"
    out.mkdir()
    result = build("--complexity", "0.9:1.0", "--executor", "inline", out=out)
    assert result.exit_code == 1 and "Nothing was kept" in result.output
    assert out.is_dir() and not list(out.iterdir())
    assert build("--complexity", "0.5:1.0", "--executor", "inline", out=out).exit_code == 0


def test_a_storage_error_while_the_manifest_is_written_names_the_step(tmp_path, monkeypatch):
    """A full disk after the last shard: one line naming the manifest step; the rerun writes only the manifest."""
    import errno

    from nca_datagen import manifest

    real = manifest.samples_table

    def disk_full(recs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manifest, "samples_table", disk_full)
    out = tmp_path / "ds"
    result = build("--executor", "inline", out=out)
    assert result.exit_code == 1
    assert "every shard is complete, but writing the manifest and card to" in result.output
    assert "No space left on device" in result.output and not (out / "manifest.json").exists()
    shards = shard_bytes(out)
    monkeypatch.setattr(manifest, "samples_table", real)
    again = build("--executor", "inline", out=out)
    assert again.exit_code == 0, again.output
    assert (out / "manifest.json").exists() and shard_bytes(out) == shards
    assert "every shard was already there)" in again.output  # not "0 tokens/s while making shards"


def test_interrupt_while_the_manifest_is_written(tmp_path, monkeypatch):
    """Ctrl-C after the last shard: exit 130 with the usual message (not click's 'Aborted!'), no manifest, and the
    rerun only writes the manifest."""
    from nca_datagen import manifest

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "ds"
    monkeypatch.setattr(manifest, "write_manifest", interrupted)
    result = CliRunner().invoke(main, ["build", *TINY, "--executor", "inline", "--out", str(out)])
    assert result.exit_code == 130, result.output
    assert "interrupted before the dataset was finished" in result.output and "rerun the same command" in result.output
    assert not (out / "manifest.json").exists()
    events = [json.loads(line)["event"] for line in next((out / "_logs").glob("*.jsonl")).read_text().splitlines()]
    assert events[-2:] == ["shards_done", "interrupted"]
    monkeypatch.undo()
    rerun = build("--executor", "inline", out=out)
    assert rerun.exit_code == 0 and "building 0 of" in rerun.output and (out / "manifest.json").exists()

    def written_then_interrupted(*args, real=manifest.write_manifest, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(manifest, "write_manifest", written_then_interrupted)
    late = CliRunner().invoke(main, ["build", *TINY, "--executor", "inline", "--out", str(tmp_path / "late")])
    assert late.exit_code == 130 and "interrupted after the manifest was written" in late.output


def test_interrupt_while_ray_starts(tmp_path, monkeypatch):
    from nca_datagen.pipelines.placement import Placement

    def interrupted(placement):
        raise KeyboardInterrupt

    monkeypatch.setattr(Placement, "start", interrupted)
    out = tmp_path / "ds"
    result = CliRunner().invoke(main, ["build", *TINY, "--out", str(out)])
    assert result.exit_code == 130 and "interrupted before any shard was built" in result.output
    assert not out.exists()


def test_unreachable_band_is_recognised_through_ray():
    """A worker's UnreachableBandError arrives wrapped in RayTaskError: still an impossible config, not retried."""
    from ray.exceptions import RayTaskError

    from nca_datagen.errors import BandUnreachable as UnreachableBandError
    from nca_datagen.pipelines.driver import _cause_text, _is

    cause = UnreachableBandError("train shard 0: band (0.9, 1) kept 0 of 2000 candidate rules")
    wrapped = RayTaskError("run_shard", "Traceback (most recent call last): ...", cause).as_instanceof_cause()
    assert _is(wrapped, UnreachableBandError) and not _is(RuntimeError("x"), UnreachableBandError)
    assert _cause_text(wrapped, UnreachableBandError) == str(cause)


# -- inline builds, resume, config changes -------------------------------------------------------------------


def test_inline_build_resume_and_config_guard(tmp_path):
    out = tmp_path / "ds"
    first = build("--executor", "inline", out=out)
    assert first.exit_code == 0, first.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["num_shards"] == 3 and manifest["totals"]["tokens"] == 12 * 152
    assert "--executor inline" in manifest["provenance"]["command"]
    events = [json.loads(line) for log in (out / "_logs").glob("*.jsonl") for line in log.read_text().splitlines()]
    done = [e for e in events if e["event"] == "shard_done"]
    assert len(done) == 3 and {"probe_filter", "rollout_tokenize", "stats", "compress_write"} <= set(done[0]["timings"])
    assert events[-1]["event"] == "build_end"
    # one speed, of the shard phase, in the summary and the log alike (the manifest and card are timed apart)
    shards_done, end = events[-2], events[-1]
    assert shards_done["event"] == "shards_done"
    assert end["tokens_per_s"] == pytest.approx(end["tokens_built"] / shards_done["seconds"], rel=0.05)
    assert "with the manifest and card; " in first.output and " tokens/s while making shards)" in first.output

    (out / "build.json").write_text("{}")  # as an interrupt between the manifest and the marker's removal leaves
    again = build("--executor", "inline", out=out)  # the same command again: nothing to do, nothing touched
    assert again.exit_code == 0 and "already holds this dataset (3 shards" in again.output
    assert not (out / "build.json").exists()
    assert len(list((out / "_logs").glob("*.jsonl"))) == 1
    other = build("--executor", "inline", "--seed", "1", out=out)  # never overwritten by accident
    assert other.exit_code == 1 and "already holds a finished dataset" in other.output

    other = build("--executor", "inline", "--seed", "1", "--overwrite", out=out)
    assert other.exit_code == 0, other.output
    assert json.loads((out / "manifest.json").read_text())["config"]["seed"] == 1


def test_unfinished_build_guard_and_resume_verifies_shards(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    monkeypatch.setenv("NCA_DATAGEN_FAIL_SHARDS", "val:0")
    failed = build("--executor", "inline", "--retries", "0", out=out)
    assert failed.exit_code == 1 and "val:0" in failed.output
    monkeypatch.delenv("NCA_DATAGEN_FAIL_SHARDS")
    refused = build("--executor", "inline", "--seed", "3", out=out)
    assert refused.exit_code == 1
    assert "different config" in refused.output and "seed: 0 -> 3" in refused.output
    shard = out / "train" / "shard-000000.tar.zst"
    good = shard.read_bytes()
    shard.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, wrong sha256: must be rebuilt
    resumed = build("--executor", "inline", out=out)  # the same command finishes only what is missing
    assert resumed.exit_code == 0, resumed.output
    assert "building 2 of 3 shards" in resumed.output
    assert shard.read_bytes() == good


def test_a_resumed_build_keeps_its_datasets_zstd_level(tmp_path, monkeypatch):
    """Shards written before an upgrade changed the default level: the rest are written at their level, so the
    dataset stays uniform and `verify --regenerate` (which uses the manifest's level) still matches."""
    from nca_datagen import shards
    from nca_datagen.verify import regenerate_and_compare

    out = tmp_path / "ds"
    monkeypatch.setattr(shards, "DEFAULT_LEVEL", 9)  # the "old" default
    monkeypatch.setenv("NCA_DATAGEN_FAIL_SHARDS", "train:1,val:0")
    assert build("--executor", "inline", "--retries", "0", out=out).exit_code == 1  # shard 0 only, at level 9
    monkeypatch.undo()
    assert shards.DEFAULT_LEVEL != 9
    resumed = build("--executor", "inline", out=out)
    assert resumed.exit_code == 0, resumed.output
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*/shard-*.json"))]
    assert [r["level"] for r in records] == [9, 9, 9]
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["level"] == 9
    assert regenerate_and_compare(str(out), 3, echo=lambda *_: None) == []


@pytest.mark.parametrize("where", ["local", "s3"])
def test_resume_finds_and_checks_shards_from_one_listing(where, tmp_path, monkeypatch, request):
    """What a resumed build trusts: a record whose shard is missing, the wrong size, or the wrong sha256 is
    rebuilt, as is an unreadable record; everything else is kept. Same on a local folder and on S3 (where the
    existing records come from one listing per split, not one request per planned shard)."""
    from nca_datagen import storage

    flags, options = [], None
    if where == "s3":
        server = request.getfixturevalue("s3_server")
        url = f"{request.getfixturevalue('s3_bucket')}/ds"
        flags, options = ["--endpoint-url", server], {"endpoint_url": server}
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    else:
        url = str(tmp_path / "ds")
    more = ["--tokens", str(5 * 4 * 152), "--executor", "inline", *flags]  # train: 5 shards, val: 1
    reference = tmp_path / "reference"
    assert build(*more, out=reference).exit_code == 0
    monkeypatch.setenv("NCA_DATAGEN_FAIL_SHARDS", "val:0")
    assert build(*more, "--retries", "0", out=url).exit_code == 1  # train shards kept, no manifest
    monkeypatch.delenv("NCA_DATAGEN_FAIL_SHARDS")
    fs, root = storage.filesystem(url, options)
    shard = "train/shard-{:06d}.tar.zst".format
    fs.rm(storage.join(root, shard(0)))  # record left, shard gone
    storage.write_atomic(fs, storage.join(root, shard(1)), b"short")  # wrong size
    blob = storage.read_bytes(fs, storage.join(root, shard(2)))
    storage.write_atomic(fs, storage.join(root, shard(2)), blob[:-1] + bytes([blob[-1] ^ 1]))  # wrong sha256
    storage.write_atomic(fs, storage.join(root, "train/shard-000003.json"), b"{not json")  # unreadable record
    resumed = build(*more, out=url)
    assert resumed.exit_code == 0, resumed.output
    assert "building 5 of 6 shards" in resumed.output  # train 0-3 and val 0; train 4 was kept
    for name, data in shard_bytes(reference).items():
        assert storage.read_bytes(fs, storage.join(root, name)) == data, name


# -- local Ray, end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_local_ray_build_loads_and_matches_inline(tmp_path):
    from nca_datagen.loader import NCADataset, iter_sequences
    from nca_datagen.manifest import read_manifest

    ray_out, inline_out = tmp_path / "ray", tmp_path / "inline"
    result = build("--workers", "2", out=ray_out)
    assert result.exit_code == 0, result.output
    assert "local Ray" in result.output
    assert build("--executor", "inline", out=inline_out).exit_code == 0
    assert shard_bytes(ray_out) == shard_bytes(inline_out) and len(shard_bytes(ray_out)) == 3

    manifest = read_manifest(str(ray_out))
    assert [len(manifest["splits"][s]["shards"]) for s in ("train", "val")] == [2, 1]
    items = list(NCADataset(str(ray_out), "train", shuffle=False))
    assert len(items) == 8 and items[0]["input_ids"].shape == (150,) and items[0]["labels"].shape == (150,)
    train = {tuple(s) for s in iter_sequences(str(ray_out), "train")}
    val = {tuple(s) for s in iter_sequences(str(ray_out), "val")}
    assert len(train) == 8 and len(val) == 4 and not train & val  # disjoint rules: the split is in every seed


def test_build_to_s3(s3_bucket, s3_server, tmp_path, monkeypatch):
    """An s3:// output: shards, manifest and (uploaded at the end) the event log land in the bucket."""
    from nca_datagen import storage
    from nca_datagen.loader import iter_sequences
    from nca_datagen.manifest import read_manifest

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the local spool of the event log
    url = f"{s3_bucket}/nca/ds"
    result = build("--executor", "inline", "--endpoint-url", s3_server, out=url)
    assert result.exit_code == 0, result.output
    options = {"endpoint_url": s3_server}
    assert read_manifest(url, options)["totals"]["num_shards"] == 3
    assert len(list(iter_sequences(url, "val", storage_options=options))) == 4
    fs, root = storage.filesystem(url, options)
    logs = fs.ls(storage.join(root, "_logs"))
    assert len(logs) == 1 and logs[0].endswith(".jsonl")
    assert list((tmp_path / "cache" / "nca-datagen" / "logs").rglob("*.jsonl"))


def test_build_to_s3_with_an_unwritable_cache_spools_the_log_in_tmp(s3_bucket, s3_server, tmp_path, monkeypatch):
    """A read-only HOME (here: a cache "folder" that is a file) must not stop an s3:// build: the event log's
    local spool falls back to the temporary folder, and the log still lands in the bucket."""
    from nca_datagen import storage

    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # what TMPDIR sets (read once per process)
    (tmp_path / "tmp").mkdir()
    url = f"{s3_bucket}/nca/ro-home"
    result = build("--executor", "inline", "--endpoint-url", s3_server, out=url)
    assert result.exit_code == 0, result.output
    fs, root = storage.filesystem(url, {"endpoint_url": s3_server})
    assert len(fs.ls(storage.join(root, "_logs"))) == 1
    assert list((tmp_path / "tmp" / "nca-datagen" / "logs").rglob("*.jsonl"))


def test_a_failed_log_upload_after_the_manifest_is_a_warning(s3_bucket, s3_server, tmp_path, monkeypatch):
    """The dataset is complete once its manifest is written: failing to upload the diagnostics after that must not
    turn the build into exit 1."""
    import s3fs

    from nca_datagen.manifest import read_manifest

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    async def refuse(self, *args, **kwargs):
        raise PermissionError("AccessDenied: PutObject on _logs/")

    # the async method, on fresh instances: each one binds its sync `put_file` wrapper when it is made
    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", refuse)
    s3fs.S3FileSystem.clear_instance_cache()
    url = f"{s3_bucket}/nca/log-denied"
    try:
        result = build("--executor", "inline", "--endpoint-url", s3_server, out=url)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # no instance with the refusing method outlives the test
    assert result.exit_code == 0, result.output
    assert "warning: the event log stays at" in result.output and "AccessDenied" in result.output
    assert read_manifest(url, {"endpoint_url": s3_server})["totals"]["num_shards"] == 3
    assert list((tmp_path / "cache" / "nca-datagen" / "logs").rglob("*.jsonl"))


# -- executor and GPU flags: one reading, nothing silently ignored ------------------------------------------


def test_device_and_gpus_have_one_reading():
    """The plan's estimate, a local Ray's CPUs and the Ray executor all count GPUs here (`--gpus 0 --device
    cuda` used to mean every GPU on Ray, none in the estimate, and the one GPU inline)."""
    from nca_datagen.rollout import gpus_to_use

    def uncounted():
        raise AssertionError("counting this machine's GPUs (a torch import) was not needed")

    assert gpus_to_use("cpu", None, uncounted) == gpus_to_use("auto", 0, uncounted) == 0
    assert gpus_to_use("cuda", 2, uncounted) == gpus_to_use("auto", 2, uncounted) == 2
    assert gpus_to_use("cuda", None, 8) == gpus_to_use("auto", None, lambda: 8) == 8
    for device, gpus in (("cuda", 0), ("cpu", 1)):
        with pytest.raises(ValueError, match=f"--gpus {gpus} with --device {device}: drop one of them"):
            gpus_to_use(device, gpus, 8)


def test_placement_refuses_gpus_0_with_cuda_before_ray_starts():
    import ray

    from nca_datagen.pipelines.placement import Placement

    with pytest.raises(ValueError, match="--gpus 0 with --device cuda"):
        Placement(gpus=0, device="cuda")
    assert not ray.is_initialized()


@pytest.mark.parametrize("args, message", [
    (["--gpus", "0", "--device", "cuda"], "--gpus 0 with --device cuda: drop one of them"),
    (["--gpus", "0", "--device", "cuda", "--executor", "inline"], "--gpus 0 with --device cuda"),
    (["--gpus", "0", "--device", "cuda", "--dry-run"], "--gpus 0 with --device cuda"),
    (["--gpus", "1", "--device", "cpu", "--dry-run"], "--gpus 1 with --device cpu"),
    (["--executor", "inline", "--workers", "2"], "--workers needs --executor ray"),
    (["--executor", "inline", "--workers", "2", "--dry-run"], "--workers needs --executor ray"),
    (["--executor", "inline", "--actors-per-gpu", "2"], "--actors-per-gpu needs --executor ray"),
    (["--executor", "inline", "--ray-address", "auto", "--workers", "2"],
     "--ray-address and --workers need --executor ray"),
    (["--executor", "inline", "--gpus", "2"], "--gpus 2 needs --executor ray: --executor inline runs on one GPU"),
])
def test_executor_flags_that_contradict_or_would_be_ignored_are_refused(tmp_path, args, message):
    out = tmp_path / "ds"
    result = build(*args, out=out)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


def test_inline_builds_on_cpu_with_gpus_0(tmp_path):
    """`--gpus 0` (device auto) means no GPU on either executor; inline still accepts it."""
    out = tmp_path / "ds"
    result = build("--executor", "inline", "--gpus", "0", "--val-tokens", "0", out=out)
    assert result.exit_code == 0, result.output
    assert "on cpu" in result.output
