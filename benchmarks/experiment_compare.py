"""Experiment: does NCA pre-pre-training help a small byte-level model on Python source? (CPU scale, 3 seeds)

The paper's comparison (paper-facts §5-6) shrunk to about 20 minutes on 2 CPU cores, designed so that its NCA
stage can show what the paper's gain rests on: in-context rule inference. At the paper's NCA config a CPU-sized
model only learns token statistics in that time (the previous run of this script: 6.95 nats after 2.4M tokens,
where a uniform guess scores 9.21), so the NCA here is smaller (measurements.md: a `mini` model learns it within
minutes):

1. build `--states 3 --grid 8 --frames 20 --complexity 0.15:` (vocab 83, 18 tokens a frame, 360-token sequences)
   with the `nca-datagen build` command; measure its floor (below) on the validation split;
2. per seed (0, 1, 2): `compare` pre-pre-trains `mini` on it and reports the validation loss by frame position
   (`train.frames`) against the unigram loss of each frame and the floor, then trains scratch and `--transfer
   all` on `stdlib` with the same text batches and seed; a second `compare` from the same checkpoint trains
   `--transfer attn` against that scratch run (the paper finds attention the most transferable part);
3. report per seed and mean +- spread: final validation loss and perplexity change vs scratch, and the speed-up
   as the paper computes it (scratch steps / steps the NCA run needs to reach scratch's final validation loss).

The floor is the loss of a model that knows the rule. This CA is an argmax CA in which only near-tie cells are
left to the noise, so per rule the next state of a cell is a function of its 3x3 neighbourhood but for those. It
is measured, per 2x2 patch token, as 4x the conditional entropy of a cell's next state given (rule, 3x3
neighbourhood) over neighbourhoods a rule shows at least twice in the validation split (a plug-in entropy is 0 on
one sighting; 4x bounds the patch's entropy by its cells' sum).

Choices, none tuned on the validation split:
- NCA stage: 600 steps x 16 sequences (3.4M tokens), Adam lr 3e-3, no weight decay, warmup 60 steps then
  constant: measurements.md's run of this data. The paper's recipe (Adam, no decay, constant after warmup) with the
  lr raised for a model ~1000x smaller and the warmup shortened from the whole budget (with 600 steps that would
  spend the run below half the peak).
- Text stage: 300 steps x 16 x 256 bytes (1.2M bytes), AdamW lr 2e-3, weight decay 0.1, 5% warmup then cosine:
  the previous run's recipe (the paper's shape: AdamW, warmup then cosine) with half its steps, so that 3 seeds
  x 3 text runs fit the budget. Validation every 15 steps on 32,768 bytes of held-out documents.

    python -m benchmarks.experiment_compare            # ~20-30 min on 2 free cores
    python -m benchmarks.experiment_compare --quick    # a few minutes: a smoke run at a tiny scale

Writes benchmarks/results/compare[-quick].json, .md, .png (text curves) and -frames.png (loss by frame).
`--rewrite-note` redraws the figures and rewrites the markdown from the JSON, keeping its hand-written
"What it showed" section.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import RESULTS, machine
from nca_datagen.train.compare import change_text, speedup_text, what_it_can_show

SEEDS = (0, 1, 2)
READING = "## What it showed"  # the results markdown's last section, written by hand once a run is read
TRANSFERS = ("all", "attn")
FULL = {
    "build": ["--states", "3", "--grid", "8", "--frames", "20", "--complexity", "0.15:", "--tokens", "8M"],
    "model": "mini",
    # val_sequences 256: 4,096 patch targets a frame, so a frame's mean loss has a standard error of ~0.02 nats
    "nca": dict(nca_steps=600, nca_batch_size=16,
                nca_train={"lr": 3e-3, "warmup": 60, "eval_every": 100, "val_sequences": 256}),
    "text": dict(steps=300, batch_size=16, context=256, lr=2e-3, eval_every=15, eval_tokens=32768),
}
QUICK = {
    "build": ["--states", "3", "--grid", "6", "--frames", "8", "--complexity", "0.3:", "--tokens", "20K",
              "--sims-per-rule", "4", "--samples-per-shard", "40"],
    "model": "tiny",
    "nca": dict(nca_steps=10, nca_batch_size=4, nca_train={"lr": 3e-3, "warmup": 2, "eval_every": 5}),
    "text": dict(steps=10, batch_size=4, context=64, lr=3e-3, eval_every=2, eval_tokens=4096),
}


def build(out: Path, args: list[str]) -> float:
    """The dataset via the CLI (as a user would), unless it is already there; returns seconds spent."""
    if (out / "manifest.json").exists():
        return 0.0
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", "from nca_datagen.cli import main; main()", "build", *args, "--out", str(out),
           "--executor", "inline", "--quiet"]
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def rule_evidence(url: str) -> dict:
    """From the validation split: the floor (see the module docstring), and for each frame k the share of its
    cells whose 3x3 neighbourhood in frame k-1 already appeared earlier in the same sequence: what a model that
    looked the rule up in context, exactly, could predict for certain (the rest needs the rule's structure)."""
    from nca_datagen import loader
    from nca_datagen.config import NCAConfig
    from nca_datagen.manifest import read_manifest
    from nca_datagen.tokenizer import decode_patches

    dataset = loader.NCADataset(url, "val", shuffle=False, raw=True)
    nca = dict(read_manifest(url)["config"]["nca"])
    cfg = NCAConfig(**{**nca, "grid": tuple(nca["grid"]), "hidden": tuple(nca["hidden"])})
    rows = list(dataset)
    tokens_NFT = np.stack([r["tokens"].numpy() for r in rows]).reshape(len(rows), cfg.frames, cfg.tokens_per_frame)
    cells_NFHW = decode_patches(tokens_NFT[..., 1:-1], cfg).astype(np.int64)
    before, after = cells_NFHW[:, :-1], cells_NFHW[:, 1:]
    neighbourhood = sum(np.roll(before, (dy, dx), axis=(-2, -1)) * cfg.states ** i  # periodic, as the CA
                        for i, (dy, dx) in enumerate((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)))
    _, rule_N = np.unique([(r["shard"], r["rule_id"]) for r in rows], axis=0, return_inverse=True)
    key = rule_N.reshape(-1, 1, 1, 1) * cfg.states**9 + neighbourhood
    pair, pair_count = np.unique((key * cfg.states + after).ravel(), return_counts=True)
    _, key_of_pair = np.unique(pair // cfg.states, return_inverse=True)
    seen = np.bincount(key_of_pair, weights=pair_count)[key_of_pair]
    repeated = seen >= 2
    cell_entropy = -(pair_count * np.log(pair_count / seen))[repeated].sum() / pair_count[repeated].sum()
    return {"floor": float(cfg.patch**2 * cell_entropy), "cell_entropy": float(cell_entropy),
            "transitions_on_repeated_neighbourhoods": float(pair_count[repeated].sum() / pair_count.sum()),
            "neighbourhood_seen_before_by_frame": [None, *_seen_before(neighbourhood)], "sequences": len(rows)}


def _seen_before(neighbourhood_NTHW: np.ndarray) -> list[float]:
    """Per transition t, the share of cells whose neighbourhood occurs in a transition < t of its sequence."""
    n, t = neighbourhood_NTHW.shape[:2]
    key = (np.arange(n).reshape(-1, 1, 1, 1) * (neighbourhood_NTHW.max() + 1) + neighbourhood_NTHW).ravel()
    step = np.broadcast_to(np.arange(t).reshape(1, -1, 1, 1), neighbourhood_NTHW.shape).ravel()
    _, which = np.unique(key, return_inverse=True)
    first = np.full(which.max() + 1, t)
    np.minimum.at(first, which, step)
    return (first[which] < step).reshape(n, t, -1).mean(axis=(0, 2)).tolist()


def run_seed(data: Path, work: Path, plan: dict, seed: int, device: str) -> dict:
    """NCA stage, scratch and `--transfer all` (one compare), then `--transfer attn` against the same scratch."""
    from nca_datagen.train.compare import compare

    common = dict(model=plan["model"], device=device, seed=seed, quiet=True, **plan["text"])
    t0 = time.perf_counter()
    reports = {"all": compare(str(data), "stdlib", work / f"seed{seed}", transfer="all", **plan["nca"], **common)}
    reports["attn"] = compare(reports["all"]["checkpoint"], "stdlib", work / f"seed{seed}" / "attn", transfer="attn",
                              scratch=reports["all"]["scratch_run"], **common)
    return {"seed": seed, "seconds": time.perf_counter() - t0, "nca_run": reports["all"]["nca_run"],
            "scratch_run": reports["all"]["scratch_run"],
            "by_transfer": {t: {k: v for k, v in r.items() if k not in ("nca_run", "scratch_run")}
                            for t, r in reports.items()}}


def nca_curves(seed_runs: list[dict], work: Path) -> dict[int, list]:
    """The NCA validation loss by frame at each evaluated step, averaged over seeds."""
    from nca_datagen.train.trainer import read_metrics

    per_seed = [{m["step"]: m["val_loss_by_frame"] for m in read_metrics(work / f"seed{r['seed']}" / "nca")
                 if "val_loss_by_frame" in m} for r in seed_runs]
    return {step: _mean_lists([s[step] for s in per_seed]) for step in per_seed[0]}


def _mean_lists(lists: list[list]) -> list:
    return [None if values[0] is None else statistics.fmean(values) for values in zip(*lists, strict=True)]


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation and range of per-seed values."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values}


def summarize(seed_runs: list[dict]) -> dict:
    """Per transfer: the spread over seeds of the perplexity change and of the final losses; the speed-ups."""
    out = {"scratch_val_loss": spread([r["scratch_run"]["final_val_loss"] for r in seed_runs])}
    for t in TRANSFERS:
        reports = [r["by_transfer"][t] for r in seed_runs]
        reached = [r["speedup"] for r in reports if r["speedup"]]
        out[t] = {"val_loss": spread([r["nca_val_loss"] for r in reports]),
                  "ppl_change": spread([r["ppl_change"] for r in reports]),
                  "beat_scratch": sum(r["ppl_change"] < 0 for r in reports),
                  "speedups": [r["speedup"] for r in reports],
                  "speedup_texts": [speedup_text(r, short=True) for r in reports],
                  "speedup_mean_where_reached": statistics.fmean(reached) if reached else None}
    return out


def text_curves(seed_runs: list[dict]) -> dict[str, list]:
    """Validation curves of scratch and each transfer, averaged over seeds (every run evaluates the same steps)."""
    runs = {"scratch": [r["by_transfer"]["all"]["curves"]["scratch"] for r in seed_runs],
            **{f"--transfer {t}": [r["by_transfer"][t]["curves"]["NCA-initialised"] for r in seed_runs]
               for t in TRANSFERS}}
    return {label: [(points[0][0], statistics.fmean(p[1] for p in points)) for points in zip(*curves, strict=True)]
            for label, curves in runs.items()}


def commit() -> str:
    """The nca-datagen commit the experiment ran on, `+dirty` when the work tree had changes."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=RESULTS.parent).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no")
                                                   else "")


def _load_text(timings: dict) -> str:
    """The machine's load while it ran, where recorded: wall time on a shared 2-core box depends on it."""
    load = timings.get("load_average_5min")
    return f", 5-minute load average {load[0]:.1f} at the start and {load[1]:.1f} at the end" if load else ""


def _pm(s: dict, fmt: str = ".2%") -> str:
    return f"{s['mean']:{fmt}} ± {s['std']:{fmt}} (range {s['min']:{fmt}} to {s['max']:{fmt}})"


def frame_table(seed_runs: list[dict], curves: dict[int, list], evidence: dict) -> str:
    """Frame | cells whose neighbourhood was seen before | unigram | mean at each evaluated step | final per seed."""
    unigram = seed_runs[0]["nca_run"]["unigram_loss_by_frame"]
    seen = evidence["neighbourhood_seen_before_by_frame"]
    steps = sorted(curves)
    head = ["frame", "cells with a seen neighbourhood", "unigram", *(f"step {s} (mean)" for s in steps),
            *(f"seed {r['seed']}" for r in seed_runs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, u in enumerate(unigram):
        if u is None:
            continue
        cells = [str(k), f"{seen[k]:.0%}", f"{u:.3f}", *(f"{curves[s][k]:.3f}" for s in steps),
                 *(f"{r['nca_run']['val_loss_by_frame'][k]:.3f}" for r in seed_runs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nFloor (the rule known): {evidence['floor']:.4f} nats a patch token.\n"


def text_table(seed_runs: list[dict]) -> str:
    head = ["seed", "scratch val loss", *(f"{t} val loss" for t in TRANSFERS),
            *(f"{t} ppl change" for t in TRANSFERS), *(f"{t} speed-up" for t in TRANSFERS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in seed_runs:
        b = r["by_transfer"]
        cells = [str(r["seed"]), f"{r['scratch_run']['final_val_loss']:.4f}",
                 *(f"{b[t]['nca_val_loss']:.4f}" for t in TRANSFERS),
                 *(f"{b[t]['ppl_change']:+.2%}" for t in TRANSFERS),
                 *(speedup_text(b[t], short=True) for t in TRANSFERS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def note(record: dict, quick: bool) -> str:
    plan, s, runs = record["plan"], record["summary"], record["seed_runs"]
    nca0, text0 = runs[0]["nca_run"], runs[0]["scratch_run"]
    info = text0["corpus_info"]
    floor = record["floor"]
    last = max(k for k, v in enumerate(nca0["unigram_loss_by_frame"]) if v is not None)
    first_mean = statistics.fmean(r["nca_run"]["val_loss_by_frame"][1] for r in runs)
    last_mean = statistics.fmean(r["nca_run"]["val_loss_by_frame"][last] for r in runs)
    lines = [f"# NCA pre-pre-training vs scratch{' (quick smoke run)' if quick else ''}, {len(runs)} seeds", "",
             f"- nca-datagen commit `{record['commit']}`; {record['timings']['threads']} torch threads; "
             f"wall time {record['timings']['total_s'] / 60:.1f} min (build {record['timings']['build_s']:.0f} s)"
             f"{_load_text(record['timings'])}.",
             f"- NCA data: `nca-datagen build {' '.join(plan['build'])}`: vocab {nca0['model']['vocab_size']}, "
             f"{nca0['model']['context'] + 2}-token sequences.",
             f"- Model `{plan['model']}`: {text0['params']:,} parameters as a text model "
             f"({text0['params_without_embeddings']:,} in the blocks that transfer).",
             f"- NCA stage: {plan['nca']['nca_steps']} steps x {plan['nca']['nca_batch_size']} sequences, "
             f"Adam lr {plan['nca']['nca_train']['lr']}, warmup {plan['nca']['nca_train']['warmup']} then constant, "
             f"no weight decay.",
             f"- Text: `stdlib`, {info['documents']} documents, {info['train_tokens']:,} training bytes, "
             f"{info['val_tokens']:,} validation bytes; {plan['text']['steps']} steps x {plan['text']['batch_size']} "
             f"x {plan['text']['context']} bytes, AdamW lr {plan['text']['lr']}, warmup 5% then cosine; scratch, "
             f"`--transfer all` and `--transfer attn` share text batches and seed. Perplexities are per byte.",
             "- Choices and why: the docstring of `benchmarks/experiment_compare.py`. Nothing was tuned on the "
             "validation split.", "",
             "## The NCA stage: validation loss by frame position (nats a patch token)", "",
             f"Unigram loss over every scored target {nca0['unigram_loss']:.3f} (a uniform guess: "
             f"{math.log(nca0['model']['vocab_size']):.3f}); final validation loss, mean over seeds, "
             f"{statistics.fmean(r['nca_run']['final_val_loss'] for r in runs):.3f}. Frame 1 (one frame seen) "
             f"{first_mean:.3f}, frame {last} {last_mean:.3f}, against a floor of {floor['floor']:.4f} "
             f"(per cell {floor['cell_entropy']:.2e} nats, on the "
             f"{floor['transitions_on_repeated_neighbourhoods']:.0%} of transitions whose neighbourhood its rule "
             f"shows twice or more).", "",
             "\"Cells with a seen neighbourhood\": the share of a frame's cells whose 3x3 neighbourhood in the "
             "frame before already occurred earlier in the same sequence, i.e. what exact in-context lookup of the "
             "rule could predict for certain; the rest needs the rule's structure.", "",
             frame_table(runs, record["nca_curves"], floor),
             f"![loss by frame position]({record['pngs']['frames']})", "",
             "## Transfer to text (final validation loss in nats a byte)", "",
             text_table(runs)]
    for t in TRANSFERS:
        lines.append(f"- `--transfer {t}`: perplexity change vs scratch {_pm(s[t]['ppl_change'])}; beat scratch "
                     f"in {s[t]['beat_scratch']} of {len(runs)} seeds; speed-up to scratch's final loss "
                     f"{', '.join(s[t]['speedup_texts'])}"
                     f" (paper: -4.2% to -5.7%, 1.41-1.62x at 164M NCA tokens and 1.2B parameters).")
    lines += ["", f"Scratch final validation loss over seeds: {_pm(s['scratch_val_loss'], '.4f')}.", "",
              f"What one such compare can show, in its own words (seed 0, `--transfer all`): "
              f"{what_it_can_show({'nca_run': nca0, 'scratch_run': text0})}", "",
              f"![validation curves, mean of {len(runs)} seeds]({record['pngs']['text']})", ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="A tiny end-to-end smoke run (a minute or two).")
    p.add_argument("--work", default="/tmp/nca-datagen-experiment", help="Scratch folder (dataset, checkpoints).")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2 cores on the shared box).")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rewrite-note", action="store_true",
                   help="Only redraw the figures and rewrite the markdown from the saved JSON.")
    args = p.parse_args()
    name = "compare-quick" if args.quick else "compare"
    if args.rewrite_note:
        md = RESULTS / f"{name}.md"
        reading = md.read_text().partition(READING)  # the reading written by hand after the run stays
        report(json.loads((RESULTS / f"{name}.json").read_text()), args.quick)
        md.write_text(md.read_text() + ("\n" + reading[1] + reading[2] if reading[1] else ""))
        return
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    work = Path(args.work) / name
    if (work / "runs").exists():  # fresh runs every time; the dataset is kept and reused
        shutil.rmtree(work / "runs")
    t0, ran_on, load = time.perf_counter(), commit(), os.getloadavg()[1]  # commit: before any later edit
    build_s = build(work / "data", plan["build"])
    floor = rule_evidence(str(work / "data"))
    seed_runs = [run_seed(work / "data", work / "runs", plan, seed, args.device) for seed in SEEDS]
    record = {"experiment": name, "commit": ran_on, "machine": machine(), "plan": plan,
              "timings": {"build_s": build_s, "total_s": time.perf_counter() - t0, "threads": args.threads,
                          "load_average_5min": [load, os.getloadavg()[1]],  # at the start and end: a shared box
                          "per_seed_s": [r["seconds"] for r in seed_runs]},
              "floor": floor, "summary": summarize(seed_runs), "nca_curves": nca_curves(seed_runs, work / "runs"),
              "pngs": {"frames": f"{name}-frames.png", "text": f"{name}.png"}, "seed_runs": seed_runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    report(record, args.quick)
    print((RESULTS / f"{name}.md").read_text())


def report(record: dict, quick: bool) -> None:
    """The two figures and the markdown, from the record alone (so they can be redrawn from the saved JSON)."""
    from nca_datagen.train.compare import curves_figure
    from nca_datagen.train.frames import frame_loss_figure

    runs, n = record["seed_runs"], len(record["seed_runs"])
    curves = {int(step): losses for step, losses in record["nca_curves"].items()}  # JSON keys are strings
    frame_loss_figure(curves, runs[0]["nca_run"]["unigram_loss_by_frame"], record["floor"]["floor"],
                      title=f"NCA validation loss by frame, mean of {n} seeds").savefig(
        RESULTS / record["pngs"]["frames"], dpi=120)
    change = change_text(record["summary"]["all"]["ppl_change"]["mean"], digits=1)
    curves_figure(text_curves(runs), f"stdlib, mean of {n} seeds\n--transfer all: {change}").savefig(
        RESULTS / record["pngs"]["text"], dpi=120)
    (RESULTS / f"{record['experiment']}.md").write_text(note({**record, "nca_curves": curves}, quick))


if __name__ == "__main__":
    main()
