"""Ray for a build: a private local Ray or a joined cluster, and the CPU-task executor of CPU builds.

- `connect_ray` starts a local Ray (never someone else's: `address="local"`) with this machine's CPUs plus one per
  generator actor, or joins a cluster by address; an unreachable one fails fast, naming the fix.
- `RayTasks` runs each shard as a Ray task holding one CPU, bounded in flight so memory stays flat however large
  the dataset. The driver resubmits failures: retries are the same in this process and on a cluster.
- Ray is imported only here and in `ray_actors.py`, only when a Ray build starts, with its C++ failure-signal
  handler off (see `import_ray`).
"""

from __future__ import annotations

import contextlib
import os
import socket

from nca_datagen.errors import ConfigError, StorageError

from . import faults
from .shard_task import run_shard

LOCAL_RAY_HINT = "omit --ray-address (and unset RAY_ADDRESS) to use a local Ray"
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20  # shards in flight are ~1 MB each; Ray's default (30% of RAM) is far more


class RayUnavailable(StorageError):
    """A local Ray that cannot start, or a cluster that cannot be joined."""


def import_ray():
    """Ray, imported with its C++ failure-signal handler off (read when Ray loads, so before the first import).
    That handler covers SIGTERM, and `ray.shutdown` resets it to the default action: a SIGTERM while the manifest
    is written (after Ray shut down) would kill the driver outright, without its "interrupted" line. The
    cost: no C++ stack trace if Ray's own processes segfault (they inherit the setting)."""
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    import ray

    return ray


def connect_ray(ray, address: str | None, workers: int | None, extra_cpus: int = 0) -> None:
    """Start a private local Ray (address None) or join a cluster; unreachable clusters fail fast and clearly.

    A local Ray gets `workers` CPUs (all cores by default) plus `extra_cpus` for generator actors, which hold a
    CPU each for their host-side work: without them the actors could take every CPU and leave none for the
    writer tasks (a 2-core machine with 2 actors waited forever), or `--workers 2` leave the actors unplaced."""
    common = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    if address is None:
        try:
            ray.init(address="local", num_cpus=(workers or os.cpu_count()) + extra_cpus,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, _node_ip_address="127.0.0.1", **common)
        except Exception as exc:  # e.g. "The current node timed out during startup" on an overloaded machine
            with contextlib.suppress(Exception):
                ray.shutdown()  # whatever part of it did start
            raise RayUnavailable(f"could not start a local Ray ({type(exc).__name__}: {str(exc).rstrip('.')}). "
                                 f"On a busy machine, retry; --executor inline builds without Ray") from exc
        return
    if address != "auto" and not address.startswith("ray://"):
        _check_reachable(address)
    try:
        ray.init(address=address, **common)
    except Exception as exc:
        raise RayUnavailable(f"cannot join the Ray cluster at {address!r}: {str(exc).rstrip('.')}. Start one with "
                             f"`ray start --head`, pass its HOST:PORT to --ray-address, or {LOCAL_RAY_HINT}") from exc


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r}: expected auto or HOST:PORT (e.g. 10.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address} ({exc}). Check the address of the head "
                             f"node (`ray status` on it), or {LOCAL_RAY_HINT}") from exc


def close_ray(ray, actors=()) -> None:
    """Idempotent: kill `actors`, then disconnect; a local Ray started for the build shuts down with it, a joined
    cluster keeps running (the raylets end the workers a job leased once its driver is gone)."""
    if ray.is_initialized():
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        ray.shutdown()


class RayTasks:
    """Each shard a Ray task holding one CPU, on the Ray this process is connected to."""

    name = "ray"
    worker_threads = 1  # each task holds one CPU

    def __init__(self, ray, workers: int, where: str, *, bounded_by_workers: bool):
        """`workers`: CPU tasks at once. In flight: twice that on a local Ray (no worker idles between shards), or
        exactly `workers` on a cluster given --workers (the cap the user asked for)."""
        self.ray, self.workers, self.device = ray, workers, "cpu"
        self._task = ray.remote(max_retries=0)(faults.wrap(run_shard, written=True)).options(num_cpus=1)
        self.slots = workers if bounded_by_workers else 2 * workers
        self._pending: dict = {}  # ObjectRef -> (split, index)
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        self.description = f"{where} ({nodes} node(s), {workers} CPU worker(s))"

    def submit(self, job, split: str, index: int) -> None:
        self._pending[self._task.remote(job, split, index)] = (split, index)

    def pending(self) -> int:
        return len(self._pending)

    def wait(self, timeout: float | None = None) -> list:
        """Finished shards, at most one per call: [((split, index), ShardResult or the exception)]."""
        if not self._pending:
            return []
        ready, _ = self.ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            key = self._pending.pop(ref)
            try:
                out.append((key, self.ray.get(ref)))
            except Exception as exc:  # RayTaskError wraps the worker's exception (and is an instance of it)
                out.append((key, exc))
        return out

    def cancel(self) -> None:
        """Forget the shards in flight; `close` stops them. No `ray.cancel`: racing a task that is finishing, it can
        abort the driver inside Ray (`Check failed` in task_manager.cc). Writes are atomic: nothing partial stays."""
        self._pending.clear()

    def close(self) -> None:
        self._pending.clear()  # no reference outlives the Ray it points into
        close_ray(self.ray)
