"""Where a build runs, decided in one place: this process or Ray (local or a cluster), on CPUs or GPUs.

`Placement` is parsed once from the flags (or the Python API's arguments); its `__post_init__` holds every rule
that ties them together, each refusal naming the flags. `start()` then makes the executor:

| placement | executor |
|---|---|
| `executor="inline"` | `InlineExecutor`: this process, one shard at a time, on one device |
| Ray, no GPU used | `RayTasks`: a CPU task per shard |
| Ray, GPUs | `RayActorPool`: `actors_per_gpu` generator actors per GPU, feeding CPU writer tasks |

A local Ray counts this machine's GPUs before it starts (their actors' CPUs come on top of the writers'); a
cluster's GPUs are its own, so the device is resolved against the cluster, not the driver (a CPU-only laptop may
drive a GPU cluster).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from nca_datagen.errors import ConfigError
from nca_datagen.rollout import (
    BACKENDS,
    NO_CUDA_GPU,
    check_gpu_flags,
    gpu_driver_present,
    gpus_to_use,
    resolve_backend,
    resolve_device,
    visible_gpus,
)

EXECUTORS = ("ray", "inline")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_ACTORS_PER_GPU = 4  # generator actors sharing a GPU: their host work (seeding, the probe's gzip) on 4 cores


@dataclass(frozen=True)
class Placement:
    executor: str = "ray"  # ray | inline
    ray_address: str | None = None  # None: RAY_ADDRESS, else a local Ray started for the build
    workers: int | None = None  # CPU tasks at once (Ray); None: the CPUs the actors leave
    gpus: int | None = None  # None: every visible GPU when the device allows; 0: none
    actors_per_gpu: int | None = None  # None: DEFAULT_ACTORS_PER_GPU
    device: str = "auto"  # auto | cpu | cuda
    backend: str = "auto"  # auto | numba | torch | triton

    def __post_init__(self):
        _choice("--executor", self.executor, EXECUTORS)
        _choice("--device", self.device, DEVICES)
        _choice("--backend", self.backend, BACKENDS)
        for flag, value in (("--workers", self.workers), ("--actors-per-gpu", self.actors_per_gpu)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} {value}: must be at least 1")
        if self.gpus is not None and self.gpus < 0:
            raise ConfigError(f"--gpus {self.gpus}: must be at least 0")
        check_gpu_flags(self.device, self.gpus)
        if self.executor == "inline":
            self._check_inline()

    def _check_inline(self) -> None:
        """--executor inline builds one shard at a time in this process, on one device: the flags that place and
        size Ray's pool would be ignored there, so they are refused. `--gpus 1` (like --device cuda) picks the GPU."""
        given = [flag for flag, value in (("--ray-address", self.ray_address), ("--workers", self.workers),
                                          ("--actors-per-gpu", self.actors_per_gpu)) if value is not None]
        if given:
            verb = "needs" if len(given) == 1 else "need"
            raise ConfigError(f"{' and '.join(given)} {verb} --executor ray: --executor inline builds one shard at a "
                              f"time in this process")
        if (self.gpus or 0) > 1:
            raise ConfigError(f"--gpus {self.gpus} needs --executor ray: --executor inline runs on one GPU (--gpus 1 "
                              f"or --device cuda)")

    @property
    def address(self) -> str | None:
        """The cluster to join, or None for a local Ray."""
        return self.ray_address or os.environ.get("RAY_ADDRESS") or None

    @property
    def wants_gpu(self) -> bool:
        return self.device == "cuda" or bool(self.gpus)

    def planned_gpus(self) -> int:
        """GPUs a local build would use (the estimate's; a cluster's are unknown before joining it)."""
        return gpus_to_use(self.device, self.gpus, visible_gpus)

    def start(self):
        """The executor, started (Ray running, actors placed), with the device its workers use as `.device`."""
        if self.executor == "inline":
            device = resolve_device("cuda" if self.wants_gpu else self.device)
            resolve_backend(_backend(self.backend), device)
            from .inline import InlineExecutor

            return InlineExecutor(device)
        if self.address is None and self.wants_gpu and not gpu_driver_present():
            raise ConfigError(NO_CUDA_GPU)  # a local Ray's cluster is this machine: fail before starting it
        from .ray_tasks import close_ray, connect_ray, import_ray

        ray = import_ray()
        extra = 0 if self.address else gpus_to_use(self.device, self.gpus, visible_gpus) * self._actors_per_gpu
        connect_ray(ray, self.address, self.workers, extra_cpus=extra)
        try:
            return self._pool(ray)
        except BaseException:
            close_ray(ray)  # a Ray started here stops again; a joined cluster is left
            raise

    @property
    def _actors_per_gpu(self) -> int:
        return self.actors_per_gpu or DEFAULT_ACTORS_PER_GPU

    def _pool(self, ray):
        """Size the pool from what Ray has (a joined cluster's GPUs, not the driver's) and start it."""
        from .ray_actors import RayActorPool, check_writer_cpus
        from .ray_tasks import RayTasks

        resources = ray.cluster_resources()
        cpus, cluster_gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
        device = _cluster_device(self.device, cluster_gpus, self.gpus)
        gpus = gpus_to_use(device, self.gpus, cluster_gpus)
        if gpus > cluster_gpus:
            raise ConfigError(f"--gpus {gpus}: the Ray cluster has {cluster_gpus} GPU(s); ask for at most that")
        resolve_backend(_backend(self.backend), device)
        where = "local Ray" if self.address is None else f"Ray cluster {self.address}"
        actors = gpus * self._actors_per_gpu
        check_writer_cpus(where, cpus, actors, gpus)
        writers = self.workers or cpus - actors
        if actors:
            return RayActorPool(ray, actors, 1 / self._actors_per_gpu, writers, where, device)
        return RayTasks(ray, writers, where, bounded_by_workers=self.address is not None and bool(self.workers))


def _choice(flag: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} {value!r}: choose one of {', '.join(choices)}")


def _backend(backend: str) -> str | None:
    return None if backend == "auto" else backend


def _cluster_device(device: str, cluster_gpus: int, gpus: int | None) -> str:
    """The device decides by the cluster's GPUs, not the driver's: the driver may be a CPU-only laptop."""
    if gpus and not cluster_gpus:
        raise ConfigError(f"--gpus {gpus} was requested but the Ray cluster has no GPU: drop --gpus or use --device "
                          f"cpu")
    if device == "auto":
        return "cuda" if cluster_gpus and gpus != 0 else "cpu"
    if device == "cuda" and not cluster_gpus:
        raise ConfigError("device 'cuda' was requested but the Ray cluster has no GPU: use --device cpu or auto")
    return device
