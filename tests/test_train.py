"""The trainer: model, schedule, accumulation, text data, checkpoints, resume, transfer, compare, CLI.

All on the CPU with the `tiny` model, a few steps each. NCA-data tests (through the loader) live in
test_train_nca.py.
"""

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from nca_datagen.corpus import corpus_files, load_documents
from nca_datagen.train import text as text_data
from nca_datagen.train.compare import compare, steps_to_reach, summarize
from nca_datagen.train.model import ModelConfig, build_model, count_params, flops_per_token, model_config
from nca_datagen.train.stages import train_text
from nca_datagen.train.trainer import TrainConfig, load_checkpoint, lr_at, read_metrics, train_step
from nca_datagen.train.transfer import parse_parts, transfer_weights

torch.set_num_threads(1)  # the test machine is shared; tiny models gain nothing from more threads

TINY = ModelConfig(vocab_size=50, depth=2, width=32, heads=2, mlp_hidden=64, context=64)
FAST = dict(context=32, eval_tokens=512, quiet=True, device="cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Ten small, learnable documents (repetitive text), enough for a train/val split at context 32."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(10):
        (root / f"doc{i}.txt").write_text("".join(f"line {j % 7} of document {i}: abc abc abc.\n" for j in range(40)))
    return root


# ---------------------------------------------------------------- model


def test_model_is_causal_and_loss_ignores_masked_targets():
    model = build_model(TINY, seed=0)
    x = torch.randint(0, TINY.vocab_size, (2, 16))
    y = x.clone()
    y[:, 5] = (x[:, 5] + 1) % TINY.vocab_size  # change one future token
    assert torch.equal(model(x)[:, :5], model(y)[:, :5])  # earlier positions cannot see it
    assert not torch.allclose(model(x)[:, 5:], model(y)[:, 5:])
    labels = torch.randint(0, TINY.vocab_size, (2, 16))
    masked = labels.clone()
    masked[:, :4] = -100
    logits = model(x)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, TINY.vocab_size), labels[:, 4:].reshape(-1))
    torch.testing.assert_close(model(x, masked), expected)


def test_same_seed_same_weights_and_longer_than_context_works():
    a, b = build_model(TINY, seed=3), build_model(TINY, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert a(torch.zeros(1, TINY.context * 2, dtype=torch.long)).shape == (1, 128, TINY.vocab_size)


def test_named_sizes_and_base_is_about_100m():
    cfg = model_config("base", vocab_size=10002, context=1024)
    n = count_params(build_model(dataclasses.replace(cfg, depth=1))) + 11 * (4 * 768**2 + 3 * 768 * 2048 + 2 * 768)
    assert 90e6 < n < 110e6, n
    assert flops_per_token(cfg, 1024) > 6 * 84e6
    with pytest.raises(ValueError, match="width"):
        ModelConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="choose one of"):
        model_config("huge", 10, 10)


# ---------------------------------------------------------------- schedule and step


def test_lr_schedules():
    nca = TrainConfig(steps=10, lr=1e-4)  # paper: linear warmup over the whole budget
    assert [lr_at(s, nca) for s in (0, 4, 9)] == pytest.approx([1e-5, 5e-5, 1e-4])
    text = TrainConfig(steps=10, lr=1.0, schedule="cosine", warmup=2, min_lr_ratio=0.1)
    assert lr_at(0, text) == 0.5 and lr_at(2, text) == 1.0
    assert lr_at(9, text) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="multiple"):
        TrainConfig(batch_size=6, micro_batch_size=4)


def test_accumulation_averages_micro_batches():
    """4 micro-batches of 1 give the loss and update of one batch of 4 (the mean, not the paper code's sum)."""
    x = torch.randint(0, TINY.vocab_size, (4, 16))
    y = torch.randint(0, TINY.vocab_size, (4, 16))
    results = []
    for micro in (4, 1):
        model = build_model(TINY, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = train_step(model, opt, x, y, micro, grad_clip=0, device=torch.device("cpu"))
        results.append((loss, model.state_dict()))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, p in results[0][1].items():
        torch.testing.assert_close(p, results[1][1][name], msg=name)


# ---------------------------------------------------------------- text data


def test_text_split_is_by_document_and_deterministic(tmp_path, corpus):
    docs = load_documents(str(corpus))
    train, val = text_data.split_documents(docs, 0.2, seed=0)
    assert (train, val) == text_data.split_documents(docs, 0.2, seed=0)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"doc {i} é"}) + "\n" for i in range(3)))
    assert load_documents(str(jsonl))[2] == "doc 2 é".encode()
    assert len(load_documents(str(corpus / "doc[0-2].txt"))) == 3
    assert text_data.decode(text_data.encode("héllo")) == "héllo"
    assert len(load_documents("stdlib")) > 100  # the running Python's own sources
    with pytest.raises(ValueError, match="no files"):
        load_documents(str(tmp_path / "missing*"))


@pytest.mark.parametrize("where", ["..", ".hidden", "absolute .hidden"])
def test_corpus_folder_under_dots_is_read(tmp_path, monkeypatch, where):
    """Only what lies inside the folder given is filtered: the user's own path may hold `..` or dot-folders."""
    root = tmp_path / (".hidden" if ".hidden" in where else "plain") / "corp"
    for name in ("a.txt", "sub/b.txt", ".skipped.txt", ".git/c.txt", "__pycache__/d.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub" if where == ".." else tmp_path)
    spec = {"..": "../plain/corp", ".hidden": ".hidden/corp", "absolute .hidden": str(root)}[where]
    assert load_documents(spec) == [b"a.txt", b"sub/b.txt"]


@pytest.mark.parametrize("line, expected", [
    (b'{"content": "x"}', 'got: {"content": "x"}'),
    (b'{"text": ["x"]}', 'got: {"text": ["x"]}'),
    (b'{"text": null}', 'got: {"text": null}'),
    (b'"just a string"', 'got: "just a string"'),
    (b'{bad json', "not JSON"),
    (b'{"text": "\xff"}', "not UTF-8"),
], ids=["no-text", "text-list", "text-null", "string-line", "bad-json", "bad-utf8"])
def test_jsonl_problems_name_file_and_line(tmp_path, line, expected):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "fine"}\n\n' + line + b"\n")
    with pytest.raises(ValueError, match=r'c\.jsonl:3: .*object with a string "text" field') as err:
        load_documents(str(path))
    assert expected in str(err.value)


def test_binary_files_skipped_are_counted(tmp_path):
    (tmp_path / "rand.bin").write_bytes(b"\0\xff" * 1000)
    with pytest.raises(ValueError, match=r"1 binary file\(s\) skipped .*rand\.bin"):
        load_documents(str(tmp_path / "rand.bin"))
    (tmp_path / "text.txt").write_text("some text")
    with pytest.warns(UserWarning, match=r"1 binary file\(s\) skipped"):
        assert load_documents(str(tmp_path)) == [b"some text"]


def test_complexity_reports_corpus_problems_in_one_line(tmp_path):
    from nca_datagen.cli import main

    (tmp_path / "rand.bin").write_bytes(b"\0\xff" * 1000)
    bad = CliRunner().invoke(main, ["complexity", str(tmp_path / "rand.bin")])
    assert bad.exit_code == 1 and bad.output.startswith("Error: ") and bad.output.count("\n") == 1, bad.output
    assert "1 binary file(s) skipped" in bad.output
    (tmp_path / "text.txt").write_text("some text " * 100)
    ok = CliRunner().invoke(main, ["complexity", str(tmp_path), "--json"])
    assert ok.exit_code == 0 and "1 binary file(s) skipped" in ok.stderr
    assert json.loads(ok.stdout)["documents"] == 1
    (tmp_path / "c.jsonl").write_text('{"content": "x"}\n')
    bad = CliRunner().invoke(main, ["complexity", str(tmp_path / "c.jsonl")])
    assert bad.exit_code == 1 and bad.output.startswith("Error: ") and "c.jsonl:1: " in bad.output, bad.output


def test_corpus_files_listed_twice_are_read_once(corpus, monkeypatch):
    """`corp corp/*.txt` names every file twice: each is read once (else a validation document also trains)."""
    monkeypatch.chdir(corpus.parent)
    files = corpus_files([str(corpus / "doc3.txt"), corpus.name, str(corpus / "*.txt"), str(corpus)])
    assert [p.name for p in files] == ["doc3.txt"] + [f"doc{i}.txt" for i in range(10) if i != 3]
    assert len(load_documents([str(corpus), str(corpus)])) == 10


def test_one_document_is_split_by_bytes():
    """One plain text file is the most common corpus: its tail is the validation text (it used to be refused)."""
    doc = bytes(range(256)) * 10
    train, val = text_data.split_documents([doc], 0.1)
    assert train == [doc[:2304]] and val == [doc[2304:]]  # 2,560 bytes, the last 10% held out
    assert text_data.split_documents([doc, doc[:5]], 0.1)[1] in ([doc], [doc[:5]])  # two: still by document
    with pytest.raises(ValueError, match="holds no text"):
        text_data.split_documents([], 0.1)


def test_text_batches_resume_by_index(corpus):
    stream = text_data.token_stream(load_documents(str(corpus)))
    a = text_data.TextBatches(stream, 4, 32, seed=1)
    first = [a.next() for _ in range(50)]  # crosses an epoch boundary
    b = text_data.TextBatches(stream, 4, 32, seed=1)
    b.load_state_dict({"index": 30})
    assert all(torch.equal(first[30 + i][0], b.next()[0]) for i in range(20))
    x, y = first[0]
    assert x.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])


# ---------------------------------------------------------------- training, checkpoints, resume


def test_text_training_lowers_loss_and_checkpoint_round_trips(tmp_path, corpus):
    summary = train_text(str(corpus), tmp_path / "run", steps=30, batch_size=8, lr=3e-3, eval_every=10, **FAST)
    metrics = read_metrics(tmp_path / "run")
    vals = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert len(vals) == 4 and metrics[0] == {"step": 0, "val_loss": vals[0]} and vals[-1] < vals[0] - 0.5, vals
    assert summary["final_val_ppl"] == pytest.approx(math.exp(vals[-1]))
    state = load_checkpoint(tmp_path / "run")  # the folder or the file
    assert state["step"] == 30 and state["data"] == {"index": 30}
    model = build_model(ModelConfig(**state["model_config"]), seed=123)
    model.load_state_dict(state["model"])
    x = torch.randint(0, 257, (1, 32))
    again = build_model(ModelConfig(**load_checkpoint(tmp_path / "run" / "ckpt.pt")["model_config"]), seed=7)
    again.load_state_dict(load_checkpoint(tmp_path / "run" / "ckpt.pt")["model"])
    assert torch.equal(model(x), again(x))


def test_validation_follows_eval_every_whatever_log_every_is(tmp_path, corpus):
    """eval_every=5 with log_every=3 validates at 5 and 10 too (it used to validate only where both divide)."""
    train_text(str(corpus), tmp_path / "run", steps=12, batch_size=4, eval_every=5, log_every=3, **FAST)
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics if "val_loss" in m] == [0, 5, 10, 12]
    assert [m["step"] for m in metrics] == [0, 3, 5, 6, 9, 10, 12]


def test_resume_continues_the_loss_curve_identically(tmp_path, corpus):
    kw = dict(steps=8, batch_size=4, micro_batch_size=2, lr=3e-3, eval_every=4, **FAST)
    train_text(str(corpus), tmp_path / "whole", **kw)
    train_text(str(corpus), tmp_path / "split", stop_at=5, **kw)  # "preempted" after step 5
    assert load_checkpoint(tmp_path / "split")["step"] == 5
    train_text(str(corpus), tmp_path / "split", **kw)  # resumes from the checkpoint
    whole, split = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    assert [m["step"] for m in split] == list(range(9))
    assert whole == split  # every loss, lr and val loss, exactly
    with pytest.raises(ValueError, match="other settings"):  # a changed schedule is refused, not silently mixed
        train_text(str(corpus), tmp_path / "split", **{**kw, "steps": 9})


def test_rerun_with_other_run_settings_is_refused(tmp_path, corpus, capsys):
    """A finished run rerun with the same settings is complete; with another corpus, init, transfer, split or
    evaluation it is refused, naming `field: old -> new`, and leaves the run's files as they were."""
    init = train_text(str(corpus), tmp_path / "pre", steps=2, batch_size=4, **FAST)["checkpoint"]
    kw = dict(init=init, transfer="all", steps=3, batch_size=4, **FAST)
    run = tmp_path / "run"
    train_text(str(corpus), run, stop_at=2, **kw)
    capsys.readouterr()
    train_text(str(corpus), run, **kw)
    assert "resuming at step 2 of 3" in capsys.readouterr().err
    before = {name: (run / name).read_bytes() for name in ("ckpt.pt", "metrics.jsonl", "transfer.json", "run.json")}
    train_text(str(corpus), run, **kw)
    assert "already complete" in capsys.readouterr().err
    changes = {
        "corpus_sha256": ([str(corpus / "doc[0-7].txt")], {}),
        "init_sha256": ([str(corpus)], {"init": None}),
        "transfer": ([str(corpus)], {"transfer": "attn"}),
        "reinit_layers": ([str(corpus)], {"reinit_layers": "1"}),
        "val_fraction": ([str(corpus)], {"val_fraction": 0.2}),
        "eval_tokens": ([str(corpus)], {"eval_tokens": 256}),
    }
    for field, (spec, change) in changes.items():
        with pytest.raises(ValueError, match=rf"other settings \(.*{field}: .* -> .*\).*another --out"):
            train_text(spec, run, **{**kw, **change})
    assert before == {name: (run / name).read_bytes() for name in before}
    train_text([f"{corpus}/./"], run, **kw)  # the same documents, spelled differently: the same run
    assert "already complete" in capsys.readouterr().err
    moved = shutil.copytree(Path(init).parent, tmp_path / "moved")  # the same init elsewhere: the same run
    train_text(str(corpus), run, **{**kw, "init": str(moved / "ckpt.pt")})
    assert "already complete" in capsys.readouterr().err
    other = train_text(str(corpus), tmp_path / "pre2", steps=3, batch_size=4, **FAST)["checkpoint"]
    shutil.copyfile(other, moved / "ckpt.pt")  # another checkpoint in its place: another starting point
    with pytest.raises(ValueError, match=r"init_sha256: \w+ -> \w+"):
        train_text(str(corpus), run, **{**kw, "init": str(moved / "ckpt.pt")})


# ---------------------------------------------------------------- transfer


@pytest.mark.parametrize(("parts", "reinit"), [("all", ""), ("attn", ""), ("attn,norm", "1"), ("mlp", "0"),
                                               ("none", "")], ids=lambda v: v or "-")
def test_transfer_keeps_exactly_the_chosen_tensors(parts, reinit):
    source = build_model(dataclasses.replace(TINY, vocab_size=18), seed=1).state_dict()  # an "NCA" model
    fresh = build_model(dataclasses.replace(TINY, vocab_size=257), seed=2)
    scratch = {k: v.clone() for k, v in fresh.state_dict().items()}
    report = transfer_weights(fresh, source, parts, reinit)
    chosen, layers = parse_parts(parts), {int(i) for i in reinit.split(",") if i}
    for name, tensor in fresh.state_dict().items():
        block = name.split(".")[1] if name.startswith("blocks.") else None
        part = ("norm" if name.startswith("norm.") or "_norm" in name else
                name.split(".")[2] if block is not None else None)
        keep = part in chosen and (block is None or int(block) not in layers)
        assert (name in report["kept"]) == keep and (name in report["fresh"]) != keep, name
        if keep:
            assert torch.equal(tensor, source[name]), name
        else:
            assert torch.equal(tensor, scratch[name]), name  # the scratch init, untouched
            if name in source and source[name].shape == tensor.shape and not name.endswith("norm.weight"):
                assert not torch.equal(tensor, source[name]), name
    assert all(n in report["fresh"] for n in ("embed.weight", "head.weight"))


def test_transfer_rejects_bad_specs():
    model = build_model(TINY)
    with pytest.raises(ValueError, match="choose"):
        transfer_weights(model, model.state_dict(), "attention")
    with pytest.raises(ValueError, match=r"layers are 0\.\.1"):
        transfer_weights(model, model.state_dict(), "all", "5")
    wide = build_model(dataclasses.replace(TINY, width=64)).state_dict()
    with pytest.raises(ValueError, match="different shape"):
        transfer_weights(model, wide, "mlp")


# ---------------------------------------------------------------- compare and CLI


def test_steps_to_reach_interpolates():
    curve = [(10, 3.0), (20, 2.0), (30, 1.0)]
    assert steps_to_reach(curve, 2.5) == 15.0
    assert steps_to_reach(curve, 3.5) == 10.0
    assert steps_to_reach(curve, 0.5) is None


def test_compare_from_a_checkpoint_end_to_end(tmp_path, corpus):
    # any decoder checkpoint can stand in for an NCA one here; the NCA path is in test_train_nca.py
    init = train_text(str(corpus), tmp_path / "pre", steps=4, batch_size=4, lr=3e-3, **FAST)["checkpoint"]
    report = compare(init, str(corpus), tmp_path / "cmp", steps=6, batch_size=4, lr=3e-3, eval_every=2, **FAST)
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["scratch_val_loss"] == report["scratch_val_loss"] and saved["steps"] == 6
    assert report["ppl_change"] == pytest.approx(report["nca_val_ppl"] / report["scratch_val_ppl"] - 1)
    assert [s for s, _ in report["curves"]["scratch"]] == [0, 2, 4, 6]
    assert report["curves"]["scratch"][0] != report["curves"]["NCA-initialised"][0]  # different starting weights
    assert json.loads((tmp_path / "cmp" / "nca-init" / "transfer.json").read_text())["parts"] == ["attn", "mlp", "norm"]
    assert json.loads((tmp_path / "cmp" / "scratch" / "transfer.json").read_text())["kept"] == []
    assert saved["text"] == [str(corpus)] and saved["scratch_run"]["corpus"] == [str(corpus)]
    again = compare(init, str(corpus), tmp_path / "cmp", steps=6, batch_size=4, lr=3e-3, eval_every=2, **FAST)
    assert again["curves"] == report["curves"]  # the same command again: every run is complete, nothing trains


def test_speedup_when_nca_starts_at_scratch_final_loss(capsys):
    from nca_datagen.train.cli import _echo_report

    scratch_curve, nca_curve = [(0, 3.0), (10, 2.0)], [(0, 1.9), (10, 1.5)]
    report = summarize({"final_val_loss": 2.0}, {"final_val_loss": 1.5}, scratch_curve, nca_curve)
    assert report["nca_steps_to_scratch_final"] == 0.0
    _echo_report(report)
    out = capsys.readouterr().out
    assert "not reached" not in out and "started at or below scratch's final loss" in out, out
    report = summarize({"final_val_loss": 1.0}, {"final_val_loss": 1.5}, scratch_curve, nca_curve)
    _echo_report(report)
    assert "not reached" in capsys.readouterr().out


def test_curves_figure_counts_whole_steps():
    from nca_datagen.train.compare import curves_figure

    fig = curves_figure({"scratch": [(0, 3.0), (1, 2.5), (2, 2.0)]}, "title")
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) > 1 and all(float(t).is_integer() for t in ticks), ticks


def test_cli_text_and_help(tmp_path, corpus):
    from nca_datagen.cli import main

    runner = CliRunner()
    for sub in ("nca", "text", "compare", "sweep"):
        result = runner.invoke(main, ["train", sub, "--help"])
        assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["train", "text", "--text", str(corpus), "--out", str(tmp_path / "t"), "--steps", "2",
                                  "--batch-size", "2", "--context", "32", "--eval-tokens", "256", "--device", "cpu",
                                  "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["final_val_loss"] > 0
    assert json.loads((tmp_path / "t" / "run.json").read_text())["corpus"] == [str(corpus)]


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_a_config_file_run_equals_the_same_run_from_flags(tmp_path, corpus, suffix):
    """`--config` holds a train command's options (its own section of a shared file, [train.text]); the run it
    makes equals the one the same flags make, and a flag given on the command line wins over the file."""
    from nca_datagen.cli import main

    settings = {"text": [str(corpus)], "steps": 3, "batch-size": 2, "context": 32, "eval_tokens": 256,
                "device": "cpu", "quiet": True, "seed": 5}
    path = tmp_path / f"settings{suffix}"
    if suffix == ".toml":
        lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]  # JSON's values are TOML's here
        path.write_text("[build]\ngrid = 8\n\n[train.text]\n" + "\n".join(lines) + "\n")
    elif suffix == ".yaml":
        import yaml

        path.write_text(yaml.safe_dump({"train": {"text": settings}}))
    else:  # a repeatable option's one value as a plain string
        path.write_text(json.dumps({"train": {"text": {**settings, "text": str(corpus)}}}))
    flags = ["--text", str(corpus), "--steps", "3", "--batch-size", "2", "--context", "32", "--eval-tokens", "256",
             "--device", "cpu", "--quiet", "--seed", "5"]
    runner = CliRunner()
    from_file = runner.invoke(main, ["train", "text", "--config", str(path), "--out", str(tmp_path / "file")])
    from_flags = runner.invoke(main, ["train", "text", *flags, "--out", str(tmp_path / "flags")])
    assert from_file.exit_code == 0 and from_flags.exit_code == 0, from_file.output + from_flags.output
    assert read_metrics(tmp_path / "file") == read_metrics(tmp_path / "flags")
    overridden = runner.invoke(main, ["train", "text", "--config", str(path), "--steps", "2", "--out",
                                      str(tmp_path / "two")])
    assert overridden.exit_code == 0, overridden.output
    assert json.loads((tmp_path / "two" / "run.json").read_text())["steps"] == 2


def test_a_train_config_file_with_an_unknown_option_is_refused(tmp_path):
    from nca_datagen.cli import main

    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"train": {"nca": {"steps": 3, "nca_steps": 5}}}))
    result = CliRunner().invoke(main, ["train", "nca", "--config", str(path), "--recipe", "50%+", "--out",
                                       str(tmp_path / "run")])
    assert result.exit_code == 2 and "no option nca_steps in `train nca`" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_compare_on_a_single_file_corpus(tmp_path, corpus):
    """`compare --text one.txt` trains and validates on the file's tail, where it failed with 'the corpus has 1
    document(s)' after the NCA stage."""
    from nca_datagen.cli import main

    init = train_text(str(corpus), tmp_path / "pre", steps=2, batch_size=4, **FAST)["checkpoint"]
    one = tmp_path / "one.txt"
    one.write_bytes(b"".join(sorted(p.read_bytes() for p in corpus.iterdir())))
    result = CliRunner().invoke(main, ["train", "compare", "--nca", init, "--text", str(one), "--out",
                                       str(tmp_path / "cmp"), "--steps", "2", "--batch-size", "4", "--context", "32",
                                       "--eval-tokens", "0", "--val-fraction", "0.1", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "cmp" / "compare.json").read_text())["scratch_run"]["corpus_info"]
    held_out = round(0.1 * one.stat().st_size) + 1  # the tail and its end-of-text token
    assert info["documents"] == 1 and info["split"] == "bytes", info
    assert info["val_tokens"] == held_out // 33 * 32  # every whole window of context + 1 tokens


def _one_line_errors():
    """(arguments after `train`, text the one-line error must hold); {corpus} and {tmp} are filled in."""
    text = ["text", "--text", "{corpus}", "--out", "{tmp}/run", "--steps", "2", "--batch-size", "4", "--context", "32",
            "--eval-tokens", "256", "--device", "cpu", "--quiet"]
    no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
    return [
        pytest.param([*text, "--steps", "0"], "--steps", id="steps-0"),
        pytest.param([*text, "--batch-size", "0"], "--batch-size", id="batch-size-0"),
        pytest.param([*text, "--micro-batch-size", "3"], "not a multiple of micro_batch_size=3", id="micro-batch"),
        pytest.param([*text, "--context", "0"], "--context", id="context-0"),
        pytest.param([*text, "--val-fraction", "1"], "--val-fraction", id="val-fraction-1"),
        pytest.param([*text, "--eval-tokens", "-1"], "--eval-tokens", id="eval-tokens-negative"),
        pytest.param([*text, "--warmup", "-5"], "--warmup", id="warmup-negative"),
        pytest.param([*text, "--lr", "0"], "--lr", id="lr-0"),
        pytest.param([*text, "--seed", "-1"], "--seed", id="seed-negative"),
        pytest.param(["sweep", "--text", "{corpus}", "--out", "{tmp}/sw", "--tokens", "0"], "--tokens",
                     id="sweep-tokens-0"),
        pytest.param(["sweep", "--text", "{corpus}", "--out", "{tmp}/sw", "--tokens", "1.5"], "whole",
                     id="sweep-tokens-1.5"),
        pytest.param([*text, "--transfer", "bogus"], "choose 'all', 'none'", id="transfer"),
        pytest.param([*text, "--reinit-layers", "x"], "block indices", id="reinit-layers"),
        pytest.param([*text, "--device", "cuda"], "no CUDA GPU", id="cuda-without-gpu", marks=no_gpu),
        pytest.param([*text, "--device", "tpu9"], "--device", id="device-unknown"),
        pytest.param([*text, "--tracker", "wandb"], "pip install wandb", id="tracker-missing"),
        pytest.param([*text, "--init", "{corpus}/doc0.txt"], "is not an nca-datagen training checkpoint",
                     id="init-not-checkpoint"),
        pytest.param([*text, "--init", "{tmp}/nope.pt"], "checkpoint not found", id="init-missing"),
        pytest.param(["text", "--text", "{tmp}/missing", "--out", "{tmp}/run"], "has no files", id="corpus-missing"),
        pytest.param([*text, "--context", "4000"], "shorter --context", id="corpus-too-small"),
        pytest.param(["nca", "{tmp}/missing", "--out", "{tmp}/run"], "no dataset at", id="nca-missing"),
        pytest.param(["compare", "--nca", "{tmp}/nope.pt", "--text", "{corpus}", "--out", "{tmp}/cmp"],
                     "checkpoint not found", id="compare-checkpoint-missing"),
    ]


@pytest.mark.parametrize("args, expected", _one_line_errors())
def test_cli_user_errors_are_one_line(tmp_path, corpus, args, expected):
    from nca_datagen.cli import main

    args = [a.format(corpus=corpus, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit), (result.exception, result.output)
    error = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error) == 1 and expected in error[0], result.output


@pytest.mark.parametrize("flag", [["--transfer", "attn"], ["--transfer", "all"], ["--reinit-layers", "0"]],
                         ids=["transfer-attn", "transfer-all", "reinit-layers"])
def test_text_refuses_transfer_flags_without_init(tmp_path, corpus, flag):
    """Without --init there is nothing to transfer: an explicit flag is a usage error, not silently ignored."""
    from nca_datagen.cli import main

    result = CliRunner().invoke(main, ["train", "text", "--text", str(corpus), "--out", str(tmp_path / "t"), *flag])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error) == 1 and "--init" in error[0] and flag[0] in error[0], result.output
    assert not (tmp_path / "t").exists()


def test_every_train_option_has_help():
    """Each option of each `train` command says what it does; a positional argument is named in its command's
    help."""
    from nca_datagen.train.cli import train_group

    for name, command in train_group.commands.items():
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help and param.help.strip(), f"train {name} {'/'.join(param.opts)} has no help"
            else:
                assert param.name.upper() in command.help, f"train {name}: {param.name.upper()} not in its help"


def test_train_help_lists_each_command_whole():
    """`train --help` shows each command's summary whole, not cut with '...' at 45 characters."""
    from nca_datagen.cli import main
    from nca_datagen.train.cli import train_group

    for width in (80, 120):
        out = CliRunner().invoke(main, ["train", "--help"], terminal_width=width).output.split("Commands:")[1]
        assert "..." not in out and "\u2026" not in out, out
        for command in train_group.commands.values():
            assert command.short_help in out, (command.name, out)


def test_every_command_takes_the_corpus_as_text(tmp_path, corpus):
    """One way to pass a corpus: `--text`, repeatable, in text, compare and sweep alike."""
    from nca_datagen.cli import main
    from nca_datagen.train.cli import train_group

    options = [next(p for p in train_group.commands[name].params if p.name == "text")
               for name in ("text", "compare", "sweep")]
    assert all(o.opts == ["--text"] and o.multiple and o.required and o.help == options[0].help for o in options)
    assert not any(isinstance(p, click.Argument) for p in train_group.commands["text"].params)
    old_style = CliRunner().invoke(main, ["train", "text", str(corpus), "--out", str(tmp_path / "t")])
    assert old_style.exit_code == 2 and "--text" in old_style.output and not (tmp_path / "t").exists()


def _help(command: str, option: str) -> str:
    """The help text of one option of `train COMMAND`."""
    from nca_datagen.train.cli import train_group

    return next(p.help for p in train_group.commands[command].params if p.name == option)


def test_help_states_each_commands_real_defaults():
    for command in ("compare", "sweep"):  # compare validates ~20 times by default, not only at the end
        assert "default: --steps // 20" in _help(command, "eval_every")
        assert "default: 5e-4" in _help(command, "lr")
    for command in ("nca", "text"):
        assert "default or 0: only after the last step" in _help(command, "eval_every")
    assert "default: 1e-4" in _help("nca", "lr") and "default: 5e-4" in _help("text", "lr")
    assert "default: 5% of --steps" in _help("text", "warmup") and "default: the whole budget" in _help("nca", "warmup")


def test_sweep_takes_token_counts_and_says_when_no_band_beat_scratch(tmp_path, monkeypatch):
    from nca_datagen.cli import main

    asked = {}

    def fake_sweep(text, out, *, tokens, **kw):
        asked["tokens"] = tokens
        return {"best_band": "50%+", "bands": [{"band": "20-30%", "nca_val_ppl": 140.0, "ppl_change": 0.05},
                                               {"band": "50%+", "nca_val_ppl": 130.0, "ppl_change": 0.038}]}

    monkeypatch.setattr("nca_datagen.train.compare.sweep", fake_sweep)
    args = ["train", "sweep", "--text", "stdlib", "--out", str(tmp_path), "--tokens", "100K"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert asked["tokens"] == 100_000
    assert "3.80% higher (worse) perplexity than scratch" in result.output
    assert "no band beat scratch; closest: 50%+" in result.output and "best band" not in result.output, result.output
    assert "+" not in result.output.replace("50%+", ""), result.output


def test_compare_wording_says_better_or_worse():
    from nca_datagen.train.compare import _title, best_band_text

    curve = [(0, 3.0), (10, 2.0)]
    worse = summarize({"final_val_loss": 2.0}, {"final_val_loss": 2.03}, curve, curve)
    better = summarize({"final_val_loss": 2.0}, {"final_val_loss": 1.97}, curve, curve)
    assert "3.0% higher (worse) perplexity than scratch" in _title(worse) and "+" not in _title(worse)
    assert "3.0% lower (better) perplexity than scratch" in _title(better)
    assert best_band_text([{"band": "30-40%", "ppl_change": -0.031}], "30-40%") == \
        "best band: 30-40% (3.10% lower (better) perplexity than scratch)"


def test_compare_summary_says_better_or_worse(capsys):
    from nca_datagen.train.cli import _echo_report

    curve = [(0, 3.0), (10, 2.0)]
    _echo_report(summarize({"final_val_loss": 2.0}, {"final_val_loss": 2.029}, curve, curve))
    out = capsys.readouterr().out
    assert "2.94% higher (worse) perplexity than scratch" in out and "+" not in out, out
    _echo_report(summarize({"final_val_loss": 2.0}, {"final_val_loss": 1.97}, curve, curve))
    assert "2.96% lower (better) perplexity than scratch" in capsys.readouterr().out


def test_train_config_refuses_negative_warmup_other_than_whole_budget():
    TrainConfig(warmup=-1)  # -1: warm up over the whole budget
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(warmup=-5)


def test_train_package_never_imports_the_generator():
    code = ("import sys, nca_datagen.train.cli, nca_datagen.train.stages, nca_datagen.train.compare, "
            "nca_datagen.train.nca; "
            "bad = [m for m in sys.modules if m.startswith(('nca_datagen.generate', 'nca_datagen.rollout', "
            "'nca_datagen.rules', 'nca_datagen.kernels', 'nca_datagen.seeds'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _run_report(scratch_loss: float, text_unigram: float, nca: dict | None) -> dict:
    """A compare report with what `what_it_can_show` reads (the runs' summaries)."""
    return {"scratch_run": {"final_val_loss": scratch_loss, "corpus_info": {"unigram_loss": text_unigram}},
            "nca_run": nca}


@pytest.mark.parametrize("scratch_loss, nca, expected", [
    (4.2, None, "a smoke test: it shows the pipeline runs, not whether NCA data helps: scratch's final validation "
                "loss 4.20 is not below the corpus's byte unigram loss 3.25"),
    (1.5, {"final_val_loss": 8.1, "unigram_loss": 7.9, "val_loss_by_frame": [None, 8.2, 8.0]},
     "a smoke test: it shows the pipeline runs, not whether NCA data helps: the NCA stage's validation loss 8.10 is "
     "not below its unigram loss 7.90"),
    (1.5, {"final_val_loss": 2.5, "unigram_loss": 4.0, "val_loss_by_frame": [None, 3.0, 2.9, 2.8]},
     "the NCA stage learned token statistics, little in context (validation loss by frame: frame 1 3.00 -> frame 3 "
     "2.80 nats, 7% lower, under 10%)"),
    (1.5, {"final_val_loss": 2.0, "unigram_loss": 4.0, "val_loss_by_frame": [None, 3.0, 2.0, 1.0]},
     "the NCA stage learned in context (validation loss by frame: frame 1 3.00 -> frame 3 1.00 nats, 67% lower; "
     "a model that knows the rule scores about 0); one seed, so a change means something only beyond the "
     "seed-to-seed spread"),
    (1.5, None, "one seed, and no NCA validation by frame here"),
], ids=["text-smoke", "nca-smoke", "statistics-only", "rule-inference", "from-checkpoint"])
def test_compare_says_what_a_run_of_its_size_can_show(scratch_loss, nca, expected):
    from nca_datagen.train.compare import what_it_can_show

    said = what_it_can_show(_run_report(scratch_loss, 3.25, nca))
    assert said.startswith(expected) and "164M NCA tokens" in said, said
