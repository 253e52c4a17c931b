"""Experiment: does a longer NCA stage bring later frames towards the floor? (CPU, one seed)

`experiment_compare.py`'s NCA stage (600 steps) ended with the loss still falling fastest on late frames. This
runs the same stage, on the same data, model and optimiser (its FULL plan, seed 0), for more steps, and reports the
validation loss by frame position at every evaluation against each frame's unigram loss and the floor, so the
question "is the rule inferred in context?" is read off one table. The data is built by the code at hand, so a
change of recipe version since the compare's run shows in its step-600 numbers.

    python -m benchmarks.experiment_nca_long --steps 2400                # ~4x the compare's NCA stage
    python -m benchmarks.experiment_nca_long --steps 2400 --transfer     # then scratch vs --transfer all / attn

`--transfer` trains the compare's text stage from the longer stage's checkpoint (seed 0, the same text batches as
the compare's seed-0 runs): does a model that infers more in context transfer better?

Writes benchmarks/results/nca_long.json, .md (keeping its hand-written "What it showed") and -frames.png. A rerun
resumes from the run folder's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.experiment_compare import FULL, READING, build, commit, rule_evidence
from benchmarks.report import RESULTS, machine


def run(steps: int, work: Path, device: str, plan: dict = FULL) -> dict:
    from nca_datagen.train.frames import frame_loss_figure
    from nca_datagen.train.stages import pretrain_nca
    from nca_datagen.train.trainer import read_metrics

    data = work / "data"
    build_s = build(data, plan["build"])
    nca = plan["nca"]
    train = {**nca["nca_train"], "eval_every": max(1, steps // 8)}
    t0 = time.perf_counter()
    summary = pretrain_nca(str(data), work / f"nca-{steps}", model=plan["model"], steps=steps,
                           batch_size=nca["nca_batch_size"], seed=0, device=device, quiet=True, **train)
    by_step = {m["step"]: m["val_loss_by_frame"] for m in read_metrics(work / f"nca-{steps}")
               if "val_loss_by_frame" in m}
    evidence = rule_evidence(str(data))
    figure = frame_loss_figure(by_step, summary["unigram_loss_by_frame"], floor=evidence["floor"],
                               title=f"NCA validation loss by frame, {steps} steps ({plan['model']}, seed 0)")
    return {"experiment": "nca_long", "commit": commit(), "machine": machine(), "steps": steps,
            "plan": {"build": plan["build"], "model": plan["model"], "batch_size": nca["nca_batch_size"], **train},
            "timings": {"build_s": build_s, "train_s": time.perf_counter() - t0}, "floor": evidence,
            "unigram_loss_by_frame": summary["unigram_loss_by_frame"], "val_loss_by_frame": by_step,
            "final_val_loss": summary["final_val_loss"], "unigram_loss": summary["unigram_loss"], "figure": figure}


def transfer(record: dict, work: Path, device: str, plan: dict = FULL) -> dict:
    """The compare's text stage from this run's checkpoint: scratch, `--transfer all` and `--transfer attn`."""
    from nca_datagen.train.compare import compare

    common = dict(model=plan["model"], device=device, seed=0, quiet=True, **plan["text"])
    checkpoint = str(work / f"nca-{record['steps']}" / "ckpt.pt")
    out = work / f"nca-{record['steps']}-text"
    reports = {"all": compare(checkpoint, "stdlib", out, transfer="all", **common)}
    reports["attn"] = compare(checkpoint, "stdlib", out / "attn", transfer="attn",
                              scratch=reports["all"]["scratch_run"], **common)
    return {"scratch_val_loss": reports["all"]["scratch_val_loss"],
            **{t: {k: r[k] for k in ("nca_val_loss", "ppl_change", "speedup")} for t, r in reports.items()}}


def note(record: dict) -> str:
    by_step = {int(k): v for k, v in record["val_loss_by_frame"].items()}
    steps = sorted(by_step)
    unigram = record["unigram_loss_by_frame"]
    lines = [f"# A longer NCA stage: {record['steps']} steps (one seed)", "",
             f"- nca-datagen commit `{record['commit']}`; `experiment_compare.py`'s FULL plan (data "
             f"`{' '.join(record['plan']['build'])}`, model `{record['plan']['model']}`, batch "
             f"{record['plan']['batch_size']}, Adam lr {record['plan']['lr']}, warmup {record['plan']['warmup']} then "
             f"constant), seed 0; train {record['timings']['train_s'] / 60:.1f} min on {record['machine']['cpu_count']}"
             f" shared cores.",
             f"- Floor (a model that knows the rule): {record['floor']['floor']:.4f} nats a patch token; unigram "
             f"loss over all targets {record['unigram_loss']:.3f}.", "",
             "Validation loss by frame position (nats a patch token), at each evaluation:", "",
             "| frame | unigram | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for k in range(1, len(unigram)):
        lines.append(f"| {k} | {unigram[k]:.3f} | " + " | ".join(f"{by_step[s][k]:.3f}" for s in steps) + " |")
    first, last = by_step[steps[-1]][1], by_step[steps[-1]][-1]
    lines += ["", f"At step {steps[-1]}: frame 1 {first:.3f} -> frame {len(unigram) - 1} {last:.3f} nats "
                  f"({1 - last / first:.0%} lower); final validation loss {record['final_val_loss']:.3f}.", "",
              "![loss by frame](nca_long-frames.png)", ""]
    if "transfer" in record:
        t = record["transfer"]
        lines += ["## Then transfer to `stdlib` (seed 0, the compare's text stage)", "",
                  "| run | final val loss (nats a byte) | perplexity vs scratch | speed-up |", "|---|---|---|---|",
                  f"| scratch | {t['scratch_val_loss']:.4f} | | |"]
        lines += [f"| `--transfer {name}` | {t[name]['nca_val_loss']:.4f} | {t[name]['ppl_change']:+.2%} | "
                  f"{t[name]['speedup'] or 'n/a'} |" for name in ("all", "attn")]
        lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2400, help="NCA steps (the compare's stage: 600).")
    p.add_argument("--work", default="/tmp/nca-datagen-experiment", help="Scratch folder (shares the compare's data).")
    p.add_argument("--threads", type=int, default=2, help="torch threads.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--transfer", action="store_true", help="Then the compare's text stage from the checkpoint.")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    record = run(args.steps, Path(args.work), args.device)
    record.pop("figure").savefig(RESULTS / "nca_long-frames.png", dpi=120)
    if args.transfer:
        record["transfer"] = transfer(record, Path(args.work), args.device)
    (RESULTS / "nca_long.json").write_text(json.dumps(record, indent=2) + "\n")
    md = RESULTS / "nca_long.md"
    reading = md.read_text().partition(READING) if md.exists() else ("", "", "")  # the hand-written reading stays
    md.write_text(note(record) + ("\n" + reading[1] + reading[2] if reading[1] else ""))
    print(note(record))


if __name__ == "__main__":
    main()
