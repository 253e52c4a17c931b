"""One unit of work: a shard, generated and written by whichever worker runs it.

`run_shard(job, split, index)` generates the shard and writes it (temporary name, sha256, final name, then its
record) and returns a small `ShardResult`: the record for the manifest, timings for the event log. It is
idempotent, so a retry or a rerun is always safe, and it is the same function in this process and on any Ray
node: executors only decide where it runs. A GPU build splits it in two: a generator actor runs
`generate_shard(..., stats=False)` and a CPU task `write_generated` the rest.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs besides the shard's (split, index); small, shipped with every task."""

    config: object  # DatasetConfig
    out_url: str  # absolute local path or object-store URL
    compression: str = "zstd"
    level: int | None = None  # zstd level; None = shards.DEFAULT_LEVEL (a resumed build passes its dataset's)
    storage_options: dict | None = None
    backend: str | None = None
    device: str = "cpu"
    threads: int = 0  # CPU threads per worker for numba/torch; 0 = the libraries' default (all cores)


@dataclass
class ShardResult:
    """What a worker returns: the shard record (goes to the manifest) and run facts (go to the event log)."""

    record: dict
    timings: dict[str, float] = field(default_factory=dict)
    node: str = ""
    pid: int = 0
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0  # CPU time the shard took in its worker process (0 when not measured)


def run_shard(job: ShardJob, split: str, index: int) -> ShardResult:
    """Generate and write one shard; return its record. Same arguments, same bytes, anywhere."""
    from nca_datagen.generate import generate_shard

    if job.threads:
        limit_threads(job.threads)
    cpu0 = time.process_time()
    data = generate_shard(job.config, split, index, backend=job.backend, device=job.device)
    result = write_generated(job, data)
    result.cpu_s = time.process_time() - cpu0  # CPU seconds (all threads): a load-independent cost measure
    return result


def generate_for_writer(job: ShardJob, split: str, index: int):
    """The generator's half of a shard (a GPU actor's): tokens and the filter's counts, statistics left to the
    CPU writer task (`write_generated`), so the actor's CPU only feeds the GPU."""
    from nca_datagen.generate import generate_shard

    return generate_shard(job.config, split, index, backend=job.backend, device=job.device, stats=False)


def limit_threads(n: int) -> None:
    """One Ray task holds one CPU: keep numba's and torch's thread pools to it (no oversubscription). Torch is
    not imported for this (seconds per worker process): if it is not loaded yet, it reads OMP_NUM_THREADS when
    a torch-backend shard imports it."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    else:
        os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def write_generated(job: ShardJob, data) -> ShardResult:
    """Finish a generated shard's statistics if the generator left them, write it (temp -> sha256 -> final
    name -> record) and time it."""
    from nca_datagen import shards
    from nca_datagen.config import recipe_fingerprint
    from nca_datagen.generate import add_sample_stats

    add_sample_stats(data, job.config)
    t0 = time.perf_counter()
    level = shards.DEFAULT_LEVEL if job.level is None else job.level
    record = shards.write_shard(data, job.out_url, recipe=recipe_fingerprint(job.config, job.compression),
                                compression=job.compression, level=level, storage_options=job.storage_options)
    timings = {**data.timings, "compress_write": time.perf_counter() - t0}
    return ShardResult(record=record, timings=timings, node=_node_name(), pid=os.getpid(),
                       peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _node_name() -> str:
    """The Ray node id inside a Ray worker (several nodes may share a host), else the host name."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()
