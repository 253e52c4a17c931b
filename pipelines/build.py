"""`nca-datagen build`: one command from a token budget to a finished dataset.

    plan (budget -> rules -> shards) -> prepare output -> skip verified shards -> run the rest -> manifest (last)

The plan is arithmetic on the config. Tokens are counted as stored: every sequence contributes its full
`seq_len` tokens (1026 at the paper's settings: 27 frames x 38). The paper's "164M" counts the 1024 input
tokens a sequence feeds the model (16,000 rules x 10 sims x 1024 = 163.84M); the same data is 164.16M stored
tokens, which is what `--preset paper` asks for, so it plans exactly 16,000 x 10 training and 2,000 x 10
validation sequences. A budget becomes whole rules (each `sims_per_rule` sequences), rules become whole shards
(`samples_per_shard / sims_per_rule` rules each); the shard count rounds up and every shard is full, because a
shard's content is a function of (config, split, index) alone.

The driver keeps only small records in memory: workers write shards themselves and return the record. Work
in flight is bounded by the executor's slots, failed shards are resubmitted a bounded number of times, and the
manifest is written only when every shard exists, so a reader never sees a manifest naming a missing shard.
Rerunning the same command skips every shard whose record exists and whose file matches its size and sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shlex
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import click

from nca_datagen.units import COUNT, format_bytes, format_count, format_duration, plural

# Estimates for --dry-run. Speed: benchmarks/bench_build.py at 45M tokens on a shared 2-core Xeon (numba backend,
# paper config, 50%+ band; results/build-40M.json) measured 1.4-1.6M stored tokens/s per worker in steady state;
# the GPU figure is the design target (paper dataset in < 10 s on an H200), not a measurement. Size: one
# 200-sequence 50%+ shard at the default zstd level (3) is 1.69 bytes/token (50%+ rules are near-incompressible by
# design; a 30-40% band gives ~0.94); plain tar is 4.04 (two 512-byte tar headers and the JSON member per
# sequence). Fixed costs on that machine: Ray start-up ~6 s, first shard ~2 s, manifest, card and shutdown ~3-4 s.
EST_TOKENS_PER_S_PER_CPU = 1.4e6
EST_TOKENS_PER_S_PER_GPU = 16e6
EST_STARTUP_S = 12.0
EST_BYTES_PER_TOKEN = {"zstd": 1.69, "none": 4.04}
PAPER = {"train_rules": 16_000, "val_rules": 2_000, "sims_per_rule": 10, "band": "50%+"}
DEFAULT_VAL_FRACTION = 0.125  # the paper's 2,000 validation rules per 16,000 training rules
RESUME_THREADS = 16  # records read and shards hashed at once when a build resumes (I/O-bound on object storage)


# -- plan --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitPlan:
    split: str
    tokens_requested: int
    rules: int  # whole shards' worth, >= what the budget needs
    shards: int
    sequences: int
    tokens: int  # stored tokens the split will hold


@dataclass(frozen=True)
class BuildPlan:
    config: object  # DatasetConfig
    splits: tuple[SplitPlan, ...]

    @property
    def shards(self) -> dict[str, int]:
        return {s.split: s.shards for s in self.splits if s.shards}

    @property
    def total_shards(self) -> int:
        return sum(s.shards for s in self.splits)

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.splits)

    def estimated_bytes(self, compression: str) -> int:
        return int(self.total_tokens * EST_BYTES_PER_TOKEN[compression])

    def estimated_seconds(self, cpus: int, gpus: int = 0) -> float:
        rate = gpus * EST_TOKENS_PER_S_PER_GPU if gpus else max(cpus, 1) * EST_TOKENS_PER_S_PER_CPU
        return EST_STARTUP_S + self.total_tokens / rate


def plan_build(config, tokens: int, val_tokens: int | None = None, val_fraction: float | None = None) -> BuildPlan:
    """Turn token budgets into whole rules and whole shards (see the module docstring for the counting)."""
    if val_tokens is not None and val_fraction is not None:
        raise ValueError("give --val-tokens or --val-fraction, not both")
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction {val_fraction}: choose 0 <= fraction < 1 (paper: 0.125)")
    if tokens <= 0:
        raise ValueError("--tokens must be positive: how many training tokens to generate, e.g. 2M")
    if val_tokens is None:
        val_tokens = round(tokens * (DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction))
    return BuildPlan(config, (_split_plan(config, "train", tokens), _split_plan(config, "val", val_tokens)))


def _split_plan(config, split: str, tokens: int) -> SplitPlan:
    seq_len = config.nca.seq_len
    rules_needed = math.ceil(tokens / (seq_len * config.sims_per_rule))
    shards = math.ceil(rules_needed / config.rules_per_shard)
    rules = shards * config.rules_per_shard
    sequences = rules * config.sims_per_rule
    return SplitPlan(split, tokens, rules, shards, sequences, sequences * seq_len)


def dataset_config(*, grid, states, patch, frames, burn_in, temperature, band, seed, sims_per_rule,
                   samples_per_shard, seq_len=None):
    """Build (and validate) the DatasetConfig from CLI values; ValueError names the option to fix."""
    from nca_datagen.config import DatasetConfig, NCAConfig

    if samples_per_shard % sims_per_rule:
        raise ValueError(f"--samples-per-shard {samples_per_shard} is not a multiple of --sims-per-rule "
                         f"{sims_per_rule}: a shard holds whole rules; try "
                         f"{max(1, round(samples_per_shard / sims_per_rule)) * sims_per_rule}")
    nca = NCAConfig(grid=grid, states=states, patch=patch, burn_in=burn_in, temperature=temperature)
    if seq_len is not None:
        if seq_len % nca.tokens_per_frame:
            raise ValueError(f"--seq-len {seq_len} is not a multiple of the {nca.tokens_per_frame} tokens per frame "
                             f"({nca.patches_per_frame} patches + 2 delimiters): try "
                             f"{max(1, round(seq_len / nca.tokens_per_frame)) * nca.tokens_per_frame}")
        frames = seq_len // nca.tokens_per_frame
    nca = replace(nca, frames=frames)
    return DatasetConfig(nca=nca, band=band, seed=seed, sims_per_rule=sims_per_rule,
                         rules_per_shard=samples_per_shard // sims_per_rule)


# -- driver ------------------------------------------------------------------------------------------------


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
    from nca_datagen.manifest import MANIFEST

    fs, root = storage.filesystem(opts.out_url, opts.storage_options)
    if storage.exists(fs, storage.join(root, MANIFEST)):  # prepare_output let none through: this build wrote it
        return "interrupted after the manifest was written: the dataset is complete"
    return ("interrupted before the dataset was finished: complete shards are kept and no manifest names a missing "
            "one; rerun the same command to finish")


def _run_build(plan: BuildPlan, executor, opts: BuildOptions) -> dict:
    from nca_datagen import manifest, storage
    from nca_datagen.progress import BuildProgress, EventLog
    from nca_datagen.rollout import resolve_backend

    from .executors import FAULT_DIR_ENV, FAULTS_ENV, ShardJob

    config = plan.config
    fs, root = storage.filesystem(opts.out_url, opts.storage_options)
    local = storage.is_local(fs)
    existed = storage.exists(fs, root)
    manifest.prepare_output(opts.out_url, config, overwrite=opts.overwrite, storage_options=opts.storage_options,
                            settings={"compression": opts.compression})
    log_path = _log_path(root, local)
    log = EventLog(log_path)
    job = ShardJob(config=config, out_url=root if local else storage.url_of(fs, root), compression=opts.compression,
                   storage_options=opts.storage_options, backend=opts.backend, device=opts.device,
                   threads=executor.worker_threads,
                   faults=os.environ.get(FAULTS_ENV, ""), fault_dir=os.environ.get(FAULT_DIR_ENV, ""))
    records, todo = _resume_state(plan, fs, root)
    job = replace(job, level=_existing_level(records))  # a resumed dataset keeps one zstd level
    backend = resolve_backend(opts.backend, opts.device)
    log.emit("build_start", out=job.out_url, executor=executor.description, backend=backend, device=opts.device,
             shards=plan.shards, skipped=sum(len(r) for r in records.values()), todo=len(todo),
             config=config.to_dict(), command=opts.command)
    progress = BuildProgress(plan.total_shards, already_done=plan.total_shards - len(todo), quiet=opts.quiet)
    progress.message(f"building {len(todo)} of {plan.total_shards} shards on {executor.description}, "
                     f"backend {backend} on {opts.device}; log: {log_path}")
    if executor.name == "ray" and todo:  # the driver mostly waits on Ray: import the card's libraries meanwhile
        from nca_datagen.card import preload

        threading.Thread(target=preload, name="card-preload", daemon=True).start()
    try:
        failed = _drive(executor, job, todo, records, progress, log, opts.max_attempts)
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
    except KeyboardInterrupt as exc:
        _halt(executor, progress)
        try:
            kept = _kept_count(plan, fs, root)
        except OSError:  # storage unreachable now: what the driver heard of is a lower bound
            kept = progress.done_count
        log.emit("interrupted", done=kept, total=plan.total_shards, signal=signal.Signals(_signal_number(exc)).name)
        log.close()
        _upload_log(fs, root, log_path, local)
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
        if failed:
            names = [f"{s}:{i}" for s, i in sorted(failed)]
            log.emit("build_failed", failed=names)
            log.close()
            _upload_log(fs, root, log_path, local)
            raise BuildFailed(f"{len(failed)} shard(s) failed after {opts.max_attempts} attempts: "
                              f"{', '.join(names)}. No manifest was written; the other shards are kept. Fix the "
                              f"cause (see {log_path}) and rerun the same command to build only what is missing.")
        log.emit("shards_done", seconds=progress.elapsed)
        provenance = _provenance(opts, executor, backend, progress)
        ordered = {split: [records[split][i] for i in range(n)] for split, n in plan.shards.items()}
        try:
            result = manifest.write_manifest(opts.out_url, config, ordered, provenance,
                                             storage_options=opts.storage_options)
        except storage.errors() as exc:  # a full disk, a lost endpoint: name the step, keep the shards
            log.emit("manifest_failed", error=f"{type(exc).__name__}: {exc}")
            raise click.ClickException(
                f"every shard is complete, but writing the manifest and card to {opts.out_url} failed "
                f"({type(exc).__name__}: {exc}). Fix the cause and rerun the same command: it only writes "
                f"them") from exc
        log.emit("build_end", seconds=progress.elapsed, tokens_built=progress.tokens,
                 tokens_per_s=progress.tokens_per_s, stage_seconds=progress.stage_seconds)
        log.close()
        _upload_log(fs, root, log_path, local)
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

    if not existed:
        if storage.exists(fs, root):
            storage.remove(fs, root)
        return
    _remove_marker(fs, root)
    if storage.is_local(fs):  # object stores have no empty folders, and their log is a local spool
        log_path.unlink(missing_ok=True)
        for name in (LOGS, *SPLITS):
            with contextlib.suppress(OSError):  # only an empty one
                os.rmdir(os.path.join(root, name))


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


def _drive(executor, job, todo, records, progress, log, max_attempts) -> dict:
    """Submit while slots are free, collect results, resubmit failures; returns {(split, index): error}."""
    from nca_datagen.generate import UnreachableBandError

    queue = deque(todo)
    attempts: dict[tuple[str, int], int] = {}
    failed = {}
    while queue or executor.pending():
        while queue and executor.pending() < executor.slots:
            key = queue.popleft()
            attempts[key] = attempts.get(key, 0) + 1
            executor.submit(job, *key)
        for (split, index), result in executor.wait(timeout=1.0):
            if isinstance(result, BaseException):
                if _is(result, UnreachableBandError):
                    raise _Unreachable(_cause_text(result, UnreachableBandError))
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


def _is(exc: BaseException, cls) -> bool:
    return isinstance(exc, cls) or isinstance(getattr(exc, "cause", None), cls)


def _cause_text(exc: BaseException, cls) -> str:
    cause = exc if type(exc) is cls else getattr(exc, "cause", exc)
    return str(cause) if isinstance(cause, cls) else str(exc).strip().splitlines()[-1]


def _resume_state(plan, fs, root):
    """Records of shards that are complete and verified, and the (split, index) list still to build.

    One listing per split gives the records that exist and every shard's size; only those records are read and
    their shards hashed, in `RESUME_THREADS` threads (a couple of round trips each on object storage). Asking
    for every planned record instead took a fresh 1,125-shard build on a local S3 server 26 s to start."""
    from nca_datagen import storage
    from nca_datagen.shards import load_record

    files, existing = _listed_records(plan, fs, root)

    def verified(key):
        rec = load_record(fs, root, *key)
        ok = rec is not None and files[key[0]].get(storage.basename(rec["path"])) == rec.get("bytes")
        return rec if ok and _hash_matches(fs, root, rec) else None

    with ThreadPoolExecutor(RESUME_THREADS) as pool:
        found = dict(zip(existing, pool.map(verified, existing), strict=True))
    records: dict[str, dict[int, dict]] = {split: {} for split in plan.shards}
    for (split, index), rec in found.items():
        if rec is not None:
            records[split][index] = rec
    todo = [(split, index) for split, n in plan.shards.items() for index in range(n) if index not in records[split]]
    return records, todo


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


def _upload_log(fs, root: str, log_path: Path, local: bool) -> None:
    if not local:
        from nca_datagen import storage
        from nca_datagen.manifest import LOGS

        fs.put_file(str(log_path), storage.join(root, LOGS, log_path.name))


def _provenance(opts, executor, backend, progress) -> dict:
    """How this build ran. (Package versions come from `manifest.environment()`, read from package metadata:
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
    rows = [(s.split, f"{s.rules:,} rules x {plan.config.sims_per_rule} sims = {s.sequences:,} sequences, "
                      f"{format_count(s.tokens)} tokens, {plural(s.shards, 'shard')}") for s in plan.splits if s.shards]
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


# -- CLI ---------------------------------------------------------------------------------------------------

SECTIONS = {
    "What to build": ["preset", "complexity", "tokens", "val_tokens", "val_fraction", "seed", "sims_per_rule",
                      "samples_per_shard"],
    "Rule family and sequences (defaults: the paper's)": ["grid", "states", "patch", "frames", "seq_len", "burn_in",
                                                          "temperature"],
    "Output": ["out", "compression", "overwrite", "endpoint_url", "profile", "s3_checksums"],
    "Execution": ["executor", "ray_address", "workers", "gpus", "actors_per_gpu", "device", "backend", "retries"],
    "Other": ["dry_run", "quiet", "help"],
}


class SectionedCommand(click.Command):
    """`--help` with options grouped under headings (click lists them flat)."""

    def format_options(self, ctx, formatter):
        rows = {p.name: p.get_help_record(ctx) for p in self.get_params(ctx)}
        placed = set()
        for title, names in SECTIONS.items():
            found = [rows[n] for n in names if rows.get(n)]
            placed.update(names)
            if found:
                with formatter.section(title):
                    formatter.write_dl(found)
        rest = [rec for name, rec in rows.items() if name not in placed and rec]
        if rest:
            with formatter.section("More"):
                formatter.write_dl(rest)


def _parse_grid(ctx, param, value):
    if value is None:
        return None
    text = str(value).lower().replace(" ", "")
    try:
        parts = [int(p) for p in text.split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise click.BadParameter(f"{value!r}: give one size (12) or HEIGHTxWIDTH (12x18)")
    return (parts[0], parts[0]) if len(parts) == 1 else tuple(parts)


def _data_options(fn):
    options = [
        click.option("--preset", type=click.Choice(["paper"]), default=None,
                     help="Reproduce the paper's data: 12x12 grid, 10 states, 2x2 patches, 27 frames, 10 burn-in, "
                          "tau 1e-4, band 50%+, 16,000 x 10 train and 2,000 x 10 val sequences (164M tokens)."),
        click.option("--complexity", "complexity", default="50%+", show_default=True, metavar="BAND",
                     help="gzip-ratio band of kept rules: 0.5:1.0, 0.5:, 50%+, 30-40%, 0.3-0.4, or a preset "
                          "(web, math = 50%+; code = 30-40%)."),
        click.option("--tokens", type=COUNT, default=None,
                     help="Training tokens (K/M/B suffixes: 10K, 2M, 164M). Counted as stored, seq-len per "
                          "sequence (1026 at the paper's settings), rounded up to whole shards. Required unless "
                          "--preset."),
        click.option("--val-tokens", type=COUNT, default=None, help="Validation tokens (rules disjoint from train)."),
        click.option("--val-fraction", type=float, metavar="F", default=None,
                     help=f"Validation tokens as a fraction of --tokens.  [default: {DEFAULT_VAL_FRACTION}, the "
                          f"paper's 2,000 / 16,000 rules]"),
        click.option("--seed", type=click.IntRange(min=0, max=2**64 - 1), metavar="N", default=0, show_default=True,
                     help="Run seed: every draw derives from (seed, split, rule id, sim)."),
        click.option("--sims-per-rule", type=click.IntRange(min=1), metavar="N", default=10, show_default=True,
                     help="Simulations (sequences) per kept rule, each from a fresh initial state."),
        click.option("--samples-per-shard", type=click.IntRange(min=1), metavar="N", default=500, show_default=True,
                     help="Sequences per shard; a multiple of --sims-per-rule (whole rules per shard)."),
        click.option("--grid", callback=_parse_grid, default="12", show_default=True, metavar="H[xW]",
                     help="Grid size in cells: 12 or HEIGHTxWIDTH (12x18); periodic boundary."),
        click.option("--states", type=click.IntRange(min=2), metavar="N", default=10, show_default=True,
                     help="Alphabet size n (cell states)."),
        click.option("--patch", type=click.IntRange(min=1), metavar="N", default=2, show_default=True,
                     help="Patch side p: one token per p x p cells, ids 0..n^(p*p)-1 (must fit uint16)."),
        click.option("--frames", type=click.IntRange(min=1), metavar="N", default=27, show_default=True,
                     help="Frames per sequence (27 x 38 = 1026 tokens at the defaults)."),
        click.option("--seq-len", type=click.IntRange(min=1), metavar="N", default=None,
                     help="Tokens per sequence instead of --frames; a multiple of the tokens per frame."),
        click.option("--burn-in", type=click.IntRange(min=0), metavar="N", default=10, show_default=True,
                     help="Update steps before the first frame."),
        click.option("--temperature", type=click.FloatRange(min=0), metavar="TAU", default=1e-4, show_default=True,
                     help="Sampling temperature tau of the update (0 = argmax)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run_options(fn):
    from nca_datagen.storage import storage_flags

    options = [
        click.option("--out", required=True, metavar="PATH|s3://BUCKET/PREFIX",
                     help="Dataset folder: a local path or an s3:// URL."),
        click.option("--compression", type=click.Choice(["zstd", "none"]), default="zstd", show_default=True,
                     help="Shard compression (none = plain .tar, random access)."),
        click.option("--overwrite", is_flag=True, help="Replace a finished dataset at --out."),
        click.option("--executor", type=click.Choice(["ray", "inline"]), default="ray", show_default=True,
                     help="ray: local Ray (started for this build) or a cluster; inline: this process, one shard "
                          "at a time."),
        click.option("--ray-address", default=None, metavar="auto|HOST:PORT",
                     help="Join a running Ray cluster (default: RAY_ADDRESS, else start a local Ray)."),
        click.option("--workers", type=click.IntRange(min=1), metavar="N", default=None,
                     help="Concurrent CPU tasks.  [default: the CPUs of this machine or the cluster]"),
        click.option("--gpus", type=click.IntRange(min=0), metavar="N", default=None,
                     help="GPUs to use (see --actors-per-gpu).  [default: all GPUs when --device is cuda/auto]"),
        click.option("--actors-per-gpu", type=click.IntRange(min=1), metavar="N", default=4, show_default=True,
                     help="Generator actors sharing each GPU (their host-side work runs on N cores)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="auto = cuda when a GPU is visible (to the cluster), else cpu."),
        click.option("--backend", type=click.Choice(["auto", "numba", "torch", "triton"]), default="auto",
                     show_default=True, help="Rollout backend; all give identical tokens."),
        click.option("--retries", type=click.IntRange(min=0), metavar="N", default=2, show_default=True,
                     help="Resubmissions of a failed shard before the build gives up on it."),
        click.option("--dry-run", is_flag=True, help="Print the plan (rules, sequences, shards, bytes, time); write "
                                                     "nothing."),
        click.option("--quiet", "-q", is_flag=True, help="Print only errors and the final line."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return storage_flags(fn)


@click.command("build", cls=SectionedCommand, context_settings={"help_option_names": ["-h", "--help"]})
@_data_options
@_run_options
@click.pass_context
def build_command(ctx, **kw):
    """Generate, filter, tokenize and write an NCA token dataset.

    \b
    Examples:
      nca-datagen build --complexity 50%+ --tokens 2M --out data/nca-web
      nca-datagen build --preset paper --out s3://bucket/nca-paper --ray-address auto
      nca-datagen build --complexity code --tokens 50M --out data/nca-code --dry-run

    Rerunning the same command resumes: finished shards are verified and skipped
    (a finished dataset: nothing to do).
    """
    from nca_datagen.storage import storage_options_from_flags

    _, plan = _plan_from_options(ctx, kw)
    storage_options = storage_options_from_flags(kw["endpoint_url"], kw["profile"], kw["s3_checksums"]) or None
    if kw["dry_run"]:
        _print_plan(plan, kw)
        return
    from nca_datagen.storage import exclusive

    with exclusive(kw["out"], storage_options, doing="build"):  # a second build here fails at once
        _build(ctx, kw, plan, storage_options)


def _build(ctx, kw, plan: BuildPlan, storage_options) -> None:
    """The build command once the output is this process's: a no-op, or Ray (or inline) and `run_build`."""
    from nca_datagen.manifest import check_output

    if not kw["overwrite"] and _already_built(plan, kw["out"], kw["compression"], storage_options):
        click.echo(f"{kw['out']} already holds this dataset ({plural(plan.total_shards, 'shard')}, "
                   f"{format_count(plan.total_tokens)} tokens): nothing to do (`nca-datagen verify {kw['out']}` "
                   f"re-checks it; --overwrite rebuilds it)")
        return
    try:  # a taken output is refused before Ray starts (~6 s on 2 cores); run_build asks again, then writes
        check_output(kw["out"], plan.config, overwrite=kw["overwrite"], storage_options=storage_options,
                     settings={"compression": kw["compression"]})
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    backend = None if kw["backend"] == "auto" else kw["backend"]
    try:
        executor, device = _start(kw, backend)
    except KeyboardInterrupt:  # Ctrl-C while Ray starts: nothing is written yet (run_build answers its own)
        _shutdown_ray()
        click.echo("interrupted before any shard was built: nothing was written", err=True)
        raise SystemExit(128 + signal.SIGINT) from None
    opts = BuildOptions(out_url=kw["out"], compression=kw["compression"], storage_options=storage_options,
                        backend=backend, device=device,
                        overwrite=kw["overwrite"], quiet=kw["quiet"], max_attempts=kw["retries"] + 1,
                        command=_command_line(ctx))
    if not kw["quiet"]:
        _print_plan(plan, kw, brief=True)
    try:
        run_build(plan, executor, opts)
    except ValueError as exc:  # prepare_output: unwritable output, a dataset with another config, ...
        executor.close()
        raise click.ClickException(str(exc)) from None


def _start(kw, backend: str | None):
    """The executor and its device, once `backend` is known to run there."""
    from nca_datagen.rollout import resolve_backend

    executor, device = _make_executor(kw)
    try:
        resolve_backend(backend, device)
    except ValueError as exc:
        executor.close()
        raise click.BadParameter(str(exc), param_hint="--backend") from None
    return executor, device


def _already_built(plan: BuildPlan, out: str, compression: str, storage_options) -> bool:
    """Whether `out` holds the finished dataset this command would build (same config, shards and compression):
    rerunning a command that completed is then a no-op, as rerunning an interrupted one finishes it."""
    from nca_datagen import storage
    from nca_datagen.manifest import read_manifest

    try:
        manifest = read_manifest(out, storage_options)
    except (ValueError, *storage.errors()):  # no dataset there (or none readable): check_output decides
        return False
    splits = manifest["splits"]
    same = (manifest["config"] == plan.config.to_dict()
            and {split: info["num_shards"] for split, info in splits.items()} == plan.shards
            and all(info["compression"] == compression for info in splits.values()))
    if same:  # a build interrupted between writing the manifest and removing its marker left the marker
        _remove_marker(*storage.filesystem(out, storage_options))
    return same


def _remove_marker(fs, root: str) -> None:
    """Remove the build marker (build.json), if there is one."""
    from nca_datagen import storage
    from nca_datagen.manifest import BUILD

    storage.remove_files(fs, [storage.join(root, BUILD)])  # nothing there: nothing to do


def _command_line(ctx) -> str:
    """The build command as given (explicit options only), for the event log and the manifest's provenance."""
    words = ["nca-datagen", "build"]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        flag = max(param.opts, key=len)
        value = ctx.params.get(param.name)
        if getattr(param, "is_flag", False):
            words.append(flag)
        else:
            text = "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
            words += [flag, text]
    return shlex.join(words)


def _plan_from_options(ctx, kw):
    if kw["preset"] == "paper":
        _apply_paper_preset(ctx, kw)
    if kw["tokens"] is None:
        raise click.BadParameter("give a budget, e.g. --tokens 2M (or --preset paper)", param_hint="--tokens")
    if kw["seq_len"] is not None and ctx.get_parameter_source("frames").name != "DEFAULT":
        raise click.BadParameter("give --frames or --seq-len, not both", param_hint="--seq-len")
    from nca_datagen.complexity import Band

    try:
        band = Band.parse(kw["complexity"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--complexity") from None
    try:
        config = dataset_config(grid=kw["grid"], states=kw["states"], patch=kw["patch"], frames=kw["frames"],
                                burn_in=kw["burn_in"], temperature=kw["temperature"], band=band, seed=kw["seed"],
                                sims_per_rule=kw["sims_per_rule"], samples_per_shard=kw["samples_per_shard"],
                                seq_len=kw["seq_len"])
        plan = plan_build(config, kw["tokens"], kw["val_tokens"], kw["val_fraction"])
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return config, plan


PRESET_FIXED = ("complexity", "tokens", "val_tokens", "val_fraction", "sims_per_rule", "grid", "states", "patch",
                "frames", "seq_len", "burn_in", "temperature")


def _apply_paper_preset(ctx, kw) -> None:
    clashes = [n for n in PRESET_FIXED if ctx.get_parameter_source(n).name not in ("DEFAULT", "DEFAULT_MAP")]
    if clashes:
        flags = ", ".join("--" + n.replace("_", "-") for n in clashes)
        raise click.BadParameter(f"--preset paper fixes {flags}; drop them or drop --preset", param_hint="--preset")
    seq_len = 27 * 38  # the paper's 1026-token sequences
    split_sequences = [PAPER[k] * PAPER["sims_per_rule"] for k in ("train_rules", "val_rules")]
    if any(n % kw["samples_per_shard"] for n in split_sequences):
        raise click.BadParameter(f"--preset paper builds exactly {split_sequences[0]:,} train and "
                                 f"{split_sequences[1]:,} val sequences: choose a --samples-per-shard dividing "
                                 f"both (e.g. 500 or 1000)", param_hint="--samples-per-shard")
    kw.update(complexity=PAPER["band"], sims_per_rule=PAPER["sims_per_rule"], grid=(12, 12), states=10, patch=2,
              frames=27, burn_in=10, temperature=1e-4,
              tokens=PAPER["train_rules"] * PAPER["sims_per_rule"] * seq_len,
              val_tokens=PAPER["val_rules"] * PAPER["sims_per_rule"] * seq_len)


def _make_executor(kw):
    """The executor and the device its workers use. Fails before anything is written (bad address, no GPU)."""
    from .executors import InlineExecutor, RayExecutor

    if kw["gpus"] and kw["device"] == "cpu":
        raise click.BadParameter(f"--gpus {kw['gpus']} with --device cpu: drop one of them", param_hint="--gpus")
    wants_gpu = kw["device"] == "cuda" or bool(kw["gpus"])
    if kw["executor"] == "inline":
        if kw["ray_address"]:
            raise click.BadParameter("--ray-address needs --executor ray", param_hint="--ray-address")
        from nca_datagen.rollout import resolve_device

        try:
            return InlineExecutor(), resolve_device("cuda" if wants_gpu else kw["device"])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--device/--gpus") from None
    if kw["ray_address"] is None and not os.environ.get("RAY_ADDRESS") and wants_gpu:
        from nca_datagen.rollout import NO_CUDA_GPU, gpu_driver_present

        # Local Ray: the driver's machine is the cluster, so fail before starting Ray when it has no GPU driver.
        # With one, Ray's own GPU count decides (below) and the driver never imports torch (~1-2 s).
        if not gpu_driver_present():
            raise click.BadParameter(NO_CUDA_GPU, param_hint="--device/--gpus")
    try:
        executor = RayExecutor(kw["ray_address"], kw["workers"], kw["gpus"], kw["device"], kw["actors_per_gpu"])
    except ConnectionError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        _shutdown_ray()
        raise click.BadParameter(str(exc), param_hint="--device/--gpus/--ray-address") from None
    return executor, executor.device


def _shutdown_ray():
    import sys

    ray = sys.modules.get("ray")  # not imported (an inline build): nothing to shut down
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _planned_gpus(kw) -> int:
    """GPUs a local build would use, for the estimate: --gpus, else every visible one unless --device cpu (a
    cluster's GPUs are unknown before joining it: the estimate then assumes this machine's)."""
    from nca_datagen.rollout import visible_gpus

    if kw["device"] == "cpu" or kw["gpus"] == 0:
        return 0
    return kw["gpus"] or visible_gpus()


def _rounding_note(plan: BuildPlan) -> str | None:
    """A word when whole shards make a split much larger than asked (small budgets: 200K -> one 513K shard)."""
    grown = [s for s in plan.splits if s.shards and s.tokens > 1.5 * max(s.tokens_requested, 1)]
    if not grown:
        return None
    asked = ", ".join(f"{s.split} {format_count(s.tokens_requested)} -> {format_count(s.tokens)}" for s in grown)
    return (f"whole shards of {plan.config.samples_per_shard:,} sequences round the budget up ({asked}); "
            f"a smaller --samples-per-shard rounds less")


def _print_plan(plan: BuildPlan, kw, brief: bool = False) -> None:
    from nca_datagen.progress import summary_table

    cfg = plan.config
    nca = cfg.nca
    rows = [(s.split, f"{s.rules:,} rules x {cfg.sims_per_rule} sims = {s.sequences:,} sequences = "
                      f"{s.tokens:,} tokens ({format_count(s.tokens)}) in {plural(s.shards, 'shard')}")
            for s in plan.splits if s.shards]
    if brief:
        click.echo("plan: " + "; ".join(f"{s.split} {plural(s.shards, 'shard')} ({format_count(s.tokens)} tokens)"
                                         for s in plan.splits if s.shards) + f" -> {kw['out']}", err=True)
        if note := _rounding_note(plan):
            click.echo(f"note: {note}", err=True)
        return
    cpus = kw["workers"] or os.cpu_count() or 1
    gpus = _planned_gpus(kw)
    rows += [
        ("sequence", f"{nca.frames} frames x {nca.tokens_per_frame} tokens = {nca.seq_len} tokens; grid "
                     f"{nca.grid[0]}x{nca.grid[1]}, {nca.states} states, {nca.patch}x{nca.patch} patches, vocab "
                     f"{nca.vocab_size}"),
        ("rollout", f"burn-in {nca.burn_in}, tau {nca.temperature:g}; band {cfg.band}; seed {cfg.seed}"),
        ("shard", f"{cfg.samples_per_shard} sequences ({cfg.rules_per_shard} rules) each, {kw['compression']}"),
        ("estimated size", format_bytes(plan.estimated_bytes(kw["compression"]))),
        ("estimated time", f"{format_duration(plan.estimated_seconds(cpus, gpus))} on "
                           + (f"{gpus} GPU(s)" if gpus else f"{cpus} CPU worker(s)")),
        ("output", f"{kw['out']} (dry run: nothing written)"),
    ]
    if note := _rounding_note(plan):
        rows.append(("note", note))
    from rich.console import Console

    Console().print(summary_table("nca-datagen build plan", rows))
