"""Drawing: NCA grids as pictures (Pillow) and the complexity and token plots (matplotlib, Agg), as bytes.

A leaf module: it imports numpy, the palette and the plotting helper, and Pillow or matplotlib only inside the
function that draws. Cells are drawn with the fixed palette of `nca_datagen.palette` (Okabe-Ito first), upscaled
by an integer factor with nearest-neighbour sampling, so every cell is a crisp square. Callers (the dataset card,
`preview`, `inspect`) choose what to draw; nothing here reads a dataset or runs the generator.
Legend: F frames, H x W cells.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nca_datagen.palette import colourise, palette
from nca_datagen.plotting import matplotlib_agg

if TYPE_CHECKING:
    from nca_datagen.complexity import Band

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


# ----------------------------------------------------------------------------------------------- grids


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
