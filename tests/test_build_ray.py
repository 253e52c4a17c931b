"""`nca-datagen build --ray-address` on a real two-node Ray cluster on this machine (loopback only).

Two `ray start` nodes (one CPU each, the second tagged with a custom `node2` resource), each in its own temp
dir. Shards built across both nodes must be byte-identical to the inline executor's and to a one-worker run.
Teardown kills only the processes of these two nodes (found by their temp dirs): `ray stop` would stop every
Ray on the machine, other people's included.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
CONSOLE = str(Path(sys.executable).with_name("nca-datagen"))
TINY = ["--frames", "4", "--samples-per-shard", "4", "--sims-per-rule", "2", "--tokens", "2432",
        "--val-tokens", "608"]
# Ray >= 2.5x turns token auth on for a head node when ~/.ray/auth_token exists (any earlier local Ray writes it),
# but a joining node does not send it; loopback-only test nodes opt out, and so does the driver that joins them.
AUTH = {"RAY_AUTH_MODE": "disabled"}
NODE = ["--num-cpus=1", "--num-gpus=0", "--object-store-memory=100000000", "--disable-usage-stats"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_under(marker: str) -> list[int]:
    """Pids whose command line or open files mention `marker` (our nodes' temp dirs): exactly the processes we
    started. Open files catch Ray's agents, whose command lines are retitled (`ray::DashboardAgent`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                texts = [(entry / "cmdline").read_bytes().decode(errors="replace")]
                texts += [os.readlink(fd) for fd in (entry / "fd").iterdir()]
            except OSError:
                continue
            if any(marker in t for t in texts):
                pids.append(int(entry.name))
    return pids


def kill_nodes(dirs: list[str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for d in dirs for p in processes_under(d)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if pids and sig == signal.SIGTERM:
            time.sleep(3)


@pytest.fixture(scope="module")
def cluster():
    port = free_port()
    head_dir = tempfile.mkdtemp(prefix="ncrh", dir="/tmp")
    node_dir = tempfile.mkdtemp(prefix="ncrn", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(AUTH)
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", *NODE,
                        "--include-dashboard=false", f"--temp-dir={head_dir}"], env=env, check=True,
                       capture_output=True, timeout=180)
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", *NODE,
                        '--resources={"node2": 1}', f"--temp-dir={node_dir}"], env=env, check=True,
                       capture_output=True, timeout=180)
        yield f"127.0.0.1:{port}"
    finally:
        kill_nodes([head_dir, node_dir])
        shutil.rmtree(head_dir, ignore_errors=True)
        shutil.rmtree(node_dir, ignore_errors=True)


def build(out, *extra, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "NCA_DATAGEN_FAIL_SHARDS")}
    env.update(AUTH, **(env_extra or {}))
    proc = subprocess.run([CONSOLE, "build", *TINY, "--out", str(out), *extra], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("*/shard-*.tar*"))}


def test_two_node_cluster_matches_inline_and_one_worker(cluster, tmp_path):
    proc = build(tmp_path / "cluster", "--workers", "2", env_extra={"RAY_ADDRESS": cluster})  # joined via env
    events = [json.loads(line) for log in (tmp_path / "cluster/_logs").glob("*.jsonl")
              for line in log.read_text().splitlines()]
    assert events[0]["executor"] == f"Ray cluster {cluster} (2 node(s), 2 CPU worker(s))"
    assert f"Ray cluster {cluster}" in proc.stderr
    nodes = {e["node"] for e in events if e["event"] == "shard_done"}
    assert len(nodes) == 2, nodes  # both nodes built shards

    build(tmp_path / "inline", "--executor", "inline")
    build(tmp_path / "one", "--workers", "1")  # a private local Ray with one worker
    cluster_shards = shard_bytes(tmp_path / "cluster")
    assert len(cluster_shards) == 5
    assert cluster_shards == shard_bytes(tmp_path / "inline") == shard_bytes(tmp_path / "one")


def test_ray_address_flag_joins_the_cluster(cluster, tmp_path):
    proc = build(tmp_path / "flag", "--ray-address", cluster, "--val-tokens", "0", "--quiet")
    assert proc.stdout.startswith("done: 4 shards")
    assert "Ray cluster" not in proc.stderr  # --quiet: only errors and the final line


def tiny_plan():
    """TINY as a plan: 4 train shards and 1 val shard of 4 sequences each (152 tokens)."""
    from nca_datagen.complexity import Band
    from nca_datagen.pipelines.plan import dataset_config, plan_build

    config = dataset_config(grid=(12, 12), states=10, patch=2, frames=4, burn_in=10, temperature=1e-4,
                            band=Band.parse("50%+"), seed=0, sims_per_rule=2, samples_per_shard=4)
    return plan_build(config, tokens=2432, val_tokens=608)


def events(out: Path) -> list[dict]:
    return [json.loads(line) for log in (out / "_logs").glob("*.jsonl") for line in log.read_text().splitlines()]


def actor_pool(actors: int, workers: int | None = None):
    """The GPU layout (generator actors -> CPU writer tasks) with CPU-only actors (no GPU share each), on a local
    Ray that gets the actors' CPUs on top of the writers'."""
    from nca_datagen.pipelines.ray_actors import RayActorPool
    from nca_datagen.pipelines.ray_tasks import connect_ray, import_ray

    ray = import_ray()
    connect_ray(ray, None, workers, extra_cpus=actors)
    writers = int(ray.cluster_resources()["CPU"]) - actors
    return RayActorPool(ray, actors, 0, writers, "local Ray", "cpu")


def test_generator_actor_pipeline_on_cpu(tmp_path):
    """The GPU layout with CPU-only actors: same bytes as inline."""
    from nca_datagen.pipelines.driver import BuildOptions, run_build
    from nca_datagen.pipelines.inline import InlineExecutor

    plan = tiny_plan()
    executor = actor_pool(1, workers=2)  # two CPUs for writes, one for the actor
    assert "1 generator actor(s)" in executor.description and executor.slots == 4
    run_build(plan, executor, BuildOptions(out_url=str(tmp_path / "actors"), quiet=True))
    run_build(plan, InlineExecutor(), BuildOptions(out_url=str(tmp_path / "inline"), quiet=True))
    assert shard_bytes(tmp_path / "actors") == shard_bytes(tmp_path / "inline")
    assert len(shard_bytes(tmp_path / "actors")) == 5


def kill_for_good(ray, actor) -> None:
    """Kill a generator actor as a crash beyond its restarts would, and return once calls to it fail."""
    ray.kill(actor, no_restart=True)
    for _ in range(100):  # the kill lands asynchronously: up to ~10 s
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.1)
    raise AssertionError("the killed actor still answers")


def test_a_dead_generator_actor_costs_no_shard_an_attempt(tmp_path):
    """A generator that died for good used to win every choice (no load: its shards failed at once) and took the
    retries too. Its shards now go to the live actor without a failure: one attempt each is enough."""
    from nca_datagen.pipelines.driver import BuildOptions, run_build

    executor = actor_pool(2, workers=3)  # as many CPUs as ever took: no starving
    kill_for_good(executor.ray, executor._actors[0])  # the least loaded actor (ties go to the first)
    out = tmp_path / "ds"
    run_build(tiny_plan(), executor, BuildOptions(out_url=str(out), quiet=True, max_attempts=1))
    assert len(shard_bytes(out)) == 5
    assert not [e for e in events(out) if e["event"] == "shard_failed"]


def test_with_every_generator_actor_dead_the_shards_fail_naming_the_cause(tmp_path):
    from nca_datagen.errors import BuildFailed
    from nca_datagen.pipelines.driver import BuildOptions, run_build

    executor = actor_pool(2, workers=1)
    for actor in executor._actors:
        kill_for_good(executor.ray, actor)
    out = tmp_path / "ds"
    with pytest.raises(BuildFailed, match="5 shard"):
        run_build(tiny_plan(), executor, BuildOptions(out_url=str(out), quiet=True, max_attempts=2))
    errors = [e["error"] for e in events(out) if e["event"] == "shard_failed"]
    assert len(errors) == 10, errors  # 5 shards x 2 attempts, none of them spent on the dying actors
    assert all(e.startswith("GeneratorsLost: no generator actor is left: all 2 died (the last: The actor died")
               for e in errors), errors[0]


class Deadline:
    """An executor whose `wait` raises TimeoutError after `seconds`: a build that would hang fails instead (and
    `run_build` closes the executor, so no Ray is left behind)."""

    def __init__(self, executor, seconds: float):
        self._executor, self._end = executor, time.monotonic() + seconds

    def __getattr__(self, name):
        return getattr(self._executor, name)

    def wait(self, timeout=None):
        if time.monotonic() > self._end:
            raise TimeoutError("the build made no progress: no CPU was left for the writer tasks?")
        return self._executor.wait(timeout)


def test_generator_actors_leave_cpus_for_the_writers(tmp_path, monkeypatch):
    """Without --workers a local Ray got only the machine's CPUs; as many generator actors held them all, the
    writer tasks never ran and the build waited forever. The actors' CPUs now come on top."""
    from nca_datagen.pipelines.driver import BuildOptions, run_build

    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # a 2-core machine, whatever runs the test
    executor = actor_pool(2)
    cpus = executor.ray.cluster_resources()["CPU"]
    out = tmp_path / "ds"
    run_build(tiny_plan(), Deadline(executor, 60), BuildOptions(out_url=str(out), quiet=True))
    assert len(shard_bytes(out)) == 5
    assert cpus == 4 and executor.workers == 2  # two for the actors, on top of the two for the writers


def test_a_cluster_without_a_cpu_left_for_the_writers_is_refused(cluster):
    """Two generator actors on the two-CPU test cluster would hold both CPUs: refused up front, not a hang. (In a
    fresh process: a driver that joined the cluster leaves Ray state behind that breaks a later local Ray here.)"""
    code = ("from nca_datagen.pipelines.ray_actors import check_writer_cpus\n"
            "from nca_datagen.pipelines.ray_tasks import close_ray, connect_ray, import_ray\n"
            "ray = import_ray()\n"
            f"connect_ray(ray, {cluster!r}, None)\n"
            "try:\n"
            "    check_writer_cpus('Ray cluster', int(ray.cluster_resources()['CPU']), 2, 0)\n"
            "finally:\n"
            "    close_ray(ray)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", code], env={**env, **AUTH}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 CPU(s) and its 2 generator actor(s) would hold every one of them" in proc.stderr, proc.stderr[-3000:]
    assert "leaving none for the CPU tasks" in proc.stderr


def test_a_cpu_worker_never_imports_torch(tmp_path):
    """A CPU shard (numba backend) in a fresh worker process, as a Ray task runs it: importing torch there cost
    ~2 s per worker process before its first shard. Its thread limit then waits in OMP_NUM_THREADS."""
    code = (
        "import os, sys\n"
        "from nca_datagen.config import DatasetConfig\n"
        "from nca_datagen.pipelines.shard_task import ShardJob, run_shard\n"
        f"job = ShardJob(config=DatasetConfig(rules_per_shard=5, sims_per_rule=2), out_url={str(tmp_path)!r},\n"
        "               device='cpu', threads=1)\n"
        "result = run_shard(job, 'train', 0)\n"
        "print(result.record['samples'], 'torch' in sys.modules, os.environ.get('OMP_NUM_THREADS'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NCA_BACKEND", "NCA_DEVICE")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["10", "False", "1"], done.stdout


def test_sigterm_still_reaches_the_driver_after_ray_shuts_down(tmp_path):
    """The build shuts Ray down while it writes the manifest; a SIGTERM then must still raise in the driver
    (Ray's C++ failure-signal handler used to reset SIGTERM to "terminate" on shutdown: exit -15, no message)."""
    code = (
        "import os, signal\n"
        "from nca_datagen.pipelines.driver import terminate_as_interrupt\n"
        "from nca_datagen.pipelines.ray_tasks import close_ray, connect_ray, import_ray\n"
        "ray = import_ray()\n"
        "connect_ray(ray, None, 1)\n"
        "with terminate_as_interrupt() as seen:\n"
        "    close_ray(ray)\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        signal.sigtimedwait([], 2)\n"
        "    except KeyboardInterrupt as exc:\n"
        "        print('raised', seen.of(exc), flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_DISABLE_FAILURE_SIGNAL_HANDLER")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "raised 15", (done.returncode, done.stderr[-2000:])
