"""Weighted mixtures of NCA datasets, and curricula: mixtures whose weights move with training.

The paper finds that the best complexity band depends on the target domain, so mixing bands is the next
experiment: `Mixture.from_spec("30-40%:0.3,50%+:0.7", epoch_tokens="100M")`, or a curriculum from simpler to more
complex bands, `Mixture.from_spec("30-40%>50%+@100M")` (linear from all 30-40% to all 50%+ over the first 100M
tokens, 50%+ after). Sources are `NCADataset`s, stored or generated (a band in a spec is generated, unbounded).

Order, for one rank and epoch, is a pure function of (seed, epoch, rank, world_size, DataLoader workers), as the
loader's is:

1. The rank's epoch has N positions: `epoch_tokens` (counted as stored, seq_len per sample, all ranks together)
   over world_size ranks, rounded up; without it, the position at which the first bounded source is expected to
   run out, min(len / weight); with only unbounded sources and no budget, the epoch never ends.
2. Position q's source is drawn by the weights at that point of training (g = epoch x N + q positions of this
   rank, g x world_size x seq_len tokens of all ranks) from a uniform number seeded by (seed, epoch, rank, q's
   block of 16,384): a seeded interleave, not a round robin.
3. DataLoader worker w of W takes positions w, w + W, ... and reads each source's worker-w part (the source's
   own plan: its rank and worker split, its shuffle) as one endless stream over the source's epochs 0, 1, 2, ...:
   a source runs on into its next epoch when the mixture needs more of it, and a mixture epoch starts each source
   where the previous epochs left it (counted from the draws, so any epoch can start anywhere without replaying).

Resuming is the loader's (`EpochStream`): positions per worker, and the state also holds each worker's per-source
counts in the epoch (`source_counts`). Every rank yields N per epoch: DDP stays in step. Items are the sources' items
with `source`, the index of the source they came from (keys are unique within a source only). Bands generated
from one recipe seed draw the same candidate rules, so overlapping bands (40%+ and 50%+) share their common rules:
give such sources different `build_options={"seed": ...}`. Memory: each source's window, per reading process.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Sequence

import numpy as np

from nca_datagen.loader import EpochStream, NCADataset
from nca_datagen.units import parse_count

DRAW_BLOCK = 16_384  # positions drawn per seeded block: vectorised draws, any position reachable without the rest


class Schedule:
    """Mixture weights as a function of training tokens (all ranks): `points` [(tokens, weights), ...], linear
    between them, constant before the first and after the last. One point is a fixed mixture."""

    def __init__(self, points: Sequence[tuple]):
        if not points:
            raise ValueError("a schedule needs at least one (tokens, weights) point")
        self.tokens = np.array([parse_count(t, "schedule tokens") for t, _ in points], dtype=np.float64)
        self.weights = np.array([list(w) for _, w in points], dtype=np.float64)
        if self.weights.ndim != 2 or (self.weights < 0).any() or not np.isfinite(self.weights).all():
            raise ValueError(f"schedule weights {self.weights.tolist()}: give one non-negative number per source "
                             f"at every point")
        if (np.diff(self.tokens) <= 0).any():
            raise ValueError(f"schedule points at tokens {self.tokens.tolist()}: must increase")
        if (self.weights.sum(axis=1) <= 0).any():
            raise ValueError(f"schedule weights {self.weights.tolist()}: every point needs a positive weight")

    @property
    def sources(self) -> int:
        return self.weights.shape[1]

    @property
    def fixed(self) -> bool:
        return len(self.tokens) == 1

    def at(self, tokens_Q: np.ndarray) -> np.ndarray:
        """Weights (Q, S), each row summing to 1, at these token counts."""
        w_QS = np.stack([np.interp(tokens_Q, self.tokens, self.weights[:, s]) for s in range(self.sources)], 1)
        return w_QS / w_QS.sum(axis=1, keepdims=True)

    def to_list(self) -> list:
        return [[int(t), w.tolist()] for t, w in zip(self.tokens, self.weights, strict=True)]


class Mixture(EpochStream):
    """Samples of several NCADatasets, each position's source drawn by `weights` (one per source, or a
    `Schedule`); see the module docstring. `epoch_tokens`: the epoch's budget (all ranks; "100M")."""

    def __init__(self, sources: Sequence[NCADataset], weights, *, seed: int = 0, epoch_tokens=None):
        super().__init__()
        self.sources = list(sources)
        self.schedule = weights if isinstance(weights, Schedule) else Schedule([(0, weights)])
        if not self.sources or self.schedule.sources != len(self.sources):
            raise ValueError(f"{len(self.sources)} sources and {self.schedule.sources} weights: give one weight per "
                             f"source")
        _check_alike(self.sources)
        first = self.sources[0]
        self.rank, self.world_size, self.seq_len = first.rank, first.world_size, first.seq_len
        if int(seed) < 0:
            raise ValueError(f"seed={seed}: must be >= 0")
        self.seed = int(seed)
        self.epoch_tokens = None if epoch_tokens is None else parse_count(epoch_tokens, "epoch_tokens")
        self.positions = self._positions_per_epoch()  # N, per rank (None: unbounded)
        self._counts: dict[int, np.ndarray] = {}  # worker -> samples taken from each source this epoch
        self._init_positions()

    @classmethod
    def from_spec(cls, spec: str, *, seed: int = 0, epoch_tokens=None, tokens=None, build_options: dict | None = None,
                  storage_options: dict | None = None, **loader_options) -> Mixture:
        """A mixture written as text: `"30-40%:0.3,50%+:0.7"` (source:weight, ...) or a curriculum
        `"30-40%>40-50%>50%+@100M"` (each source in turn, moving linearly from one to the next over equal parts of
        the first 100M tokens). A source is a band (generated; `tokens` per source as `from_recipe`'s, unbounded
        without) or a dataset's folder or URL (stored). `loader_options` (rank, world_size, raw, ...) go to
        every source; `seed` is the mixture's and its sources'."""
        recipes, schedule = parse_spec(spec)
        sources = [_source(r, seed=seed, tokens=tokens, build_options=build_options, storage_options=storage_options,
                           **loader_options) for r in recipes]
        return cls(sources, schedule, seed=seed, epoch_tokens=epoch_tokens)

    # ------------------------------------------------------------------ plan
    def _positions_per_epoch(self) -> int | None:
        if self.epoch_tokens is not None:
            per_rank = math.ceil(self.epoch_tokens / (self.seq_len * self.world_size))
            if per_rank < 1:
                raise ValueError(f"epoch_tokens={self.epoch_tokens}: give at least one sequence per rank")
            return per_rank
        bounded = [s for s, src in enumerate(self.sources) if not src.unbounded]
        if not bounded:
            return None
        if not self.schedule.fixed:
            raise ValueError("a curriculum over bounded datasets needs epoch_tokens (its weights change within an "
                             "epoch, so no epoch length follows from them): give epoch_tokens, e.g. '100M'")
        weights = self.schedule.at(np.zeros(1))[0]
        return int(min(len(self.sources[s]) / weights[s] for s in bounded if weights[s] > 0))

    def __len__(self) -> int:
        """Samples this rank yields per epoch (the same on every rank); TypeError for an unbounded mixture."""
        if self.positions is None:
            raise TypeError("an unbounded mixture (unbounded sources, no epoch_tokens) has no length")
        return self.positions

    def _identity(self) -> dict:
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "weights": self.schedule.to_list(), "epoch_tokens": self.epoch_tokens,
                "sources": [src._identity() for src in self.sources]}

    def choices(self, epoch: int, worker: int = 0, num_workers: int = 1) -> Iterator[int]:
        """The source of each of this worker's positions in `epoch`, in order (endless for an unbounded epoch)."""
        for q_Q, s_Q in self._draws(epoch):
            yield from s_Q[q_Q % num_workers == worker].tolist()

    def _draws(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions, their sources) of this rank's epoch, one seeded block at a time."""
        n = self.positions
        for block in itertools.count():
            q_Q = np.arange(block * DRAW_BLOCK, (block + 1) * DRAW_BLOCK)
            if n is not None:
                q_Q = q_Q[q_Q < n]
            if not len(q_Q):
                return
            u_Q = np.random.default_rng([self.seed, epoch, self.rank, 2, block]).random(DRAW_BLOCK)[: len(q_Q)]
            g_Q = q_Q if n is None else epoch * n + q_Q  # this rank's positions since training began
            cum_QS = np.cumsum(self.schedule.at(g_Q * float(self.world_size * self.seq_len)), axis=1)
            yield q_Q, (cum_QS <= u_Q[:, None] * cum_QS[:, -1:]).sum(axis=1)  # the first source past u

    def _offsets(self, epoch: int, worker: int, num_workers: int) -> np.ndarray:
        """Samples this worker took from each source in epochs before `epoch`: where each source's stream resumes."""
        taken = np.zeros(len(self.sources), dtype=np.int64)
        if self.positions is None:
            return taken  # one endless epoch: every epoch starts the sources afresh
        for e in range(epoch):
            for q_Q, s_Q in self._draws(e):
                taken += np.bincount(s_Q[q_Q % num_workers == worker], minlength=len(self.sources))
        return taken

    # ------------------------------------------------------------------ iteration
    def _positions(self, epoch, worker, num_workers, skip) -> Iterator[dict | None]:
        chosen = self.choices(epoch, worker, num_workers)
        counts = np.bincount(list(itertools.islice(chosen, skip)), minlength=len(self.sources))
        self._counts[worker] = counts
        offsets = self._offsets(epoch, worker, num_workers) + counts
        streams = {}
        for s in chosen:
            if s not in streams:  # opened on first use: a source never drawn is never read
                streams[s] = self.sources[s].stream_from(int(offsets[s]), worker, num_workers)
            item = next(streams[s])
            counts[s] += 1
            yield None if item is None else {**item, "source": s}

    def state_dict(self) -> dict:
        """The loader's state, with each worker's per-source counts in this epoch (`source_counts`)."""
        state = super().state_dict()
        state["source_counts"] = {str(w): c.tolist() for w, c in self._counts.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self._resume:  # applied (not an end-of-epoch state seen from the next epoch); the draws recount them
            self._counts = {int(w): np.asarray(c, dtype=np.int64) for w, c in state.get("source_counts", {}).items()}

    def __repr__(self) -> str:
        size = "unbounded" if self.positions is None else f"samples_per_epoch={self.positions}"
        return (f"Mixture({[src.url for src in self.sources]}, weights={self.schedule.to_list()}, "
                f"rank={self.rank}/{self.world_size}, {size}, seed={self.seed}, epoch={self.epoch})")


def parse_spec(spec: str) -> tuple[list[str], Schedule]:
    """`"30-40%:0.3,50%+:0.7"` -> (["30-40%", "50%+"], fixed weights); `"30-40%>50%+@100M"` -> a curriculum
    moving from the first to the last over 100M tokens. A source's name ends at its last ':' ("0.3:0.4:0.5" is
    band 0.3:0.4 at weight 0.5; "s3://b/ds:0.5" is a dataset)."""
    text = str(spec).strip()
    if ">" in text:
        return _parse_curriculum(text)
    recipes, weights = [], []
    for item in text.split(","):
        name, sep, weight = item.strip().rpartition(":")
        try:
            value = float(weight)
        except ValueError:
            value = None
        if not sep or not name or value is None:
            raise ValueError(f"mixture item {item.strip()!r} in {spec!r}: write SOURCE:WEIGHT, e.g. "
                             f"'30-40%:0.3,50%+:0.7' (bands or dataset URLs)")
        recipes.append(name)
        weights.append(value)
    return recipes, Schedule([(0, weights)])


def _parse_curriculum(text: str) -> tuple[list[str], Schedule]:
    m = re.fullmatch(r"(.+)@\s*([0-9.,_]+\s*[KMBGTkmbgt]?)", text)
    recipes = [r.strip() for r in (m[1] if m else "").split(">")]
    if not m or len(recipes) < 2 or not all(recipes):
        raise ValueError(f"curriculum {text!r}: write FIRST>...>LAST@TOKENS, e.g. '30-40%>50%+@100M' (from the "
                         f"first source to the last over the first 100M training tokens)")
    total = parse_count(m[2], "curriculum tokens")
    if total < 1:
        raise ValueError(f"curriculum {text!r}: give a positive number of tokens after '@'")
    k = len(recipes) - 1
    points = [(round(total * i / k), np.eye(k + 1)[i]) for i in range(k + 1)]
    return recipes, Schedule(points)


def _source(recipe: str, *, seed: int, tokens, build_options, storage_options, **loader_options) -> NCADataset:
    """A band or config file is generated (unbounded without `tokens`); a dataset's URL is read as stored."""
    from nca_datagen.generated import recipe_kind

    if recipe_kind(recipe) == "dataset":
        return NCADataset(recipe, seed=seed, storage_options=storage_options, **loader_options)
    return NCADataset.from_recipe(recipe, tokens=tokens, build_options=build_options, seed=seed, **loader_options)


def _check_alike(sources: list[NCADataset]) -> None:
    """Sources are read in one stream: the same rank and world size, and items of one shape."""
    first = sources[0]
    for src in sources[1:]:
        for name in ("rank", "world_size", "seq_len", "context", "raw"):
            if getattr(src, name) != getattr(first, name):
                raise ValueError(f"mixture sources differ in {name}: {first.url} has {getattr(first, name)}, "
                                 f"{src.url} {getattr(src, name)}; a mixture needs sources of one shape and rank")
