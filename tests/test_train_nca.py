"""The trainer on NCA data, read through the public loader: learning, resume, masking, compare, sweep, imports.

The dataset is tiny (6x6 grid, 3 states, 2x2 patches, 8 frames: vocab 83, 88 tokens per sequence) and built
once per module with the `nca-datagen build` command (tests may use the generator; the trainer may not).
"""

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from nca_datagen.cli import main
from nca_datagen.train.compare import build_dataset
from nca_datagen.train.nca import NCABatches, NCAData, dataset_info
from nca_datagen.train.stages import pretrain_nca
from nca_datagen.train.trainer import load_checkpoint, read_metrics

torch.set_num_threads(1)

TINY_DATA = ["--grid", "6", "--states", "3", "--patch", "2", "--frames", "8", "--sims-per-rule", "4",
             "--samples-per-shard", "40"]
TINY_RECIPE = {"grid": (6, 6), "states": 3, "patch": 2, "frames": 8, "sims_per_rule": 4, "samples_per_shard": 40}
FAST = dict(quiet=True, device="cpu")
TRAIN_PACKAGE = Path(__file__).resolve().parents[1] / "nca_datagen" / "train"


def build(out: Path, band: str = "0.3:", tokens: str = "20K") -> Path:
    result = CliRunner().invoke(main, ["build", "--complexity", band, "--tokens", tokens, *TINY_DATA,
                                       "--out", str(out), "--executor", "inline", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("nca") / "data")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(6):
        (root / f"doc{i}.txt").write_text("".join(f"line {j % 5} of doc {i}: abc abc.\n" for j in range(30)))
    return root


def test_batches_carry_the_paper_masking(dataset):
    info = dataset_info(str(dataset))
    assert info["vocab_size"] == 3**4 + 2 and info["seq_len"] == 88 and info["samples"]["val"] > 0
    x, y = NCABatches(str(dataset), batch_size=4).next()
    assert x.shape == y.shape == (4, 86)
    assert (y[:, : info["tokens_per_frame"] - 1] == -100).all()  # first frame's targets ignored
    assert torch.equal(x[:, info["tokens_per_frame"] :], y[:, info["tokens_per_frame"] - 1 : -1])


def test_loss_decreases_on_nca_data(tmp_path, dataset):
    summary = pretrain_nca(str(dataset), tmp_path / "run", steps=25, batch_size=8, lr=3e-3, warmup=5,
                           eval_every=20, **FAST)
    metrics = [m for m in read_metrics(tmp_path / "run") if m["step"] > 0]
    first, last = [m["loss"] for m in metrics[:5]], [m["loss"] for m in metrics[-5:]]
    assert sum(last) / 5 < sum(first) / 5 - 0.5, (first, last)
    vals = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert len(vals) == 2 and vals[-1] < 4.2  # log(83) = 4.42 is a uniform guess
    assert summary["model"]["vocab_size"] == 83 and load_checkpoint(tmp_path / "run")["meta"]["stage"] == "nca"


def test_validation_loss_by_frame_position(tmp_path, dataset):
    """The NCA stage reports its validation loss per frame (patch targets only) with the unigram baselines, and
    draws them; each number is checked against a direct computation."""
    from nca_datagen import loader
    from nca_datagen.train.frames import target_frames
    from nca_datagen.train.model import ModelConfig, build_model
    from nca_datagen.train.nca import nca_val_batches

    summary = pretrain_nca(str(dataset), tmp_path / "run", steps=3, batch_size=8, lr=3e-3, eval_every=3,
                           val_sequences=16, **FAST)
    info = dataset_info(str(dataset))
    tpf, context = info["tokens_per_frame"], info["seq_len"] - 2
    frame_T = torch.from_numpy(target_frames(context, tpf))
    val = nca_val_batches(str(dataset), 16, 16)
    labels_NT = torch.cat([y for _, y in val])
    assert ((labels_NT[:, frame_T < 0] >= 3**4) | (labels_NT[:, frame_T < 0] == -100)).all()  # delimiters (or masked)
    assert (labels_NT[:, frame_T >= 0] < 3**4).all() and (labels_NT[:, frame_T == 0] == -100).all()
    state = load_checkpoint(tmp_path / "run")
    model = build_model(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in val])
    loss_NT = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels_NT, reduction="none")
    by_frame = summary["val_loss_by_frame"]
    assert len(by_frame) == 8 and by_frame[0] is None  # 8 frames; frame 0 is never scored
    for k in range(1, 8):
        assert by_frame[k] == pytest.approx(float(loss_NT[:, frame_T == k].mean()), rel=1e-5), k
    train = torch.stack([r["labels"] for r in loader.NCADataset(str(dataset), "train", shuffle=False)])
    p = torch.bincount(train[train != -100]).double()
    p = p[p > 0] / p.sum()
    assert summary["unigram_loss"] == pytest.approx(float(-(p * p.log()).sum()))
    assert all(u > 0 for u in summary["unigram_loss_by_frame"][1:]) and summary["unigram_loss_by_frame"][0] is None
    records = [m for m in read_metrics(tmp_path / "run") if "val_loss_by_frame" in m]
    assert [m["step"] for m in records] == [0, 3] and records[-1]["val_loss_by_frame"] == by_frame
    assert (tmp_path / "run" / "frame_loss.png").stat().st_size > 1000


def test_nca_resume_continues_identically_through_the_loader_state(tmp_path, dataset):
    kw = dict(steps=12, batch_size=24, micro_batch_size=12, lr=3e-3, **FAST)
    assert dataset_info(str(dataset))["samples"]["train"] == 240  # 10 batches per epoch
    pretrain_nca(str(dataset), tmp_path / "whole", **kw)
    pretrain_nca(str(dataset), tmp_path / "split", stop_at=11, **kw)  # preempted inside the second epoch
    state = load_checkpoint(tmp_path / "split")["data"]
    assert state["epoch"] == 1 and state["dataset"]["yielded"] == {"0": 24}
    pretrain_nca(str(dataset), tmp_path / "split", **kw)
    assert read_metrics(tmp_path / "whole") == read_metrics(tmp_path / "split")


def test_nca_run_is_identified_by_its_data_not_its_path(tmp_path, dataset):
    """A moved copy of the same shards resumes the run; other data (another build in the folder) is refused."""
    kw = dict(steps=1, batch_size=2, val_sequences=2, **FAST)
    pretrain_nca(str(dataset), tmp_path / "run", **kw)
    ckpt = (tmp_path / "run" / "ckpt.pt").read_bytes()
    copy = shutil.copytree(dataset, tmp_path / "copy")
    pretrain_nca(str(copy), tmp_path / "run", **kw)  # finished: nothing to do, nothing rewritten
    assert (tmp_path / "run" / "ckpt.pt").read_bytes() == ckpt
    with pytest.raises(ValueError, match=r"val_sequences: 2 -> 4"):
        pretrain_nca(str(dataset), tmp_path / "run", **{**kw, "val_sequences": 4})
    result = CliRunner().invoke(main, ["build", "--complexity", "0.3:", "--tokens", "20K", "--seed", "1", *TINY_DATA,
                                       "--out", str(copy), "--executor", "inline", "--quiet", "--overwrite"])  # rebuilt
    assert result.exit_code == 0, result.output
    old_id, new_id = dataset_info(str(dataset))["id"], dataset_info(str(copy))["id"]
    assert old_id != new_id
    with pytest.raises(ValueError, match=rf"data_id: {old_id} -> {new_id}"):
        pretrain_nca(str(copy), tmp_path / "run", **kw)


def test_sweep_datasets_are_rebuilt_or_refused_not_reused(tmp_path, dataset):
    """build_dataset always runs the build: the same command is a no-op, fewer --tokens are refused."""
    data = shutil.copytree(dataset, tmp_path / "data")  # built by `build()` above: 0.3:, 20K tokens, seed 0
    manifest = (data / "manifest.json").read_bytes()
    assert build_dataset("0.3:", 20_000, data, recipe=TINY_RECIPE) == data
    with pytest.raises(ValueError, match="holds this recipe's dataset with 6 train shards, more than this build plans"):
        build_dataset("0.3:", 8_000, data, recipe=TINY_RECIPE)
    assert (data / "manifest.json").read_bytes() == manifest


def test_build_args_are_the_build_commands_recipe_flags(tmp_path):
    """--build-args are parsed by `nca-datagen build` itself (a --config file too); what is not the recipe's, or
    is the sweep's own, is refused in one line before anything is built."""
    from nca_datagen.train.cli import recipe_args

    assert recipe_args(" ".join(TINY_DATA)) == TINY_RECIPE
    settings = tmp_path / "recipe.toml"
    settings.write_text('grid = "6"\nframes = 8\n')
    assert recipe_args(f"--config {settings} --states 3") == {"grid": (6, 6), "frames": 8, "states": 3}
    for args, expected in [("--executor ray", "--executor: only the recipe's options"),
                           ("--tokens 5K", "this command sets --complexity, --tokens, --seed itself"),
                           ("--out elsewhere", "--out: only the recipe's options"), ("--grid", "--grid"),
                           ("--grid x", "--grid"), ("--no-such-flag", "No such option"),
                           ("--frames '8", "No closing quotation")]:
        result = CliRunner().invoke(main, ["train", "sweep", "--text", "stdlib", "--out", str(tmp_path / "sw"),
                                           "--build-args", args])
        assert result.exit_code == 2 and expected in result.output, (args, result.output)
        assert not (tmp_path / "sw").exists()


def test_compare_pretrains_on_a_dataset_then_compares(tmp_path, dataset, corpus):
    args = [
        "train", "compare", "--nca", str(dataset), "--text", str(corpus), "--out", str(tmp_path / "cmp"),
        "--nca-steps", "4", "--nca-batch-size", "4", "--steps", "4", "--batch-size", "4", "--context", "32",
        "--eval-tokens", "256", "--eval-every", "2", "--device", "cpu", "--quiet", "--transfer", "attn,norm",
        "--reinit-layers", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert report["nca_run"]["steps"] == 4 and report["nca_run"]["model"]["vocab_size"] == 83
    assert report["nca_text_run"]["transfer"] == {"parts": ["attn", "norm"], "reinit_layers": [1]}
    assert (tmp_path / "cmp" / "compare.png").exists() and "speed-up" in result.output
    assert "what this run can show: a smoke test: it shows the pipeline runs" in result.output, result.output
    assert (tmp_path / "cmp" / "nca" / "frame_loss.png").exists()
    again = CliRunner().invoke(main, args)  # the same command again: every stage is complete, nothing trains
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["curves"] == report["curves"]


def _compare_args(dataset, text, out: Path) -> list[str]:
    """A compare whose NCA stage would train for a while (500 steps) before any text run."""
    return ["train", "compare", "--nca", str(dataset), "--text", str(text), "--out", str(out), "--nca-steps", "500",
            "--nca-batch-size", "4", "--steps", "4", "--batch-size", "4", "--context", "32", "--eval-tokens", "256",
            "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("case", ["small-single-file", "reinit-layer-out-of-range", "scratch-folder-taken",
                                  "tracker-missing"])
def test_compare_checks_every_input_before_the_nca_stage(tmp_path, dataset, corpus, case):
    """Bad text input, flags or a run folder holding another run fail in one line before pre-pre-training
    starts: nothing is written under out/nca (they used to fail after the whole NCA stage)."""
    out, text, extra = tmp_path / "cmp", corpus, []
    if case == "small-single-file":
        text = tmp_path / "one.txt"
        text.write_text("too short to hold a validation window of 33 bytes\n" * 10)
        expected = "shorter than one window"
    elif case == "reinit-layer-out-of-range":
        extra, expected = ["--reinit-layers", "5"], "layers are 0..1"
    elif case == "scratch-folder-taken":
        from nca_datagen.train.stages import train_text

        train_text(str(corpus), out / "scratch", steps=2, batch_size=4, context=32, eval_tokens=256, **FAST)
        expected = "was trained with other settings"
    else:
        extra, expected = ["--tracker", "wandb"], "pip install wandb"
    result = CliRunner().invoke(main, [*_compare_args(dataset, text, out), *extra])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and expected in errors[0], result.output
    assert not (out / "nca").exists()


def test_sweep_checks_corpus_and_bands_before_training(tmp_path, corpus):
    """A missing corpus fails before any band is built; a bad band fails at its build, before any training."""
    args = ["train", "sweep", "--tokens", "8000", "--build-args", " ".join(TINY_DATA), "--out", str(tmp_path / "sw"),
            "--nca-steps", "3", "--nca-batch-size", "4", "--steps", "3", "--batch-size", "4", "--context", "32",
            "--eval-tokens", "256", "--device", "cpu", "--quiet"]
    missing = CliRunner().invoke(main, [*args, "--bands", "0.3:", "--text", str(tmp_path / "missing")])
    assert missing.exit_code == 1 and "has no files" in missing.output, missing.output
    assert not (tmp_path / "sw" / "data").exists()
    bad_band = CliRunner().invoke(main, [*args, "--bands", "0.3:,0.9:0.2", "--text", str(corpus)])
    assert bad_band.exit_code == 1 and "building the 0.9:0.2 dataset failed" in bad_band.output, bad_band.output
    assert (tmp_path / "sw" / "data" / "0.3:" / "manifest.json").exists()  # the good band was built first
    assert not (tmp_path / "sw" / "0.3:").exists()  # and nothing trained


@pytest.mark.slow
def test_sweep_builds_with_the_cli_and_picks_a_band(tmp_path, corpus):
    args = [
        "train", "sweep", "--bands", "0.2:0.4,0.4:", "--tokens", "8000", "--build-args", " ".join(TINY_DATA),
        "--text", str(corpus), "--out", str(tmp_path / "sw"), "--nca-steps", "3", "--nca-batch-size", "4",
        "--steps", "3", "--batch-size", "4", "--context", "32", "--eval-tokens", "256", "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["band"] for r in report["bands"]] == ["0.2:0.4", "0.4:"]
    assert report["best_band"] in ("0.2:0.4", "0.4:") and (tmp_path / "sw" / "sweep.png").exists()
    best = next(r for r in report["bands"] if r["band"] == report["best_band"])
    assert report["best_band_beats_scratch"] == (best["ppl_change"] < 0)
    assert set(report["curves"]) == {"scratch", "0.2:0.4", "0.4:"}
    assert report["text"] == [str(corpus)] and report["tokens_requested_per_band"] == 8000
    for row, slug in zip(report["bands"], ("0.2:0.4", "0.4:"), strict=True):  # whole shards: more than asked for
        manifest = json.loads((tmp_path / "sw" / "data" / slug / "manifest.json").read_text())
        assert row["nca_train_tokens"] == manifest["splits"]["train"]["tokens"] >= 8000
    again = CliRunner().invoke(main, args)  # the same sweep again: nothing to build or train
    assert again.exit_code == 0 and json.loads((tmp_path / "sw" / "sweep.json").read_text()) == report, again.output
    other = CliRunner().invoke(main, [a if a != "8000" else "16000" for a in args])  # the data grows, the runs stay
    assert other.exit_code == 1 and "was trained with other settings (data_id" in other.output, other.output


def test_the_trainer_reads_through_the_loader_and_builds_through_the_api():
    """Statically, the train package imports from the rest of nca_datagen:
    - at module level, only light modules: corpus reading, count parsing, matplotlib's set-up, the CLI's types;
    - inside functions, also the loader and manifest (NCA data), mixture and generated (recipes), the build API
      and its errors (`sweep`), and the build command (`--build-args` are its flags).
    Dynamically (the next test): training on a stored dataset never imports the generator."""
    at_top = {"nca_datagen.corpus", "nca_datagen.units", "nca_datagen.plotting", "nca_datagen.cli_options"}
    inside = at_top | {"nca_datagen.loader", "nca_datagen.manifest", "nca_datagen.tokenizer", "nca_datagen.mixture",
                       "nca_datagen.generated", "nca_datagen.api", "nca_datagen.errors", "nca_datagen.pipelines.build"}
    for path in TRAIN_PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if names == ["nca_datagen"]:  # `from nca_datagen import loader` and the like
                names = [f"nca_datagen.{a.name}" for a in node.names]
            allowed = at_top if node in tree.body else inside
            for name in names:
                if name.startswith("nca_datagen") and not name.startswith("nca_datagen.train"):
                    assert name in allowed, f"{path.name} imports {name}" + (" at module level" * (name in inside))


def test_a_training_run_never_imports_the_generator(tmp_path, dataset):
    code = f"""
import sys, torch
torch.set_num_threads(1)
import nca_datagen.train.cli, nca_datagen.train.stages, nca_datagen.train.compare, nca_datagen.loader
gen = ('nca_datagen.generate', 'nca_datagen.rollout', 'nca_datagen.rules', 'nca_datagen.kernels', 'nca_datagen.seeds')
print([m for m in sys.modules if m.startswith(gen)])
from nca_datagen.train.stages import pretrain_nca
pretrain_nca({str(dataset)!r}, {str(tmp_path / "run")!r}, steps=1, batch_size=2, quiet=True, device="cpu",
             val_sequences=0)
print([m for m in sys.modules if m.startswith(gen)])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    at_import, after_training = out.strip().splitlines()
    assert at_import == "[]"
    assert after_training == "[]"  # the loader reads the manifest's sequence layout, never the recipe


def _nca_recipe_args(recipe: str, out: Path, *extra: str) -> list[str]:
    return ["train", "nca", "--recipe", recipe, "--build-args", " ".join(TINY_DATA), "--out", str(out),
            "--steps", "4", "--batch-size", "4", "--device", "cpu", "--quiet", *extra]


def test_train_nca_on_a_recipe_stores_nothing_and_validates_on_its_val_split(tmp_path):
    """`train nca --recipe` pre-pre-trains with no build step: the run folder holds the run and nothing else,
    the samples are the recipe's own (its layout), and validation reads its val split."""
    result = CliRunner().invoke(main, _nca_recipe_args("0.3:", tmp_path / "run", "--eval-every", "2"))
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["data"] == "recipe 0.3:" and run["model"]["vocab_size"] == 3**4 + 2 and run["final_val_loss"] > 0
    assert run["build_options"]["grid"] == [6, 6] and len(run["val_loss_by_frame"]) == 8
    assert not list(tmp_path.rglob("*.tar*")) and not list(tmp_path.rglob("manifest.json"))


def test_a_curriculum_run_in_train_nca_is_reproducible(tmp_path):
    """The same curriculum gives the same run, bit for bit, fresh or resumed after a preemption; another
    curriculum (the other order) trains on other data."""
    curriculum = "0.2:0.4>0.4:@2K"  # 4 steps x 4 sequences x 88 tokens = 1.4K tokens: mid-curriculum at the end
    kw = dict(steps=4, batch_size=4, seed=1, **FAST)
    first = NCAData(recipe=curriculum, build_options=TINY_RECIPE)
    pretrain_nca(first, tmp_path / "a", **kw)
    pretrain_nca(NCAData(recipe=curriculum, build_options=TINY_RECIPE), tmp_path / "b", **kw)
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    pretrain_nca(first, tmp_path / "split", stop_at=2, **kw)  # preempted after step 2
    pretrain_nca(first, tmp_path / "split", **kw)
    assert read_metrics(tmp_path / "split") == read_metrics(tmp_path / "a")
    weights_a = load_checkpoint(tmp_path / "a")["model"]
    assert all(torch.equal(t, load_checkpoint(tmp_path / "split")["model"][k]) for k, t in weights_a.items())
    pretrain_nca(NCAData(recipe="0.4:>0.2:0.4@2K", build_options=TINY_RECIPE), tmp_path / "reversed", **kw)
    assert read_metrics(tmp_path / "reversed") != read_metrics(tmp_path / "a")
    with pytest.raises(ValueError, match="trained with other settings"):  # the folder knows its data
        pretrain_nca(NCAData(recipe="0.4:>0.2:0.4@2K", build_options=TINY_RECIPE), tmp_path / "a", **kw)


def test_train_nca_takes_a_dataset_or_a_recipe(tmp_path, dataset):
    both = CliRunner().invoke(main, [*_nca_recipe_args("0.3:", tmp_path / "run"), str(dataset)])
    neither = CliRunner().invoke(main, ["train", "nca", "--out", str(tmp_path / "run")])
    args_alone = CliRunner().invoke(main, ["train", "nca", str(dataset), "--build-args", "--grid 8", "--out",
                                           str(tmp_path / "run")])
    for result, expected in [(both, "one of them"), (neither, "one of them"), (args_alone, "go with --recipe")]:
        assert result.exit_code == 2 and expected in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_a_sweep_interrupted_while_it_builds_is_an_interruption_not_a_failed_build(tmp_path, monkeypatch):
    from nca_datagen import api
    from nca_datagen.errors import Interrupted

    def interrupted(*args, **kwargs):
        raise Interrupted("interrupted before any shard was built: nothing was written", 15)

    monkeypatch.setattr(api, "build", interrupted)
    with pytest.raises(Interrupted):
        build_dataset("50%+", 8_000, tmp_path / "data")


@pytest.mark.parametrize("spec", ["50%+,30-40%", "30-40%:0.3,50%+:x", "50%"])
def test_a_mistyped_recipe_names_what_a_recipe_can_be(tmp_path, spec):
    result = CliRunner().invoke(main, _nca_recipe_args(spec, tmp_path / "run"))
    assert result.exit_code == 1 and "is not a band (50%+, 0.3:0.5), a dataset that exists, a mixture" in \
        result.output and "no dataset at" not in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_a_curriculum_over_stored_datasets_takes_epoch_tokens(tmp_path, dataset):
    """Mixture sources may be stored datasets; a curriculum over them needs an epoch (`--epoch-tokens`), and
    validation takes each dataset's val split once, however often the spec names it."""
    spec = f"{dataset}>{dataset}@2K"
    refused = CliRunner().invoke(main, ["train", "nca", "--recipe", spec, "--out", str(tmp_path / "run"), "--steps",
                                        "2", "--batch-size", "4", "--device", "cpu", "--quiet"])
    assert refused.exit_code == 1 and "needs epoch_tokens" in refused.output, refused.output
    data = NCAData(recipe=spec, epoch_tokens=4_000)
    rows = data.first_rows("val", 64)
    assert len(rows) == min(64, dataset_info(str(dataset))["samples"]["val"])
    summary = pretrain_nca(data, tmp_path / "run", steps=2, batch_size=4, **FAST)
    assert summary["final_val_loss"] > 0
