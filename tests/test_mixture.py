"""Mixtures and curricula: a seeded interleave per epoch, token-budgeted epochs, sources that run on across
epochs, equal counts on every rank, and exact resume (in-process and through StatefulDataLoader workers)."""

import itertools
import math

import numpy as np
import pytest
from shard_fixtures import FAKE, make_dataset

from nca_datagen.loader import NCADataset
from nca_datagen.mixture import Mixture, Schedule, parse_spec

TINY = {"frames": 4, "samples_per_shard": 4, "sims_per_rule": 2}
SEQ = FAKE.nca.seq_len  # 152 tokens, as TINY's
N = FAKE.samples_per_shard


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    out = tmp_path_factory.mktemp("mix") / "ds"
    make_dataset(str(out), {"train": 3})  # 12 samples: upsampled in the mixtures below
    return str(out)


def mixture(stored, weights=(0.4, 0.6), *, epoch_tokens=40 * SEQ, seed=0, **options):
    """A stored source (3 shards) and a generated, unbounded 50%+ stream."""
    sources = [NCADataset(stored, raw=True, seed=seed, **options),
               NCADataset.from_recipe("50%+", build_options=TINY, raw=True, seed=seed, **options)]
    return Mixture(sources, list(weights) if not isinstance(weights, Schedule) else weights, seed=seed,
                   epoch_tokens=epoch_tokens)


def tagged(items) -> list[tuple[int, str]]:
    return [(item["source"], item["key"]) for item in items]


def test_parse_spec():
    recipes, schedule = parse_spec("30-40%:0.3, 50%+:0.7")
    assert recipes == ["30-40%", "50%+"] and schedule.fixed and schedule.to_list() == [[0, [0.3, 0.7]]]
    recipes, schedule = parse_spec("0.3:0.4:1,s3://bucket/ds:3")
    assert recipes == ["0.3:0.4", "s3://bucket/ds"] and np.allclose(schedule.at(np.zeros(1)), [[0.25, 0.75]])
    recipes, schedule = parse_spec("30-40%>40-50%>50%+@100M")
    assert recipes == ["30-40%", "40-50%", "50%+"]
    assert np.allclose(schedule.at(np.array([0, 25e6, 50e6, 75e6, 1e9])),
                       [[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1]])
    for bad in ("30-40%", "30-40%:x", "50%+@1M", "30-40%>@1M", "a>b@0"):
        with pytest.raises(ValueError, match=r"write|positive"):
            parse_spec(bad)


def test_draws_follow_the_weights_and_the_seed(stored):
    m = mixture(stored, epoch_tokens=20_000 * SEQ)
    chosen = np.array(list(m.choices(0)))
    assert len(chosen) == 20_000 and abs((chosen == 1).mean() - 0.6) < 0.02  # 4 sigma of a binomial
    assert list(mixture(stored).choices(0)) == chosen[:40].tolist()  # a shorter epoch: the same draws, fewer
    assert list(m.choices(1))[:40] != chosen[:40].tolist()  # another epoch, another interleave
    assert list(mixture(stored, seed=1).choices(0)) != chosen[:40].tolist()
    workers = [list(m.choices(0, w, 3)) for w in range(3)]
    assert [x for trio in itertools.zip_longest(*workers) for x in trio if x is not None] == chosen.tolist()


def test_an_epoch_is_its_token_budget_and_sources_run_on_across_epochs(stored):
    m = mixture(stored)
    assert len(m) == 40
    epochs = []
    for epoch in range(3):
        m.set_epoch(epoch)
        epochs.append(tagged(m))
        assert len(epochs[-1]) == 40
    generated = [key for epoch in epochs for src, key in epoch if src == 1]
    assert len(set(generated)) == len(generated)  # an unbounded source never repeats
    for s, source in enumerate(m.sources):  # each source's samples over the epochs: its own stream, in order
        taken = [key for epoch in epochs for src, key in epoch if src == s]
        stream = source.stream_from(0, 0, 1)
        assert taken == [next(stream)["key"] for _ in taken]
    stored_keys = [key for src, key in epochs[0] + epochs[1] if src == 0]
    assert len(stored_keys) > 12  # the 12-sample stored source ran into its next epoch ...
    assert sorted(stored_keys[:12]) == sorted({k for k in stored_keys})  # ... after using each sample once


@pytest.mark.parametrize("consumed", [0, 7, 23])
def test_a_mixture_resumes_exactly(stored, consumed):
    m = mixture(stored)
    m.set_epoch(2)  # sources start where epochs 0 and 1 left them
    it = iter(m)
    head = [next(it) for _ in range(consumed)]
    state = m.state_dict()
    assert state["yielded"] == ({"0": consumed} if consumed else {})  # a pass not begun has no position yet
    counts = state["source_counts"].get("0", [0, 0])
    assert sum(counts) == consumed and counts == [sum(x["source"] == s for x in head) for s in (0, 1)]
    rest = tagged(it)
    fresh = mixture(stored)
    fresh.load_state_dict(state)
    assert tagged(fresh) == rest and fresh.epoch == 2
    with pytest.raises(ValueError, match="weights: "):
        mixture(stored, weights=(0.5, 0.5)).load_state_dict(state)


@pytest.mark.filterwarnings("ignore:This DataLoader will create", "ignore:'set_vital' is deprecated")
def test_a_mixture_resumes_through_stateful_dataloader_workers(stored):
    from torchdata.stateful_dataloader import StatefulDataLoader

    def run(m, state=None, stop=None):
        loader = StatefulDataLoader(m, batch_size=None, num_workers=2)
        if state:
            loader.load_state_dict(state)
        m.set_epoch(1)
        got = []
        for item in loader:
            got.append((item["source"], item["key"]))
            if len(got) == stop:
                return got, loader.state_dict()
        return got, None

    whole, _ = run(mixture(stored))
    head, state = run(mixture(stored), stop=15)
    rest, _ = run(mixture(stored), state=state)
    assert head + rest == whole and len(whole) == 40


@pytest.mark.filterwarnings("ignore:.*3 shards over world_size=2")
def test_every_rank_yields_the_same_count_and_different_samples(stored):
    ranks = [mixture(stored, epoch_tokens=9 * SEQ, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == math.ceil(9 / 2)
    seen = [tagged(m) for m in ranks]  # (within the stored source's first epoch: its 4 samples a rank)
    assert len(seen[0]) == len(seen[1]) == 5 and not set(seen[0]) & set(seen[1])


def test_a_curriculum_moves_between_sources_is_reproducible_and_resumes(stored):
    schedule = Schedule([(0, [1, 0]), (60 * SEQ, [0, 1])])  # all stored -> all generated over 60 sequences

    def run(epochs=3, state=None):
        c = mixture(stored, weights=schedule, epoch_tokens=30 * SEQ)
        if state:
            c.load_state_dict(state)
        out = []
        for epoch in range(c.epoch, epochs):
            c.set_epoch(epoch)
            out += tagged(c)
        return out, c

    first, _ = run()
    assert first == run()[0]  # reproducible
    sources = [s for s, _ in first]
    assert sum(sources[:15]) < 5 and sum(sources[-30:]) == 30  # simple first, complex from 60 sequences on
    c = mixture(stored, weights=schedule, epoch_tokens=30 * SEQ)
    c.set_epoch(1)
    it = iter(c)
    [next(it) for _ in range(11)]
    rest, _ = run(state=c.state_dict())
    assert rest == first[30 + 11 :]  # resumed mid-way through epoch 1, then epoch 2 as before


def test_mixture_errors_say_what_to_do(stored):
    with pytest.raises(ValueError, match="one weight per source"):
        mixture(stored, weights=(1.0,))
    with pytest.raises(ValueError, match="needs epoch_tokens"):
        mixture(stored, weights=Schedule([(0, [1, 0]), (100, [0, 1])]), epoch_tokens=None)
    with pytest.raises(ValueError, match="differ in world_size"):
        Mixture([NCADataset(stored, rank=0, world_size=1), NCADataset(stored, rank=0, world_size=2)], [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        Schedule([(0, [1, -1])])
    m = Mixture([NCADataset(stored, raw=True)], [1])  # no budget: the epoch ends when the source would run out
    assert len(m) == 3 * N and sorted(k for _, k in tagged(m)) == sorted(x["key"] for x in NCADataset(stored, raw=True))


def test_from_spec_reads_bands_and_datasets(stored):
    m = Mixture.from_spec(f"{stored}:1,50%+:3", epoch_tokens=20 * SEQ, build_options=TINY, raw=True)
    assert [src.unbounded for src in m.sources] == [False, True] and len(m) == 20
    assert {s for s, _ in tagged(m)} == {0, 1}
