"""Complexity: the paper's gzip ratio, the band filter built on it, and a few per-sample statistics.

The ratio is `len(gzip(int32-LE tokens, level 9)) / len(bytes)` over patch tokens with the frame delimiters
removed, exactly as the paper's reference code computes it. Higher means less compressible, i.e. more complex.
We call zlib's raw deflate and add gzip's fixed 18 bytes of header and trailer: the deflate stream is the same
one `gzip.compress(b, 9, mtime=0)` writes (tested), without building the container.

The ratio depends on the zlib build (zlib and zlib-ng emit different level-9 sizes), so the manifest records
`ZLIB_RUNTIME_VERSION`; tests pin the ratio on byte strings whose compressed size is known.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

from nca_datagen.errors import ConfigError

GZIP_OVERHEAD = 18  # 10-byte gzip header (mtime 0, no name) + 8-byte trailer (CRC32, ISIZE)
ZLIB_VERSION = zlib.ZLIB_RUNTIME_VERSION

# The paper's recommendations per target domain (paper-facts.md §3): web text and math 50%+, code 30-40%.
PRESETS = {"web": "50%+", "math": "50%+", "code": "30-40%"}
# How the reference's random rules spread over the ratio (paper-facts.md §3, 4000 rules): the share per band, and
# the quantiles as (ratio, share of rules at or below it); a constant grid scores 0.0222, nothing scores less.
PAPER_BAND_SHARES = (((0.0, 0.1), 0.139), ((0.1, 0.2), 0.060), ((0.2, 0.3), 0.070), ((0.3, 0.4), 0.080),
                     ((0.4, 0.5), 0.192), ((0.5, 1.0), 0.457))
PAPER_RATIO_QUANTILES = ((0.0222, 0.0), (0.031, 0.10), (0.279, 0.25), (0.483, 0.50), (0.566, 0.75), (0.606, 0.90),
                         (0.641, 0.99), (0.663, 1.0))


def gzip_ratio(tokens: np.ndarray) -> float:
    """Compressed/raw size of `tokens` as int32 little-endian bytes, gzip level 9 (the paper's measure)."""
    raw = np.ascontiguousarray(tokens, dtype="<i4").tobytes()
    if not raw:
        raise ValueError("gzip_ratio of an empty token array is undefined")
    return bytes_gzip_ratio(raw)


def bytes_gzip_ratio(raw: bytes) -> float:
    """len(gzip.compress(raw, 9, mtime=0)) / len(raw), without building the gzip container."""
    return gzip_size(raw) / len(raw)


def gzip_size(raw: bytes) -> int:
    """len(gzip.compress(raw, 9, mtime=0)): raw deflate plus the container's fixed 18 bytes."""
    return len(zlib.compress(raw, 9, wbits=-15)) + GZIP_OVERHEAD


def patch_tokens(seq_L: np.ndarray, tokens_per_frame: int) -> np.ndarray:
    """Drop the `<grid>`/`</grid>` delimiters of a tokenized sequence: (F*T,) -> (F, T-2)."""
    return seq_L.reshape(-1, tokens_per_frame)[:, 1:-1]


def sequence_ratios(seqs_NL: np.ndarray, tokens_per_frame: int, frames: int | None = None) -> np.ndarray:
    """The gzip ratio of each sequence's first `frames` frames (all if None), delimiters removed.

    The paper measures 10 frames (s10..s19); the generator applies that same window to every sequence, so a
    sample's ratio is on the band's scale (only when the sequence has at least 10 frames: a shorter window of
    the same rule compresses less and scores higher), and it costs a third of gzipping all 27 frames (level 9 runs at
    about 1.6M tokens/s on one core, a real share of the CPU budget).
    """
    return np.array([gzip_ratio(patch_tokens(s, tokens_per_frame)[:frames]) for s in seqs_NL], dtype=np.float64)


@dataclass(frozen=True)
class Band:
    """An open interval of gzip ratios: a rule is kept iff lo < ratio < hi (strict, as the paper)."""

    lo: float
    hi: float

    def __post_init__(self):
        if not (0.0 <= self.lo < self.hi <= 1.0):
            raise ConfigError(
                f"complexity band ({self.lo}, {self.hi}) is invalid: need 0 <= lo < hi <= 1, e.g. 0.5:1.0 "
                f"or 50%+ (lo is the lower gzip ratio, hi the upper)")

    @classmethod
    def parse(cls, text: str) -> Band:
        """Parse `0.5:1.0`, `0.5:`, `:0.3`, `50%+`, `30-40%`, `0.3-0.4`, or a preset (web, math, code)."""
        s = str(text).strip().lower().replace(" ", "")
        s = PRESETS.get(s, s)
        m = re.fullmatch(r"(\d+(?:\.\d+)?)%\+", s)
        if m:
            return cls(float(m[1]) / 100, 1.0)
        m = re.fullmatch(r"(\d+(?:\.\d+)?)%?-(\d+(?:\.\d+)?)%", s)
        if m:
            return cls(float(m[1]) / 100, float(m[2]) / 100)
        m = re.fullmatch(r"(\d*\.?\d*)[:-](\d*\.?\d*)", s)
        if m and (m[1] or m[2]) and m[1] != "." and m[2] != ".":
            return cls(float(m[1] or 0.0), float(m[2] or 1.0))
        raise ConfigError(
            f"cannot parse complexity band {text!r}: use lo:hi (0.5:1.0, 0.5:), a percent range (30-40%), "
            f"a percent floor (50%+), or a preset ({', '.join(PRESETS)})")

    def contains(self, ratio):
        """Elementwise lo < ratio < hi."""
        return (ratio > self.lo) & (ratio < self.hi)

    def verdict(self, ratio: float) -> str:
        """'kept', 'too_simple' or 'too_complex': the filter's reason for one ratio."""
        if ratio <= self.lo:
            return "too_simple"
        return "too_complex" if ratio >= self.hi else "kept"

    @property
    def label(self) -> str:
        """The percent form users type and the paper uses: `50%+` (no upper edge) or `30-40%`."""
        return f"{self.lo * 100:g}%+" if self.hi >= 1.0 else f"{self.lo * 100:g}-{self.hi * 100:g}%"

    def to_dict(self) -> dict:
        return {"lo": self.lo, "hi": self.hi}

    @classmethod
    def from_dict(cls, d: dict) -> Band:
        return cls(float(d["lo"]), float(d["hi"]))

    def __str__(self) -> str:
        return f"({self.lo:g}, {self.hi:g})"


def histogram(values: np.ndarray, bins: int = 50) -> dict:
    """A fixed-edge histogram on [0, 1] (edges shared by every shard, so counts add up across shards)."""
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=bins, range=(0.0, 1.0))
    return {"lo": 0.0, "hi": 1.0, "counts": counts.tolist()}


def grid_stats(grids_NFHW: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sequence dynamics: mean share of cells that change per frame, and colours in the last frame."""
    n = grids_NFHW.shape[0]
    if grids_NFHW.shape[1] > 1:
        change = (grids_NFHW[:, 1:] != grids_NFHW[:, :-1]).reshape(n, -1).mean(axis=1)
    else:
        change = np.full(n, math.nan)
    last = grids_NFHW[:, -1].reshape(n, -1).astype(np.int64)
    states = int(last.max(initial=0)) + 1
    present = np.zeros((n, states), dtype=bool)
    present[np.arange(n)[:, None], last] = True
    colours = present.sum(axis=1)
    return {"cell_change_rate": change, "colors_last_frame": colours}


def band_share(band: Band) -> float:
    """The share of random rules a band keeps, read off the reference's quantiles (50%+: 0.45)."""
    ratios, shares = zip(*PAPER_RATIO_QUANTILES, strict=True)
    return float(np.interp(min(band.hi, 1.0), ratios, shares) - np.interp(band.lo, ratios, shares))
