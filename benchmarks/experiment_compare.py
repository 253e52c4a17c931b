"""Experiment: does NCA pre-pre-training help a small byte-level model on Python source? (CPU scale)

The paper's comparison (paper-facts §6) shrunk to ~20 minutes on 2 CPU cores:

1. build an NCA dataset with the paper's rule family and tokens (12x12, 10 states, 2x2 patches, 27 frames,
   band 50%+) through the `nca-datagen build` command;
2. pre-pre-train the `mini` decoder (0.85M block parameters, 3.4M with the 10,002-token NCA vocabulary) on it;
3. `compare`: scratch vs NCA-initialised on the running Python's standard-library sources (`stdlib`), same
   steps, batches and seed; final validation loss and perplexity (per byte), change, speed-up, curves.

Scaled-down recipe (stated in the note): learning rates are raised for a model ~1000x smaller than the paper's
and ~100x fewer steps (NCA 1e-3 with the paper's linear warmup over the whole budget; text 2e-3, cosine).
The result is one seed at toy scale; it shows the pipeline end to end, not the paper's effect size.

    python -m benchmarks.experiment_compare            # ~20 min on 2 free cores
    python -m benchmarks.experiment_compare --quick    # ~1 min smoke run at a tiny scale

Writes benchmarks/results/compare[-quick].json, .png and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.report import RESULTS, machine
from nca_datagen.train.compare import speedup_text

# Sized from a measured run (2026-11-28, 2 cores, 2 torch threads): build 8 s; NCA 600 steps x 4 x 1024 at
# ~4.5K tokens/s ~9 min; each text run 600 steps x 16 x 256 at 15-19K tokens/s ~2.5 min; 14 min in all.
FULL = {
    "build": ["--complexity", "50%+", "--tokens", "4M", "--samples-per-shard", "250"],
    "model": "mini",
    "nca": dict(nca_steps=600, nca_batch_size=4, nca_train={"lr": 1e-3}),
    "text": dict(steps=600, batch_size=16, context=256, lr=2e-3, eval_every=50, eval_tokens=32768),
}
QUICK = {
    "build": ["--complexity", "0.3:", "--tokens", "20K", "--grid", "6", "--states", "3", "--frames", "8",
              "--sims-per-rule", "4", "--samples-per-shard", "40"],
    "model": "tiny",
    "nca": dict(nca_steps=10, nca_batch_size=4, nca_train={"lr": 3e-3}),
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


def note(report: dict, plan: dict, timings: dict, quick: bool) -> str:
    speedup = speedup_text(report)
    run = report["nca_text_run"]
    info, t = run["corpus_info"], plan["text"]
    return f"""# NCA pre-pre-training vs scratch{' (quick smoke run)' if quick else ''}

- Corpus: `stdlib`, the running Python's standard-library sources: {info['documents']} documents, \
{info['train_tokens']:,} training bytes, {info['val_tokens']:,} validation bytes (documents split with a fixed seed).
  Byte-level tokens: perplexities are per byte, comparable to each other, not to the paper's BPE numbers.
- NCA data: `nca-datagen build {' '.join(plan['build'])}`.
- Model `{plan['model']}`: {run['params']:,} parameters as a text model \
({run['params_without_embeddings']:,} without embedding and head).
- Pre-pre-training: {plan['nca']['nca_steps']} steps x {plan['nca']['nca_batch_size']} sequences, \
Adam lr {plan['nca']['nca_train']['lr']}, linear warmup over the whole budget, no weight decay.
- Text: {t['steps']} steps x {t['batch_size']} x {t['context']} bytes, AdamW lr {t['lr']}, warmup 5% then cosine; \
seed 0 for both runs; transfer: every block and the final norm, fresh embedding and head.

| run | final val loss (nats/byte) | val ppl |
|---|---|---|
| scratch | {report['scratch_val_loss']:.4f} | {report['scratch_val_ppl']:.4f} |
| NCA-initialised | {report['nca_val_loss']:.4f} | {report['nca_val_ppl']:.4f} |

Perplexity change, NCA vs scratch: **{report['ppl_change']:+.2%}** (paper, 164M NCA tokens, 1.2B parameters: \
-4.2% to -5.7%). Speed-up to scratch's final validation loss: **{speedup}** (paper: 1.41-1.62x).

Time: build {timings['build_s']:.0f} s; compare (NCA stage and both text runs) {timings['compare_s']:.0f} s; \
{timings['threads']} torch threads. One seed at toy scale: it shows a working pipeline, not evidence for or \
against the paper's effect.

![validation loss curves]({Path(timings['png']).name})
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="A tiny end-to-end smoke run (about a minute).")
    p.add_argument("--work", default="/tmp/nca-datagen-experiment", help="Scratch folder (dataset, checkpoints).")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2 cores on the shared box).")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from nca_datagen.train.compare import compare

    plan = QUICK if args.quick else FULL
    name = "compare-quick" if args.quick else "compare"
    work = Path(args.work) / name
    if (work / "runs").exists():  # fresh runs every time; the dataset is kept and reused
        shutil.rmtree(work / "runs")
    build_s = build(work / "data", plan["build"])
    t0 = time.perf_counter()
    report = compare(str(work / "data"), "stdlib", work / "runs", model=plan["model"], device=args.device, seed=0,
                     quiet=False, **plan["nca"], **plan["text"])
    compare_s = time.perf_counter() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / f"{name}.png"
    shutil.copyfile(work / "runs" / "compare.png", png)
    timings = {"build_s": build_s, "compare_s": compare_s, "threads": args.threads, "png": str(png)}
    keep = {k: v for k, v in report.items() if k not in ("nca_run", "scratch_run", "nca_text_run")}
    record = {"experiment": name, "machine": machine(), "plan": plan, "timings": timings, **keep,
              "runs": {k: report[k] for k in ("nca_run", "scratch_run", "nca_text_run")}}
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(note(report, plan, timings, args.quick))
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
