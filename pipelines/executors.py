"""Executors: where shards run. They never change what a shard contains.

One unit of work is one shard: `run_shard(job, split, index)` generates it, writes it (temp name, sha256,
rename, then its record) and returns a small `ShardResult` (the record plus timings). It is idempotent, so a
retry or a rerun is always safe. Two executors run it, with the same two-call interface the driver uses
(`submit` a shard, `wait` for finished ones):

- `InlineExecutor`: in this process, one shard at a time. Tests and debugging.
- `RayExecutor`: Ray tasks (one CPU each) on a local Ray started for this build, or on any cluster joined
  by address. With GPUs, long-lived generator actors (`actors_per_gpu` per GPU, each holding one CPU; their
  kernels compile once per process) probe, roll out and tokenize shards and hand the tokens to CPU tasks
  that compute the per-sample statistics, build the tar, compress and write, so the GPU never waits on gzip
  or zstd. A local Ray gets the actors' CPUs on top of the writers'; on a cluster at least one CPU must be
  left for the writers. Ray is imported only here, only when this executor is built.

Retries are the driver's job (resubmission), the same for both executors, so a fault behaves identically
in-process and on a cluster. Failures reach the driver as exceptions; nothing is swallowed. One exception:
a generator actor that dies is not its shards' fault. The executor drops it from the pool and hands its
shards to the live ones, unreported and without costing them an attempt; once none is left, every shard
still to build fails with `GeneratorsLost`.

Fault injection (for tests; no mocking of Ray needed): `NCA_DATAGEN_FAIL_SHARDS` is a comma-separated list
of `split:index[:mode]`, mode `always` (default: the shard raises every time), `once` (raises on the first
attempt, succeeds afterwards; a marker file in `NCA_DATAGEN_FAULT_DIR`, default the system temp dir, makes
that work across processes and nodes), `hang` (sleeps for an hour: a build to kill part-way) or
`hang-written` (writes the shard and its record, then sleeps: a worker stopped before the driver hears of a
shard that is kept). The driver reads the variable when it starts and ships it with the job, so workers on
other nodes see it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field

FAULTS_ENV = "NCA_DATAGEN_FAIL_SHARDS"
FAULT_DIR_ENV = "NCA_DATAGEN_FAULT_DIR"
FAULT_MODES = ("always", "once", "hang", "hang-written")
LOCAL_RAY_HINT = "omit --ray-address (and unset RAY_ADDRESS) to use a local Ray"
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20  # shards in flight are ~1 MB each; Ray's default (30% of RAM) is far more


class InjectedFault(RuntimeError):
    """Raised by the fault-injection hook (never in normal runs)."""


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
    faults: str = ""  # the driver's NCA_DATAGEN_FAIL_SHARDS
    fault_dir: str = ""


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

    inject_fault(job, split, index)
    if job.threads:
        limit_threads(job.threads)
    cpu0 = time.process_time()
    data = generate_shard(job.config, split, index, backend=job.backend, device=job.device)
    result = write_generated(job, data)
    result.cpu_s = time.process_time() - cpu0  # CPU seconds (all threads): a load-independent cost measure
    return result


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
    recipe = recipe_fingerprint(job.config, job.compression)
    record = shards.write_shard(data, job.out_url, recipe=recipe, compression=job.compression, level=level,
                                storage_options=job.storage_options)
    timings = {**data.timings, "compress_write": time.perf_counter() - t0}
    inject_fault(job, data.split, data.shard_index, written=True)
    return ShardResult(record=record, timings=timings, node=_node_name(), pid=os.getpid(),
                       peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _node_name() -> str:
    """The Ray node id inside a Ray worker (several nodes may share a host), else the host name."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


# -- fault injection -------------------------------------------------------------------------------------


def parse_faults(spec: str) -> dict[tuple[str, int], str]:
    """'train:3,val:0:once' -> {('train', 3): 'always', ('val', 0): 'once'}."""
    faults = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        parts = item.split(":")
        mode = parts[2] if len(parts) == 3 else "always"
        if len(parts) not in (2, 3) or not parts[1].isdigit() or mode not in FAULT_MODES:
            raise ValueError(f"{FAULTS_ENV}={spec!r}: expected split:index[:{'|'.join(FAULT_MODES)}], "
                             f"e.g. train:3:once")
        faults[(parts[0], int(parts[1]))] = mode
    return faults


def inject_fault(job: ShardJob, split: str, index: int, written: bool = False) -> None:
    """The fault `NCA_DATAGEN_FAIL_SHARDS` asks of this shard at this point: before it is generated, or once it
    is `written` (only `hang-written` acts there)."""
    mode = parse_faults(job.faults or os.environ.get(FAULTS_ENV, "")).get((split, index))
    if mode is None or (mode == "hang-written") != written:
        return
    if mode in ("hang", "hang-written"):
        time.sleep(3600)
    if mode == "once":
        key = hashlib.sha256(f"{job.out_url}|{split}|{index}".encode()).hexdigest()[:16]
        marker = os.path.join(job.fault_dir or os.environ.get(FAULT_DIR_ENV) or tempfile.gettempdir(),
                              f"nca-datagen-fault-{key}")
        if os.path.exists(marker):
            return
        with open(marker, "w") as f:
            f.write(f"{split}:{index} failed once\n")
    raise InjectedFault(f"injected fault ({FAULTS_ENV}) in {split} shard {index}")


# -- executors ---------------------------------------------------------------------------------------------


class InlineExecutor:
    """Runs each submitted shard in this process when the driver waits for it."""

    name = "inline"
    worker_threads = 0  # this process: use every core

    def __init__(self):
        self.slots = 1
        self._queue: list[tuple[ShardJob, str, int]] = []
        self.description = "inline (this process)"

    def submit(self, job: ShardJob, split: str, index: int) -> None:
        self._queue.append((job, split, index))

    def pending(self) -> int:
        return len(self._queue)

    def wait(self, timeout: float | None = None) -> list[tuple[tuple[str, int], ShardResult | BaseException]]:
        job, split, index = self._queue.pop(0)
        try:
            return [((split, index), run_shard(job, split, index))]
        except Exception as exc:  # reported to the driver, which retries or names the shard
            return [((split, index), exc)]

    def cancel(self) -> None:
        self._queue.clear()

    def close(self) -> None:
        pass


class GeneratorsLost(RuntimeError):
    """Every generator actor of a GPU build died: the shards still to build have nowhere to run."""


class RayExecutor:
    """Ray tasks on a local Ray (started here) or a cluster (joined by address); GPU actors when asked."""

    name = "ray"
    worker_threads = 1  # each task holds one CPU

    def __init__(self, address: str | None = None, workers: int | None = None, gpus: int | None = None,
                 device: str = "auto", actors_per_gpu: int = 4, generator_actors: int | None = None):
        """`generator_actors` (tests only) runs the GPU pipeline — generator actors feeding CPU writer tasks — with
        that many actors holding no GPU, so the pipeline's plumbing is exercised on a CPU-only machine."""
        from nca_datagen.rollout import check_gpu_flags

        check_gpu_flags(device, gpus)  # before Ray starts
        self.ray = ray = import_ray()
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._started_here = self.address is None
        self._actors: list = []
        extra_cpus = 0
        if self._started_here:  # the actors' CPUs come on top of the writers': they never take the writers' CPUs
            extra_cpus = generator_actors or _local_actor_cpus(device, gpus, actors_per_gpu)
        connect_ray(ray, self.address, workers, extra_cpus=extra_cpus)
        try:
            self._start_pool(workers, gpus, device, actors_per_gpu, generator_actors)
        except BaseException:
            self.close()  # a Ray started here stops again; a joined cluster is left
            raise

    def _start_pool(self, workers, gpus, device, actors_per_gpu, generator_actors) -> None:
        """Size the pool from what Ray has (a joined cluster's GPUs, not the driver's) and start the actors."""
        from ray.exceptions import RayActorError

        from nca_datagen.rollout import gpus_to_use

        ray = self.ray

        resources = ray.cluster_resources()
        cluster_cpus = int(resources.get("CPU", 1))
        cluster_gpus = int(resources.get("GPU", 0))
        self.device = _resolve_cluster_device(device, cluster_gpus, gpus)
        self.gpus = gpus_to_use(self.device, gpus, cluster_gpus)
        if self.gpus > cluster_gpus:
            raise ValueError(f"--gpus {self.gpus}: the Ray cluster has {cluster_gpus} GPU(s); ask for at most that")
        where = "local Ray" if self._started_here else f"Ray cluster {self.address}"
        actors = generator_actors or self.gpus * actors_per_gpu
        _check_writer_cpus(where, cluster_cpus, actors, self.gpus)
        self.workers = workers or cluster_cpus - actors
        self._task = ray.remote(max_retries=0)(run_shard).options(num_cpus=1)
        self._writer = ray.remote(max_retries=0)(write_generated).options(num_cpus=1)
        self._actor_error = RayActorError  # a generator died or is unreachable (so does a writer fed by it)
        # Several actors share a GPU: the host-side parts of a shard (seeding, the probe's gzip filter, per-sample
        # statistics) then run on several cores while the GPU serves whichever actor is ready.
        actor = _gpu_actor_class(ray).options(num_gpus=0 if generator_actors else 1 / actors_per_gpu)
        self._actors = [actor.remote() for _ in range(actors)]
        self._actor_load = [0] * actors  # shards in flight per actor
        self._dead: dict[int, str] = {}  # actor index -> how it died; never sent a shard again
        self._lost: list = []  # [((split, index), GeneratorsLost)]: shards submitted once every actor had died
        # Bounded in flight: enough queued work that no worker idles between shards, never more, so memory
        # stays flat however large the dataset. On a cluster, exactly `workers` CPU tasks may run at once.
        if self._actors:
            self.slots = 2 * len(self._actors) + self.workers
        else:
            self.slots = 2 * self.workers if (self._started_here or not workers) else self.workers
        self._pending: dict = {}  # ObjectRef -> (job, split, index, actor index or None)
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        gpu_text = f", {len(self._actors)} generator actor(s)" if self._actors else ""
        self.description = f"{where} ({nodes} node(s), {self.workers} CPU worker(s){gpu_text})"

    def submit(self, job: ShardJob, split: str, index: int) -> None:
        if not self._actors:
            self._pending[self._task.remote(job, split, index)] = (job, split, index, None)
            return
        live = [a for a in range(len(self._actors)) if a not in self._dead]
        if not live:
            self._lost.append(((split, index), GeneratorsLost(
                f"no generator actor is left: all {len(self._actors)} died (the last: {self._last_death})")))
            return
        a = min(live, key=self._actor_load.__getitem__)
        self._actor_load[a] += 1
        data = self._actors[a].generate.remote(job, split, index)
        self._pending[self._writer.remote(job, data)] = (job, split, index, a)

    def pending(self) -> int:
        return len(self._pending) + len(self._lost)

    def wait(self, timeout: float | None = None) -> list[tuple[tuple[str, int], ShardResult | BaseException]]:
        """Finished shards, at most one per call besides those that had no generator left. A shard whose generator
        died is not the shard's failure: the actor leaves the pool and the shard goes to a live one, unreported."""
        ready = []
        if self._pending and not self._lost:
            ready, _ = self.ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        out = [result for ref in ready if (result := self._collect(ref)) is not None]
        out += self._lost
        self._lost = []
        return out

    def _collect(self, ref):
        job, split, index, a = self._pending.pop(ref)
        if a is not None:
            self._actor_load[a] -= 1
        try:
            return (split, index), self.ray.get(ref)
        except Exception as exc:  # RayTaskError wraps the worker's exception (and is an instance of it)
            if a is None or not isinstance(exc, self._actor_error):
                return (split, index), exc
            self._drop_actor(a, exc)
        self.submit(job, split, index)  # the same attempt, on a live actor
        return None

    def _drop_actor(self, a: int, exc: BaseException) -> None:
        """Take a dead (or unreachable) generator out of the pool for good; killing it frees its CPU and GPU share."""
        if a in self._dead:
            return
        self._dead[a] = _death_text(exc)
        with contextlib.suppress(Exception):
            self.ray.kill(self._actors[a], no_restart=True)

    @property
    def _last_death(self) -> str:
        return next(reversed(self._dead.values()), "unknown")

    def cancel(self) -> None:
        """Forget the shards in flight; `close` stops them. No `ray.cancel`: racing a task that is finishing, it
        can abort the driver inside Ray (`Check failed` in task_manager.cc, exit 1). Stopping is left to the
        end of the job: a local Ray's shutdown ends its workers, and on a joined cluster the raylets kill the
        workers leased to a job once its driver disconnects. Writes are atomic, so nothing partial stays."""
        self._pending.clear()
        self._lost = []

    def close(self) -> None:
        """Idempotent. A local Ray started here is shut down; a joined cluster keeps running (we disconnect)."""
        if self.ray.is_initialized():
            for actor in self._actors:
                with contextlib.suppress(Exception):
                    self.ray.kill(actor)
            self.ray.shutdown()
        self._actors = []


def _death_text(exc: BaseException) -> str:
    """An actor error in one line: Ray's sentences, without the tab-indented fields (ids, pid, ip) between them."""
    cause = getattr(exc, "cause", None) or exc  # a writer's RayTaskError carries the actor's error as its cause
    lines = [line.strip() for line in str(cause).splitlines() if line.strip() and not line.startswith("\t")]
    return " ".join(lines) or type(cause).__name__


def import_ray():
    """Ray, imported with its C++ failure-signal handler off (read when Ray loads, so before the first import).
    That handler covers SIGTERM, and `ray.shutdown` resets it to the default action: a SIGTERM while the manifest
    is written (Ray shuts down meanwhile) killed the driver outright, without the "interrupted" line (6 of 10
    such runs). Without it the build's own SIGTERM handler stays in force; the cost is Ray's C++ stack trace on a
    segfault in its own processes, which inherit the setting."""
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
        # address="local" always starts a fresh instance: never join someone else's cluster by accident.
        try:
            ray.init(address="local", num_cpus=(workers or os.cpu_count()) + extra_cpus,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, _node_ip_address="127.0.0.1", **common)
        except Exception as exc:  # e.g. "The current node timed out during startup" on an overloaded machine
            with contextlib.suppress(Exception):
                ray.shutdown()  # whatever part of it did start
            raise ConnectionError(f"could not start a local Ray ({type(exc).__name__}: {str(exc).rstrip('.')}). "
                                  f"On a busy machine, retry; --executor inline builds without Ray") from exc
        return
    if address != "auto" and not address.startswith("ray://"):
        _check_reachable(address)
    try:
        ray.init(address=address, **common)
    except Exception as exc:
        reason = str(exc).rstrip(".")
        raise ConnectionError(f"cannot join the Ray cluster at {address!r}: {reason}. Start one with `ray start "
                              f"--head`, pass its HOST:PORT to --ray-address, or {LOCAL_RAY_HINT}") from exc


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address {address!r}: expected auto or HOST:PORT (e.g. 10.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach the Ray cluster at {address} ({exc}). Check the address of the "
                              f"head node (`ray status` on it), or {LOCAL_RAY_HINT}") from exc


def _local_actor_cpus(device: str, gpus: int | None, actors_per_gpu: int) -> int:
    """CPUs the generator actors of a local build will hold (0 on a CPU build): a local Ray gets them on top of
    the writers' CPUs. This machine's GPUs are counted (torch) only when --gpus does not say how many."""
    from nca_datagen.rollout import gpus_to_use, visible_gpus

    return gpus_to_use(device, gpus, visible_gpus) * actors_per_gpu


def _check_writer_cpus(where: str, cpus: int, actors: int, gpus: int) -> None:
    """Generator actors hold a CPU each, and every shard then needs a CPU writer task: with no CPU left for those,
    no shard would ever finish and the build would wait forever. Refuse that layout up front."""
    if not actors or cpus > actors:
        return
    per_gpu = (cpus - 1) // gpus if gpus else 0
    fewer = f"--actors-per-gpu {per_gpu}" if per_gpu else f"--gpus {cpus - 1} --actors-per-gpu 1"
    fix = f"use at most {cpus - 1} actor(s) ({fewer}) or add CPUs" if cpus > 1 else "add CPUs or use --device cpu"
    raise ValueError(f"the {where} has {cpus} CPU(s) and its {actors} generator actor(s) would hold every one of "
                     f"them (one each), leaving none for the CPU tasks that write the shards: {fix}")


def _resolve_cluster_device(device: str, cluster_gpus: int, gpus: int | None) -> str:
    """The device decides by the cluster's GPUs, not the driver's: the driver may be a CPU-only laptop."""
    device = device or "auto"
    if gpus and not cluster_gpus:
        raise ValueError(f"--gpus {gpus} was requested but the Ray cluster has no GPU: drop --gpus or use --device cpu")
    if device == "auto":
        return "cuda" if cluster_gpus and gpus != 0 else "cpu"
    if device.startswith("cuda") and not cluster_gpus:
        raise ValueError("device 'cuda' was requested but the Ray cluster has no GPU: use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device {device!r}: choose auto, cpu or cuda")
    return device


def _gpu_actor_class(ray):
    """A generator alive for the whole build: kernels compile once, then every shard reuses them. Ray does not
    restart one that dies: the executor drops it from its pool instead (a restart would sit idle there)."""

    @ray.remote(num_gpus=1, num_cpus=1, max_restarts=0, max_task_retries=0)
    class GpuGenerator:
        def generate(self, job: ShardJob, split: str, index: int):
            from nca_datagen.generate import generate_shard

            inject_fault(job, split, index)
            # statistics of the tokens are left to the CPU writer task: this actor's CPU feeds the GPU
            return generate_shard(job.config, split, index, backend=job.backend, device=job.device, stats=False)

    return GpuGenerator
