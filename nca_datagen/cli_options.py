"""Command-line pieces the commands share: parameter types for counts and grids, the storage flags, and
writing a command's output file. The one module besides the commands themselves that imports click.
"""

from __future__ import annotations

import click

from nca_datagen import storage
from nca_datagen.units import parse_count, parse_grid


class CountType(click.ParamType):
    """A click parameter for counts with K/M/B suffixes (`units.parse_count`)."""

    name = "COUNT"

    def convert(self, value, param, ctx):
        try:
            return parse_count(value, what=param.name if param else "count")
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class GridType(click.ParamType):
    """A click parameter for grid sizes: `12` or `12x18` (`units.parse_grid`)."""

    name = "GRID"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return parse_grid(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


COUNT, GRID = CountType(), GridType()


def storage_flags(command):
    """--endpoint-url, --profile, --s3-checksums: the same on every command that touches S3."""
    command = click.option("--s3-checksums", "s3_checksums", type=click.Choice(storage.CHECKSUM_MODES),
                           default=None, help="'when_required' for S3-compatible servers that reject botocore's "
                                              "newest checksum headers.")(command)
    command = click.option("--profile", default=None, help="AWS profile for s3:// URLs (default: AWS_PROFILE).")(
        command)
    return click.option("--endpoint-url", default=None,
                        help="S3 endpoint for s3:// URLs, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL).")(
        command)


def write_or_fail(url: str, data: bytes, storage_options: dict | None = None) -> str:
    """`storage.write_url`, with a refusal as one `Error:` line."""
    try:
        return storage.write_url(url, data, storage_options)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def config_option(command: str):
    """--config FILE: the command's options from a TOML, YAML or JSON file (`settings.py`); flags given on the
    command line win. Eager, so the file's values become the defaults of every other option."""

    def load(ctx, param, value):
        if value is None:
            return None
        from nca_datagen.settings import load_settings

        try:
            settings = load_settings(value, command)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
        known = {p.name for p in ctx.command.params} - {"config"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise click.BadParameter(f"{value}: no option {', '.join(unknown)} in `{command}` (see --help)",
                                     ctx=ctx, param=param)
        repeatable = {p.name for p in ctx.command.params if getattr(p, "multiple", False)}
        settings = {k: [v] if k in repeatable and isinstance(v, str) else v for k, v in settings.items()}
        ctx.default_map = {**(ctx.default_map or {}), **settings}  # a repeatable option's one value: `text = "x"`
        return value

    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                        callback=load, help="Read options from a TOML, YAML or JSON file; flags win over it.")
