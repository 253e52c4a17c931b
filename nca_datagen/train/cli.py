"""`nca-datagen train ...`: nca (pre-pre-train), text (language training), compare, sweep.

Bad input ends in one `Error: ...` line, never a traceback: options check their ranges where click can, and the
group turns the ValueErrors the stages raise for what they are given (a corpus too small, a checkpoint that is
not one, a run folder holding another run, ...) into click errors. Internal failures still raise. The stages
check every input before they train (`stages.nca_plan`, `stages.text_plan`, `compare.check_compare`), so such
an error comes before any training, not after a stage has run.

Every command takes its corpus as `--text` (repeatable), its options from `--config FILE` too (`settings.py`;
flags win), and lists with a short help of its own (click would cut a docstring's first sentence at 45 characters
with '...').
"""

from __future__ import annotations

import json
import shlex

import click
from click.core import ParameterSource

from nca_datagen.cli_options import CountType, config_option
from nca_datagen.train.model import SIZES
from nca_datagen.train.stages import NCA_DEFAULTS, TEXT_DEFAULTS, TEXT_WARMUP_FRACTION
from nca_datagen.train.transfer import parse_layers, parse_parts

POSITIVE = click.IntRange(min=1)
AT_END = "default or 0: only after the last step"


class PositiveCount(CountType):
    """A count with K/M/B suffixes, as `build --tokens` takes it (10K, 1.5M), that must be at least 1."""

    def convert(self, value, param, ctx):
        count = super().convert(value, param, ctx)
        if count < 1:
            self.fail(f"{value!r} is not positive: give a count >= 1, e.g. 200K", param, ctx)
        return count


def _exp(x: float) -> str:
    """1e-4 as people write it (not 0.0001 or 1e-04)."""
    return f"{x:.0e}".replace("e-0", "e-")


def _stage_help(stage: str) -> dict[str, str]:
    """--lr, --warmup and --eval-every help with the real defaults of one command ("nca", "text", "compare"),
    read from stages.py so they cannot drift. compare and sweep pass these to their text runs only; their
    pre-pre-training keeps the NCA recipe."""
    text_warmup = f"default: {TEXT_WARMUP_FRACTION:.0%} of --steps, at least 1"
    if stage == "nca":
        return {"lr": f"Peak learning rate (default: {_exp(NCA_DEFAULTS['lr'])}).",
                "warmup": "Warmup steps (default: the whole budget, the paper's NCA schedule).",
                "eval_every": f"Validate every N steps ({AT_END})."}
    if stage == "text":
        return {"lr": f"Peak learning rate (default: {_exp(TEXT_DEFAULTS['lr'])}).",
                "warmup": f"Warmup steps ({text_warmup}).",
                "eval_every": f"Validate every N steps ({AT_END})."}
    return {"lr": f"Peak learning rate of the text runs (default: {_exp(TEXT_DEFAULTS['lr'])}; pre-pre-training "
                  f"uses {_exp(NCA_DEFAULTS['lr'])}).",
            "warmup": f"Warmup steps of the text runs ({text_warmup}).",
            # 20 points draw the curve the speed-up is read from; each costs --eval-tokens of validation
            "eval_every": "Validate the text runs every N steps (default: --steps // 20, at least 1, so about 20 "
                          "points per curve, each reading --eval-tokens; 0: only after the last step)."}


def _common(stage: str):
    """Options every stage shares (they map onto `TrainConfig` fields); help states `stage`'s defaults."""
    helps = _stage_help(stage)
    options = [
        click.option("--steps", type=POSITIVE, default=100, show_default=True, help="Optimizer steps."),
        click.option("--batch-size", type=POSITIVE, default=8, show_default=True, help="Sequences per step."),
        click.option("--micro-batch-size", type=POSITIVE, default=None,
                     help="Sequences per forward/backward (gradient accumulation; default: the batch)."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help=helps["lr"]),
        click.option("--warmup", type=click.IntRange(min=0), default=None, help=helps["warmup"]),
        click.option("--model", type=click.Choice(list(SIZES)), default="tiny", show_default=True,
                     help="Named model size."),
        # numpy's generators, which order the data, take no negative seed
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed of the model's initialisation and the data order."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N"),
        click.option("--compile/--no-compile", default=False, show_default=True, help="torch.compile the model."),
        click.option("--eval-every", type=click.IntRange(min=0), default=None, help=helps["eval_every"]),
        click.option("--ckpt-every", type=click.IntRange(min=0), default=None,
                     help="Checkpoint every N steps (default or 0: at the end)."),
        click.option("--tracker", type=click.Choice(["tensorboard", "wandb"]), default=None,
                     help="Also log to TensorBoard or W&B (must be installed)."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]

    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _train_kwargs(kw: dict) -> dict:
    keys = ("steps", "batch_size", "micro_batch_size", "lr", "warmup", "seed", "device", "compile", "eval_every",
            "ckpt_every", "tracker", "quiet")
    return {k: kw.pop(k) for k in keys if k in kw and kw[k] is not None}


def _text_options(fn):
    options = [
        click.option("--text", "text", required=True, multiple=True,
                     help="Corpus: a file, folder, glob or .jsonl, or `stdlib` (this Python's standard-library "
                          "sources); repeatable. Several documents are split by document for validation, one by "
                          "bytes."),
        click.option("--context", type=POSITIVE, default=256, show_default=True, help="Tokens (bytes) per example."),
        click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
                     show_default=True, help="Share of the documents (of the bytes, for one document) held out for "
                                             "validation (fixed split)."),
        click.option("--eval-tokens", type=click.IntRange(min=0), default=65536, show_default=True,
                     help="Validation tokens evaluated (from the held-out documents; 0: all of them)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def recipe_args(build_args: str, *, taken: tuple[str, ...] = ()) -> dict:
    """--build-args ('--grid 8 --frames 12', or '--config build.toml') parsed as `nca-datagen build` parses its
    flags: the recipe options given, by name, as the build API takes them. Options that are not the recipe's
    (where and how a build runs) and those the command sets itself (`taken`) are refused."""
    from nca_datagen.pipelines.build import RECIPE, build_command

    placeholder = "--build-args' own --out"  # build's one required option; a --out of the user's is refused below
    try:
        ctx = build_command.make_context("build", ["--out", placeholder, *shlex.split(build_args)])
    except (click.ClickException, ValueError) as exc:  # shlex: ValueError("No closing quotation")
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        raise click.BadParameter(message, param_hint="--build-args") from None
    given = {name for name in ctx.params if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)}
    if ctx.params["out"] == placeholder:
        given.discard("out")
    refused = sorted(given - (set(RECIPE) - set(taken)))
    if refused:
        def flags(names):
            return ", ".join("--" + name.replace("_", "-") for name in names)

        sets = f"; this command sets {flags(taken)} itself" if taken else ""
        raise click.BadParameter(f"{flags(refused)}: only the recipe's options go here (--grid, --frames, "
                                 f"--states, ...){sets}, and it builds inline", param_hint="--build-args")
    return {name: ctx.params[name] for name in sorted(given)}


def _checked_by(parse):
    """An option callback that runs `parse` on the value first, so --transfer and --reinit-layers fail before any
    data is read or model trained (compare pre-pre-trains first)."""
    def callback(ctx, param, value):
        try:
            parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        return value

    return callback


class TrainGroup(click.Group):
    def invoke(self, ctx):
        """A ValueError from a stage is about what it was given (see the module docstring): one line."""
        try:
            return super().invoke(ctx)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group("train", cls=TrainGroup, short_help="Pre-pre-train on NCA data, transfer to text, compare.")
def train_group():
    """Pre-pre-train on NCA data, transfer to text, compare against training from scratch."""


@train_group.command("nca", short_help="Pre-pre-train a decoder on an NCA dataset or recipe.")
@config_option("train nca")
@click.argument("data", required=False)
@click.option("--recipe", default=None,
              help="Generate the data as it is read, nothing stored: a band (50%+), a mixture (30-40%:0.3,50%+:0.7) "
                   "or a curriculum (30-40%>50%+@2M: from the first to the last over 2M tokens). Instead of DATA.")
@click.option("--build-args", default="", help="With --recipe: the build's other recipe options, quoted: "
                                               "'--grid 8 --frames 12'.")
@click.option("--epoch-tokens", type=PositiveCount(), default=None,
              help="With a --recipe mixture: tokens per epoch, all sources together (needed by a curriculum over "
                   "stored datasets).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (ckpt.pt, metrics).")
@_common("nca")
def nca_command(data, recipe, build_args, epoch_tokens, out, **kw):
    """Pre-pre-train on the NCA dataset DATA (folder or manifest URL), or on a --recipe generated as it is
    read: Adam 1e-4, linear warmup."""
    from nca_datagen.train.nca import NCAData
    from nca_datagen.train.stages import pretrain_nca

    if (data is None) == (recipe is None):
        raise click.UsageError("give the NCA data: a dataset (DATA) or --recipe, one of them")
    if (build_args or epoch_tokens) and recipe is None:
        raise click.UsageError("--build-args and --epoch-tokens go with --recipe; a dataset's manifest fixes its "
                               "recipe and size")
    source = NCAData(data) if recipe is None else NCAData(
        recipe=recipe, build_options=recipe_args(build_args, taken=("complexity", "tokens", "val_tokens",
                                                                    "val_fraction")), epoch_tokens=epoch_tokens)
    model = kw.pop("model")
    summary = pretrain_nca(source, out, model=model, **_train_kwargs(kw))
    click.echo(json.dumps({k: summary[k] for k in ("final_loss", "final_val_loss", "params", "checkpoint")}))


def _refuse_transfer_without_init(ctx: click.Context, init: str | None) -> None:
    """--transfer / --reinit-layers typed without --init choose parts of nothing: a usage error, where they used to
    be ignored silently. Only the typed flag is refused (their defaults are fine), and only here: compare's text
    runs always have an init."""
    typed = [f"--{name.replace('_', '-')}" for name in ("transfer", "reinit_layers")
             if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)]
    if typed and not init:
        flags = " and ".join(typed)
        raise click.UsageError(f"{flags} given without --init: they choose what is kept from an --init checkpoint; "
                               f"add --init CHECKPOINT, or drop {flags} to train from scratch")


@train_group.command("text", short_help="Train a byte-level language model, or transfer.")
@config_option("train text")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--init", default=None, help="NCA checkpoint to start from (default: from scratch).")
@click.option("--transfer", default="all", show_default=True, callback=_checked_by(parse_parts),
              help="Parts kept from --init (only with --init): all | none | comma list of attn, mlp, norm "
                   "(e.g. attn,norm).")
@click.option("--reinit-layers", default="", callback=_checked_by(parse_layers),
              help="Blocks kept in no part, e.g. 0,3 (only with --init).")
@_text_options
@_common("text")
@click.pass_context
def text_command(ctx, text, out, init, transfer, reinit_layers, context, val_fraction, eval_tokens, **kw):
    """Train a byte-level language model on the --text corpus, from scratch or from an NCA checkpoint.

    With --init the block shape comes from the checkpoint (--model is ignored); embedding and head are fresh.
    """
    from nca_datagen.train.stages import train_text

    _refuse_transfer_without_init(ctx, init)
    model = kw.pop("model")
    summary = train_text(list(text), out, model=model, init=init, transfer=transfer, reinit_layers=reinit_layers,
                         context=context, val_fraction=val_fraction, eval_tokens=eval_tokens, **_train_kwargs(kw))
    click.echo(json.dumps({k: summary[k] for k in ("final_loss", "final_val_loss", "final_val_ppl", "checkpoint")}))


def _compare_options(fn):
    options = [
        click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder."),
        click.option("--nca-steps", type=POSITIVE, default=200, show_default=True, help="Pre-pre-training steps."),
        click.option("--nca-batch-size", type=POSITIVE, default=8, show_default=True,
                     help="Sequences per pre-pre-training step."),
        click.option("--transfer", default="all", show_default=True, callback=_checked_by(parse_parts),
                     help="Parts kept (see `train text`)."),
        click.option("--reinit-layers", default="", callback=_checked_by(parse_layers),
                     help="Blocks kept in no part, e.g. 0,3."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _echo_report(report: dict) -> None:
    from nca_datagen.train.compare import change_text, speedup_text

    speedup = speedup_text(report)
    click.echo(f"scratch: val loss {report['scratch_val_loss']:.4f}  ppl {report['scratch_val_ppl']:.4f}")
    click.echo(f"NCA    : val loss {report['nca_val_loss']:.4f}  ppl {report['nca_val_ppl']:.4f}  "
               f"({change_text(report['ppl_change'])})  speed-up {speedup}")
    if "can_show" in report:  # compare's report (not a bare `summarize`)
        click.echo(f"what this run can show: {report['can_show']}")


@train_group.command("compare", short_help="Scratch vs NCA-initialised on your text.")
@config_option("train compare")
@click.option("--nca", "nca", required=True, help="NCA dataset (pre-pre-trained on first) or checkpoint.")
@_compare_options
@_text_options
@_common("compare")
def compare_command(nca, text, out, nca_steps, nca_batch_size, transfer, reinit_layers, context, val_fraction,
                    eval_tokens, **kw):
    """Scratch vs NCA-initialised on the same text, steps and seed: final loss, perplexity, speed-up, PNG.

    Given a dataset, pre-pre-trains a --model decoder on it first (--nca-steps); given a checkpoint, both
    text models take its block shape.
    """
    from nca_datagen.train.compare import compare

    model = kw.pop("model")
    report = compare(nca, list(text), out, nca_steps=nca_steps, nca_batch_size=nca_batch_size, model=model,
                     transfer=transfer, reinit_layers=reinit_layers, context=context, val_fraction=val_fraction,
                     eval_tokens=eval_tokens, **_train_kwargs(kw))
    _echo_report(report)
    click.echo(f"wrote {out}/compare.json and {out}/compare.png")


@train_group.command("sweep", short_help="Compare several complexity bands on your text.")
@config_option("train sweep")
@click.option("--bands", default=",".join(("20-30%", "30-40%", "40-50%", "50%+")), show_default=True,
              help="Complexity bands, comma separated.")
@click.option("--tokens", type=PositiveCount(), default="200K", show_default=True,
              help="NCA tokens built per band, as `build --tokens` takes them: 200K, 1.5M (rounded up to whole "
                   "shards).")
@click.option("--build-args", default="", help="The build's other recipe options, quoted: '--grid 8 --frames 12'.")
@_compare_options
@_text_options
@_common("compare")
def sweep_command(bands, tokens, build_args, text, out, nca_steps, nca_batch_size, transfer, reinit_layers, context,
                  val_fraction, eval_tokens, **kw):
    """Build a small dataset per complexity band, pre-pre-train on each, compare on your corpus."""
    from nca_datagen.train.compare import best_band_text, change_text, sweep

    model = kw.pop("model")
    recipe = recipe_args(build_args, taken=("complexity", "tokens", "seed"))
    result = sweep(list(text), out, bands=[b.strip() for b in bands.split(",") if b.strip()], tokens=tokens,
                   recipe=recipe,
                   nca_steps=nca_steps, nca_batch_size=nca_batch_size, model=model, transfer=transfer,
                   reinit_layers=reinit_layers, context=context, val_fraction=val_fraction, eval_tokens=eval_tokens,
                   **_train_kwargs(kw))
    for row in result["bands"]:
        click.echo(f"{row['band']:>8}: val ppl {row['nca_val_ppl']:.4f} ({change_text(row['ppl_change'])})")
    click.echo(f"{best_band_text(result['bands'], result['best_band'])}; wrote {out}/sweep.json and {out}/sweep.png")
