"""Telling a shard that failed from a store that stopped answering, and riding out the latter for a while.

On a shard's failure the driver asks `StorageWatch.casualty`: the output's store is probed once with short
timeouts (`storage.unreachable`). While it does not answer, the driver waits, probing every `PROBE_EVERY_S`, up
to `OUTAGE_LIMIT_S`, then stops the build (`StorageError`; the rerun resumes). Shards submitted before an outage
ended are its casualties: they go back to the queue without spending an attempt.
"""

from __future__ import annotations

import time

from nca_datagen import storage
from nca_datagen.errors import StorageError
from nca_datagen.units import format_duration

# Together with the ~10 s a failing write takes to give up, a store gone for good stops a build in about a minute
# and a quarter, and an outage of a minute is ridden out. It stays below the claim's staleness (claim.STALE_S): a
# build that waited this long has not lost its claim to a takeover it could not see.
OUTAGE_LIMIT_S = 60.0
PROBE_EVERY_S = 3.0


class StorageWatch:
    """The outage bookkeeping of one build's output (see the module docstring)."""

    def __init__(self, fs, root: str, progress, log):
        self.fs, self.root, self.progress, self.log = fs, root, progress, log
        self.submitted_at: dict[tuple[str, int], float] = {}
        self.outage_ended = float("-inf")

    def submitted(self, key) -> None:
        self.submitted_at[key] = time.monotonic()

    def casualty(self, key) -> bool:
        """Whether the failed shard `key` met an outage (waiting one out if it is still on)."""
        error = storage.unreachable(self.fs, self.root)
        if error is not None:
            self._wait(error)
        return self.submitted_at.get(key, float("inf")) < self.outage_ended

    def _wait(self, error: str) -> None:
        where, start = storage.url_of(self.fs, self.root), time.monotonic()
        self.log.emit("storage_down", error=error)
        self.progress.message(f"{where} is not answering ({error}); waiting up to {OUTAGE_LIMIT_S:.0f} s for it")
        while time.monotonic() - start < OUTAGE_LIMIT_S:
            time.sleep(PROBE_EVERY_S)
            if (error := storage.unreachable(self.fs, self.root)) is None:
                self.outage_ended = time.monotonic()
                self.log.emit("storage_back", seconds=round(self.outage_ended - start, 1))
                self.progress.message(f"{where} answers again after {format_duration(self.outage_ended - start)}; "
                                      f"going on")
                return
        raise StorageError(f"{where} did not answer for {OUTAGE_LIMIT_S:.0f} s ({error}): the build stopped. "
                           f"Complete shards are kept; rerun the same command once the storage answers, and it "
                           f"resumes")
