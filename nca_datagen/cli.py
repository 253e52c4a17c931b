"""The `nca-datagen` command. Subcommands live beside the code they drive and load lazily, so
`nca-datagen --help` stays fast and a CPU-only machine never imports Ray or Triton to print it."""

from __future__ import annotations

import importlib

import click

from nca_datagen import __version__

# name -> "module:attribute" of a click command; imported only when that command runs (or --help lists it)
COMMANDS = {
    "build": ("nca_datagen.pipelines.build:build_command", "Generate, filter, tokenize and write a dataset."),
    "verify": ("nca_datagen.verify:verify_command", "Check a dataset's shards against its manifest."),
    "publish": ("nca_datagen.pipelines.publish:publish_command", "Copy a finished dataset to object storage."),
    "inspect": ("nca_datagen.viz:inspect_command", "Show a dataset's config, totals and histograms."),
    "preview": ("nca_datagen.viz:preview_command", "Draw sampled rules of a complexity band (PNG/GIF)."),
    "complexity": ("nca_datagen.viz:complexity_command", "gzip ratio of your own corpus vs the NCA bands."),
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
        """Storage errors of any command (a path that cannot be written, a bucket that does not exist, an endpoint
        that does not answer, missing credentials) end in one line naming the cause, not a traceback."""
        from nca_datagen import storage

        try:
            return super().invoke(ctx)
        except storage.errors() as exc:
            hint = "" if isinstance(exc, OSError) else (
                " (for s3:// URLs check --endpoint-url / AWS_ENDPOINT_URL, --profile and the credentials)")
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
