"""`nca-datagen inspect`: a dataset's recipe, size, acceptance and complexity histograms, in the terminal.

It reads the manifest (local folder or object-store URL; checked as any reader checks it) and lists the split
folders once to say whether every file it names is there at its recorded size (`verify` reads every byte).
`--json` prints the same for scripts; `--out-dir` also writes the histograms as PNGs (`figures.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from nca_datagen.cli_options import storage_flags, write_or_fail
from nca_datagen.complexity import Band
from nca_datagen.figures import figure_png, plot_histograms, sparkline
from nca_datagen.manifest import band_of, dataset_root, merged_histograms, read_manifest
from nca_datagen.storage import join, storage_options_from_flags
from nca_datagen.verify import listed_but_absent


def rebin(counts, factor: int) -> np.ndarray:
    """Sum groups of `factor` adjacent bins (a ragged last group is kept)."""
    counts = np.asarray(counts, dtype=np.int64)
    pad = (-len(counts)) % factor
    return np.concatenate([counts, np.zeros(pad, np.int64)]).reshape(-1, factor).sum(axis=1)


def inspect_summary(manifest: dict, url: str) -> dict:
    """The machine-readable view `inspect --json` prints: recipe, totals, per-split counts and histograms."""
    splits = {}
    for name, s in (manifest.get("splits") or {}).items():
        splits[name] = {k: s.get(k) for k in ("num_shards", "samples", "tokens", "bytes", "seq_len", "compression",
                                              "pattern", "counts", "acceptance_rate", "histograms")}
    return {"url": url, "format": manifest.get("format"), "format_version": manifest.get("format_version"),
            "tool_version": manifest.get("tool_version"), "config": manifest.get("config"),
            "totals": manifest.get("totals"), "splits": splits, "histograms": merged_histograms(manifest),
            "provenance": manifest.get("provenance")}


def terminal_histogram(cand, kept, lo: float, hi: float, band: Band | None, width: int = 32):
    """rich Text lines, one per bin from the first to the last non-empty one. The bar is the candidates: its
    kept part solid, its rejected part light. '▕' marks bins inside the band, '┆' bins that straddle an edge."""
    from rich.text import Text

    cand = np.asarray(cand, dtype=np.int64)
    kept = np.zeros_like(cand) if kept is None else np.asarray(kept, dtype=np.int64)
    edges = np.linspace(lo, hi, len(cand) + 1)
    nz = np.flatnonzero(cand + kept)
    if nz.size == 0:
        return [Text("(no candidates)")]
    peak, total = max(int(cand.max()), 1), max(int(cand.sum()), 1)
    lines = []
    for i in range(int(nz[0]), int(nz[-1]) + 1):
        a, b = edges[i], edges[i + 1]
        mark = " "
        if band is not None and band.lo < b and a < band.hi:
            mark = "▕" if band.lo <= a + 1e-9 and b <= band.hi + 1e-9 else "┆"
        n_c, n_k = int(cand[i]), int(kept[i])
        full = round(width * n_c / peak)
        solid = min(full, round(width * n_k / peak))
        t = Text(f"{a:4.2f}-{b:4.2f} ")
        t.append(mark, style="green")
        t.append("█" * solid, style="green")
        t.append("░" * (full - solid), style="grey50")
        t.append(" " * (width - full) + f" {n_k:>5,} / {n_c:<5,} {100 * n_c / total:5.1f}%")
        lines.append(t)
    return lines


def display_factor(n_bins: int, lo: float, hi: float, band: Band | None) -> int:
    """Merge bins for the terminal: to 0.1-wide bins (the paper's table) when the band edges stay on bin edges."""
    for factor in (5, 2, 1):
        if n_bins % factor:
            continue
        width = (hi - lo) * factor / n_bins
        edges = [] if band is None else [e for e in (band.lo, band.hi) if lo < e < hi]
        if all(abs((e - lo) / width - round((e - lo) / width)) < 1e-6 for e in edges):
            return factor
    return 1


@click.command("inspect")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables.")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Also write the complexity histograms as PNGs here, a folder or s3:// prefix (one for all "
                   "splits, one per split).")
@storage_flags
def inspect_command(url, as_json, out_dir, endpoint_url, profile, s3_checksums):
    """Show a dataset's recipe, totals, acceptance and complexity histograms (local folder or s3:// URL)."""

    options = storage_options_from_flags(endpoint_url, profile, s3_checksums)
    try:
        manifest = read_manifest(url, options)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    summary = inspect_summary(manifest, url)
    summary["absent"] = listed_but_absent(*dataset_root(url, options), manifest)
    written = write_histogram_pngs(manifest, out_dir, options) if out_dir else []
    if as_json:
        summary["figures"] = written
        click.echo(json.dumps(summary, indent=1, default=str))
        return
    _print_inspect(summary, band_of(manifest), written)
    _print_presence(url, summary["absent"], manifest["totals"]["num_shards"])


def _print_presence(url: str, absent: list[str], shards: int) -> None:
    """Say whether the files the manifest lists are there: a dataset missing some is not presented as fine."""
    if not absent:
        click.echo(f"files: all {shards:,} shards and the listed tables and card files are present at their "
                   f"recorded sizes (`nca-datagen verify {url}` checks their sha256)")
        return
    shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
    click.echo(f"DAMAGED: {len(absent)} listed file(s) missing or of the wrong size ({shown}). `nca-datagen verify "
               f"{url}` checks everything; rerunning the build command that made it rebuilds what is missing",
               err=True)


def write_histogram_pngs(manifest: dict, out_dir: str, storage_options: dict | None = None) -> list[str]:
    """complexity.png (all splits) and complexity-SPLIT.png under `out_dir` (a folder or s3:// prefix); returns
    what was written, as `write_output` names it."""
    band = band_of(manifest)
    if "://" not in out_dir:  # a local folder exists afterwards even when no split has histograms
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    jobs = [("complexity.png", merged_histograms(manifest), "all splits")]
    jobs += [(f"complexity-{name}.png", s.get("histograms") or {}, f"{name} split")
             for name, s in (manifest.get("splits") or {}).items()]
    written = []
    for fname, hists, what in jobs:
        if not hists:
            continue
        fig = plot_histograms(hists, band, title=f"gzip ratio, {what}")
        name = join(out_dir, fname) if "://" in out_dir else str(Path(out_dir) / fname)  # local: named as before
        written.append(write_or_fail(name, figure_png(fig), storage_options))
    return written


def _print_inspect(summary: dict, band: Band | None, written: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    cfg = summary.get("config") or {}
    nca = cfg.get("nca") or {}
    console.print(f"[bold]{summary['url']}[/bold]  ({summary.get('format')} v{summary.get('format_version')}, "
                  f"written by nca-datagen {summary.get('tool_version')})")
    recipe = Table(title="recipe", show_header=False, title_justify="left")
    recipe.add_column(style="bold")
    recipe.add_column()
    if band is not None:
        recipe.add_row("band", f"{band}  (keep iff {band.lo:g} < gzip ratio < {band.hi:g})")
    if nca:
        recipe.add_row("grid / states / patch", f"{'x'.join(map(str, nca.get('grid', [])))} / {nca.get('states')} / "
                                                f"{nca.get('patch')}")
        recipe.add_row("frames / burn-in", f"{nca.get('frames')} / {nca.get('burn_in')}")
    for key in ("seed", "rules_per_shard", "sims_per_rule", "probe_frames"):
        if key in cfg:
            recipe.add_row(key, str(cfg[key]))
    console.print(recipe)
    size = Table(title="size", title_justify="left")
    for col in ("split", "shards", "sequences", "tokens", "bytes"):
        size.add_column(col, justify="left" if col == "split" else "right")
    for name, s in summary["splits"].items():
        size.add_row(name, _fmt(s.get("num_shards")), _fmt(s.get("samples")), _fmt(s.get("tokens")), _bytes(s))
    t = summary.get("totals") or {}
    if t:
        size.add_row("[bold]total[/bold]", _fmt(t.get("num_shards")), _fmt(t.get("samples")), _fmt(t.get("tokens")),
                     _bytes(t))
    console.print(size)
    accept = Table(title="filter: candidate rules by verdict", title_justify="left")
    for col in ("split", "candidates", "kept", "too simple", "too complex", "acceptance"):
        accept.add_column(col, justify="left" if col == "split" else "right")
    for name, s in summary["splits"].items():
        c = s.get("counts") or {}
        rate = s.get("acceptance_rate")
        accept.add_row(name, _fmt(c.get("candidates")), _fmt(c.get("kept")), _fmt(c.get("too_simple")),
                       _fmt(c.get("too_complex")), f"{rate:.1%}" if rate is not None else "-")
    console.print(accept)
    hists = summary.get("histograms") or {}
    if hists.get("candidates"):
        h = hists["candidates"]
        factor = display_factor(len(h["counts"]), h["lo"], h["hi"], band)
        kept = hists.get("kept", {}).get("counts")
        console.print("[bold]probe gzip ratio of candidate rules[/bold] (all splits)\n"
                      "bar: solid = kept, light = rejected; ▕ inside the band, ┆ on a band edge")
        console.print(f"{'ratio':<10} {'':32} {'kept':>5} / {'cand':<5} {'share':>6}")
        for line in terminal_histogram(rebin(h["counts"], factor), rebin(kept, factor) if kept else None,
                                       h["lo"], h["hi"], band):
            console.print(line)
    if hists.get("samples"):
        h = hists["samples"]
        nz = np.flatnonzero(h["counts"])
        if nz.size:
            edges = np.linspace(h["lo"], h["hi"], len(h["counts"]) + 1)
            console.print(f"[bold]per-sequence gzip ratio[/bold] {edges[nz[0]]:.2f} "
                          f"{sparkline(np.asarray(h['counts'])[nz[0]:nz[-1] + 1])} {edges[nz[-1] + 1]:.2f}")
    for path in written:
        console.print(f"wrote {path}")


def _bytes(d: dict) -> str:
    from nca_datagen.units import format_bytes

    return format_bytes(d["bytes"]) if isinstance(d.get("bytes"), (int, float)) else "-"


def _fmt(x) -> str:
    return f"{int(x):,}" if isinstance(x, (int, float)) else "-"
