"""The in-process executor: each shard runs in this process, one at a time, when the driver waits for it.

For tests, debugging and small builds: no Ray to start (seconds saved), every core for the one shard, and the
same `run_shard` any Ray worker runs, so a shard's bytes do not depend on where it ran.
"""

from __future__ import annotations

from . import faults
from .shard_task import ShardResult, run_shard


class InlineExecutor:
    """Runs each submitted shard in this process when the driver waits for it."""

    name = "inline"
    worker_threads = 0  # this process: use every core
    slots = 1
    description = "inline (this process)"

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._queue: list = []
        self._run = faults.wrap(run_shard, written=True)

    def submit(self, job, split: str, index: int) -> None:
        self._queue.append((job, split, index))

    def pending(self) -> int:
        return len(self._queue)

    def wait(self, timeout: float | None = None) -> list[tuple[tuple[str, int], ShardResult | BaseException]]:
        job, split, index = self._queue.pop(0)
        try:
            return [((split, index), self._run(job, split, index))]
        except Exception as exc:  # reported to the driver, which retries or names the shard
            return [((split, index), exc)]

    def cancel(self) -> None:
        self._queue.clear()

    def close(self) -> None:
        pass
