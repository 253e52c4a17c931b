"""The trainer's way in: a torch `IterableDataset` over a dataset's manifest (a local folder, or any store fsspec
reaches: s3://, gs://, hf://, ...), or over the same shards generated as they are read (`NCADataset.from_recipe`, no
storage at all).

Shards come from a `ShardSource`: `StoredShards` reads a shard and checks its sha256 against the manifest (remote
shards through a size-bounded local cache, `nca_datagen.cache`); `generated.GeneratedShards` runs `generate_shard`
(imported only then: reading stored data never imports the generator). Both number shards as the manifest does and
yield the same (key, tokens, metadata) per shard, and everything below (plan, order, resume) is this module's, so
a recipe yields exactly the samples, in exactly the order, that `build` + `NCADataset` yield for it.

Order, for one split, rank and epoch, is a pure function of (seed, epoch, rank, world_size, DataLoader workers):

1. shards are permuted by (seed, epoch) (manifest order when `shuffle=False`);
2. rank r takes shards r, r + world_size, ... of that order. Every rank must see the same number of samples or
   DDP hangs at the last step, so each rank stops at the smallest rank total: with equal shards (what
   `nca-datagen build` writes) that drops at most world_size - 1 shards per epoch, and a different few each epoch
   because the permutation changes (rank 0 warns how many samples an epoch leaves out, once per process for a
   dataset, split and world size however many loaders are built over them);
3. DataLoader worker w of W takes every W-th shard of its rank's list, and reads them `shuffle_shards` at a time:
   the samples of such a window are permuted together by (seed, epoch, window), so a batch mixes rules of several
   shards instead of ten simulations of one rule. Memory, per reading process: the decoded samples of one window
   (a uint16 array and a metadata dict each, about 1.9x the window's compressed bytes for 50%+ shards) plus, while
   a shard is read, its compressed bytes (checked whole before any of its samples is yielded).

An unbounded source (a recipe without a token budget) has shards 0, 1, 2, ... for ever: rank r takes shards
r, r + world_size, ..., worker w every W-th of those, in index order (generated shards are independent draws, so
their order carries nothing to shuffle), and windows are permuted as above. Such a stream has no length and no end;
`set_epoch` gives it another sample order within windows, over the same shards.

Samples are yielded as the paper trains on them (`tokenizer.training_example`): `input_ids` = seq[:C],
`labels` = seq[1:C+1] with the first frame's targets -100, C = `context` (default: sequence length - 2 = 1024).
`raw=True` yields the whole sequence with its key and metadata instead.

Every stored shard is checked against its manifest size and sha256 before any of its samples is yielded (a
generated one too, with `check_sha256=True`); a missing, truncated or corrupt shard raises `ShardError` naming the
file, or is skipped with a warning when `skip_bad_shards=True` (ranks may then see unequal counts: use it for
analysis, not for DDP training).

Epochs: `set_epoch` writes the epoch to a one-element shared-memory tensor that DataLoader workers read when an
epoch's pass starts, so it reaches `persistent_workers=True` workers too (a plain attribute would stay at the
value the worker copies were made with, and every epoch would repeat the first one's order).

Resuming: `state_dict()` counts the positions this process has passed per worker in the current epoch;
`load_state_dict()` makes the next pass yield exactly the remaining samples, in the same order, and refuses a state
from a loader with another seed, split, rank, world size, shuffle or dataset. `set_epoch` with the loaded epoch
keeps that position (the usual `for epoch in range(start, n): ds.set_epoch(epoch)` loop resumes); another epoch
starts afresh. Iterated in-process (num_workers=0) that is the whole story. With DataLoader workers the dataset runs
in worker processes, so the main process's copy knows nothing of their progress: use a loader that snapshots per-
worker dataset state (torchdata's `StatefulDataLoader` calls these two methods inside each worker); the resumed run
must use the same number of workers. Inside a worker `load_state_dict` leaves the epoch to the main process's
`set_epoch` (the epoch tensor is shared, and the worker loads after that call): the worker's saved position applies
if it was saved in that epoch, and the epoch starts afresh otherwise, so the same loop resumes mid-epoch or after an
end-of-epoch checkpoint. With a plain DataLoader, `state_dict()` in the main process raises once workers have read
the dataset, until this process iterates it itself again, instead of returning a position that would silently
restart the epoch. A shard skipped by `skip_bad_shards` still counts its positions, so resuming past it is exact too.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from nca_datagen import storage
from nca_datagen.manifest import dataset_root, read_manifest
from nca_datagen.shards import ShardError, iter_shard_samples
from nca_datagen.sources import ShardSource, StoredShards, split_shards
from nca_datagen.tokenizer import default_context, training_example

DEFAULT_SHUFFLE_SHARDS = 4  # shards mixed per window: rules from 4 shards per batch at ~4x one shard's memory
_WARNED_LEFT_OUT: set[tuple] = set()  # (url, split, shards, world_size) whose left-out count was said


class EpochStream(IterableDataset):
    """What NCADataset and `mixture.Mixture` share: the epoch (in shared memory, so it reaches DataLoader workers),
    positions counted per worker, and `state_dict` / `load_state_dict` (see "Epochs" and "Resuming" above).
    A subclass gives `_identity()` (what a state must match) and `_positions(epoch, worker, num_workers, skip)`:
    the items of that worker's pass after its first `skip` positions (None at a position with nothing to yield)."""

    def _init_positions(self) -> None:
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # see "Epochs" above
        self._iterated_in_workers = torch.zeros((), dtype=torch.int32).share_memory_()  # see state_dict
        self._yielded: dict[int, int] = {}  # worker id -> positions passed this epoch (in this process)
        self._resume: dict[int, int] = {}  # worker id -> positions to skip on the next pass
        self._num_workers = 1

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` (its own shard and sample order); call before each epoch, as with DistributedSampler.
        The epoch a state was just loaded for keeps the loaded position."""
        if int(epoch) < 0:
            raise ValueError(f"epoch={epoch}: must be >= 0")
        if int(epoch) != self.epoch or not self._resume:
            self._yielded, self._resume = {}, {}
        self._epoch.fill_(int(epoch))

    def state_dict(self) -> dict:
        """Epoch and positions passed per worker. In the main process it raises once DataLoader workers have read
        this dataset, until it is iterated here again: the workers' copies hold the position, this one is stale."""
        if get_worker_info() is None and int(self._iterated_in_workers):
            raise ValueError("this dataset is read by DataLoader worker processes, so its position lives there: "
                             "save state with torchdata's StatefulDataLoader (pip install torchdata; it asks each "
                             "worker), or use num_workers=0")
        return {**self._identity(), "epoch": self.epoch, "num_workers": self._num_workers,
                "yielded": {str(w): n for w, n in self._yielded.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Make the next pass resume where `state` was saved. In this process it also sets the epoch; inside a
        DataLoader worker the epoch stays the main process's, and a state saved in another epoch is not applied."""
        self._check_identity(state)
        in_worker = get_worker_info() is not None
        if in_worker and int(state["epoch"]) != self.epoch:
            self._yielded, self._resume = {}, {}  # an end-of-epoch checkpoint, then set_epoch(next): start afresh
            return
        if not in_worker:
            self._epoch.fill_(int(state["epoch"]))
        self._num_workers = int(state.get("num_workers", 1))
        self._resume = {int(w): int(n) for w, n in state["yielded"].items()}
        self._yielded = dict(self._resume)

    def _check_identity(self, state: dict) -> None:
        # every state holds these four; the rest are checked when present (states saved before them still load)
        required = ("seed", "split", "rank", "world_size")
        wrong = {k: (state.get(k), v) for k, v in self._identity().items()
                 if (k in state or k in required) and state.get(k) != v}
        if wrong:
            raise ValueError("state was saved by a differently configured loader: " + ", ".join(
                f"{k}: {old!r} -> {new!r}" for k, (old, new) in wrong.items()) + "; construct it with the same values")

    def _identity(self) -> dict:
        raise NotImplementedError

    def _positions(self, epoch: int, worker: int, num_workers: int, skip: int) -> Iterator[dict | None]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        if self._resume and num_workers != self._num_workers:
            raise ValueError(f"resuming a state saved with {self._num_workers} DataLoader workers needs "
                             f"{self._num_workers} workers, not {num_workers}")
        self._num_workers = num_workers
        self._iterated_in_workers.fill_(int(info is not None))  # shared: a worker's pass makes the main copy stale
        skip = self._resume.pop(worker, 0)
        self._yielded[worker] = skip
        epoch = self.epoch  # read once: the pass keeps its order whatever set_epoch does meanwhile
        for item in self._positions(epoch, worker, num_workers, skip):
            self._yielded[worker] += 1  # positions, not samples: a skipped bad shard's count too
            if item is not None:
                yield item


class NCADataset(EpochStream):
    """Shards of one split, split by rank and worker, shuffled per (seed, epoch), resumable mid-epoch.

    `url`: a dataset (folder, URL or its manifest.json), or a `ShardSource`; `NCADataset.from_recipe` makes one
    that generates its shards. `cache_bytes`: the local cache for remote shards (`cache.cache_limit`)."""

    def __init__(self, url, split: str = "train", *, seed: int = 0, shuffle: bool = True, rank: int | None = None,
                 world_size: int | None = None, raw: bool = False, context: int | None = None,
                 skip_bad_shards: bool = False, storage_options: dict | None = None,
                 shuffle_shards: int = DEFAULT_SHUFFLE_SHARDS, cache_bytes=None):
        super().__init__()
        if isinstance(url, ShardSource):
            if url.split != split:
                raise ValueError(f"the source holds split {url.split!r}, not {split!r}")
            self.source = url
        else:
            self.source = StoredShards(url, split, storage_options, cache_bytes)
        self.url, self.split = self.source.name, split
        self.layout = self.source.layout
        self.tokens_per_frame = self.layout["tokens_per_frame"]
        self.seq_len = self.layout["seq_len"]
        self.context = default_context(self.seq_len) if context is None else int(context)
        if not 0 < self.context < self.seq_len:
            raise ValueError(f"context={context}: choose 1..{self.seq_len - 1} for sequences of {self.seq_len} tokens")
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        if self.source.num_shards is not None and self.source.num_shards < self.world_size:
            raise ValueError(f"split {split!r} has {self.source.num_shards} shards, fewer than world_size="
                             f"{self.world_size}: every rank needs at least one; build with more shards")
        if shuffle_shards < 1:
            raise ValueError(f"shuffle_shards={shuffle_shards}: must be >= 1")
        if int(seed) < 0:
            raise ValueError(f"seed={seed}: must be >= 0")
        self.seed, self.shuffle, self.raw = int(seed), bool(shuffle), bool(raw)
        self.skip_bad_shards, self.shuffle_shards = bool(skip_bad_shards), int(shuffle_shards)
        self.dataset_id = self.source.identity
        self._init_positions()
        self._warn_left_out()

    @classmethod
    def from_recipe(cls, recipe="50%+", split: str = "train", *, tokens=None, val_tokens=None, val_fraction=None,
                    build_options: dict | None = None, check_sha256: bool = False, backend: str | None = None,
                    device: str | None = None, storage_options: dict | None = None, **loader_options) -> NCADataset:
        """The dataset `build` would make of `recipe`, generated as it is read: the same samples in the same
        order as `NCADataset` over the built dataset, for the same `loader_options` (seed, shuffle, rank, ...).

        `recipe`: a band ("50%+", "30-40%") with `tokens` (and `val_tokens` / `val_fraction`, `build_options` by
        build's flag names: {"frames": 4, "seed": 1}), a config file (*.json), a DatasetConfig, or a dataset's
        folder / URL / manifest.json (only the manifest is read; `check_sha256=True` checks every generated
        shard against it). No `tokens`: an unbounded split. `backend` / `device`: as `build`'s (default: the CPU in
        DataLoader workers, a GPU elsewhere when one is visible). Memory: one shard's arrays while it is made,
        beside the window of samples. Details: `nca_datagen.generated`.

            ds = NCADataset.from_recipe("50%+", tokens="164M", seed=0)    # `build --complexity 50%+ --tokens 164M`
        """
        from nca_datagen.generated import generated_shards  # the generator is imported only for generated data

        source = generated_shards(recipe, split, tokens=tokens, val_tokens=val_tokens, val_fraction=val_fraction,
                                  build_options=build_options, check_sha256=check_sha256, backend=backend,
                                  device=device, storage_options=storage_options)
        return cls(source, split, **loader_options)

    @property
    def unbounded(self) -> bool:
        return self.source.num_shards is None

    @property
    def cache_stats(self) -> dict | None:
        """Remote shards' cache hits, misses and evictions in this process (None when nothing is cached)."""
        return getattr(self.source, "cache_stats", None)

    # ------------------------------------------------------------------ position
    def _identity(self) -> dict:
        return {"seed": self.seed, "split": self.split, "rank": self.rank, "world_size": self.world_size,
                "shuffle": self.shuffle, "shuffle_shards": self.shuffle_shards, "dataset": self.dataset_id}

    def __repr__(self) -> str:
        size = "unbounded" if self.unbounded else f"shards={self.source.num_shards}, samples_per_epoch={len(self)}"
        return (f"NCADataset({self.url!r}, split={self.split!r}, rank={self.rank}/{self.world_size}, "
                f"{size}, seed={self.seed}, epoch={self.epoch})")

    def __len__(self) -> int:
        """Samples this rank yields per epoch (the same on every rank); TypeError for an unbounded stream."""
        if self.unbounded:
            raise TypeError("an unbounded stream (a recipe without a token budget) has no length")
        return sum(take for _, take in self.rank_plan(self.epoch))

    # ------------------------------------------------------------------ plan
    def _warn_left_out(self) -> None:
        """Equal counts per rank leave out up to world_size - 1 shards an epoch: say so on rank 0, once per process
        for these shards and world size (the trainer constructs several datasets over one split)."""
        key = (self.url, self.split, self.dataset_id, self.world_size)
        if self.rank != 0 or self.unbounded or key in _WARNED_LEFT_OUT:
            return
        total = sum(self.source.samples_in(i) for i in range(self.source.num_shards))
        used = self.world_size * len(self)
        if used < total:
            _WARNED_LEFT_OUT.add(key)
            warnings.warn(f"split {self.split!r}: {self.source.num_shards} shards over world_size={self.world_size}: "
                          f"each epoch uses {used:,} of {total:,} samples ({1 - used / total:.0%} left out, other "
                          f"ones each epoch when shuffled) so that every rank gets the same count; a multiple of "
                          f"{self.world_size} equal shards uses them all", stacklevel=3)

    def rank_plan(self, epoch: int) -> list[tuple[int, int]]:
        """(shard index, samples to take) for this rank and epoch, in reading order (a bounded source's)."""
        n = self.source.num_shards
        order = np.random.default_rng([self.seed, epoch, 0]).permutation(n) if self.shuffle else np.arange(n)
        per_rank = [order[r :: self.world_size] for r in range(self.world_size)]
        limit = min(sum(self.source.samples_in(i) for i in p) for p in per_rank)
        plan, left = [], limit
        for i in per_rank[self.rank]:
            take = min(self.source.samples_in(i), left)
            if take:
                plan.append((int(i), take))
            left -= take
        return plan

    def worker_plan(self, epoch: int, worker: int, num_workers: int) -> Iterable[tuple[int, int]]:
        """The rank plan's every `num_workers`-th entry from `worker`: a list, or an endless iterator when the
        source is unbounded (shards rank + world_size * (worker + num_workers * k), k = 0, 1, ...)."""
        if self.unbounded:
            first, step = self.rank + self.world_size * worker, self.world_size * num_workers
            return ((i, self.source.samples_in(i)) for i in itertools.count(first, step))
        return self.rank_plan(epoch)[worker::num_workers]

    def stream_from(self, offset: int, worker: int, num_workers: int) -> Iterator[dict | None]:
        """This worker's items of epochs 0, 1, 2, ... as one endless stream, from its position `offset`: how a
        `mixture.Mixture` reads a source (None at a skipped bad shard's positions)."""
        first = 0
        while not self.unbounded and offset >= (length := self._worker_samples(first, worker, num_workers)):
            if not length:
                raise ValueError(f"{self.url} ({self.split}): DataLoader worker {worker} of {num_workers} gets no "
                                 f"shard of rank {self.rank}'s: use fewer workers, or a dataset with more shards")
            offset, first = offset - length, first + 1
        for epoch in itertools.count(first):
            yield from self._positions(epoch, worker, num_workers, offset)
            offset = 0

    def _worker_samples(self, epoch: int, worker: int, num_workers: int) -> int:
        return sum(take for _, take in self.worker_plan(epoch, worker, num_workers))

    # ------------------------------------------------------------------ iteration
    def _positions(self, epoch, worker, num_workers, skip) -> Iterator[dict | None]:
        for window in _windows(self.worker_plan(epoch, worker, num_workers), self.shuffle_shards):
            size = sum(take for _, take in window)
            if skip >= size:
                skip -= size
                continue
            for sample in self._window(window, epoch)[skip:]:  # unnamed: freed before the next window loads
                yield None if sample is None else self._item(*sample)
            skip = 0

    def _window(self, window, epoch) -> list:
        """The samples of `window`, permuted together by (seed, epoch, its first shard) when shuffling."""
        samples = self._load_window(window)
        if not self.shuffle:
            return samples
        return [samples[j] for j in np.random.default_rng([self.seed, epoch, 1, window[0][0]]).permutation(
            len(samples))]

    def _load_window(self, window) -> list:
        samples = []
        for i, take in window:
            try:
                samples += self.source.read(i)[:take]
            except ShardError as exc:
                if not self.skip_bad_shards:
                    raise
                warnings.warn(f"skipping bad shard: {exc}", stacklevel=2)
                samples += [None] * take  # keeps the window's order and every later position where they were
        return samples

    def _item(self, key, tokens, meta) -> dict:
        if self.raw:
            clean = {k: (math.nan if v is None else v) for k, v in meta.items()}
            return {**clean, "key": key, "tokens": torch.from_numpy(tokens.astype(np.int64))}
        input_ids, labels = training_example(tokens, self.tokens_per_frame, self.context)
        return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}


def _windows(plan: Iterable, size: int) -> Iterator[list]:
    """`plan` in consecutive lists of `size` entries (the last one shorter); `plan` may be endless."""
    entries = iter(plan)
    while window := list(itertools.islice(entries, size)):
        yield window


def iter_sequences(url, split: str = "train", storage_options: dict | None = None) -> Iterator[np.ndarray]:
    """Every sequence of a split as a uint16 numpy array, in manifest order, each shard checked by sha256."""
    manifest = read_manifest(url, storage_options)
    fs, root = dataset_root(url, storage_options)
    for shard in split_shards(manifest, split, url):
        path = storage.join(root, shard["path"])
        for _, tokens, _ in iter_shard_samples(path, fs=fs, expected_sha256=shard["sha256"],
                                               expected_bytes=shard["bytes"], seq_len=manifest["sequence"]["seq_len"]):
            yield tokens


def _rank_and_world(rank, world_size) -> tuple[int, int]:
    if rank is None or world_size is None:
        dist = torch.distributed
        on = dist.is_available() and dist.is_initialized()
        rank = (dist.get_rank() if on else 0) if rank is None else rank
        world_size = (dist.get_world_size() if on else 1) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    return int(rank), int(world_size)
