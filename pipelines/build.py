"""`nca-datagen build`: one command from a token budget to a finished dataset.

    options -> plan (`plan.py`) -> claim the output -> executor (Ray or inline) -> driver (`driver.py`) -> summary

This module is the command line: options grouped for `--help`, the paper preset, checks that fail before
anything is written or Ray starts (a taken output, a missing GPU, a bad address), and the plan table. The
arithmetic lives in `plan.py`, the run itself in `driver.py`.
"""

from __future__ import annotations

import os
import shlex
import signal

import click

from nca_datagen.units import COUNT, GRID, format_bytes, format_count, format_duration, plural

from .driver import BuildOptions, run_build
from .plan import DEFAULT_VAL_FRACTION, PAPER, BuildPlan, dataset_config, plan_build, rounding_note

SECTIONS = {
    "What to build": ["preset", "complexity", "tokens", "val_tokens", "val_fraction", "seed", "sims_per_rule",
                      "samples_per_shard"],
    "Rule family and sequences (defaults: the paper's)": ["grid", "states", "patch", "frames", "seq_len", "burn_in",
                                                          "temperature"],
    "Output": ["out", "compression", "overwrite", "endpoint_url", "profile", "s3_checksums"],
    "Execution": ["executor", "ray_address", "workers", "gpus", "actors_per_gpu", "device", "backend", "retries"],
    "Other": ["dry_run", "quiet", "help"],
}


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


def _data_options(fn):
    options = [
        click.option("--preset", type=click.Choice(["paper"]), default=None,
                     help="Reproduce the paper's data: 12x12 grid, 10 states, 2x2 patches, 27 frames, 10 burn-in, "
                          "tau 1e-4, band 50%+, 16,000 x 10 train and 2,000 x 10 val sequences (164M tokens)."),
        click.option("--complexity", "complexity", default="50%+", show_default=True, metavar="BAND",
                     help="gzip-ratio band of kept rules: 0.5:1.0, 0.5:, 50%+, 30-40%, 0.3-0.4, or a preset "
                          "(web, math = 50%+; code = 30-40%)."),
        click.option("--tokens", type=COUNT, default=None,
                     help="Training tokens (K/M/B suffixes: 10K, 2M, 164M). Counted as stored, seq-len per "
                          "sequence (1026 at the paper's settings), rounded up to whole shards. Required unless "
                          "--preset."),
        click.option("--val-tokens", type=COUNT, default=None, help="Validation tokens (rules disjoint from train)."),
        click.option("--val-fraction", type=float, metavar="F", default=None,
                     help=f"Validation tokens as a fraction of --tokens.  [default: {DEFAULT_VAL_FRACTION}, the "
                          f"paper's 2,000 / 16,000 rules]"),
        click.option("--seed", type=click.IntRange(min=0, max=2**64 - 1), metavar="N", default=0, show_default=True,
                     help="Run seed: every draw derives from (seed, split, rule id, sim)."),
        click.option("--sims-per-rule", type=click.IntRange(min=1), metavar="N", default=10, show_default=True,
                     help="Simulations (sequences) per kept rule, each from a fresh initial state."),
        click.option("--samples-per-shard", type=click.IntRange(min=1), metavar="N", default=500, show_default=True,
                     help="Sequences per shard; a multiple of --sims-per-rule (whole rules per shard)."),
        click.option("--grid", type=GRID, default="12", show_default=True, metavar="H[xW]",
                     help="Grid size in cells: 12 or HEIGHTxWIDTH (12x18); periodic boundary."),
        click.option("--states", type=click.IntRange(min=2), metavar="N", default=10, show_default=True,
                     help="Alphabet size n (cell states)."),
        click.option("--patch", type=click.IntRange(min=1), metavar="N", default=2, show_default=True,
                     help="Patch side p: one token per p x p cells, ids 0..n^(p*p)-1 (must fit uint16)."),
        click.option("--frames", type=click.IntRange(min=1), metavar="N", default=27, show_default=True,
                     help="Frames per sequence (27 x 38 = 1026 tokens at the defaults)."),
        click.option("--seq-len", type=click.IntRange(min=1), metavar="N", default=None,
                     help="Tokens per sequence instead of --frames; a multiple of the tokens per frame."),
        click.option("--burn-in", type=click.IntRange(min=0), metavar="N", default=10, show_default=True,
                     help="Update steps before the first frame."),
        click.option("--temperature", type=click.FloatRange(min=0), metavar="TAU", default=1e-4, show_default=True,
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
    from nca_datagen.storage import storage_flags

    options = [
        click.option("--out", required=True, metavar="PATH|s3://BUCKET/PREFIX", callback=_not_empty,
                     help="Dataset folder: a local path or an s3:// URL."),
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
        click.option("--actors-per-gpu", type=click.IntRange(min=1), metavar="N", default=4, show_default=True,
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
    from nca_datagen.storage import storage_options_from_flags

    _, plan = _plan_from_options(ctx, kw)
    storage_options = storage_options_from_flags(kw["endpoint_url"], kw["profile"], kw["s3_checksums"]) or None
    if kw["dry_run"]:
        if kw["executor"] == "inline":  # the flags a real run would refuse, a dry run refuses too
            _check_inline_flags(kw)
        _print_plan(plan, kw)
        return
    from nca_datagen.claim import claim
    from nca_datagen.ownership import check_output

    try:  # someone else's folder is refused before the claim writes into it (the refusal --overwrite keeps)
        check_output(kw["out"], plan.config, kw["compression"], overwrite=True, storage_options=storage_options)
        with claim(kw["out"], storage_options, doing="build", command=_command_line(ctx)) as held:  # one writer
            _build(ctx, kw, plan, storage_options, held)
    except ValueError as exc:  # LocationBusy, an unwritable output, ClaimLost
        raise click.ClickException(str(exc)) from None


def _build(ctx, kw, plan: BuildPlan, storage_options, held=None) -> None:
    """The build command once the output is this process's: a no-op, or Ray (or inline) and `run_build`."""
    from nca_datagen.ownership import check_output

    if not kw["overwrite"] and _already_built(plan, kw["out"], kw["compression"], storage_options):
        return
    try:  # a taken output is refused before Ray starts (~6 s on 2 cores); run_build asks again, then writes
        check_output(kw["out"], plan.config, kw["compression"], overwrite=kw["overwrite"],
                     storage_options=storage_options, planned=plan.shards)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    backend = None if kw["backend"] == "auto" else kw["backend"]
    try:
        executor, device = _start(kw, backend)
    except KeyboardInterrupt:  # Ctrl-C while Ray starts: nothing is written yet (run_build answers its own)
        _shutdown_ray()
        click.echo("interrupted before any shard was built: nothing was written", err=True)
        raise SystemExit(128 + signal.SIGINT) from None
    opts = BuildOptions(out_url=kw["out"], compression=kw["compression"], storage_options=storage_options,
                        backend=backend, device=device,
                        overwrite=kw["overwrite"], quiet=kw["quiet"], max_attempts=kw["retries"] + 1,
                        command=_command_line(ctx), claim=held)
    if not kw["quiet"]:
        _print_plan(plan, kw, brief=True)
    try:
        run_build(plan, executor, opts)
    except ValueError as exc:  # prepare_output: unwritable output, a dataset with another config, ...
        executor.close()
        raise click.ClickException(str(exc)) from None


def _start(kw, backend: str | None):
    """The executor and its device, once `backend` is known to run there."""
    from nca_datagen.rollout import resolve_backend

    executor, device = _make_executor(kw)
    try:
        resolve_backend(backend, device)
    except ValueError as exc:
        executor.close()
        raise click.BadParameter(str(exc), param_hint="--backend") from None
    return executor, device


def _already_built(plan: BuildPlan, out: str, compression: str, storage_options) -> bool:
    """Whether `out` holds the finished dataset this command would build, whole: the same recipe and shards, each
    shard and its record verified (size and sha256), and the tables and card the manifest lists. Rerunning a
    command that completed then does nothing; one whose dataset was damaged since rebuilds what is missing or
    damaged (said here), as rerunning an interrupted one finishes it."""
    from nca_datagen import storage
    from nca_datagen.config import recipe_fingerprint
    from nca_datagen.manifest import manifest_recipe, read_manifest
    from nca_datagen.ownership import remove_build_marker, remove_stale_files

    from .driver import damaged_files, resume_state

    try:
        manifest = read_manifest(out, storage_options)
    except ValueError:  # no dataset there (or none readable): check_output decides
        return False
    recipe = recipe_fingerprint(plan.config, compression)
    shards = {split: info["num_shards"] for split, info in manifest["splits"].items()}
    if manifest_recipe(manifest) != recipe or shards != plan.shards:
        return False
    fs, root = storage.filesystem(out, storage_options)
    _, todo = resume_state(plan, fs, root, recipe)
    damaged = damaged_files(fs, root, manifest)
    if todo or damaged:
        click.echo(f"{out} holds this dataset, damaged: rebuilding {plural(len(todo), 'shard')} that "
                   f"{'is' if len(todo) == 1 else 'are'} missing or fail their sha256"
                   + (f", and rewriting {', '.join(damaged)}" if damaged else ""), err=True)
        return False
    remove_build_marker(fs, root)  # a build interrupted between its manifest and removing its marker left one
    remove_stale_files(fs, root, plan.shards)  # and a killed write its temporary file
    click.echo(f"{out} already holds this dataset ({plural(plan.total_shards, 'shard')}, "
               f"{format_count(plan.total_tokens)} tokens, each shard verified): nothing to do "
               f"(--overwrite rebuilds it)")
    return True


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


def _plan_from_options(ctx, kw):
    if kw["preset"] == "paper":
        _apply_paper_preset(ctx, kw)
    if kw["tokens"] is None:
        raise click.BadParameter("give a budget, e.g. --tokens 2M (or --preset paper)", param_hint="--tokens")
    if kw["seq_len"] is not None and ctx.get_parameter_source("frames").name != "DEFAULT":
        raise click.BadParameter("give --frames or --seq-len, not both", param_hint="--seq-len")
    from nca_datagen.complexity import Band

    try:
        band = Band.parse(kw["complexity"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--complexity") from None
    try:
        config = dataset_config(grid=kw["grid"], states=kw["states"], patch=kw["patch"], frames=kw["frames"],
                                burn_in=kw["burn_in"], temperature=kw["temperature"], band=band, seed=kw["seed"],
                                sims_per_rule=kw["sims_per_rule"], samples_per_shard=kw["samples_per_shard"],
                                seq_len=kw["seq_len"])
        plan = plan_build(config, kw["tokens"], kw["val_tokens"], kw["val_fraction"])
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return config, plan


PRESET_FIXED = ("complexity", "tokens", "val_tokens", "val_fraction", "sims_per_rule", "grid", "states", "patch",
                "frames", "seq_len", "burn_in", "temperature")


def _apply_paper_preset(ctx, kw) -> None:
    clashes = [n for n in PRESET_FIXED if ctx.get_parameter_source(n).name not in ("DEFAULT", "DEFAULT_MAP")]
    if clashes:
        flags = ", ".join("--" + n.replace("_", "-") for n in clashes)
        raise click.BadParameter(f"--preset paper fixes {flags}; drop them or drop --preset", param_hint="--preset")
    seq_len = 27 * 38  # the paper's 1026-token sequences
    split_sequences = [PAPER[k] * PAPER["sims_per_rule"] for k in ("train_rules", "val_rules")]
    if any(n % kw["samples_per_shard"] for n in split_sequences):
        raise click.BadParameter(f"--preset paper builds exactly {split_sequences[0]:,} train and "
                                 f"{split_sequences[1]:,} val sequences: choose a --samples-per-shard dividing "
                                 f"both (e.g. 500 or 1000)", param_hint="--samples-per-shard")
    kw.update(complexity=PAPER["band"], sims_per_rule=PAPER["sims_per_rule"], grid=(12, 12), states=10, patch=2,
              frames=27, burn_in=10, temperature=1e-4,
              tokens=PAPER["train_rules"] * PAPER["sims_per_rule"] * seq_len,
              val_tokens=PAPER["val_rules"] * PAPER["sims_per_rule"] * seq_len)


def _make_executor(kw):
    """The executor and the device its workers use. Fails before anything is written (bad address, no GPU)."""
    from nca_datagen.rollout import check_gpu_flags

    from .executors import InlineExecutor, RayExecutor

    try:
        check_gpu_flags(kw["device"], kw["gpus"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--gpus") from None
    wants_gpu = kw["device"] == "cuda" or bool(kw["gpus"])
    if kw["executor"] == "inline":
        _check_inline_flags(kw)
        from nca_datagen.rollout import resolve_device

        try:
            return InlineExecutor(), resolve_device("cuda" if wants_gpu else kw["device"])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--device/--gpus") from None
    if kw["ray_address"] is None and not os.environ.get("RAY_ADDRESS") and wants_gpu:
        from nca_datagen.rollout import NO_CUDA_GPU, gpu_driver_present

        # Local Ray: the driver's machine is the cluster, so fail before starting Ray when it has no GPU driver.
        # With one, Ray's own GPU count decides (below).
        if not gpu_driver_present():
            raise click.BadParameter(NO_CUDA_GPU, param_hint="--device/--gpus")
    try:
        executor = RayExecutor(kw["ray_address"], kw["workers"], kw["gpus"], kw["device"], kw["actors_per_gpu"])
    except ConnectionError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        _shutdown_ray()
        raise click.BadParameter(str(exc), param_hint="--device/--gpus/--actors-per-gpu/--ray-address") from None
    return executor, executor.device


def _check_inline_flags(kw) -> None:
    """--executor inline builds one shard at a time in this process, on one device: the flags that place and size
    Ray's pool would be ignored there, so they are refused. `--gpus 1` (like --device cuda) picks the GPU."""
    ctx = click.get_current_context(silent=True)
    given = [flag for flag, name in (("--ray-address", "ray_address"), ("--workers", "workers")) if kw[name]]
    if ctx is not None and ctx.get_parameter_source("actors_per_gpu").name not in ("DEFAULT", "DEFAULT_MAP"):
        given.append("--actors-per-gpu")
    if given:
        verb = "needs" if len(given) == 1 else "need"
        raise click.BadParameter(f"{' and '.join(given)} {verb} --executor ray: --executor inline builds one shard "
                                 f"at a time in this process", param_hint=given[0])
    if (kw["gpus"] or 0) > 1:
        raise click.BadParameter(f"--gpus {kw['gpus']} needs --executor ray: --executor inline runs on one GPU "
                                 f"(--gpus 1 or --device cuda)", param_hint="--gpus")


def _shutdown_ray():
    import sys

    ray = sys.modules.get("ray")  # not imported (an inline build): nothing to shut down
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _planned_gpus(kw) -> int:
    """GPUs a local build would use, for the estimate: --gpus, else every visible one unless --device cpu or
    --gpus 0 (a cluster's GPUs are unknown before joining it: the estimate then assumes this machine's)."""
    from nca_datagen.rollout import gpus_to_use, visible_gpus

    try:
        return gpus_to_use(kw["device"], kw["gpus"], visible_gpus)
    except ValueError as exc:  # contradictory flags: refused by a dry run too
        raise click.BadParameter(str(exc), param_hint="--gpus") from None


def _print_plan(plan: BuildPlan, kw, brief: bool = False) -> None:
    from nca_datagen.progress import summary_table

    cfg = plan.config
    nca = cfg.nca
    rows = [(s.split, f"{s.sequences_text} = "
                      f"{s.tokens:,} tokens ({format_count(s.tokens)}) in {plural(s.shards, 'shard')}")
            for s in plan.splits if s.shards]
    if brief:
        click.echo("plan: " + "; ".join(f"{s.split} {plural(s.shards, 'shard')} ({format_count(s.tokens)} tokens)"
                                         for s in plan.splits if s.shards) + f" -> {kw['out']}", err=True)
        if note := rounding_note(plan):
            click.echo(f"note: {note}", err=True)
        return
    cpus = kw["workers"] or os.cpu_count() or 1
    gpus = _planned_gpus(kw)
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
    from rich.console import Console

    Console().print(summary_table("nca-datagen build plan", rows))

