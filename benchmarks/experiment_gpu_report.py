"""The GPU experiment's report (`benchmarks/experiment_gpu.py`): its JSON record, one PNG and a markdown note.

Written from the record alone, after every phase of the run (a run killed at the call's limit leaves what it
finished), and redrawn from a saved JSON by this module's command:

    python -m benchmarks.experiment_gpu_report benchmarks/results/h200/experiment_gpu.json

The PNG has three panels: text validation loss and per-byte perplexity against the language-training step
(scratch and each band's NCA-initialised run), and each band's NCA validation loss by frame position at the end
of pre-pre-training, beside the unigram loss of each frame (what token frequencies alone give).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from benchmarks.report import markdown_table
from nca_datagen.train.compare import change_text, speedup_text, what_it_can_show

PAPER = ("paper (1.2B parameters, 164M NCA tokens, CodeParrot, BPE tokens): -4.2% perplexity vs scratch, 1.62x "
         "speed-up; its best band for code is 30-40%")


def write(record: dict) -> None:
    """JSON, then the PNG (once there is anything to draw), then the markdown note."""
    paths = record["paths"]
    Path(paths["json"]).write_text(json.dumps(record, indent=2, default=str) + "\n")
    if record["nca"] or record["text"]:
        figure(record).savefig(paths["png"], dpi=110)
    Path(paths["md"]).write_text(note(record))


def text_curves(record: dict) -> dict[str, list]:
    curves = {}
    for band, report in record["text"].items():
        curves.setdefault("scratch", report["curves"]["scratch"])
        curves[f"NCA {band}"] = report["curves"]["NCA-initialised"]
    return curves


def figure(record: dict):
    """Text loss, text perplexity, NCA loss by frame (a plain matplotlib Figure, as `compare.curves_figure`)."""
    from nca_datagen.plotting import matplotlib_agg

    matplotlib_agg()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.2))
    loss_ax, ppl_ax, frame_ax = fig.subplots(1, 3)
    for label, curve in text_curves(record).items():
        steps, losses = zip(*curve, strict=True)
        loss_ax.plot(steps, losses, marker="o", markersize=2, label=label)
        ppl_ax.plot(steps, [math.exp(v) for v in losses], marker="o", markersize=2, label=label)
    for i, (band, run) in enumerate(record["nca"].items()):
        for key, style, label in (("val_loss_by_frame", "-", f"{band}: model"),
                                  ("unigram_loss_by_frame", "--", f"{band}: unigram")):
            pairs = [(k, v) for k, v in enumerate(run[key]) if v is not None]
            frame_ax.plot(*zip(*pairs, strict=True), linestyle=style, color=f"C{i + 1}", label=label)
    axes = ((loss_ax, "validation loss (nats / byte)", "language training step"),
            (ppl_ax, "validation perplexity (per byte)", "language training step"),
            (frame_ax, "NCA validation loss (nats / patch token)", "frame position (end of pre-pre-training)"))
    for ax, ylabel, xlabel in axes:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title(record), fontsize=10)
    fig.tight_layout()
    return fig


def title(record: dict) -> str:
    parts = [f"{band}: {change_text(r['ppl_change'], digits=1)}, speed-up {speedup_text(r, short=True)}"
             for band, r in record["text"].items()]
    return f"{record['experiment']}: " + ("; ".join(parts) if parts else "no text runs yet")


def phase_table(record: dict) -> str:
    rows = [{"phase": p["phase"], "budget s": f"{p['budget_s']:.0f}", "started at s": f"{p['start_s']:.0f}",
             "took s": f"{p['used_s']:.0f}" if "used_s" in p else "(running)"} for p in record.get("phases", [])]
    return markdown_table(rows)


def build_table(record: dict) -> str:
    rows = []
    for band, b in record["builds"].items():
        tries = ", ".join(f"{t['executor']} ({t['compression']} shards) rc={t['rc']} in {t['seconds']:.0f} s"
                          for t in b["tries"]) or "none"
        tokens = b.get("tokens", {})
        rows.append({"band": band, "tries": tries, "train tokens": f"{tokens.get('train', 0):,}",
                     "val tokens": f"{tokens.get('val', 0):,}",
                     "train sequences": f"{b.get('samples', {}).get('train', 0):,}"})
    return markdown_table(rows)


def nca_table(record: dict) -> str:
    rows = []
    for band, run in record["nca"].items():
        frames = [(k, v) for k, v in enumerate(run["val_loss_by_frame"]) if v is not None]
        (first, first_loss), (last, last_loss) = frames[0], frames[-1]
        tokens = run["steps"] * run["train"]["batch_size"] * run["model"]["context"]
        rows.append({"band": band, "steps": run["steps"], "tokens": f"{tokens:,}",
                     "final val loss": f"{run['final_val_loss']:.4f}", "unigram loss": f"{run['unigram_loss']:.4f}",
                     f"frame {first}": f"{first_loss:.3f}", f"frame {last}": f"{last_loss:.3f}",
                     "drop first to last": f"{1 - last_loss / first_loss:.1%}"})
    return markdown_table(rows)


def text_table(record: dict) -> str:
    scratch = record.get("scratch")
    if not scratch:
        return "(no text runs)\n"
    rows = [{"run": "scratch", "final val loss": f"{scratch['final_val_loss']:.4f}",
             "ppl / byte": f"{scratch['final_val_ppl']:.4f}", "ppl vs scratch": "", "loss vs scratch": "",
             "speed-up to scratch's final loss": ""}]
    for band, r in record["text"].items():
        rows.append({"run": f"NCA {band}", "final val loss": f"{r['nca_val_loss']:.4f}",
                     "ppl / byte": f"{r['nca_val_ppl']:.4f}", "ppl vs scratch": f"{r['ppl_change']:+.2%}",
                     "loss vs scratch": f"{r['loss_change']:+.2%}",
                     "speed-up to scratch's final loss": speedup_text(r)})
    return markdown_table(rows)


def setup_lines(record: dict) -> list[str]:
    plan, sizing, cal = record["plan"], record.get("sizing", {}), record.get("calibration", {})
    nca, text = plan["nca"], plan["text"]
    lines = [f"- nca-datagen commit `{record['commit']}`; {record['machine'].get('gpu') or 'CPU'}, torch "
             f"{record['machine']['torch']}; wall time {record.get('total_s', 0):.0f} s of a "
             f"{plan['deadline_s']:.0f} s deadline; build executor {record['executor']}.",
             f"- Model `{plan['model']}`" + (f": {cal['nca']['params_M']:.1f}M parameters as the NCA model "
                                              f"({cal['nca']['block_params_M']:.1f}M in the blocks that transfer), "
                                              f"{cal['text']['params_M']:.1f}M as the text model" if cal else "")
             + f"; {'bf16 autocast' if plan['device'] == 'cuda' else 'fp32'}, torch.compile {plan['compile']}."]
    if cal:
        lines.append("- Measured step times: " + "; ".join(
            f"{stage} {c['ms_per_step']:.1f} ms ({c['tokens_per_s']:,.0f} tokens/s"
            + (f", MFU {c['mfu']:.0%}" if c.get("mfu") else "") + f"; compile and timing {c['seconds']:.0f} s)"
            for stage, c in cal.items()) + ".")
    if sizing:
        steps = sizing["steps"]
        lines += [f"- NCA stage: {steps['nca']} steps x {nca['batch_size']} sequences (one pass of the data: "
                  f"{sizing['one_pass_steps']} steps), Adam lr {nca['lr']}, no weight decay, linear warmup over the "
                  f"whole run; validation on {nca['val_sequences']} val sequences.",
                  f"- Text: `{plan['corpus_label']}`, {steps.get('text_run', steps['text'])} steps x "
                  f"{text['batch_size']} x {text['context']} bytes (one epoch: {sizing['text_epoch']['steps']} steps, "
                  f"{sizing['text_epoch']['train_tokens']:,} training bytes), AdamW lr {text['lr']}, weight decay "
                  f"0.1, warmup 5% then cosine; validation on {text['eval_tokens']:,} bytes of held-out documents. "
                  f"Scratch and every NCA-initialised run (`--transfer all`) share text batches and seed."]
    return lines


def note(record: dict) -> str:
    quick = " (quick CPU smoke run)" if record["quick"] else ""
    lines = [f"# NCA pre-pre-training vs scratch on Python source, bands 30-40% and 50%+{quick}", "",
             *setup_lines(record),
             "- Choices and why: the docstring of `benchmarks/experiment_gpu.py`. Nothing was tuned on a validation "
             "split. One seed.", "",
             "## Time", "", phase_table(record),
             "Cut for time: " + ("; ".join(record.get("cuts", [])) or "nothing") + ".", "",
             "## Data", "", build_table(record)]
    if record["nca"]:
        lines += ["## NCA stage: validation loss at the end (nats a patch token)", "", nca_table(record)]
    lines += [f"## Transfer to `{record['plan']['corpus_label']}` (final validation loss in nats a byte; perplexity "
              "per byte)", "",
              text_table(record), f"For scale, the {PAPER}; perplexities here are per byte, not per BPE token.", ""]
    for band, report in record["text"].items():
        shown = what_it_can_show({"nca_run": record["nca"].get(band), "scratch_run": record["scratch"]})
        lines += [f"- {band}: {change_text(report['ppl_change'])}; what it can show: {shown}"]
    if record["nca"] or record["text"]:
        lines += ["", f"![validation curves and NCA loss by frame]({Path(record['paths']['png']).name})"]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("record", help="The experiment's JSON (its PNG and markdown are rewritten beside it).")
    args = p.parse_args()
    record = json.loads(Path(args.record).read_text())
    stem = Path(args.record).with_suffix("")
    write({**record, "paths": {k: f"{stem}.{k}" for k in ("json", "md", "png")}})


if __name__ == "__main__":
    main()
