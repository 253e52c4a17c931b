"""Human-sized numbers: parse `10K`, `164M`, `2B` into exact integers (and grid sizes, `12` or `12x18`), and
print sizes, rates and durations.

Suffixes are decimal (K = 10^3, M = 10^6, B or G = 10^9, T = 10^12), as token budgets are quoted in papers
("164M tokens"). Parsing is exact (`decimal.Decimal`), so `1.5M` is 1,500,000 and a count that is not a whole
number (`1.2345K`) is an error rather than a silent rounding. Underscores and commas group digits: `164_000_000`.
"""

from __future__ import annotations

import re
from decimal import Decimal, DecimalException

SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
MAX_COUNT = 10**18  # beyond any budget (and int64's 9.2e18): a larger "count" is a typo, not a plan


def parse_count(text, what: str = "count") -> int:
    """`'164M'` -> 164000000. Raises ValueError (with the accepted forms) on anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().upper().replace("_", "").replace(",", "")
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)(?:E(\d+))?\s*([KMBGT]?)", s)
        if not m:
            raise ValueError(f"cannot parse {what} {text!r}: use an integer with an optional K, M, B suffix "
                             f"(10K, 164M, 2B, 1.5M, 164_000_000)")
        try:
            exact = Decimal(m[1]) * (Decimal(10) ** min(int(m[2] or 0), 99)) * SUFFIXES[m[3]]  # 99: > MAX_COUNT
        except DecimalException as exc:  # InvalidOperation, Overflow
            raise ValueError(f"cannot parse {what} {text!r}") from exc
        if exact > MAX_COUNT:
            raise ValueError(f"{what} {text!r} is more than {MAX_COUNT:.0e}: give a smaller count")
        if exact != exact.to_integral_value():
            raise ValueError(f"{what} {text!r} is {exact}, not a whole number: give a whole count")
        value = int(exact)
    if value < 0:
        raise ValueError(f"{what} {text!r} is negative: give a count >= 0")
    return value


def plural(count: int, noun: str) -> str:
    """(1, 'shard') -> '1 shard'; (2_000, 'shard') -> '2,000 shards'."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def format_count(n: float) -> str:
    """12_345_678 -> '12.3M': three significant digits, decimal suffixes (999_600 -> '1M', not '1e+03K')."""
    rounded = float(f"{n:.3g}")  # round first, so the unit is the rounded value's
    return _scaled(rounded, (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3))) or (
        f"{n:.3g}" if isinstance(n, float) and n != int(n) else str(int(n)))


def format_bytes(n: float) -> str:
    """Bytes in binary units: 1536 -> '1.5 KiB'; 1023 KiB stays '1023 KiB' (never '1.02e+03 KiB')."""
    return _scaled(n, (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)), sep=" ") or f"{int(n)} B"


def _scaled(n: float, units, sep: str = "") -> str | None:
    """`n` in the largest of `units` (descending) it reaches, three significant digits below 1000 of that unit,
    whole numbers from there (binary units reach 1023.x; the largest unit has no next one); None below them all."""
    for suffix, scale in units:
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.3g}{sep}{suffix}" if abs(value) < 999.5 else f"{value:.0f}{sep}{suffix}"
    return None


def format_duration(seconds: float) -> str:
    """75 -> '1m15s'; 0.5 -> '0.5s'; 7300 -> '2h01m'."""
    if seconds != seconds or seconds == float("inf"):  # nan or inf: unknown
        return "?"
    if seconds < 60:
        return f"{seconds:.2g}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def parse_grid(text) -> tuple[int, int]:
    """`'12'` -> (12, 12); `'12x18'` (or `12*18`, `12 x 18`) -> (12, 18): height and width in cells."""
    words = str(text).lower().replace(" ", "").replace("*", "x").split("x")
    try:
        sizes = tuple(int(w) for w in words)
    except ValueError:
        sizes = ()
    if len(sizes) not in (1, 2):
        raise ValueError(f"{text!r}: give one size (12) or HEIGHTxWIDTH (12x18)")
    return (sizes[0], sizes[0]) if len(sizes) == 1 else sizes
