"""The `nca-datagen` command. Subcommands live beside the code they drive and load lazily, so
`nca-datagen --help` stays fast and a CPU-only machine never imports Ray or Triton to print it."""

from __future__ import annotations

import importlib
import shlex

import click

from nca_datagen import __version__, storage
from nca_datagen.cli_options import storage_flags

# name -> "module:attribute" of a click command; imported only when that command runs (or --help lists it)
COMMANDS = {
    "build": ("nca_datagen.pipelines.build:build_command", "Generate, filter, tokenize and write a dataset."),
    "verify": ("nca_datagen.cli:verify_command", "Check a dataset's shards against its manifest."),
    "publish": ("nca_datagen.cli:publish_command", "Copy a finished dataset to object storage or the Hub."),
    "export": ("nca_datagen.cli:export_command", "Rewrite a dataset as Parquet, Megatron .bin/.idx or MDS."),
    "inspect": ("nca_datagen.inspection:inspect_command", "Show a dataset's config, totals and histograms."),
    "preview": ("nca_datagen.preview:preview_command", "Draw sampled rules of a complexity band (PNG/GIF)."),
    "complexity": ("nca_datagen.measure:complexity_command", "gzip ratio of your own corpus vs the NCA bands."),
    "train": ("nca_datagen.train.cli:train_group", "Pre-pre-train on NCA data, transfer to text, compare."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name][0].split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:  # a command whose module is missing still lists
            reason = str(exc)
            return click.Command(name, help=f"(unavailable: {reason})", short_help=COMMANDS[name][1],
                                 callback=lambda: _unavailable(name, reason))

    def invoke(self, ctx):
        """Every command's refusals end in one `Error:` line and their exit code (`errors.py`), not a traceback:
        nca-datagen's own errors, and storage errors that reach here (a path that cannot be written, a bucket that
        does not exist, an endpoint that does not answer, missing credentials)."""
        from nca_datagen import storage
        from nca_datagen.errors import Interrupted, NcaDatagenError

        try:
            return super().invoke(ctx)
        except Interrupted as exc:
            click.echo(str(exc), err=True)
            raise SystemExit(exc.exit_code) from None
        except NcaDatagenError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code
            raise error from exc
        except storage.errors() as exc:
            hint = "" if not type(exc).__module__.startswith("botocore") else (
                f" (for s3:// URLs check --endpoint-url / AWS_ENDPOINT_URL, --profile and the credentials: "
                f"{storage.credentials_source({})})")
            raise click.ClickException(f"{type(exc).__name__}: {exc}{hint}") from exc

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name, exc):
    raise click.ClickException(f"'{name}' cannot run: {exc}")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nca-datagen")
def main():
    """Neural-cellular-automata token datasets for pre-pre-training language models (arXiv 2603.10055)."""


@click.command("verify")
@click.argument("url")
@click.option("--regenerate", "regenerate", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also rebuild N randomly chosen shards from the manifest's recipe and compare sha256.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which shards --regenerate picks.")
@click.option("--backend", type=click.Choice(("auto", "triton", "numba", "torch")), default="auto",
              show_default=True, help="Rollout backend for --regenerate; auto: the fastest available.")
@storage_flags
def verify_command(url, regenerate, seed, backend, endpoint_url, profile, s3_checksums):
    """Check every shard of the dataset (or export) at URL (a folder, a URL such as s3://, or its manifest.json)
    against its manifest."""
    from nca_datagen.exports import is_export, regenerate_export, verify_export
    from nca_datagen.verify import regenerate_and_compare, verify_dataset

    opts = storage.storage_options_from_flags(endpoint_url, profile, s3_checksums)
    backend = None if backend == "auto" else backend
    export = is_export(url, opts)  # an export's own manifest, checked by its own rules
    problems = (verify_export if export else verify_dataset)(url, opts, echo=click.echo)
    if regenerate:
        problems += (regenerate_export if export else regenerate_and_compare)(url, regenerate, opts, seed=seed,
                                                                            backend=backend, echo=click.echo)
    if problems:
        click.echo(f"{len(problems)} problem(s):", err=True)
        for p in problems:
            click.echo(f"  {p}", err=True)
        raise SystemExit(1)
    click.echo("dataset verified: every shard matches the manifest")


@click.command("publish")
@click.argument("src")
@click.argument("dst")
@click.option("--overwrite", is_flag=True,
              help="Replace a finished dataset with other data at DST (without it, publish refuses).")
@click.option("--rehash", is_flag=True,
              help="Re-read and re-hash every shard DST already holds (default: trust its record and size), "
                   "re-uploading those that differ: repairs a shard `verify` reports BAD at DST.")
@storage_flags
def publish_command(src, dst, overwrite, rehash, endpoint_url, profile, s3_checksums):
    """Copy the finished dataset at SRC to DST (e.g. a folder to s3://bucket/prefix), manifest last; to
    hf://datasets/ORG/NAME, in one commit."""
    from nca_datagen.pipelines.publish import publish
    from nca_datagen.units import plural

    opts = storage.storage_options_from_flags(endpoint_url, profile, s3_checksums)
    command = shlex.join(["nca-datagen", "publish", src, dst, *(["--overwrite"] if overwrite else []),
                          *(["--rehash"] if rehash else [])])
    stats = publish(src, dst, opts, rehash=rehash, overwrite=overwrite, echo=click.echo, command=command)
    click.echo(f"published {src} -> {dst}: {plural(stats['uploaded'], 'shard')} uploaded, {stats['skipped']:,} "
               f"already present, {plural(stats['files'], 'other file')} copied; manifest written last")


@click.command("export")
@click.argument("src")
@click.option("--format", "fmt", type=click.Choice(["parquet", "megatron", "mds"]), required=True,
              help="parquet: one zstd file per shard (pyarrow, datasets, DuckDB, Ray Data); megatron: .bin/.idx per "
                   "shard (Megatron-LM, NeMo, GPT-NeoX); mds: mosaicml-streaming (llm-foundry, Composer).")
@click.option("--out", required=True, help="The export's folder or s3:// URL: a sibling dataset with its own manifest.")
@storage_flags
def export_command(src, fmt, out, endpoint_url, profile, s3_checksums):
    """Rewrite the verified dataset at SRC for trainers without a WebDataset reader; `verify` checks the export and
    `verify --regenerate` rebuilds sampled shards from the recipe and re-exports them byte for byte."""
    from nca_datagen.exports import export_dataset
    from nca_datagen.units import format_bytes, plural

    opts = storage.storage_options_from_flags(endpoint_url, profile, s3_checksums)
    manifest = export_dataset(src, out, fmt, opts, echo=click.echo)
    totals = manifest["totals"]
    click.echo(f"exported {src} -> {out} as {fmt}: {plural(totals['num_shards'], 'shard')}, "
               f"{format_bytes(totals['bytes'])}; manifest written last")
