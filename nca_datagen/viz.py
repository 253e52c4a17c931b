"""Pictures of the data, and the three commands that show them: `preview`, `inspect`, `complexity`.

- `preview` samples candidate rules of a recipe, measures each one exactly as the filter does (the gzip ratio
  of its probe trajectory, `generate.probe_ratios`) and draws the probe trajectory: one row per rule, frames
  left to right, each row labelled with its ratio and the band's verdict. A GIF animates the same frames with
  every rule side by side.
- `inspect` reads a dataset's manifest (local folder or object-store URL) and prints its recipe, totals,
  acceptance by reason and complexity histograms; `--out-dir` also writes the histograms as PNGs.
- `complexity` measures a user's own corpus with the same gzip ratio, to place it on the NCA band scale.

Cells are drawn with the fixed palette of `nca_datagen.palette` (Okabe-Ito first), upscaled by an integer
factor with nearest-neighbour sampling so every cell is a crisp square. Pillow draws the grids; matplotlib
(Agg, imported lazily) draws the histograms. Legend: F frames, H x W cells, R rows (rules).
"""

from __future__ import annotations

import io
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from nca_datagen.complexity import PRESETS, Band, bytes_gzip_ratio, gzip_ratio, gzip_size
from nca_datagen.palette import colourise, palette
from nca_datagen.plotting import matplotlib_agg
from nca_datagen.storage import storage_flags, storage_options_from_flags
from nca_datagen.units import GRID, plural

SEED_MAX = 2**64 - 1  # the recipe's seed is a uint64 (SeedSequence entropy); `build --seed` takes the same range
VERDICT_TEXT = {"kept": "kept", "too_simple": "too simple", "too_complex": "too complex"}
# Text colours for verdict labels: Okabe-Ito bluish green / blue / vermillion (distinct for colour-blind readers,
# and the words are printed too, so colour is never the only cue).
VERDICT_RGB = {"kept": (0, 120, 80), "too_simple": (0, 90, 160), "too_complex": (190, 70, 0)}
BACKGROUND = (255, 255, 255)
BORDER = (64, 64, 64)  # 1-px frame around each grid; differs from both white (state 8) and black (state 0)
TEXT = (20, 20, 20)
FONT_SIZE = 14


@dataclass
class PreviewRow:
    """One rule drawn in a preview: its frames (F, H, W) uint8 and how the filter judged it."""

    rule_id: int
    ratio: float
    verdict: str  # kept | too_simple | too_complex
    frames_FHW: np.ndarray
    label: str = ""  # overrides the default "rule N  ratio  verdict" text when set


# ----------------------------------------------------------------------------------------------- drawing


def font(size: int = FONT_SIZE):
    """Pillow's bundled scalable font (no download); `load_default(size=...)` exists since Pillow 10.1."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def grid_pixels(cells_HW: np.ndarray, states: int, scale: int) -> np.ndarray:
    """Cells (H, W) -> RGB (H*scale, W*scale, 3): nearest-neighbour upscaling by an integer factor."""
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"scale={scale}: must be a positive integer (pixels per cell)")
    rgb = colourise(cells_HW, states)
    return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)


def _row_label(row: PreviewRow) -> str:
    return row.label or f"rule {row.rule_id}   {row.ratio:.3f}   {VERDICT_TEXT.get(row.verdict, row.verdict)}"


def _text_width(draw, text: str, fnt) -> int:
    return math.ceil(draw.textlength(text, font=fnt))


def render_strip(rows: list[PreviewRow], states: int, *, scale: int = 4, title: str = "",
                 first_step: int = 0, stride: int = 1):
    """A PIL image: one row per rule, its frames left to right, a label on the left, a state legend below.

    `first_step`/`stride` only label the time axis (frame i shows step first_step + i * stride).
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("nothing to draw: no rules were sampled")
    palette(states)  # fail early, with the palette's message, on more than 16 states
    fnt, small = font(FONT_SIZE), font(FONT_SIZE - 2)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    h, w = rows[0].frames_FHW.shape[1:]
    n_frames = max(r.frames_FHW.shape[0] for r in rows)
    cell_w, cell_h = w * scale + 2, h * scale + 2  # grid plus its 1-px border
    gap, pad = max(2, scale), 10
    label_w = max(_text_width(scratch, _row_label(r), fnt) for r in rows) + 2 * pad
    line = FONT_SIZE + 6
    top = pad + (line if title else 0) + line  # title, then the time-axis labels
    width = max(label_w + n_frames * (cell_w + gap) + pad,
                _text_width(scratch, title, fnt) + 2 * pad, _legend_width(scratch, states, small) + 2 * pad)
    height = top + len(rows) * (cell_h + gap) + pad + 2 * line
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((pad, pad), title, fill=TEXT, font=fnt)
    for f in range(n_frames):  # time axis: step numbers above the first row
        x = label_w + f * (cell_w + gap)
        if n_frames <= 12 or f % max(1, n_frames // 8) == 0:
            draw.text((x, top - line + 2), f"s{first_step + f * stride}", fill=TEXT, font=small)
    for r, row in enumerate(rows):
        y = top + r * (cell_h + gap)
        colour = VERDICT_RGB.get(row.verdict, TEXT)
        draw.text((pad, y + cell_h // 2), _row_label(row), fill=colour, font=fnt, anchor="lm")
        for f, cells in enumerate(row.frames_FHW):
            x = label_w + f * (cell_w + gap)
            draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), outline=BORDER)
            img.paste(Image.fromarray(grid_pixels(cells, states, scale)), (x + 1, y + 1))
    _draw_legend(draw, states, (pad, height - 2 * line + 4), small)
    return img


def _legend_width(draw, states: int, fnt) -> int:
    return _text_width(draw, "states:", fnt) + 8 + states * (_text_width(draw, "15", fnt) + 22)


def _draw_legend(draw, states: int, xy, fnt) -> None:
    """Colour swatches with their state numbers: 'states: [0] 0 [1] 1 ...'."""
    x, y = xy
    draw.text((x, y), "states:", fill=TEXT, font=fnt)
    x += _text_width(draw, "states:", fnt) + 8
    for s, rgb in enumerate(palette(states)):
        draw.rectangle((x, y + 1, x + 12, y + 13), fill=tuple(int(c) for c in rgb), outline=BORDER)
        draw.text((x + 16, y), str(s), fill=TEXT, font=fnt)
        x += _text_width(draw, "15", fnt) + 22


def render_gif_frames(rows: list[PreviewRow], states: int, *, scale: int = 6, columns: int = 8,
                      title: str = "", first_step: int = 0, stride: int = 1) -> list:
    """One PIL image per time step: every rule's grid at that step, side by side, labelled underneath."""
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("nothing to draw: no rules were sampled")
    palette(states)
    fnt, small = font(FONT_SIZE - 2), font(FONT_SIZE - 2)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    h, w = rows[0].frames_FHW.shape[1:]
    labels = [(f"rule {r.rule_id}", f"{r.ratio:.3f} {VERDICT_TEXT.get(r.verdict, r.verdict)}") for r in rows]
    tile_w = max(w * scale + 2, *(_text_width(scratch, t, fnt) for pair in labels for t in pair)) + 8
    line = FONT_SIZE + 4
    tile_h = h * scale + 2 + 2 * line + 8
    cols = max(1, min(columns, len(rows)))
    nrows = math.ceil(len(rows) / cols)
    pad = 10
    top = pad + line + (line if title else 0)
    width = max(2 * pad + cols * tile_w, _text_width(scratch, title, fnt) + 2 * pad)
    height = top + nrows * tile_h + pad
    n_frames = max(r.frames_FHW.shape[0] for r in rows)
    images = []
    for f in range(n_frames):
        img = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(img)
        if title:
            draw.text((pad, pad), title, fill=TEXT, font=fnt)
        draw.text((pad, top - line), f"step s{first_step + f * stride}", fill=TEXT, font=small)
        for i, row in enumerate(rows):
            x = pad + (i % cols) * tile_w + (tile_w - (w * scale + 2)) // 2
            y = top + (i // cols) * tile_h
            cells = row.frames_FHW[min(f, row.frames_FHW.shape[0] - 1)]
            draw.rectangle((x, y, x + w * scale + 1, y + h * scale + 1), outline=BORDER)
            img.paste(Image.fromarray(grid_pixels(cells, states, scale)), (x + 1, y + 1))
            cx = pad + (i % cols) * tile_w + tile_w // 2
            colour = VERDICT_RGB.get(row.verdict, TEXT)
            draw.text((cx, y + h * scale + 4), labels[i][0], fill=colour, font=fnt, anchor="mt")
            draw.text((cx, y + h * scale + 4 + line), labels[i][1], fill=colour, font=fnt, anchor="mt")
        images.append(img)
    return images


def save_image(images, path_or_file, *, fmt: str | None = None, frame_ms: int = 400) -> None:
    """Save one image (PNG) or a list of them (animated GIF, looping) to a path or binary file."""
    if isinstance(images, list):
        first, rest = images[0], images[1:]
        # The palette is <= 16 colours plus text antialiasing: an adaptive 256-colour palette keeps it exact.
        frames = [im.convert("P", palette=1, colors=256) for im in [first, *rest]]  # 1 = Image.ADAPTIVE
        frames[0].save(path_or_file, format=fmt or "GIF", save_all=True, append_images=frames[1:],
                       duration=frame_ms, loop=0, disposal=1)
    else:
        images.save(path_or_file, format=fmt or "PNG", optimize=True)


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def image_bytes(images, fmt: str) -> bytes:
    """The bytes `save_image` writes for `images` in format `fmt` ("PNG" or "GIF")."""
    buf = io.BytesIO()
    save_image(images, buf, fmt=fmt)
    return buf.getvalue()


def write_output(url: str, data: bytes, storage_options: dict | None = None) -> str:
    """Write `data` to a local path or s3:// URL through the storage layer (atomic; local parent folders are
    made); returns the name to print: a local path as given, an object's s3:// URL.

    Storage failures (a missing bucket, no credentials) become one line naming the URL, not a traceback."""
    from nca_datagen import storage

    try:
        fs, path = storage.filesystem(url, storage_options)
        storage.write_atomic(fs, path, data)
    except (ValueError, *storage.errors()) as exc:
        raise click.ClickException(f"cannot write {url}: {exc}") from exc
    return url if storage.is_local(fs) else storage.url_of(fs, path)


# ------------------------------------------------------------------------------------------ histograms


def _hist_arrays(h: dict):
    counts = np.asarray(h.get("counts", []), dtype=np.float64)
    edges = np.linspace(float(h.get("lo", 0.0)), float(h.get("hi", 1.0)), len(counts) + 1)
    return counts, edges


def plot_histograms(histograms: dict, band: Band | None, *, title: str = ""):
    """A matplotlib Figure: candidate vs kept probe ratios (rules), and per-sample ratios, band edges marked.

    `histograms` maps "candidates" / "kept" / "samples" to {lo, hi, counts}; missing entries are skipped.
    """
    matplotlib_agg()
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rules = [k for k in ("candidates", "kept") if histograms.get(k)]
    panels = ([rules] if rules else []) + ([["samples"]] if histograms.get("samples") else [])
    if not panels:
        raise ValueError("no histograms to draw (expected 'candidates', 'kept' or 'samples')")
    fig = Figure(figsize=(5.2 * len(panels), 3.4), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    style = {"candidates": dict(color="#999999", label="candidate rules"),
             "kept": dict(color="#0072B2", label="kept rules"),
             "samples": dict(color="#E69F00", label="samples (each sequence's own ratio)")}
    for ax, keys in zip(axes, panels, strict=True):
        for k in keys:
            counts, edges = _hist_arrays(histograms[k])
            ax.stairs(counts, edges, fill=True, alpha=0.85 if k != "candidates" else 0.6, **style[k])
        if band is not None:
            ax.axvspan(band.lo, band.hi, color="#009E73", alpha=0.08, lw=0)
            for edge in (band.lo, band.hi):
                ax.axvline(edge, color="#009E73", ls="--", lw=1.2)
            ax.text(band.lo, 1.0, f" band {band}", transform=ax.get_xaxis_transform(), va="top", ha="left",
                    fontsize=8, color="#00664a")
        ax.set_xlim(0, 0.7 if _all_below(histograms, keys, 0.7) else 1.0)
        ax.set_xlabel("gzip ratio (higher = more complex)")
        ax.set_ylabel("samples" if keys == ["samples"] else "rules")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 2.5-rule ticks
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, 0.92))
        ax.spines[["top", "right"]].set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _all_below(histograms: dict, keys, x: float) -> bool:
    for k in keys:
        counts, edges = _hist_arrays(histograms[k])
        if counts[edges[1:] > x + 1e-9].sum() > 0:
            return False
    return True


def plot_rank_frequency(tokens: np.ndarray, vocab: int | None = None, *, title: str = ""):
    """A matplotlib Figure: token frequency against rank on log-log axes, with a Zipf (slope -1) guide."""
    matplotlib_agg()
    from matplotlib.figure import Figure

    _, counts = np.unique(np.asarray(tokens).ravel(), return_counts=True)
    if counts.size == 0:
        raise ValueError("no tokens to count")
    freq = np.sort(counts)[::-1] / counts.sum()
    rank = np.arange(1, len(freq) + 1)
    fig = Figure(figsize=(5.2, 3.4), dpi=110, layout="constrained")
    ax = fig.subplots()
    ax.loglog(rank, freq, color="#0072B2", lw=1.5, label="NCA patch tokens")
    ax.loglog(rank, freq[0] / rank, color="#999999", ls="--", lw=1, label="Zipf, slope -1")
    seen = f"{len(freq):,} distinct ids" + (f" of {vocab:,}" if vocab else "")
    ax.set_xlabel(f"rank ({seen})")
    ax.set_ylabel("frequency")
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


SPARK = " ▁▂▃▄▅▆▇█"


def sparkline(counts) -> str:
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size == 0 or counts.max() <= 0:
        return ""
    idx = np.ceil(counts / counts.max() * (len(SPARK) - 1)).astype(int)
    return "".join(SPARK[i] for i in idx)


# ----------------------------------------------------------------------------------------------- preview


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


# ---------------------------------------------------------------------------------------------- commands


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
    from nca_datagen.config import DatasetConfig, NCAConfig

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
    written = write_output(out, data, storage_options_from_flags(endpoint_url, profile, s3_checksums))
    verdicts = {v: sum(r.verdict == v for r in rows) for v in VERDICT_TEXT}
    counts = ", ".join(f"{c} {VERDICT_TEXT[v]}" for v, c in verdicts.items())
    click.echo(f"wrote {written}: {plural(len(rows), 'rule')} ({counts}), band {config.band}, {shown} frames")


def rebin(counts, factor: int) -> np.ndarray:
    """Sum groups of `factor` adjacent bins (a ragged last group is kept)."""
    counts = np.asarray(counts, dtype=np.int64)
    pad = (-len(counts)) % factor
    return np.concatenate([counts, np.zeros(pad, np.int64)]).reshape(-1, factor).sum(axis=1)


def inspect_summary(manifest: dict, url: str) -> dict:
    """The machine-readable view `inspect --json` prints: recipe, totals, per-split counts and histograms."""
    from nca_datagen.card import merged_histograms

    splits = {}
    for name, s in (manifest.get("splits") or {}).items():
        splits[name] = {k: s.get(k) for k in ("num_shards", "samples", "tokens", "bytes", "seq_len", "compression",
                                              "pattern", "counts", "acceptance_rate", "histograms")}
    return {"url": url, "format": manifest.get("format"), "format_version": manifest.get("format_version"),
            "tool_version": manifest.get("tool_version"), "config": manifest.get("config"),
            "totals": manifest.get("totals"), "splits": splits, "histograms": merged_histograms(manifest),
            "provenance": manifest.get("provenance")}


def band_of(manifest: dict) -> Band | None:
    """The band a dataset was filtered to (None for a manifest without a recipe)."""
    band = (manifest.get("config") or {}).get("band")
    return Band.from_dict(band) if band else None


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
    from nca_datagen.manifest import dataset_root, read_manifest
    from nca_datagen.verify import listed_but_absent

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
    from nca_datagen.card import merged_histograms
    from nca_datagen.storage import join

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
        written.append(write_output(name, figure_png(fig), storage_options))
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


# ------------------------------------------------------------------------------------ your corpus's ratio

CHUNK_TOKENS = 360  # the paper's probe: 10 frames x 36 patch tokens, delimiters removed
NCA_RANDOM_CEILING = 0.669  # uniformly random NCA patch tokens (10^4 ids) under the paper's measure
# Share of random rules per band, measured on the paper's reference code (paper-facts.md §3, 4000 rules).
PAPER_BAND_SHARES = (((0.0, 0.1), 0.139), ((0.1, 0.2), 0.060), ((0.2, 0.3), 0.070), ((0.3, 0.4), 0.080),
                     ((0.4, 0.5), 0.192), ((0.5, 1.0), 0.457))
PAPER_BEST = {(0.5, 1.0): "web text, math", (0.3, 0.4): "code"}  # paper-facts.md §3 and §6


def corpus_chunks(docs: list[bytes], chunk: int = CHUNK_TOKENS, max_chunks: int = 20_000) -> list[bytes]:
    """Every whole `chunk`-byte window of every document (a document's ragged tail is dropped), then at most
    `max_chunks` of them, evenly spaced, so a big corpus is sampled the same way on every run."""
    chunks = [d[i:i + chunk] for d in docs for i in range(0, len(d) - chunk + 1, chunk)]
    if len(chunks) > max_chunks:
        chunks = [chunks[i] for i in np.linspace(0, len(chunks) - 1, max_chunks).round().astype(int)]
    return chunks


def measure_corpus(docs: list[bytes], chunk: int = CHUNK_TOKENS, max_chunks: int = 20_000) -> dict:
    """gzip ratios of a corpus: bytes as int32 tokens (the NCA measure), raw bytes, and the random ceiling."""
    chunks = corpus_chunks(docs, chunk, max_chunks)
    if not chunks:
        longest = max((len(d) for d in docs), default=0)
        raise ValueError(f"the corpus has no document of at least {chunk} bytes (longest: {longest}); "
                         f"give more text or a smaller --chunk")
    as_tokens = np.array([gzip_ratio(np.frombuffer(c, np.uint8)) for c in chunks])
    as_bytes = np.array([bytes_gzip_ratio(c) for c in chunks])
    rng = np.random.default_rng(0)  # the ceiling of this encoding: uniformly random bytes, same measure
    ceiling = float(np.mean([gzip_ratio(rng.integers(0, 256, chunk, dtype=np.uint8)) for _ in range(64)]))
    total = sum(len(d) for d in docs)
    whole = sum(gzip_size(d) for d in docs) / total
    mean = float(as_tokens.mean())
    return {
        "documents": len(docs), "bytes": total, "chunk_tokens": chunk, "chunks": len(chunks),
        "token_ratio": _stats(as_tokens), "byte_ratio": _stats(as_bytes), "whole_document_byte_ratio": whole,
        "random_byte_token_ratio": ceiling,
        "nca_scale_estimate": mean / ceiling * NCA_RANDOM_CEILING,
    }


def _stats(x: np.ndarray) -> dict:
    q = np.quantile(x, [0.1, 0.5, 0.9])
    return {"mean": float(x.mean()), "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2])}


@click.command("complexity")
@click.argument("paths", nargs=-1, required=True)
@click.option("--chunk", default=CHUNK_TOKENS, show_default=True, type=click.IntRange(16),
              help="Tokens (bytes) per measured window; 360 is the paper's probe size.")
@click.option("--max-chunks", default=20_000, show_default=True, type=click.IntRange(1),
              help="Windows measured at most (evenly spaced over the corpus).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def complexity_command(paths, chunk, max_chunks, as_json):
    """gzip ratio of your own text or code, beside the NCA complexity bands.

    PATHS are files, folders (recursive), globs, .jsonl files (their "text" field) or `stdlib` (this Python's
    standard-library sources): the same corpus spec as `nca-datagen train text`.

    \b
    The measure is the paper's, applied to text: every byte is one token, a window of 360 tokens (the size of
    the NCA probe) is written as int32 little-endian and gzipped at level 9; the ratio is compressed/raw size,
    averaged over windows. Byte tokens carry at most 8 of 32 bits, so their ceiling (random bytes) is lower than
    NCA tokens' 0.669; the "NCA-scale estimate" rescales by the two ceilings. It is a rough guide: which band
    helps your corpus is measured by `nca-datagen train sweep`.
    """
    from nca_datagen.train.text import binary_note, read_corpus

    try:
        docs, binary = read_corpus(list(paths))
        if binary:
            click.echo(f"note: {binary_note(binary)}", err=True)
        result = measure_corpus(docs, chunk, max_chunks)
    except (ValueError, OSError) as exc:  # a corpus problem, not a usage one: one line, no usage text
        raise click.ClickException(str(exc)) from exc
    result["paths"] = list(paths)
    result["paper_bands"] = [{"band": [lo, hi], "share_of_random_rules": share, "paper_best_for": PAPER_BEST.get(
        (lo, hi))} for (lo, hi), share in PAPER_BAND_SHARES]
    result["presets"] = dict(PRESETS)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    _print_complexity(result)


def _print_complexity(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from nca_datagen.units import format_bytes

    console = Console(highlight=False)
    console.print(f"[bold]{', '.join(r['paths'])}[/bold]: {r['documents']:,} documents, {format_bytes(r['bytes'])}; "
                  f"{r['chunks']:,} windows of {r['chunk_tokens']} tokens measured")
    t = Table(title="gzip ratio (compressed / raw, level 9; higher = less compressible)", title_justify="left")
    t.add_column("measure")
    for col in ("mean", "p10", "median", "p90"):
        t.add_column(col, justify="right")
    for key, label in (("token_ratio", "bytes as int32 tokens (NCA measure)"),
                       ("byte_ratio", f"raw bytes, {r['chunk_tokens']}-byte windows")):
        s = r[key]
        t.add_row(label, *(f"{s[c]:.3f}" for c in ("mean", "p10", "median", "p90")))
    t.add_row("raw bytes, whole documents", f"{r['whole_document_byte_ratio']:.3f}", "", "", "")
    t.add_row("random bytes as int32 tokens", f"{r['random_byte_token_ratio']:.3f}", "", "", "")
    console.print(t)
    est = r["nca_scale_estimate"]
    console.print(f"NCA-scale estimate: {r['token_ratio']['mean']:.3f} / {r['random_byte_token_ratio']:.3f} x "
                  f"{NCA_RANDOM_CEILING} = [bold]{est:.3f}[/bold]\n(your ratio as a share of random bytes' ratio, "
                  f"times random NCA tokens' ratio: a rough guide)")
    bands = Table(title="NCA complexity bands (probe gzip ratio of random rules, paper)", title_justify="left")
    for col in ("band", "random rules", "paper's best for", ""):
        bands.add_column(col)
    for (lo, hi), share in PAPER_BAND_SHARES:
        here = "◀ your corpus" if lo < est <= hi or (lo == 0 and est <= hi) else ""
        bands.add_row(Band(lo, hi).label, f"{share:.1%}", PAPER_BEST.get((lo, hi), ""), here)
    console.print(bands)
    console.print("The paper's recommendations: web text and math 50%+, code 30-40% (presets: "
                  + ", ".join(f"--complexity {k} = {v}" for k, v in PRESETS.items()) + ").\n"
                  "To measure which band helps your corpus, pre-pre-train small models per band and compare:\n"
                  "  nca-datagen train sweep " + _text_args(r["paths"]) + " --out sweep/", soft_wrap=True)


def _text_args(paths: list[str]) -> str:
    if len(paths) > 3:  # a shell-expanded glob: show the form, not every file
        return "--text PATH [--text PATH ...]"
    return " ".join(f"--text {shlex.quote(p)}" for p in paths)
