"""Scratch vs NCA-initialised language training on the same text, and a sweep over complexity bands.

`compare` trains two text models with the same corpus, split, steps, batches and seed: one from scratch, one
whose blocks come from an NCA checkpoint (pre-pre-training first if given a dataset). It reports, as the paper
does (paper-facts §6): final validation loss and perplexity of both, the relative change
(NCA / scratch - 1; negative is better), and the speed-up = scratch's steps / the steps at which the NCA run's
validation loss first reaches scratch's final validation loss (linearly interpolated between evaluations;
None if it never does, and None too if the NCA run starts at or below that loss: step 0, no finite ratio),
and what a run of its size can and cannot show (`what_it_can_show`). Every input is checked before anything
trains (`check_compare`). Outputs: `compare.json`, `compare.png` (both validation curves) in `out_dir`, and
`nca/frame_loss.png` when it pre-pre-trained.

`sweep` builds one small dataset per complexity band through the build API (`nca_datagen.build`, inline,
imported only then: training on a dataset never imports the generator), pre-pre-trains on each and compares on
the user's corpus. It always runs the build: rerun with the same arguments that is a no-op, and with other
--tokens or --build-args the build refuses the finished dataset, where reusing it would silently sweep the old
data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from nca_datagen.corpus import load_documents, spec_list
from nca_datagen.train.nca import dataset_info
from nca_datagen.train.stages import nca_plan, pretrain_nca, text_plan, train_text
from nca_datagen.train.trainer import check_writable, read_metrics

BANDS = ("20-30%", "30-40%", "40-50%", "50%+")  # the paper's studied bands (paper-facts §3)


def is_checkpoint(path: str) -> bool:
    """A training checkpoint (a .pt path, existing or not, or a run folder with ckpt.pt and no manifest) rather
    than a dataset: a missing `runs/nca.pt` is then reported as a checkpoint not found."""
    p = Path(path)
    return p.suffix == ".pt" or (p.is_dir() and (p / "ckpt.pt").exists() and not (p / "manifest.json").exists())


def val_curve(metrics: list[dict]) -> list[tuple[int, float]]:
    return [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First step at which a validation curve reaches `target`, interpolated linearly between evaluations."""
    prev = None
    for step, loss in curve:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(step)
            (s0, l0) = prev
            return s0 + (step - s0) * (l0 - target) / (l0 - loss)
        prev = (step, loss)
    return None


def summarize(scratch: dict, nca: dict, scratch_curve, nca_curve) -> dict:
    s_loss, n_loss = scratch["final_val_loss"], nca["final_val_loss"]
    reach = steps_to_reach(nca_curve, s_loss)
    steps = scratch_curve[-1][0]
    return {
        "scratch_val_loss": s_loss, "nca_val_loss": n_loss,
        "scratch_val_ppl": math.exp(s_loss), "nca_val_ppl": math.exp(n_loss),
        "ppl_change": math.exp(n_loss - s_loss) - 1,  # paper's "NCA vs scratch" column (negative = better)
        "loss_change": n_loss / s_loss - 1,
        "nca_steps_to_scratch_final": reach,
        # paper: scratch steps / NCA steps to the same loss; None when never reached, or reached at step 0
        "speedup": steps / reach if reach else None,
    }


def speedup_text(report: dict, short: bool = False) -> str:
    """The speed-up as people read it, telling 'never reached' from 'reached before any training'."""
    reach = report["nca_steps_to_scratch_final"]
    if reach is None:
        return "n/a" if short else "not reached"
    if reach == 0:
        return "at step 0" if short else "n/a (NCA started at or below scratch's final loss)"
    return f"{report['speedup']:.2f}x"


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, title: str) -> None:
    curves_figure(curves, title).savefig(path, dpi=120)


def curves_figure(curves: dict[str, list[tuple[int, float]]], title: str):
    """Validation loss against step, one line per curve; whole steps on the x axis. A plain matplotlib Figure
    (no pyplot: nothing to close, and a notebook's backend is left as it was)."""
    from nca_datagen.plotting import matplotlib_agg

    matplotlib_agg()  # Agg, and a writable config folder under a read-only HOME
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for label, curve in curves.items():
        if curve:
            ax.plot(*zip(*curve, strict=True), marker="o", markersize=3, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a short run would otherwise tick at step 0.5
    ax.set_xlabel("language training step")
    ax.set_ylabel("validation loss (nats / byte)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def check_compare(nca: str, text, out_dir, *, steps: int = 200, nca_steps: int = 200, model: str = "tiny",
                  nca_batch_size: int = 8, transfer="all", reinit_layers=(), train_scratch: bool = True,
                  nca_train: dict | None = None, documents: list[bytes] | None = None, **text_kwargs) -> None:
    """Every input of `compare`, checked before anything trains (ValueError naming the fix): the NCA dataset or
    checkpoint, the corpus, the flags, and each run folder (`nca`, `scratch`, `nca-init`: writable, and any
    checkpoint there is the same run's; the text runs' init digest is left out when the NCA checkpoint they start
    from is still to be trained). `train_scratch` False: a finished scratch run is reused, nothing to check."""
    out_dir = Path(out_dir)
    check_writable(out_dir)
    init, pending = nca, None
    if not is_checkpoint(nca):
        nca_plan(nca, out_dir / "nca", **_nca_args(model, nca_steps, nca_batch_size, nca_train, text_kwargs))
        init, pending = None, model
    text_args = dict(init=init, pending_init=pending, steps=steps, documents=documents, **text_kwargs)
    if train_scratch:
        text_plan(text, out_dir / "scratch", transfer="none", **text_args)
    text_plan(text, out_dir / "nca-init", transfer=transfer, reinit_layers=reinit_layers, **text_args)


def _nca_args(model: str, nca_steps: int, nca_batch_size: int, nca_train: dict | None, text_kwargs: dict) -> dict:
    """`pretrain_nca`'s arguments in a compare: the text runs' device, seed and logging, and validation (overall
    and by frame) 5 times in the run besides step 0, for `frame_loss.png`; the rest of the recipe is the paper's
    NCA one unless `nca_train` overrides it."""
    shared = ("device", "seed", "quiet", "compile", "tracker")
    return {"model": model, "steps": nca_steps, "batch_size": nca_batch_size, "eval_every": max(1, nca_steps // 5),
            **{k: text_kwargs.get(k) for k in shared}, **(nca_train or {})}


def compare(nca: str, text, out_dir, *, steps: int = 200, nca_steps: int = 200, model: str = "tiny",
            nca_batch_size: int = 8, transfer="all", reinit_layers=(), scratch: dict | None = None,
            nca_train: dict | None = None, documents: list[bytes] | None = None, **text_kwargs) -> dict:
    """Scratch vs NCA-initialised text training. `nca` is a dataset (pre-pre-trained on first, `nca_steps`
    steps of `nca_batch_size`, into out_dir/nca) or a checkpoint. `text_kwargs` go to `train_text` for both
    runs (batch_size, context, lr, device, seed, eval_every, ...); `scratch` reuses a finished scratch run
    summary (the sweep trains scratch once); `documents`, the corpus already read. Every input is checked
    (`check_compare`) before anything trains."""
    out_dir = Path(out_dir)
    text_kwargs.setdefault("eval_every", max(1, steps // 20))
    documents = load_documents(text) if documents is None else documents  # once, for every run
    args = dict(steps=steps, nca_steps=nca_steps, model=model, nca_batch_size=nca_batch_size, nca_train=nca_train)
    check_compare(nca, text, out_dir, transfer=transfer, reinit_layers=reinit_layers, train_scratch=scratch is None,
                  documents=documents, **args, **text_kwargs)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_checkpoint(nca):
        ckpt, nca_run = nca, None
    else:
        nca_run = pretrain_nca(nca, out_dir / "nca", **_nca_args(model, nca_steps, nca_batch_size, nca_train,
                                                                 text_kwargs))
        ckpt = nca_run["checkpoint"]
    text_args = dict(init=ckpt, steps=steps, documents=documents, **text_kwargs)
    # scratch: the same block shape as the checkpoint, nothing transferred (so every fresh tensor is shared)
    scratch = scratch or train_text(text, out_dir / "scratch", transfer="none", **text_args)
    nca_text = train_text(text, out_dir / "nca-init", transfer=transfer, reinit_layers=reinit_layers, **text_args)
    curves = {"scratch": val_curve(read_metrics(Path(scratch["checkpoint"]).parent)),
              "NCA-initialised": val_curve(read_metrics(out_dir / "nca-init"))}
    report = {
        **summarize(scratch, nca_text, curves["scratch"], curves["NCA-initialised"]),
        "steps": steps, "nca": str(nca), "checkpoint": str(ckpt), "text": spec_list(text),
        "nca_run": nca_run, "scratch_run": scratch, "nca_text_run": nca_text, "curves": curves,
    }
    report["can_show"] = what_it_can_show(report)
    plot_curves(curves, out_dir / "compare.png", _title(report))
    (out_dir / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


# A frame-1 to last-frame drop of 10%: 3-4 standard errors of the difference. At the default 64 validation
# sequences a frame holds 1,024 patch targets (3 states, 8x8 grid) to 2,304 (the paper's layout); measured on the
# CPU experiment's data after 600 steps: per-target std 1.9-2.1 nats on frame means of 2.5-3.1, a standard error
# of 2-3% of the mean each. Both frames come from the same sequences, so their mix of rules is shared.
IN_CONTEXT_DROP = 0.10
PAPER_SCALE = ("the paper's -4% to -6% perplexity and 1.4-1.6x speed-up were measured after 164M NCA tokens on a "
               "1.2B-parameter model")


def what_it_can_show(report: dict) -> str:
    """What a compare of this size can and cannot show, judged from its own numbers rather than from a token
    count (the tokens a model needs depend on the NCA config and the model: 3.3M tokens of the paper's NCA left
    a 0.85M-parameter model at token statistics, 3.4M tokens of a 3-state 8x8 NCA taught it far more):

    - a smoke test when a stage has not learned past context-free statistics: scratch's final validation loss
      not below the corpus's byte unigram loss, or the NCA stage's not below its own unigram loss;
    - statistics only when the NCA stage's last frame is not IN_CONTEXT_DROP below its first scored frame: it
      did not learn to use the frames before, the in-context rule inference the paper's gain rests on;
    - otherwise one seed, whose change means something only beyond the seed-to-seed spread.
    """
    nca, scratch = report.get("nca_run"), report["scratch_run"]
    short = []
    text_unigram = scratch.get("corpus_info", {}).get("unigram_loss")
    if text_unigram is not None and scratch["final_val_loss"] >= text_unigram:
        short.append(f"scratch's final validation loss {scratch['final_val_loss']:.2f} is not below the corpus's "
                     f"byte unigram loss {text_unigram:.2f}, so the text models have not learned past byte "
                     f"frequencies (more --steps)")
    if nca and nca.get("unigram_loss") is not None and nca["final_val_loss"] >= nca["unigram_loss"]:
        short.append(f"the NCA stage's validation loss {nca['final_val_loss']:.2f} is not below its unigram loss "
                     f"{nca['unigram_loss']:.2f}, so it learned no more than token frequencies (more --nca-steps)")
    if short:
        return (f"a smoke test: it shows the pipeline runs, not whether NCA data helps: {'; '.join(short)}. "
                f"For scale, {PAPER_SCALE}.")
    frames = [(k, loss) for k, loss in enumerate((nca or {}).get("val_loss_by_frame") or []) if loss is not None]
    if not frames:
        return (f"one seed, and no NCA validation by frame here (a checkpoint, or a dataset without a val split), "
                f"so whether the NCA stage learned in context is not judged. For scale, {PAPER_SCALE}.")
    (first, first_loss), (last, last_loss) = frames[0], frames[-1]
    trend = (f"validation loss by frame: frame {first} {first_loss:.2f} -> frame {last} {last_loss:.2f} nats, "
             f"{1 - last_loss / first_loss:.0%} lower")
    if last_loss > (1 - IN_CONTEXT_DROP) * first_loss:
        return (f"the NCA stage learned token statistics, little in context ({trend}, under "
                f"{IN_CONTEXT_DROP:.0%}): it shows whether such a model's blocks transfer, not the paper's effect, "
                f"which rests on in-context rule inference. For scale, {PAPER_SCALE}.")
    return (f"the NCA stage learned in context ({trend}; a model that knows the rule scores about 0); one seed, "
            f"so a change means something only beyond the seed-to-seed spread: rerun with other --seed values. "
            f"For scale, {PAPER_SCALE}.")


def change_text(ppl_change: float, digits: int = 2) -> str:
    """`ppl_change` (NCA / scratch - 1) in words that say which way is better: a bare `+2.9%` left readers
    guessing whether more was the good direction."""
    if ppl_change == 0:
        return "the same perplexity as scratch"
    way = "lower (better)" if ppl_change < 0 else "higher (worse)"
    return f"{abs(ppl_change):.{digits}%} {way} perplexity than scratch"


def best_band_text(rows: list[dict], best: str) -> str:
    """The sweep's verdict: the band with the lowest validation loss, named `best` only if it beat scratch."""
    change = next(row["ppl_change"] for row in rows if row["band"] == best)
    if change < 0:
        return f"best band: {best} ({change_text(change)})"
    return f"no band beat scratch; closest: {best} ({change_text(change)})"


def _title(report: dict) -> str:
    return (f"scratch ppl {report['scratch_val_ppl']:.3f} vs NCA {report['nca_val_ppl']:.3f}, "
            f"speed-up {speedup_text(report, short=True)}\nNCA: {change_text(report['ppl_change'], digits=1)}")


def build_dataset(band: str, tokens: int, out: Path, seed: int = 0, recipe: dict | None = None) -> Path:
    """The dataset of `band` at `out`, built inline with `nca_datagen.build` (`recipe`: its other recipe
    arguments, e.g. {"grid": (8, 8), "frames": 12}); returns the folder.

    Always run: on a finished dataset the same build is a no-op, another one is refused (ValueError)."""
    from nca_datagen import api
    from nca_datagen.errors import Interrupted, NcaDatagenError

    try:
        api.build(str(out), complexity=band, tokens=tokens, seed=seed, executor="inline", quiet=True,
                  **(recipe or {}))
    except Interrupted:
        raise  # Ctrl-C or SIGTERM: an interruption, not a failed build
    except NcaDatagenError as exc:
        raise ValueError(f"building the {band} dataset failed: {exc}\n(the sweep's datasets are kept in "
                         f"{out.parent}: other --tokens or --build-args need another --out)") from None
    return out


def sweep(text, out_dir, *, bands=BANDS, tokens: int = 200_000, recipe: dict | None = None,
          **compare_kwargs) -> dict:
    """One dataset per band -> pre-pre-train -> compare on `text`; reports the band with the lowest final
    validation loss (`best_band`; `best_band_beats_scratch` says whether it beat the scratch model), and draws
    every validation curve in one picture (`sweep.png`).

    Before anything trains: the corpus and text flags are checked, then every band's dataset is built (a bad
    band or recipe argument fails there, before any training), then every band's compare (`check_compare`).
    `recipe`: the build's other recipe arguments, the same for every band."""
    out_dir = Path(out_dir)
    slugs = {band: band.replace("%", "pct").replace("+", "plus") for band in bands}
    documents = load_documents(text)
    nca_only = ("model", "nca_steps", "nca_batch_size", "nca_train", "transfer", "reinit_layers")
    text_plan(text, out_dir / slugs[bands[0]] / "scratch", pending_init=compare_kwargs.get("model", "tiny"),
              transfer="none", documents=documents, **{k: v for k, v in compare_kwargs.items() if k not in nca_only})
    data = {band: build_dataset(band, tokens, out_dir / "data" / slugs[band], compare_kwargs.get("seed") or 0,
                                recipe) for band in bands}
    for i, band in enumerate(bands):  # bands after the first reuse its scratch run
        check_compare(str(data[band]), text, out_dir / slugs[band], train_scratch=i == 0, documents=documents,
                      **compare_kwargs)
    rows, curves, scratch = [], {}, None
    for band in bands:
        report = compare(str(data[band]), text, out_dir / slugs[band], scratch=scratch, documents=documents,
                         **compare_kwargs)
        scratch = report["scratch_run"]
        curves.setdefault("scratch", report["curves"]["scratch"])
        curves[band] = report["curves"]["NCA-initialised"]
        rows.append({"band": band, **{k: report[k] for k in ("nca_val_loss", "nca_val_ppl", "ppl_change", "speedup")},
                     "nca_train_tokens": dataset_info(str(data[band]))["tokens"]["train"]})  # whole shards: >= asked
    best = min(rows, key=lambda r: r["nca_val_loss"])
    result = {"best_band": best["band"], "best_band_beats_scratch": best["ppl_change"] < 0,
              "scratch_val_loss": scratch["final_val_loss"],
              "scratch_val_ppl": math.exp(scratch["final_val_loss"]), "bands": rows, "curves": curves,
              "text": spec_list(text), "tokens_requested_per_band": tokens}
    plot_curves(curves, out_dir / "sweep.png", best_band_text(rows, best["band"]))
    (out_dir / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
