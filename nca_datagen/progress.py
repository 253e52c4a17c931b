"""What a build tells people and machines: a live progress bar, a JSON-lines event log, a summary table.

- Terminal (rich): shards done/total, tokens/s, the filter's acceptance rate, ETA. Not a terminal (a pipe, CI,
  a test runner): no live bar, one plain line per ~10% of shards instead, so logs stay short.
- `EventLog`: one JSON object per line (`build_start`, `shard_done` with per-stage seconds, `shard_failed`,
  `build_end`, ...), each with a UTC `time` and seconds `t` since the build started. It is always written to a
  local file; for an object-store output the driver uploads it beside the dataset when the build ends.
- `--quiet`: only errors and the final line.

Rates and ETA count only shards built in this run (skipped, already finished shards would inflate them).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nca_datagen.units import format_count, format_duration

STAGES = ("probe_filter", "rollout_tokenize", "stats", "compress_write")  # a shard's timed stages, in order


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventLog:
    """Append-only JSON lines, flushed per event so a killed build still leaves its log."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._t0 = time.monotonic()

    def emit(self, event: str, **fields) -> None:
        row = {"event": event, "time": utc_now(), "t": round(time.monotonic() - self._t0, 4), **fields}
        self._file.write(json.dumps(row, default=_jsonable) + "\n")
        self._file.flush()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _jsonable(x):
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


class BuildProgress:
    """Live progress of one build. Call `done`/`failed` per shard; `close` at the end."""

    def __init__(self, total_shards: int, already_done: int = 0, quiet: bool = False, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.total = total_shards
        self.done_count = already_done
        self.tokens = 0  # built in this run
        self.candidates = 0
        self.kept = 0
        self.stage_seconds: dict[str, float] = {}
        self.failures = 0
        self._t0 = time.monotonic()
        self.shards_seconds: float | None = None  # the shard phase's length, once `close` ends it
        self._todo = total_shards - already_done
        self._next_line = 0.1
        self._live = not quiet and self.console.is_terminal
        self._bar = None
        if self._live:
            self._bar = Progress(
                TextColumn("[bold]build"), BarColumn(), MofNCompleteColumn(), TextColumn("shards"),
                TextColumn("{task.fields[rate]}"), TextColumn("accept {task.fields[accept]}"),
                TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(), console=self.console, transient=False)
            self._task = self._bar.add_task("build", total=total_shards, completed=already_done,
                                            rate="-", accept="-", eta="?")
            self._bar.start()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    @property
    def tokens_per_s(self) -> float:
        """Tokens built per second of the shard phase (live until `close`, then frozen there): the build's
        speed, apart from the fixed costs around it (Ray's start, the manifest and the card)."""
        seconds = self.shards_seconds if self.shards_seconds is not None else self.elapsed
        return self.tokens / seconds if seconds > 0 else 0.0

    @property
    def acceptance(self) -> float:
        return self.kept / self.candidates if self.candidates else float("nan")

    def eta(self) -> float:
        built = self.done_count - (self.total - self._todo)
        if built <= 0:
            return float("nan")
        return (self.total - self.done_count) * self.elapsed / built

    def done(self, record: dict, timings: dict[str, float]) -> None:
        self.done_count += 1
        self.tokens += int(record.get("tokens", 0))
        counts = record.get("counts", {})
        self.candidates += int(counts.get("candidates", 0))
        self.kept += int(counts.get("kept", 0))
        for stage, seconds in timings.items():
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + float(seconds)
        self._refresh()

    def failed(self, split: str, index: int, error: BaseException, final: bool) -> None:
        self.failures += 1
        what = "failed for good" if final else "failed, retrying"
        self.console.print(f"[red]{split} shard {index} {what}:[/red] {_one_line(error)}", highlight=False,
                           soft_wrap=True)

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False, soft_wrap=True)

    def _refresh(self) -> None:
        rate = f"{format_count(self.tokens_per_s)} tok/s"
        accept = "-" if self.candidates == 0 else f"{self.acceptance:.0%}"
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done_count, rate=rate, accept=accept,
                             eta=format_duration(self.eta()))
        elif not self.quiet and self.done_count >= self.total * self._next_line - 1e-9:
            self._next_line = min(1.0, self.done_count / max(self.total, 1) + 0.1)
            self.console.print(f"{self.done_count}/{self.total} shards, {rate}, accept {accept}, "
                               f"ETA {format_duration(self.eta())}", highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.shards_seconds is None:
            self.shards_seconds = self.elapsed
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # RayTaskError text is a traceback: its last line is the worker's own message
    return lines[-1] if len(lines) > 1 else text


def summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table


def stage_split(stage_seconds: dict[str, float]) -> str:
    """'probe_filter 12% · rollout_tokenize 70% · ...' over the stages that were timed."""
    total = sum(stage_seconds.values())
    if not total:
        return "-"
    order = sorted(stage_seconds, key=lambda s: STAGES.index(s) if s in STAGES else len(STAGES))
    return " · ".join(f"{s} {stage_seconds[s] / total:.0%}" for s in order)

