"""The build driver: every missing shard of a plan on an executor, then the dataset's other files, manifest last.

    prepare (accept and mark the output) -> resume (keep verified shards) -> drive (build the rest) -> finish

Rules:
- memory: the driver holds only shard records; workers write the shards themselves;
- in flight: at most the executor's slots; a failed shard is resubmitted up to `max_attempts` times, the same on
  every executor. A store that stops answering is not a shard's failure (`outage.py`), nor is a generator actor
  that died (`ray_actors.py`);
- a manifest is written only once every shard exists (`finish.py`): no reader sees one naming a missing shard;
- the output's claim (`claim.py`) is checked between shards and before the manifest;
- Ctrl-C and SIGTERM, at any point, stop the workers and raise `errors.Interrupted` saying what is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from nca_datagen import ownership, storage
from nca_datagen.config import recipe_fingerprint
from nca_datagen.errors import BandUnreachable, BuildFailed, Interrupted, StorageError
from nca_datagen.manifest import LOGS
from nca_datagen.progress import BuildProgress, EventLog
from nca_datagen.rollout import resolve_backend
from nca_datagen.units import format_duration

from .finish import finish_dataset
from .outage import StorageWatch
from .plan import BuildPlan
from .resume import existing_level, kept_count, resume_state
from .shard_task import ShardJob

COMPILE_NOTICE_S = 3.0  # loading numba's cached kernel takes under a second: still busy after this, it compiles


def echo_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class BuildOptions:
    out_url: str
    compression: str = "zstd"
    storage_options: dict | None = None
    backend: str | None = None  # None: auto
    overwrite: bool = False
    quiet: bool = False
    max_attempts: int = 3  # first try + 2 retries
    command: str = ""  # the command line, for the event log and the manifest's provenance
    claim: object = None  # the output's claim: checked between shards and before the manifest
    echo: object = echo_stderr  # where notes go (progress lines go to stderr through rich)


@dataclass
class BuildResult:
    """What a build did: the dataset's manifest and how long its parts took."""

    manifest: dict
    plan: BuildPlan
    tokens_built: int = 0  # tokens built in this run (0: every shard was already there)
    seconds: float = 0.0  # from the shards' start to the manifest
    shards_seconds: float = 0.0  # the shard phase
    tokens_per_s: float = 0.0  # while the shards were built
    stage_seconds: dict = field(default_factory=dict)
    candidates: int = 0
    acceptance: float = float("nan")
    log_path: str = ""
    nothing_to_do: bool = False  # the output held this very dataset, whole: nothing was built or written


def run_build(plan: BuildPlan, executor, opts: BuildOptions) -> BuildResult:
    """Build every missing shard of `plan` on `executor`, then the tables, card and manifest."""
    build = _Build(plan, executor, opts)
    with build.interrupts():
        build.prepare()
        build.resume()
        build.drive()
        return build.finish()


class _Build:
    """One run of `run_build`: its output, event log, progress and the records gathered so far."""

    def __init__(self, plan: BuildPlan, executor, opts: BuildOptions):
        self.plan, self.executor, self.opts = plan, executor, opts
        self.fs, self.root = storage.filesystem(opts.out_url, opts.storage_options)
        self.phase = "prepare"
        self.log = self.progress = None
        self.records: dict[str, dict[int, dict]] = {}
        self.todo: list[tuple[str, int]] = []
        self.failed: dict = {}

    # ---------------------------------------------------------------------------------------------- phases

    def prepare(self) -> None:
        """Accept and mark the output (`ownership.prepare_output`), open the event log."""
        self.existed = storage.exists(self.fs, self.root)
        ownership.prepare_output(self.opts.out_url, self.plan.config, self.opts.compression,
                                 overwrite=self.opts.overwrite, storage_options=self.opts.storage_options,
                                 planned=self.plan.shards)
        self.log = EventLog(_log_path(self.root, storage.is_local(self.fs)))

    def resume(self) -> None:
        """Keep the shards already there and verified; the rest is to do."""
        recipe = recipe_fingerprint(self.plan.config, self.opts.compression)
        self.records, self.todo = resume_state(self.plan, self.fs, self.root, recipe)
        self.backend = resolve_backend(self.opts.backend, self.executor.device)
        self.log.emit("build_start", out=self._out, executor=self.executor.description, backend=self.backend,
                      device=self.executor.device, shards=self.plan.shards, todo=len(self.todo),
                      skipped=sum(len(r) for r in self.records.values()), config=self.plan.config.to_dict(),
                      command=self.opts.command)

    def drive(self) -> None:
        """Build `todo` on the executor, bounded in flight, retried; failures for good go to `failed`."""
        if self.backend == "numba" and self.todo:
            _compile_kernel(self.opts)  # before the progress starts: its time is in no shard's speed
        self.phase = "shards"
        self.progress = BuildProgress(self.plan.total_shards, already_done=self.plan.total_shards - len(self.todo),
                                      quiet=self.opts.quiet)
        self.progress.message(f"building {len(self.todo)} of {self.plan.total_shards} shards on "
                              f"{self.executor.description}, backend {self.backend} on {self.executor.device}; "
                              f"log: {self.log.path}")
        if self.executor.name == "ray" and self.todo:  # the driver mostly waits on Ray: import the card's meanwhile
            from nca_datagen.card_figures import preload

            threading.Thread(target=preload, name="card-preload", daemon=True).start()
        job = ShardJob(config=self.plan.config, out_url=self._out, compression=self.opts.compression,
                       level=existing_level(self.records), storage_options=self.opts.storage_options,
                       backend=self.opts.backend, device=self.executor.device, threads=self.executor.worker_threads)
        try:
            _Drive(self, job).run()
        except BandUnreachable as exc:
            raise self._abandon(exc) from None
        except StorageError as exc:
            self._halt()
            self._end_log("build_abandoned", error=str(exc))
            raise StorageError(f"{exc} ({self.progress.done_count} of {self.plan.total_shards} shards are "
                               f"complete)") from None

    def finish(self) -> BuildResult:
        """Shut the executor down, then name the shards that failed for good (no manifest), or write the tables,
        card and manifest. Ray shuts down first, not beside the writing: a Ray reference that Python frees while
        another thread shuts Ray down ends the process (exit 1, no message)."""
        self.phase = "finish"
        self.executor.close()
        self.progress.close()
        if self.failed:
            raise self._failed()
        return self._write_dataset()

    # ---------------------------------------------------------------------------------------------- endings

    def _write_dataset(self) -> BuildResult:
        self.log.emit("shards_done", seconds=self.progress.elapsed)
        if self.opts.claim is not None:
            self.opts.claim.check()  # no manifest over shards another writer may have replaced
        ordered = {split: [self.records[split][i] for i in range(n)] for split, n in self.plan.shards.items()}
        try:
            manifest = finish_dataset(self.opts.out_url, self.plan.config, ordered, self._provenance(),
                                      storage_options=self.opts.storage_options)
        except storage.errors() as exc:  # a full disk, a lost endpoint: name the step, keep the shards
            self._end_log("manifest_failed", error=f"{type(exc).__name__}: {exc}")
            raise StorageError(f"every shard is complete, but writing the manifest and card to {self.opts.out_url} "
                               f"failed ({type(exc).__name__}: {exc}). Fix the cause and rerun the same command: "
                               f"it only writes them") from exc
        p = self.progress
        self._end_log("build_end", seconds=p.elapsed, tokens_built=p.tokens, tokens_per_s=p.tokens_per_s,
                      stage_seconds=p.stage_seconds)
        return BuildResult(manifest, self.plan, p.tokens, p.elapsed, p.shards_seconds, p.tokens_per_s, p.stage_seconds,
                           p.candidates, p.acceptance, str(self.log.path))

    def _failed(self) -> BuildFailed:
        names = [f"{s}:{i}" for s, i in sorted(self.failed)]
        self._end_log("build_failed", failed=names)
        return BuildFailed(f"{len(self.failed)} shard(s) failed after {self.opts.max_attempts} attempts: "
                           f"{', '.join(names)}. No manifest was written; the other shards are kept. Fix the cause "
                           f"(see {self.log.path}) and rerun the same command to build only what is missing.")

    def _abandon(self, exc: BandUnreachable) -> BandUnreachable:
        """An impossible band: stop; when nothing was kept, remove what this build wrote, so that a fixed
        command starts afresh."""
        self._halt()
        self.log.emit("build_abandoned", error=str(exc))
        self.log.close()
        kept = kept_count(self.plan, self.fs, self.root)
        if not kept:
            self._remove_abandoned()
        advice = (f"{kept} complete shard(s) are kept: rerun with --overwrite to change --complexity" if kept else
                  "Nothing was kept: fix --complexity and rerun.")
        return BandUnreachable(f"{exc}\n{advice}")

    def _remove_abandoned(self) -> None:
        """The folder if this build made it, else its marker, its event log and the empty folders it made (a
        user's files in a folder that existed stay)."""
        if not self.existed:
            if storage.exists(self.fs, self.root):
                storage.remove(self.fs, self.root)
            return
        ownership.remove_build_marker(self.fs, self.root)
        if storage.is_local(self.fs):  # an object store's log is a local spool
            self.log.path.unlink(missing_ok=True)
        ownership.remove_empty_folders(self.fs, self.root, (LOGS, *self.plan.shards))

    def _halt(self) -> None:
        """Stop the workers, forgetting what runs (writes are atomic: only complete shards stay)."""
        self.executor.cancel()
        self.executor.close()
        if self.progress is not None:
            self.progress.close()

    # ---------------------------------------------------------------------------------------------- interrupts

    @contextlib.contextmanager
    def interrupts(self):
        """Ctrl-C or SIGTERM anywhere in the run: the workers stop and `Interrupted` says what is kept. Any other
        error stops the workers too: no Ray is left behind."""
        with terminate_as_interrupt() as seen:
            try:
                yield
            except KeyboardInterrupt as exc:
                signum = seen.of(exc)
                self._halt()
                message = self._interrupted_message()
                if self.log is not None and not self.log.closed:
                    self._end_log("interrupted", stage=self.phase, signal=signal.Signals(signum).name)
                raise Interrupted(message, signum) from None
            except BaseException:
                self.executor.close()
                raise

    def _interrupted_message(self) -> str:
        if self.phase == "shards":
            try:
                kept = kept_count(self.plan, self.fs, self.root)
            except OSError:  # storage unreachable now: what the driver heard of is a lower bound
                kept = self.progress.done_count
            return (f"interrupted: {kept} of {self.plan.total_shards} shards are complete and kept; rerun the "
                    f"same command to finish the rest")
        if self.phase == "finish" and _complete(self.opts):
            return "interrupted after the manifest was written: the dataset is complete"
        return ("interrupted before the dataset was finished: complete shards are kept and no manifest names a "
                "missing one; rerun the same command to finish")

    # ---------------------------------------------------------------------------------------------- helpers

    @property
    def _out(self) -> str:
        return self.root if storage.is_local(self.fs) else storage.url_of(self.fs, self.root)

    def _end_log(self, event: str, **fields) -> None:
        """The log's last event; then, for an object store, the local spool uploaded to OUT/_logs/. An upload that
        fails is a note, not a failed build: the dataset does not depend on its diagnostics."""
        self.log.emit(event, **fields)
        self.log.close()
        if storage.is_local(self.fs):
            return
        target = storage.join(self.root, LOGS, self.log.path.name)
        try:
            self.fs.put_file(str(self.log.path), target)
        except storage.errors() as exc:
            self.opts.echo(f"warning: the event log stays at {self.log.path}: uploading it to "
                           f"{storage.url_of(self.fs, target)} failed ({type(exc).__name__}: {exc})")

    def _provenance(self) -> dict:
        """How the run that finished the dataset ran (a resumed build: its last run; earlier runs are in `_logs/`).
        Package versions come from `manifest.environment()`, read from metadata: importing torch for its version
        cost the end of every Ray build 2.6 s on 2 cores."""
        return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(self.progress.elapsed, 3), "command": self.opts.command,
                "executor": self.executor.name, "backend": self.backend, "device": self.executor.device}


class _Drive:
    """The shard loop: submit while slots are free, collect results, resubmit failures."""

    def __init__(self, build: _Build, job: ShardJob):
        self.build, self.job, self.executor = build, job, build.executor
        self.queue = deque(build.todo)
        self.attempts: dict[tuple[str, int], int] = {}
        self.watch = StorageWatch(build.fs, build.root, build.progress, build.log)

    def run(self) -> None:
        claim = self.build.opts.claim
        while self.queue or self.executor.pending():
            if claim is not None:
                claim.check()  # a writer whose output was taken over stops before its next shard
            self._submit()
            for key, result in self.executor.wait(timeout=1.0):
                if isinstance(result, BaseException):
                    self._failure(key, result)
                else:
                    self._success(key, result)

    def _submit(self) -> None:
        while self.queue and self.executor.pending() < self.executor.slots:
            key = self.queue.popleft()
            self.attempts[key] = self.attempts.get(key, 0) + 1
            self.watch.submitted(key)
            self.executor.submit(self.job, *key)

    def _failure(self, key, error: BaseException) -> None:
        if _is(error, BandUnreachable):
            raise BandUnreachable(_cause_text(error, BandUnreachable))
        if self.watch.casualty(key):  # the store, not the shard: no attempt spent
            self.attempts[key] -= 1
            self.queue.appendleft(key)
            return
        final = self.attempts[key] >= self.build.opts.max_attempts
        self.build.progress.failed(*key, error, final)
        self.build.log.emit("shard_failed", split=key[0], index=key[1], attempt=self.attempts[key], final=final,
                            error=f"{type(error).__name__}: {error}")
        if final:
            self.build.failed[key] = error
        else:
            self.queue.append(key)

    def _success(self, key, result) -> None:
        split, index = key
        self.build.records[split][index] = result.record
        self.build.progress.done(result.record, result.timings)
        self.build.log.emit("shard_done", split=split, index=index, attempt=self.attempts[key],
                            samples=result.record.get("samples"), tokens=result.record.get("tokens"),
                            bytes=result.record.get("bytes"), counts=result.record.get("counts"),
                            timings={k: round(v, 5) for k, v in result.timings.items()},
                            cpu_s=round(result.cpu_s, 4), node=result.node, pid=result.pid,
                            peak_rss_mb=round(result.peak_rss_mb, 1))


# -------------------------------------------------------------------------------------------------- signals


@dataclass
class SignalSeen:
    """The signal `terminate_as_interrupt`'s handler took last (None: none, or a plain Ctrl-C)."""

    signum: int | None = None

    def of(self, exc: KeyboardInterrupt) -> int:
        """The signal behind `exc`: Ray's blocking calls (ray.wait, ray.get) re-raise the handler's exception as a
        plain KeyboardInterrupt, so the handler's own record decides; without one it was Ctrl-C."""
        return self.signum or signal.SIGINT


@contextlib.contextmanager
def terminate_as_interrupt():
    """While it is open, SIGTERM raises a KeyboardInterrupt in the main thread instead of killing the process;
    yields the `SignalSeen` that tells the two apart."""
    seen = SignalSeen()
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield seen
        return

    def handler(signum, frame):
        seen.signum = signum
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)


# -------------------------------------------------------------------------------------------------- helpers


def _compile_kernel(opts: BuildOptions) -> None:
    """Compile (or load) the CPU kernel here, once, before any shard runs: a new machine's first build says it is
    compiling instead of sitting at 0 shards, and Ray workers on this machine then load the cached kernel."""
    from nca_datagen.rollout import compile_cpu_kernel

    say = (lambda message: None) if opts.quiet else opts.echo
    notice = threading.Timer(COMPILE_NOTICE_S, say, ["compiling the CPU kernel: once per machine (and nca-datagen "
                                                     "version), about 30 s on 2 cores; later builds load it in under "
                                                     "a second"])
    notice.start()
    t0 = time.perf_counter()
    try:
        compiled = compile_cpu_kernel()
    finally:
        notice.cancel()
    if compiled:
        say(f"compiled the CPU kernel in {format_duration(time.perf_counter() - t0)} (cached for later builds)")


def _complete(opts: BuildOptions) -> bool:
    """Whether the output holds a manifest whose every listed file is there."""
    from nca_datagen.manifest import read_manifest
    from nca_datagen.verify import listed_but_absent

    try:
        manifest = read_manifest(opts.out_url, opts.storage_options)
    except ValueError:
        return False
    return not listed_but_absent(*storage.filesystem(opts.out_url, opts.storage_options), manifest)


def _is(exc: BaseException, cls) -> bool:
    return isinstance(exc, cls) or isinstance(getattr(exc, "cause", None), cls)


def _cause_text(exc: BaseException, cls) -> str:
    cause = exc if type(exc) is cls else getattr(exc, "cause", exc)
    return str(cause) if isinstance(cause, cls) else str(exc).strip().splitlines()[-1]


def _log_path(root: str, local: bool) -> Path:
    """Local outputs: OUT/_logs/build-<UTC time>.jsonl. Object stores: a local spool (`storage.cache_folder`),
    uploaded to OUT/_logs/ when the build ends (an append-only log does not suit objects written whole)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    if local:
        return Path(root) / LOGS / f"build-{stamp}.jsonl"
    return storage.cache_folder("logs") / hashlib.sha256(root.encode()).hexdigest()[:12] / f"build-{stamp}.jsonl"

