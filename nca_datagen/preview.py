"""`nca-datagen preview`: sampled candidate rules of a band, drawn as the filter sees them (PNG or GIF).

Candidate rules are probed in id order and measured exactly as the filter does (the gzip ratio of the probe
trajectory, `generate.probe_ratios`); each drawn row is a rule's probe trajectory, frames left to right,
labelled with its ratio and the band's verdict. A GIF animates the same frames with every rule side by side.
About half the rows are kept rules and half rejected ones, so a picture shows the band's boundary.
"""

from __future__ import annotations

import math
from pathlib import Path

import click
import numpy as np

from nca_datagen.cli_options import GRID, storage_flags, write_or_fail
from nca_datagen.complexity import Band
from nca_datagen.config import DatasetConfig, NCAConfig
from nca_datagen.figures import VERDICT_TEXT, PreviewRow, image_bytes, render_gif_frames, render_strip
from nca_datagen.palette import palette
from nca_datagen.storage import storage_options_from_flags
from nca_datagen.units import plural

SEED_MAX = 2**64 - 1  # the recipe's seed is a uint64 (SeedSequence entropy); `build --seed` takes the same range


def sample_preview(config, rules: int, *, frames: int | None = None, only_kept: bool = False,
                   split: str = "train", backend=None, device=None, max_candidates: int | None = None):
    """Probe candidate rules of `config` in id order and return `rules` PreviewRows, sorted by ratio.

    Each row shows the rule's probe trajectory (the frames the filter measures) and the filter's ratio, computed
    exactly as `generate.probe_ratios` does: the probe's first `probe_frames` frames, delimiters dropped.
    A mixed preview keeps about half kept rules and fills the rest with rejected ones (both reasons, as they
    come in id order), so a rare band still shows what it keeps; `only_kept` shows kept rules only.
    """
    from nca_datagen.generate import probe_rollouts

    if rules < 1:
        raise ValueError(f"rules={rules}: must be >= 1")
    show = frames or config.probe_frames
    want_kept = rules if only_kept else math.ceil(rules / 2)
    want_other = rules - want_kept
    # a mixed preview gives up sooner than --only-kept: it shows the rejections it found, with a note
    limit = max_candidates or (max(2000, 200 * rules) if only_kept else 100 * rules)
    soft_limit = 20 * rules  # past this, stop waiting for a rare rejection reason and show what came
    found = {"kept": [], "too_simple": [], "too_complex": []}
    probed, batch = 0, max(16, 2 * rules)
    # a band open at 1.0 (or 0.0) has no too-complex (too-simple) rules to wait for
    one_sided = config.band.hi >= 1.0 or config.band.lo <= 0.0
    while probed < limit and not _preview_done(found, want_kept, want_other, one_sided or probed >= soft_limit):
        ids = np.arange(probed, min(probed + batch, limit))
        # one rollout serves the ratio and the picture
        frames_BFHW, ratios = probe_rollouts(config, split, ids, frames=show, backend=backend, device=device)
        for rule_id, fr, ratio in zip(ids, frames_BFHW, ratios, strict=True):
            verdict = config.band.verdict(ratio)
            if len(found[verdict]) < (want_kept if verdict == "kept" else want_other):
                found[verdict].append(PreviewRow(int(rule_id), float(ratio), verdict, fr[:show]))
        probed += len(ids)
    kept = found["kept"]
    if only_kept and not kept:
        raise ValueError(f"band {config.band} kept none of {probed} candidate rules: choose a wider band "
                         f"(see `nca-datagen preview` without --only-kept for the ratios rules reach)")
    simple, complex_ = found["too_simple"], found["too_complex"]
    n_simple = min(len(simple), max(want_other // 2, want_other - len(complex_)))  # half each, else fill
    rows = kept + simple[:n_simple] + complex_[: want_other - n_simple]
    if len(rows) < rules:  # a band that keeps (almost) nothing, or everything: show what came
        click.echo(f"note: {probed} candidate rules gave {len(kept)} kept, {len(simple)} too simple and "
                   f"{len(complex_)} too complex; drawing {len(rows)}", err=True)
    return sorted(rows, key=lambda r: r.ratio)


def _preview_done(found: dict, want_kept: int, want_other: int, patience_over: bool) -> bool:
    """Enough kept rules, and rejected ones of both reasons (half each) - or of either, once patience is over."""
    if len(found["kept"]) < want_kept:
        return False
    simple, complex_ = len(found["too_simple"]), len(found["too_complex"])
    if patience_over:
        return simple + complex_ >= want_other
    return simple >= want_other // 2 and complex_ >= want_other - want_other // 2


def preview_title(config, frames: int) -> str:
    n = config.nca
    return (f"band {config.band}   {n.grid[0]}x{n.grid[1]} cells, {n.states} states, seed {config.seed}   "
            f"probe trajectories s{n.burn_in}..s{n.burn_in + (frames - 1) * n.frame_stride}   "
            f"label: rule id, gzip ratio, verdict")


def _parse_band(ctx, param, value):
    try:
        return Band.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("preview")
@click.option("--complexity", "band", default="50%+", show_default=True, callback=_parse_band,
              help="Band to judge rules by: 50%+, 30-40%, 0.5:1.0, or a preset (web, math, code).")
@click.option("--rules", default=8, show_default=True, type=click.IntRange(1, 64), help="Rules (rows) to draw.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, SEED_MAX),
              help="Run seed of the recipe.")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "val"]))
@click.option("--grid", default="12x12", show_default=True, type=GRID, help="Cells, HxW.")
@click.option("--states", default=10, show_default=True, type=int, help="Alphabet size (at most 16 can be drawn).")
@click.option("--patch", default=2, show_default=True, type=int, help="Patch size of a token (affects the ratio).")
@click.option("--frames", default=None, type=click.IntRange(1),
              help="Frames to draw per rule [default: the probe's 10]. The ratio always uses the probe's frames.")
@click.option("--only-kept", is_flag=True, help="Draw only rules the band keeps (default: about half kept, "
                                                 "half rejected, to show the boundary).")
@click.option("--scale", default=None, type=click.IntRange(1, 64),
              help="Pixels per cell [default: 4 for PNG, 6 for GIF, scaled down for big grids].")
@click.option("--backend", default=None, type=click.Choice(["auto", "triton", "numba", "torch"]),
              help="Rollout backend [default: NCA_BACKEND or auto].")
@click.option("--device", default=None, help="auto, cpu or cuda [default: NCA_DEVICE or auto].")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Output file or s3:// URL: .png (one row per rule) or .gif (animated, rules side by side).")
@storage_flags
def preview_command(band, rules, seed, split, grid, states, patch, frames, only_kept, scale, backend, device, out,
                    endpoint_url, profile, s3_checksums):
    """Draw sampled candidate rules of a complexity band, labelled with gzip ratio and verdict.

    Rules are probed exactly as the filter does; each row is a rule's probe trajectory, frames left to right.
    Colours: nca_datagen/palette.py (Okabe-Ito for states 0-7).

    \b
    Example:
      nca-datagen preview --complexity 50%+ --rules 8 --out docs/preview-50plus.png
    """
    suffix = Path(out).suffix.lower()
    if suffix not in (".png", ".gif"):
        raise click.BadParameter(f"{out}: the output must end in .png or .gif", param_hint="--out")
    try:
        palette(states)
        config = DatasetConfig(nca=NCAConfig(grid=grid, states=states, patch=patch), band=band, seed=seed)
        rows = sample_preview(config, rules, frames=frames, only_kept=only_kept, split=split, backend=backend,
                              device=device)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    n = config.nca
    shown = rows[0].frames_FHW.shape[0]
    title = preview_title(config, shown)
    auto = (4 if suffix == ".png" else 6) * 12 // max(12, max(n.grid))
    scale = scale or max(1, auto)
    if suffix == ".png":
        data = image_bytes(render_strip(rows, states, scale=scale, title=title, first_step=n.burn_in,
                                        stride=n.frame_stride), "PNG")
    else:
        data = image_bytes(render_gif_frames(rows, states, scale=scale, title=title, first_step=n.burn_in,
                                             stride=n.frame_stride), "GIF")
    written = write_or_fail(out, data, storage_options_from_flags(endpoint_url, profile, s3_checksums))
    verdicts = {v: sum(r.verdict == v for r in rows) for v in VERDICT_TEXT}
    counts = ", ".join(f"{c} {VERDICT_TEXT[v]}" for v, c in verdicts.items())
    click.echo(f"wrote {written}: {plural(len(rows), 'rule')} ({counts}), band {config.band}, {shown} frames")
