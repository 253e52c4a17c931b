"""The GPU build's executor: long-lived generator actors feeding CPU writer tasks.

Each generator actor holds a share of a GPU and one CPU; its kernels compile once per process, then every shard
reuses them. It probes, rolls out and tokenizes a shard (`shard_task.generate_for_writer`) and hands the tokens to
a CPU task that computes the per-sample statistics, builds the tar, compresses and writes (`write_generated`),
so the GPU never waits on gzip or zstd. Several actors share a GPU: the host-side parts of their shards run on
several cores while the GPU serves whichever is ready. Rules:

- an actor that dies is not its shards' fault: it leaves the pool for good, and its shards go to the live ones
  unreported, without costing an attempt; once none is left, every shard still to build fails (`GeneratorsLost`);
- the actors hold a CPU each, and the writers need at least one: a layout that leaves none is refused up front
  (`check_writer_cpus`), since it would wait forever.
"""

from __future__ import annotations

import contextlib

from nca_datagen.errors import ConfigError

from . import faults
from .ray_tasks import close_ray
from .shard_task import generate_for_writer, write_generated


class GeneratorsLost(RuntimeError):
    """Every generator actor of a GPU build died: the shards still to build have nowhere to run."""


class RayActorPool:
    """`actors` generator actors, each holding `gpu_share` of a GPU (0: a CPU-only pool, same layout), plus CPU
    writer tasks, on the Ray this process is connected to."""

    name = "ray"
    worker_threads = 1

    def __init__(self, ray, actors: int, gpu_share: float, writers: int, where: str, device: str):
        from ray.exceptions import RayActorError

        self.ray, self.workers, self.device = ray, writers, device
        self._writer = ray.remote(max_retries=0)(faults.wrap(write_generated, _written_shard, written=True))
        self._writer = self._writer.options(num_cpus=1)
        self._actor_error = RayActorError  # a generator died or is unreachable (so does a writer fed by it)
        self._actors = [_generator_class(ray).options(num_gpus=gpu_share).remote() for _ in range(actors)]
        self._load = [0] * actors  # shards in flight per actor
        self._dead: dict[int, str] = {}  # actor index -> how it died; never sent a shard again
        self._lost: list = []  # [((split, index), GeneratorsLost)]: shards submitted once every actor had died
        self._pending: dict = {}  # writer ObjectRef -> (job, split, index, actor index)
        self.slots = 2 * actors + writers  # enough queued that no actor or writer idles, never more
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        self.description = f"{where} ({nodes} node(s), {writers} CPU worker(s), {actors} generator actor(s))"

    def submit(self, job, split: str, index: int) -> None:
        live = [a for a in range(len(self._actors)) if a not in self._dead]
        if not live:
            self._lost.append(((split, index), GeneratorsLost(
                f"no generator actor is left: all {len(self._actors)} died (the last: {self._last_death})")))
            return
        a = min(live, key=self._load.__getitem__)
        self._load[a] += 1
        data = self._actors[a].generate.remote(job, split, index)
        self._pending[self._writer.remote(job, data)] = (job, split, index, a)

    def pending(self) -> int:
        return len(self._pending) + len(self._lost)

    def wait(self, timeout: float | None = None) -> list:
        """Finished shards, at most one per call besides those that had no generator left."""
        ready = []
        if self._pending and not self._lost:
            ready, _ = self.ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        out = [result for ref in ready if (result := self._collect(ref)) is not None]
        out += self._lost
        self._lost = []
        return out

    def _collect(self, ref):
        """A finished writer's result, or None when its generator died: the shard then goes to a live actor."""
        job, split, index, a = self._pending.pop(ref)
        self._load[a] -= 1
        try:
            return (split, index), self.ray.get(ref)
        except Exception as exc:  # RayTaskError wraps the worker's exception (and is an instance of it)
            if not isinstance(exc, self._actor_error):
                return (split, index), exc
            self._drop_actor(a, exc)
        self.submit(job, split, index)
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
        """Forget the shards in flight (see `RayTasks.cancel`)."""
        self._pending.clear()
        self._lost = []

    def close(self) -> None:
        self._pending.clear()  # no reference outlives the Ray it points into
        close_ray(self.ray, self._actors)
        self._actors = []


def check_writer_cpus(where: str, cpus: int, actors: int, gpus: int) -> None:
    """Generator actors hold a CPU each, and every shard then needs a CPU writer task: with no CPU left for those,
    no shard would ever finish and the build would wait forever. Refuse that layout up front."""
    if not actors or cpus > actors:
        return
    per_gpu = (cpus - 1) // gpus if gpus else 0
    fewer = f"--actors-per-gpu {per_gpu}" if per_gpu else f"--gpus {cpus - 1} --actors-per-gpu 1"
    fix = f"use at most {cpus - 1} actor(s) ({fewer}) or add CPUs" if cpus > 1 else "add CPUs or use --device cpu"
    raise ConfigError(f"the {where} has {cpus} CPU(s) and its {actors} generator actor(s) would hold every one of "
                      f"them (one each), leaving none for the CPU tasks that write the shards: {fix}")


def _written_shard(job, data):
    return data.split, data.shard_index


def _death_text(exc: BaseException) -> str:
    """An actor error in one line: Ray's sentences, without the tab-indented fields (ids, pid, ip) between them."""
    cause = getattr(exc, "cause", None) or exc  # a writer's RayTaskError carries the actor's error as its cause
    lines = [line.strip() for line in str(cause).splitlines() if line.strip() and not line.startswith("\t")]
    return " ".join(lines) or type(cause).__name__


def _generator_class(ray):
    """A generator alive for the whole build. Ray does not restart one that dies: the pool drops it instead (a
    restart would sit idle there)."""
    generate = faults.wrap(generate_for_writer)

    @ray.remote(num_gpus=1, num_cpus=1, max_restarts=0, max_task_retries=0)
    class Generator:
        def generate(self, job, split: str, index: int):
            return generate(job, split, index)

    return Generator
