"""The build driver: run every missing shard of a plan on an executor, then write the manifest (last).

    prepare output -> skip verified shards -> run the rest (bounded in flight, retried) -> manifest + card

The driver keeps only small records in memory: workers write shards themselves and return the record. Work
in flight is bounded by the executor's slots, failed shards are resubmitted a bounded number of times, and the
manifest is written only when every shard exists, so a reader never sees a manifest naming a missing shard.
Rerunning the same command skips every shard whose record exists and whose file matches its size and sha256.
Ctrl-C and SIGTERM stop the workers and keep only complete shards (exit 130 / 143).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import click

from nca_datagen.units import format_bytes, format_count, format_duration, plural

from .plan import BuildPlan

RESUME_THREADS = 16  # records read and shards hashed at once when a build resumes (I/O-bound on object storage)
# A store that stops answering is waited for this long before the build stops (the rerun resumes). Together with
# the ~10 s a failing write takes to give up, a store gone for good stops a build in about a minute and a quarter,
# and an outage of a minute is ridden out. It stays below the claim's staleness (claim.STALE_S): a build that
# waited this long has not lost its claim to a takeover it could not see.
OUTAGE_LIMIT_S = 60.0
PROBE_EVERY_S = 3.0


@dataclass
class BuildOptions:
    out_url: str
    compression: str = "zstd"
    storage_options: dict | None = None
    backend: str | None = None
    device: str = "cpu"
    overwrite: bool = False
    quiet: bool = False
    max_attempts: int = 3  # first try + 2 retries
    command: str = ""
    claim: object = None  # the output's claim (`nca_datagen.claim`): checked between shards and before the manifest


class BuildFailed(click.ClickException):
    """Shards that still failed after their retries (named in the message); no manifest was written."""


def run_build(plan: BuildPlan, executor, opts: BuildOptions) -> dict:
    """Build every missing shard of `plan` on `executor`, then write the manifest. Returns the manifest.

    Ctrl-C or SIGTERM at any point exits 130 / 143 with a message saying what is kept: while the shards run the
    workers are stopped and the complete shards counted; before or after (output set-up, manifest and card) no
    half-written file is visible either, and a rerun finishes the job."""
    with _terminate_as_interrupt():
        try:
            return _run_build(plan, executor, opts)
        except KeyboardInterrupt as exc:  # not while the shards run: _run_build answers those itself
            executor.close()
            click.echo(_interrupted_outside_the_shards(opts), err=True)
            raise SystemExit(128 + _signal_number(exc)) from None


def _interrupted_outside_the_shards(opts: BuildOptions) -> str:
    from nca_datagen import storage
    from nca_datagen.manifest import read_manifest
    from nca_datagen.verify import listed_but_absent

    fs, root = storage.filesystem(opts.out_url, opts.storage_options)
    try:
        complete = not listed_but_absent(fs, root, read_manifest(opts.out_url, opts.storage_options))
    except ValueError:  # no manifest (yet)
        complete = False
    if complete:
        return "interrupted after the manifest was written: the dataset is complete"
    return ("interrupted before the dataset was finished: complete shards are kept and no manifest names a missing "
            "one; rerun the same command to finish")


def _run_build(plan: BuildPlan, executor, opts: BuildOptions) -> dict:
    from nca_datagen import ownership, storage
    from nca_datagen.config import recipe_fingerprint
    from nca_datagen.progress import BuildProgress, EventLog
    from nca_datagen.rollout import resolve_backend

    from .executors import FAULT_DIR_ENV, FAULTS_ENV, ShardJob

    config = plan.config
    fs, root = storage.filesystem(opts.out_url, opts.storage_options)
    local = storage.is_local(fs)
    existed = storage.exists(fs, root)
    ownership.prepare_output(opts.out_url, config, opts.compression, overwrite=opts.overwrite,
                             storage_options=opts.storage_options, planned=plan.shards)
    log_path = _log_path(root, local)
    log = EventLog(log_path)
    job = ShardJob(config=config, out_url=root if local else storage.url_of(fs, root), compression=opts.compression,
                   storage_options=opts.storage_options, backend=opts.backend, device=opts.device,
                   threads=executor.worker_threads,
                   faults=os.environ.get(FAULTS_ENV, ""), fault_dir=os.environ.get(FAULT_DIR_ENV, ""))
    records, todo = resume_state(plan, fs, root, recipe_fingerprint(config, opts.compression))
    job = replace(job, level=_existing_level(records))  # a resumed dataset keeps one zstd level
    backend = resolve_backend(opts.backend, opts.device)
    log.emit("build_start", out=job.out_url, executor=executor.description, backend=backend, device=opts.device,
             shards=plan.shards, skipped=sum(len(r) for r in records.values()), todo=len(todo),
             config=config.to_dict(), command=opts.command)
    if backend == "numba" and todo:
        _compile_before_the_shards(opts.quiet)  # its time then counts in no shard's speed or stages
    progress = BuildProgress(plan.total_shards, already_done=plan.total_shards - len(todo), quiet=opts.quiet)
    progress.message(f"building {len(todo)} of {plan.total_shards} shards on {executor.description}, "
                     f"backend {backend} on {opts.device}; log: {log_path}")
    if executor.name == "ray" and todo:  # the driver mostly waits on Ray: import the card's libraries meanwhile
        from nca_datagen.card import preload

        threading.Thread(target=preload, name="card-preload", daemon=True).start()
    try:
        failed = _drive(executor, job, todo, records, progress, log, opts)
    except _Unreachable as exc:
        _halt(executor, progress)
        log.emit("build_abandoned", error=str(exc))
        log.close()
        kept = _kept_count(plan, fs, root)
        if not kept:  # an impossible config: remove what this build wrote, so a fixed command starts afresh
            _remove_abandoned(fs, root, existed, log_path)
        advice = (f"{kept} complete shard(s) are kept: rerun with --overwrite to change --complexity" if kept else
                  "Nothing was kept: fix --complexity and rerun.")
        raise click.ClickException(f"{exc}\n{advice}") from None
    except StorageUnreachable as exc:
        _halt(executor, progress)
        _end_log(log, fs, root, "build_abandoned", error=str(exc))
        done = f"{progress.done_count} of {plan.total_shards} shards are complete"
        raise click.ClickException(f"{exc} ({done})") from None
    except KeyboardInterrupt as exc:
        _halt(executor, progress)
        try:
            kept = _kept_count(plan, fs, root)
        except OSError:  # storage unreachable now: what the driver heard of is a lower bound
            kept = progress.done_count
        _end_log(log, fs, root, "interrupted", done=kept, total=plan.total_shards,
                 signal=signal.Signals(_signal_number(exc)).name)
        click.echo(f"interrupted: {kept} of {plan.total_shards} shards are complete and kept; "
                   f"rerun the same command to finish the rest", err=True)
        raise SystemExit(128 + _signal_number(exc)) from None  # the shell's convention: 130 Ctrl-C, 143 SIGTERM
    except BaseException:
        executor.close()  # unexpected errors too: no Ray is left behind
        raise
    # Every shard is done or failed for good. Ray shuts down in the background while the manifest and the card
    # are written (each takes 1-2 s on 2 cores; shutdown mostly waits on processes, so they overlap).
    closing = threading.Thread(target=executor.close, name="executor-close")
    closing.start()
    try:
        progress.close()
        result = _finish(plan, opts, records, failed, log, _provenance(opts, executor, backend, progress), progress)
    except KeyboardInterrupt as exc:
        if not log.closed:
            log.emit("interrupted", done=plan.total_shards, total=plan.total_shards, stage="manifest",
                     signal=signal.Signals(_signal_number(exc)).name)
            log.close()
        raise
    finally:
        closing.join()
    _summary(plan, opts, progress, result, log_path)
    return result


COMPILE_NOTICE_S = 3.0  # loading numba's cached kernel takes under a second: still busy after this, it compiles


def _compile_before_the_shards(quiet: bool) -> None:
    """Compile (or load) the CPU kernel here, once, before any shard runs: a new machine's first build says it is
    compiling instead of sitting at 0 shards, and Ray workers on this machine then load the cached kernel."""
    from nca_datagen.rollout import compile_cpu_kernel

    notice = threading.Timer(COMPILE_NOTICE_S, lambda: quiet or click.echo(
        "compiling the CPU kernel: once per machine (and nca-datagen version), about 30 s on 2 cores; later builds "
        "load it in under a second", err=True))
    notice.start()
    t0 = time.perf_counter()
    try:
        compiled = compile_cpu_kernel()
    finally:
        notice.cancel()
    if compiled and not quiet:
        click.echo(f"compiled the CPU kernel in {format_duration(time.perf_counter() - t0)} (cached for later "
                   f"builds)", err=True)


def _finish(plan, opts, records, failed, log, provenance, progress) -> dict:
    """Once every shard is done or failed for good: name the failures (no manifest), or write the manifest and
    card; either way the event log ends. Returns the manifest."""
    from nca_datagen import ownership, storage

    fs, root = storage.filesystem(opts.out_url, opts.storage_options)
    if failed:
        names = [f"{s}:{i}" for s, i in sorted(failed)]
        _end_log(log, fs, root, "build_failed", failed=names)
        raise BuildFailed(f"{len(failed)} shard(s) failed after {opts.max_attempts} attempts: "
                          f"{', '.join(names)}. No manifest was written; the other shards are kept. Fix the "
                          f"cause (see {log.path}) and rerun the same command to build only what is missing.")
    log.emit("shards_done", seconds=progress.elapsed)
    if opts.claim is not None:
        opts.claim.check()  # no manifest over shards another writer may have replaced
    ordered = {split: [records[split][i] for i in range(n)] for split, n in plan.shards.items()}
    try:
        result = ownership.finish_output(opts.out_url, plan.config, ordered, provenance,
                                         storage_options=opts.storage_options)
    except storage.errors() as exc:  # a full disk, a lost endpoint: name the step, keep the shards
        log.emit("manifest_failed", error=f"{type(exc).__name__}: {exc}")
        log.close()
        raise click.ClickException(
            f"every shard is complete, but writing the manifest and card to {opts.out_url} failed "
            f"({type(exc).__name__}: {exc}). Fix the cause and rerun the same command: it only writes "
            f"them") from exc
    _end_log(log, fs, root, "build_end", seconds=progress.elapsed, tokens_built=progress.tokens,
             tokens_per_s=progress.tokens_per_s, stage_seconds=progress.stage_seconds)
    return result


def _signal_number(exc: KeyboardInterrupt) -> int:
    if isinstance(exc, _Terminated):
        return exc.signum
    # Ray's blocking calls (ray.wait, ray.get) turn any KeyboardInterrupt raised inside them into a plain one
    return _Terminated.received or signal.SIGINT


def _remove_abandoned(fs, root: str, existed: bool, log_path: Path) -> None:
    """Undo a build that kept nothing: the folder if it made it, else its build marker, its event log and the
    empty folders it made (a user's files in a folder that existed stay)."""
    from nca_datagen import storage
    from nca_datagen.config import SPLITS
    from nca_datagen.manifest import LOGS
    from nca_datagen.ownership import remove_build_marker, remove_empty_folders

    if not existed:
        if storage.exists(fs, root):
            storage.remove(fs, root)
        return
    remove_build_marker(fs, root)
    if storage.is_local(fs):  # an object store's log is a local spool
        log_path.unlink(missing_ok=True)
    remove_empty_folders(fs, root, (LOGS, *SPLITS))


def _halt(executor, progress) -> None:
    """Stop workers, cancelling what runs (writes are atomic, so only complete shards stay), and the progress bar."""
    executor.cancel()
    executor.close()
    progress.close()


class _Unreachable(Exception):
    pass


class _Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a batch scheduler, a container stopping), stopped the way Ctrl-C stops a build."""

    received: int | None = None  # the signal the handler saw, for when Ray re-raised it as a plain KeyboardInterrupt

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _terminate_as_interrupt():
    """While the shards run, SIGTERM raises `_Terminated` in the driver instead of killing it outright."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return

    def handler(signum, frame):
        _Terminated.received = signum
        raise _Terminated(signum)

    _Terminated.received = None
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _drive(executor, job, todo, records, progress, log, opts: BuildOptions) -> dict:
    """Submit while slots are free, collect results, resubmit failures; returns {(split, index): error}. Stops
    (`claim.ClaimLost`) once another writer has taken the output over."""
    from nca_datagen.generate import UnreachableBandError

    queue = deque(todo)
    attempts: dict[tuple[str, int], int] = {}
    failed = {}
    max_attempts = opts.max_attempts
    storage_watch = _StorageWatch(opts, progress, log)
    while queue or executor.pending():
        if opts.claim is not None:
            opts.claim.check()
        while queue and executor.pending() < executor.slots:
            key = queue.popleft()
            attempts[key] = attempts.get(key, 0) + 1
            storage_watch.submitted(key)
            executor.submit(job, *key)
        for (split, index), result in executor.wait(timeout=1.0):
            if isinstance(result, BaseException):
                if _is(result, UnreachableBandError):
                    raise _Unreachable(_cause_text(result, UnreachableBandError))
                if storage_watch.casualty((split, index)):  # the store, not the shard: no attempt spent
                    attempts[(split, index)] -= 1
                    queue.appendleft((split, index))
                    continue
                final = attempts[(split, index)] >= max_attempts
                progress.failed(split, index, result, final)
                log.emit("shard_failed", split=split, index=index, attempt=attempts[(split, index)], final=final,
                         error=f"{type(result).__name__}: {result}")
                if final:
                    failed[(split, index)] = result
                else:
                    queue.append((split, index))
                continue
            records[split][index] = result.record
            progress.done(result.record, result.timings)
            log.emit("shard_done", split=split, index=index, attempt=attempts[(split, index)],
                     samples=result.record.get("samples"), tokens=result.record.get("tokens"),
                     bytes=result.record.get("bytes"), counts=result.record.get("counts"),
                     timings={k: round(v, 5) for k, v in result.timings.items()}, cpu_s=round(result.cpu_s, 4),
                     node=result.node, pid=result.pid,
                     peak_rss_mb=round(result.peak_rss_mb, 1))
    return failed


class StorageUnreachable(Exception):
    """The output's storage stopped answering for longer than `OUTAGE_LIMIT_S`."""


class _StorageWatch:
    """Tells a shard that failed because the store stopped answering from one that failed on its own.

    On a failure the store is probed (`storage.unreachable`); while it does not answer the driver waits, probing
    every `PROBE_EVERY_S`, up to `OUTAGE_LIMIT_S`, then raises `StorageUnreachable`. Shards submitted before an
    outage ended are its casualties: they go back to the queue without spending an attempt."""

    def __init__(self, opts, progress, log):
        from nca_datagen import storage

        self.fs, self.root = storage.filesystem(opts.out_url, opts.storage_options)
        self.progress, self.log = progress, log
        self.submitted_at: dict[tuple[str, int], float] = {}
        self.outage_ended = float("-inf")

    def submitted(self, key) -> None:
        self.submitted_at[key] = time.monotonic()

    def casualty(self, key) -> bool:
        """Whether the failed shard `key` met an outage (waiting one out if it is still on)."""
        from nca_datagen import storage

        error = storage.unreachable(self.fs, self.root)
        if error is not None:
            self._wait(error)
        return self.submitted_at.get(key, float("inf")) < self.outage_ended

    def _wait(self, error: str) -> None:
        from nca_datagen import storage

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
        raise StorageUnreachable(f"{where} did not answer for {OUTAGE_LIMIT_S:.0f} s ({error}): the build stopped. "
                                 f"Complete shards are kept; rerun the same command once the storage answers, "
                                 f"and it resumes")


def _is(exc: BaseException, cls) -> bool:
    return isinstance(exc, cls) or isinstance(getattr(exc, "cause", None), cls)


def _cause_text(exc: BaseException, cls) -> str:
    cause = exc if type(exc) is cls else getattr(exc, "cause", exc)
    return str(cause) if isinstance(cause, cls) else str(exc).strip().splitlines()[-1]


def resume_state(plan, fs, root, recipe: str):
    """Records of shards that are complete and verified, and the (split, index) list still to build.

    A shard counts when its record is nca-datagen's, made by `recipe` (`shards.load_record`), and the shard has
    the recorded size and sha256: anything else is rebuilt. One listing per split gives the records that exist and
    every shard's size; only those records are read and their shards hashed, in `RESUME_THREADS` threads (a couple
    of round trips each on object storage). Asking for every planned record instead took a fresh 1,125-shard build
    on a local S3 server 26 s to start."""
    from nca_datagen import storage
    from nca_datagen.shards import load_record

    files, existing = _listed_records(plan, fs, root)

    def verified(key):
        rec = load_record(fs, root, *key, recipe=recipe)
        ok = rec is not None and files[key[0]].get(storage.basename(rec["path"])) == rec["bytes"]
        return rec if ok and _hash_matches(fs, root, rec) else None

    with ThreadPoolExecutor(RESUME_THREADS) as pool:
        found = dict(zip(existing, pool.map(verified, existing), strict=True))
    records: dict[str, dict[int, dict]] = {split: {} for split in plan.shards}
    for (split, index), rec in found.items():
        if rec is not None:
            records[split][index] = rec
    todo = [(split, index) for split, n in plan.shards.items() for index in range(n) if index not in records[split]]
    return records, todo


def damaged_files(fs, root: str, manifest: dict) -> list[str]:
    """The tables and card files a manifest lists that are missing or differ from their recorded sha256."""
    from nca_datagen import storage
    from nca_datagen.manifest import listed_files

    listed = listed_files(manifest).items()
    return [rel for rel, info in listed if storage.size(fs, storage.join(root, rel)) != info["bytes"]
            or hashlib.sha256(storage.read_bytes(fs, storage.join(root, rel))).hexdigest() != info["sha256"]]


def _listed_records(plan, fs, root) -> tuple[dict[str, dict[str, int]], list[tuple[str, int]]]:
    """One listing per split ({file name: size}) and the planned shards whose record it holds. A record is
    written after its shard, so each one names a shard that was complete (resume still checks it)."""
    from nca_datagen import storage
    from nca_datagen.shards import record_name

    files = {split: storage.listing(fs, storage.join(root, split)) for split in plan.shards}
    existing = [(split, index) for split, n in plan.shards.items() for index in range(n)
                if storage.basename(record_name(split, index)) in files[split]]
    return files, existing


def _kept_count(plan, fs, root) -> int:
    """Shards with a record once the workers have stopped. On Ray a record can land after the driver last heard
    from its worker, so the driver's own count can fall short of what is kept."""
    return len(_listed_records(plan, fs, root)[1])


def _existing_level(records: dict[str, dict[int, dict]]) -> int | None:
    """The zstd level of the shards already written (None for a fresh build: the default applies)."""
    return next((r.get("level") for recs in records.values() for r in recs.values()), None)


def _hash_matches(fs, root: str, record: dict) -> bool:
    """The shard's sha256 is the one its record promises (streamed: shards are never held whole here)."""
    from nca_datagen import storage

    digest = hashlib.sha256()
    with fs.open(storage.join(root, record["path"]), "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest() == record.get("sha256")


def _log_path(root: str, local: bool) -> Path:
    """Local outputs: OUT/_logs/build-<UTC time>.jsonl. Object stores: a local spool (`storage.cache_folder`),
    uploaded to OUT/_logs/ when the build ends (an append-only log does not suit objects written whole)."""
    from nca_datagen import storage
    from nca_datagen.manifest import LOGS

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    if local:
        return Path(root) / LOGS / f"build-{stamp}.jsonl"
    return storage.cache_folder("logs") / hashlib.sha256(root.encode()).hexdigest()[:12] / f"build-{stamp}.jsonl"


def _end_log(log, fs, root: str, event: str, **fields) -> None:
    """The log's last event; then, for an object store, the local spool uploaded to OUT/_logs/. An upload that
    fails is a warning, not a failed build: the dataset does not depend on its diagnostics."""
    from nca_datagen import storage
    from nca_datagen.manifest import LOGS

    log.emit(event, **fields)
    log.close()
    if storage.is_local(fs):
        return
    target = storage.join(root, LOGS, log.path.name)
    try:
        fs.put_file(str(log.path), target)
    except storage.errors() as exc:
        click.echo(f"warning: the event log stays at {log.path}: uploading it to {storage.url_of(fs, target)} "
                   f"failed ({type(exc).__name__}: {exc})", err=True)


def _provenance(opts, executor, backend, progress) -> dict:
    """How the run that finished the dataset ran (a resumed build: its last run; earlier runs are in `_logs/`).
    (Package versions come from `manifest.environment()`, read from package metadata:
    importing torch here for its version cost the end of every Ray build 2.6 s on 2 cores, plus its teardown.)"""
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(progress.elapsed, 3),
        "command": opts.command,
        "executor": executor.name,
        "backend": backend,
        "device": opts.device,
    }


def _summary(plan, opts, progress, result, log_path) -> None:
    from nca_datagen.progress import stage_split, summary_table

    built_s = progress.elapsed
    rate = f"{format_count(progress.tokens_per_s)} tokens/s"
    made = f"{rate} while making shards" if progress.tokens else "every shard was already there"
    line = (f"done: {plural(plan.total_shards, 'shard')}, {format_count(plan.total_tokens)} tokens in {opts.out_url} "
            f"({format_duration(built_s)} with the manifest and card; {made})")
    if opts.quiet:
        click.echo(line)
        return
    rows = [(s.split, f"{s.sequences_text}, {format_count(s.tokens)} tokens, {plural(s.shards, 'shard')}")
            for s in plan.splits if s.shards]
    rows += [
        ("built now", f"{format_count(progress.tokens)} tokens: shards in {format_duration(progress.shards_seconds)} "
                      f"({rate}), then manifest and card in "
                      f"{format_duration(built_s - progress.shards_seconds)}"),
        ("acceptance", "-" if not progress.candidates else
         f"{progress.acceptance:.1%} of {progress.candidates:,} candidate rules (band {plan.config.band})"),
        ("stages", stage_split(progress.stage_seconds)),
        ("bytes", format_bytes(_total_bytes(result))),
        ("event log", str(log_path)),
    ]
    progress.console.print(summary_table("nca-datagen build", rows))
    click.echo(line)


def _total_bytes(manifest: dict) -> int:
    totals = manifest.get("totals") or {}
    if "bytes" in totals:
        return int(totals["bytes"])
    return sum(int(r.get("bytes", 0)) for recs in (manifest.get("shards") or {}).values() for r in recs)

