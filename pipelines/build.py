"""`nca-datagen build`: the command line of `nca_datagen.api` (plan, placement, run), and what it prints.

    flags -> recipe (`plan.plan_from`) + placement (`placement.Placement`) -> `api.run` -> summary

Options are grouped for `--help`; the data options take their defaults from the config dataclasses, so the
paper's values live once, in `config.py`. Only the flags a user gives reach the API: a preset can then tell them
from its own values. Every refusal comes from the library as an `errors` class, which the CLI group turns into
one `Error:` line (`cli.py`).
"""

from __future__ import annotations

import os
import shlex

import click

from nca_datagen.cli_options import COUNT, GRID, config_option, storage_flags
from nca_datagen.config import DatasetConfig, NCAConfig
from nca_datagen.units import format_bytes, format_count, format_duration, plural

from .placement import DEFAULT_ACTORS_PER_GPU, Placement
from .plan import DEFAULT_VAL_FRACTION, PAPER, BuildPlan, rounding_note

SECTIONS = {
    "What to build": ["config", "preset", "from_manifest", "complexity", "tokens", "val_tokens", "val_fraction",
                      "seed", "sims_per_rule", "samples_per_shard"],
    "Rule family and sequences (defaults: the paper's)": ["grid", "states", "patch", "frames", "seq_len", "burn_in",
                                                          "temperature"],
    "Output": ["out", "compression", "overwrite", "endpoint_url", "profile", "s3_checksums"],
    "Execution": ["executor", "ray_address", "workers", "gpus", "actors_per_gpu", "device", "backend", "retries"],
    "Other": ["dry_run", "quiet", "help"],
}
RECIPE = ("complexity", "tokens", "val_tokens", "val_fraction", "seed", "sims_per_rule", "samples_per_shard",
          "grid", "states", "patch", "frames", "seq_len", "burn_in", "temperature")
NCA, DATA = NCAConfig(), DatasetConfig()


class SectionedCommand(click.Command):
    """`--help` with options grouped under headings (click lists them flat)."""

    def format_options(self, ctx, formatter):
        help_option = self.get_help_option(ctx)  # named by click ("_click_default_help" in 8.5): "help" here
        rows = {"help" if p is help_option else p.name: p.get_help_record(ctx) for p in self.get_params(ctx)}
        placed = set()
        for title, names in SECTIONS.items():
            found = [rows[n] for n in names if rows.get(n)]
            placed.update(names)
            if found:
                with formatter.section(title):
                    formatter.write_dl(found)
        rest = [rec for name, rec in rows.items() if name not in placed and rec]
        if rest:
            with formatter.section("More"):
                formatter.write_dl(rest)


def _default(value) -> str:
    """A config default as `--help` shows it (a grid as HxW)."""
    return "x".join(map(str, value)) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) \
        else str(value)


def _data_options(fn):
    """The recipe's options, their defaults the config's (only the flags given reach the API: a preset fixes the
    others)."""
    options = [
        click.option("--preset", type=click.Choice(["paper"]), default=None,
                     help=f"Reproduce the paper's data: its rule family (the defaults below), band {PAPER['band']}, "
                          f"{PAPER['train_rules']:,} x {PAPER['sims_per_rule']} train and {PAPER['val_rules']:,} x "
                          f"{PAPER['sims_per_rule']} val sequences (164M tokens)."),
        click.option("--from-manifest", metavar="URL", default=None,
                     help="Reproduce a published dataset from its manifest (a folder, s3:// URL or manifest.json): "
                          "its recipe, compression and shards, byte for byte."),
        click.option("--complexity", metavar="BAND", default=DATA.band.label, show_default=True,
                     help="gzip-ratio band of kept rules: 0.5:1.0, 0.5:, 50%+, 30-40%, 0.3-0.4, or a preset "
                          "(web, math = 50%+; code = 30-40%)."),
        click.option("--tokens", type=COUNT, default=None,
                     help=f"Training tokens (K/M/B suffixes: 10K, 2M, 164M). Counted as stored, seq-len per "
                          f"sequence ({NCA.seq_len} at the paper's settings), rounded up to whole shards. Required "
                          f"unless --preset."),
        click.option("--val-tokens", type=COUNT, default=None, help="Validation tokens (rules disjoint from train)."),
        click.option("--val-fraction", type=float, metavar="F", default=DEFAULT_VAL_FRACTION, show_default=True,
                     help="Validation tokens as a fraction of --tokens (the paper's 2,000 / 16,000 rules)."),
        click.option("--seed", type=click.IntRange(min=0, max=2**64 - 1), metavar="N", default=DATA.seed,
                     show_default=True,
                     help="Run seed: every draw derives from (seed, split, rule id, sim)."),
        click.option("--sims-per-rule", type=click.IntRange(min=1), metavar="N",
                     default=DATA.sims_per_rule, show_default=True,
                     help="Simulations (sequences) per kept rule, each from a fresh initial state."),
        click.option("--samples-per-shard", type=click.IntRange(min=1), metavar="N",
                     default=DATA.samples_per_shard, show_default=True,
                     help="Sequences per shard; a multiple of --sims-per-rule (whole rules per shard)."),
        click.option("--grid", type=GRID, metavar="H[xW]", default=_default(NCA.grid), show_default=True,
                     help="Grid size in cells: 12 or HEIGHTxWIDTH (12x18); periodic boundary."),
        click.option("--states", type=click.IntRange(min=2), metavar="N", default=NCA.states, show_default=True,
                     help="Alphabet size n (cell states)."),
        click.option("--patch", type=click.IntRange(min=1), metavar="N", default=NCA.patch, show_default=True,
                     help="Patch side p: one token per p x p cells, ids 0..n^(p*p)-1 (must fit uint16)."),
        click.option("--frames", type=click.IntRange(min=1), metavar="N", default=NCA.frames, show_default=True,
                     help=f"Frames per sequence ({NCA.frames} x {NCA.tokens_per_frame} = {NCA.seq_len} tokens at "
                          f"the defaults)."),
        click.option("--seq-len", type=click.IntRange(min=1), metavar="N", default=None,
                     help="Tokens per sequence instead of --frames; a multiple of the tokens per frame."),
        click.option("--burn-in", type=click.IntRange(min=0), metavar="N", default=NCA.burn_in, show_default=True,
                     help="Update steps before the first frame."),
        click.option("--temperature", type=click.FloatRange(min=0), metavar="TAU",
                     default=NCA.temperature, show_default=True,
                     help="Sampling temperature tau of the update (0 = argmax)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _not_empty(ctx, param, value):
    if value is not None and not value.strip():
        raise click.BadParameter("is empty: give a folder (e.g. data/nca-web) or an s3:// URL")
    return value


def _run_options(fn):
    options = [
        click.option("--out", required=True, metavar="PATH|URL", callback=_not_empty,
                     help="Dataset folder: a local path or a URL (s3://, gs://, az://, memory://)."),
        click.option("--compression", type=click.Choice(["zstd", "none"]), default="zstd", show_default=True,
                     help="Shard compression (none = plain .tar, random access)."),
        click.option("--overwrite", is_flag=True, help="Replace a finished dataset at --out."),
        click.option("--executor", type=click.Choice(["ray", "inline"]), default="ray", show_default=True,
                     help="ray: local Ray (started for this build) or a cluster; inline: this process, one shard "
                          "at a time."),
        click.option("--ray-address", default=None, metavar="auto|HOST:PORT",
                     help="Join a running Ray cluster (default: RAY_ADDRESS, else start a local Ray)."),
        click.option("--workers", type=click.IntRange(min=1), metavar="N", default=None,
                     help="Concurrent CPU tasks (Ray only; a local Ray gets one more CPU per generator actor).  "
                          "[default: the CPUs of this machine, or those of the cluster the actors leave]"),
        click.option("--gpus", type=click.IntRange(min=0), metavar="N", default=None,
                     help="GPUs to use (see --actors-per-gpu); 0 = none (not with --device cuda); --executor "
                          "inline uses one.  [default: all GPUs when --device is cuda/auto]"),
        click.option("--actors-per-gpu", type=click.IntRange(min=1), metavar="N", default=DEFAULT_ACTORS_PER_GPU,
                     show_default=True,
                     help="Generator actors sharing each GPU (Ray; their host-side work runs on N cores, one "
                          "CPU each)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="auto = cuda when a GPU is visible (to the cluster), else cpu."),
        click.option("--backend", type=click.Choice(["auto", "numba", "torch", "triton"]), default="auto",
                     show_default=True, help="Rollout backend; all give identical tokens."),
        click.option("--retries", type=click.IntRange(min=0), metavar="N", default=2, show_default=True,
                     help="Resubmissions of a failed shard before the build gives up on it."),
        click.option("--dry-run", is_flag=True, help="Print the plan (rules, sequences, shards, bytes, time); write "
                                                     "nothing."),
        click.option("--quiet", "-q", is_flag=True, help="Print only errors and the final line."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return storage_flags(fn)


@click.command("build", cls=SectionedCommand, context_settings={"help_option_names": ["-h", "--help"]})
@config_option("build")
@_data_options
@_run_options
@click.pass_context
def build_command(ctx, **kw):
    """Generate, filter, tokenize and write an NCA token dataset.

    \b
    Examples:
      nca-datagen build --complexity 50%+ --tokens 2M --out data/nca-web
      nca-datagen build --preset paper --out s3://bucket/nca-paper --ray-address auto
      nca-datagen build --complexity code --tokens 50M --out data/nca-code --dry-run

    Rerunning the same command resumes: finished shards are verified and skipped
    (a finished dataset: nothing to do).
    """
    from nca_datagen import api
    from nca_datagen.storage import storage_options_from_flags

    given = {k for k in kw if _given(ctx, k)}  # the API and a preset tell given flags from defaults
    storage_options = storage_options_from_flags(kw["endpoint_url"], kw["profile"], kw["s3_checksums"]) or None
    recipe = {k: kw[k] for k in RECIPE if k in given}
    if kw["from_manifest"]:
        compression_given = "compression" in given
        plan, kw["compression"] = api.reproduce(kw["from_manifest"], storage_options, preset=kw["preset"],
                                                compression=kw["compression"] if compression_given else None,
                                                **recipe)
    else:
        plan = api.make_plan(kw["preset"], **recipe)
    placement = Placement(kw["executor"], kw["ray_address"], kw["workers"], kw["gpus"],
                          kw["actors_per_gpu"] if "actors_per_gpu" in given else None, kw["device"], kw["backend"])
    if kw["dry_run"]:
        _print_plan(plan, placement, kw)
        return
    if not kw["quiet"]:
        _print_brief(plan, kw["out"])
    result = api.run(kw["out"], plan, placement, compression=kw["compression"], overwrite=kw["overwrite"],
                     retries=kw["retries"], quiet=kw["quiet"], command=_command_line(ctx),
                     storage_options=storage_options)
    _print_summary(result, kw)


def _given(ctx, name: str) -> bool:
    """Set on the command line, from the environment or from a --config file: not a default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "DEFAULT_MAP")


def _command_line(ctx) -> str:
    """The build command as given (explicit options only), for the event log and the manifest's provenance."""
    words = ["nca-datagen", "build"]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        flag = max(param.opts, key=len)
        value = ctx.params.get(param.name)
        if getattr(param, "is_flag", False):
            words.append(flag)
        else:
            text = "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
            words += [flag, text]
    return shlex.join(words)


def _print_brief(plan: BuildPlan, out: str) -> None:
    click.echo("plan: " + "; ".join(f"{s.split} {plural(s.shards, 'shard')} ({format_count(s.tokens)} tokens)"
                                     for s in plan.splits if s.shards) + f" -> {out}", err=True)
    if note := rounding_note(plan):
        click.echo(f"note: {note}", err=True)


def _print_plan(plan: BuildPlan, placement: Placement, kw) -> None:
    from rich.console import Console

    from nca_datagen.progress import summary_table

    cfg, nca = plan.config, plan.config.nca
    cpus, gpus = kw["workers"] or os.cpu_count() or 1, placement.planned_gpus()
    rows = [(s.split, f"{s.sequences_text} = {s.tokens:,} tokens ({format_count(s.tokens)}) in "
                      f"{plural(s.shards, 'shard')}") for s in plan.splits if s.shards]
    rows += [
        ("sequence", f"{nca.frames} frames x {nca.tokens_per_frame} tokens = {nca.seq_len} tokens; grid "
                     f"{nca.grid[0]}x{nca.grid[1]}, {nca.states} states, {nca.patch}x{nca.patch} patches, vocab "
                     f"{nca.vocab_size}"),
        ("rollout", f"burn-in {nca.burn_in}, tau {nca.temperature:g}; band {cfg.band.label} {cfg.band}; "
                    f"seed {cfg.seed}"),
        ("shard", f"{cfg.samples_per_shard} sequences ({cfg.rules_per_shard} rules) each, {kw['compression']}"),
        ("estimated size", format_bytes(plan.estimated_bytes(kw["compression"]))),
        ("estimated time", f"{format_duration(plan.estimated_seconds(cpus, gpus))} on "
                           + (f"{gpus} GPU(s)" if gpus else f"{cpus} CPU worker(s)")),
        ("output", f"{kw['out']} (dry run: nothing written)"),
    ]
    if note := rounding_note(plan):
        rows.append(("note", note))
    Console().print(summary_table("nca-datagen build plan", rows))


def _print_summary(result, kw) -> None:
    from nca_datagen.progress import stage_split, summary_table

    plan, out = result.plan, kw["out"]
    if result.nothing_to_do:
        click.echo(f"{out} already holds this dataset ({plural(plan.total_shards, 'shard')}, "
                   f"{format_count(plan.total_tokens)} tokens, each shard verified): nothing to do (--overwrite "
                   f"rebuilds it)")
        return
    rate = f"{format_count(result.tokens_per_s)} tokens/s"
    made = f"{rate} while making shards" if result.tokens_built else "every shard was already there"
    line = (f"done: {plural(plan.total_shards, 'shard')}, {format_count(plan.total_tokens)} tokens in {out} "
            f"({format_duration(result.seconds)} with the manifest and card; {made})")
    if not kw["quiet"]:
        rows = [(s.split, f"{s.sequences_text}, {format_count(s.tokens)} tokens, {plural(s.shards, 'shard')}")
                for s in plan.splits if s.shards]
        rows += [
            ("built now", f"{format_count(result.tokens_built)} tokens: shards in "
                          f"{format_duration(result.shards_seconds)} ({rate}), then manifest and card in "
                          f"{format_duration(result.seconds - result.shards_seconds)}"),
            ("acceptance", "-" if not result.candidates else
             f"{result.acceptance:.1%} of {result.candidates:,} candidate rules (band {plan.config.band})"),
            ("stages", stage_split(result.stage_seconds)),
            ("bytes", format_bytes(result.manifest["totals"]["bytes"])),
            ("event log", result.log_path),
        ]
        from rich.console import Console

        Console(stderr=True).print(summary_table("nca-datagen build", rows))
    click.echo(line)
