"""Loader: rank x worker partitioning with equal counts, deterministic shuffling, exact resume, damaged shards."""

import types
import warnings
import weakref

import numpy as np
import pytest
import torch
from shard_fixtures import FAKE, fake_shard, make_dataset
from torch.utils.data import DataLoader

import nca_datagen.loader as loader_mod
from nca_datagen.loader import NCADataset, iter_sequences
from nca_datagen.shards import ShardError
from nca_datagen.tokenizer import IGNORE_INDEX

N = FAKE.samples_per_shard  # 4 samples per shard


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    make_dataset(str(out), {"train": 7, "val": 1})
    return str(out)


def keys(ds, **loader_kwargs):
    if loader_kwargs:
        return [batch["key"] for batch in DataLoader(ds, batch_size=None, **loader_kwargs)]
    return [item["key"] for item in ds]


def all_keys(split="train", shards=7):
    return {f"{split}-{s:06d}-{i:06d}" for s in range(shards) for i in range(N)}


def test_training_example_masking(dataset):
    item = next(iter(NCADataset(dataset, shuffle=False)))
    seq = fake_shard("train", 0).tokens_NL[0].astype(np.int64)
    tpf = FAKE.nca.tokens_per_frame
    assert item["input_ids"].dtype == torch.int64 and len(item["input_ids"]) == FAKE.nca.seq_len - 2
    assert torch.equal(item["input_ids"], torch.from_numpy(seq[:-2]))
    assert (item["labels"][: tpf - 1] == IGNORE_INDEX).all()
    assert torch.equal(item["labels"][tpf - 1 :], torch.from_numpy(seq[tpf:-1]))
    short = next(iter(NCADataset(dataset, shuffle=False, context=50)))
    assert len(short["input_ids"]) == len(short["labels"]) == 50


# 3 workers on a 2-core test machine: torch warns, the test only checks partitioning
@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.filterwarnings("ignore:.*7 shards over world_size=2")
def test_two_ranks_three_workers_partition_the_data(dataset):
    seen = [keys(NCADataset(dataset, rank=r, world_size=2, raw=True, seed=5), num_workers=3) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 3 * N  # 7 shards: 3 each, one dropped this epoch
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 6 * N
    assert set(seen[0]) | set(seen[1]) <= all_keys()
    assert len(NCADataset(dataset, rank=1, world_size=2)) == 3 * N


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_union_over_ranks_and_workers_is_the_dataset_when_shards_divide(tmp_path):
    make_dataset(str(tmp_path), {"train": 6})
    seen = [keys(NCADataset(str(tmp_path), rank=r, world_size=2, raw=True), num_workers=3) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) and sorted(seen[0] + seen[1]) == sorted(all_keys(shards=6))


def test_worker_plans_split_the_rank_plan(dataset):
    ds = NCADataset(dataset, raw=True, seed=1)
    plans = [ds.worker_plan(0, w, 3) for w in range(3)]
    assert sorted(i for p in plans for i, _ in p) == list(range(7))
    assert sorted(ds.rank_plan(0)) == sorted(x for p in plans for x in p)


def test_order_is_a_function_of_seed_and_epoch(dataset):
    a = keys(NCADataset(dataset, raw=True, seed=1))
    assert a == keys(NCADataset(dataset, raw=True, seed=1))
    assert a != keys(NCADataset(dataset, raw=True, seed=2))
    assert sorted(a) == sorted(keys(NCADataset(dataset, raw=True, seed=2))) == sorted(all_keys())
    ds = NCADataset(dataset, raw=True, seed=1)
    ds.set_epoch(1)
    assert keys(ds) != a
    assert keys(NCADataset(dataset, raw=True, shuffle=False)) == sorted(all_keys())


@pytest.mark.parametrize("consumed", [0, 3, 17, 28])
def test_resume_yields_exactly_the_remaining_samples(dataset, consumed):
    ds = NCADataset(dataset, raw=True, seed=3)
    ds.set_epoch(2)
    it = iter(ds)
    head = [next(it)["key"] for _ in range(consumed)]
    state = ds.state_dict()
    rest = [x["key"] for x in it]
    fresh = NCADataset(dataset, raw=True, seed=3)
    fresh.load_state_dict(state)
    assert keys(fresh) == rest and len(head) + len(rest) == 7 * N


def test_resume_inside_a_worker(dataset, monkeypatch):
    """What a per-worker stateful loader does: each worker saves and restores its own position."""
    monkeypatch.setattr(loader_mod, "get_worker_info", lambda: types.SimpleNamespace(id=1, num_workers=3))
    ds = NCADataset(dataset, raw=True, seed=3)
    it = iter(ds)
    next(it), next(it)
    state = ds.state_dict()
    assert state["yielded"] == {"1": 2} and state["num_workers"] == 3
    rest = [x["key"] for x in it]
    fresh = NCADataset(dataset, raw=True, seed=3)
    fresh.load_state_dict(state)
    assert keys(fresh) == rest
    monkeypatch.setattr(loader_mod, "get_worker_info", lambda: None)
    again = NCADataset(dataset, raw=True, seed=3)
    again.load_state_dict(state)
    with pytest.raises(ValueError, match="needs 3 workers"):
        next(iter(again))


def test_set_epoch_with_the_loaded_epoch_keeps_the_position(dataset):
    """The usual loop after a resume, `for epoch in range(start, n): ds.set_epoch(epoch)`, must not replay."""
    ds = NCADataset(dataset, raw=True, seed=3)
    ds.set_epoch(2)
    it = iter(ds)
    head = [next(it)["key"] for _ in range(9)]
    fresh = NCADataset(dataset, raw=True, seed=3)
    fresh.load_state_dict(ds.state_dict())
    fresh.set_epoch(2)
    rest = keys(fresh)
    assert not set(head) & set(rest) and sorted(head + rest) == sorted(all_keys())
    fresh.set_epoch(2)  # the position was used up: the epoch starts afresh
    assert len(keys(fresh)) == 7 * N
    other = NCADataset(dataset, raw=True, seed=3)
    other.load_state_dict(ds.state_dict())
    other.set_epoch(3)  # another epoch never inherits the position
    assert len(keys(other)) == 7 * N


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_persistent_workers_follow_set_epoch(dataset):
    """Worker copies outlive set_epoch calls with persistent_workers=True; the epoch must still reach them."""
    ds = NCADataset(dataset, raw=True, seed=3)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    orders = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        orders.append([item["key"] for item in loader])
    assert orders[0] != orders[1] != orders[2] != orders[0]
    fresh = NCADataset(dataset, raw=True, seed=3)
    fresh.set_epoch(2)
    assert orders[2] == keys(fresh, num_workers=2)


def test_state_from_another_loader_is_refused(dataset, tmp_path):
    state = NCADataset(dataset, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed: 1 -> 2"):
        NCADataset(dataset, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="shuffle_shards: 4 -> 2"):
        NCADataset(dataset, seed=1, shuffle_shards=2).load_state_dict(state)
    with pytest.raises(ValueError, match="shuffle: True -> False"):
        NCADataset(dataset, seed=1, shuffle=False).load_state_dict(state)
    make_dataset(str(tmp_path), {"train": 7}, compression="none")  # same samples, other shards
    with pytest.raises(ValueError, match="dataset: "):
        NCADataset(str(tmp_path), seed=1).load_state_dict(state)
    old = {k: v for k, v in state.items() if k not in ("shuffle", "shuffle_shards", "dataset")}
    NCADataset(dataset, seed=1).load_state_dict(old)  # states saved before those keys still load


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "delete"])
def test_bad_shard_raises_naming_the_file_or_is_skipped(tmp_path, damage):
    make_dataset(str(tmp_path), {"train": 3})
    path = tmp_path / "train" / "shard-000001.tar.zst"
    blob = bytearray(path.read_bytes())
    if damage == "delete":
        path.unlink()
    else:
        if damage == "truncate":
            blob = blob[:-7]
        else:
            blob[20] ^= 0x40
        path.write_bytes(bytes(blob))
    with pytest.raises(ShardError, match=r"train/shard-000001\.tar\.zst"):
        keys(NCADataset(str(tmp_path), raw=True))
    with pytest.raises(ShardError, match=r"train/shard-000001\.tar\.zst"):
        list(iter_sequences(str(tmp_path)))
    with pytest.warns(UserWarning, match=r"shard-000001\.tar\.zst"):
        got = keys(NCADataset(str(tmp_path), raw=True, skip_bad_shards=True))
    assert set(got) == all_keys(shards=3) - {f"train-000001-{i:06d}" for i in range(N)}


@pytest.mark.filterwarnings("ignore:skipping bad shard")
@pytest.mark.parametrize("consumed", [1, 5, 7])
@pytest.mark.parametrize("window", [1, 3])  # the bad shard before the resumed window, or inside it
def test_resume_past_a_skipped_bad_shard_is_exact(tmp_path, consumed, window):
    make_dataset(str(tmp_path), {"train": 3})
    (tmp_path / "train" / "shard-000001.tar.zst").unlink()
    ds = NCADataset(str(tmp_path), raw=True, skip_bad_shards=True, shuffle=False, shuffle_shards=window)
    it = iter(ds)
    head = [next(it)["key"] for _ in range(consumed)]
    state = ds.state_dict()
    rest = [x["key"] for x in it]
    fresh = NCADataset(str(tmp_path), raw=True, skip_bad_shards=True, shuffle=False, shuffle_shards=window)
    fresh.load_state_dict(state)
    assert keys(fresh) == rest and len(head) + len(rest) == 2 * N


def test_iter_sequences_and_raw_metadata(dataset):
    seqs = list(iter_sequences(dataset, split="val"))
    assert len(seqs) == N and all(s.dtype == np.uint16 for s in seqs)
    assert np.array_equal(np.stack(seqs), fake_shard("val", 0).tokens_NL)
    item = next(iter(NCADataset(dataset, split="val", raw=True, shuffle=False)))
    assert item["key"] == "val-000000-000000" and item["tokens"].dtype == torch.int64
    assert item["rule_id"] == fake_shard("val", 0).columns["rule_id"][0]


def test_user_errors(dataset, tmp_path):
    with pytest.raises(ValueError, match="no dataset at"):
        NCADataset(str(tmp_path))
    with pytest.raises(ValueError, match="split 'test' is not in"):
        NCADataset(dataset, split="test")
    with pytest.raises(ValueError, match="split 'test' is not in"):
        next(iter_sequences(dataset, split="test"))
    with pytest.raises(ValueError, match="seed=-1"):
        NCADataset(dataset, seed=-1)
    with pytest.raises(ValueError, match="epoch=-1"):
        NCADataset(dataset).set_epoch(-1)
    with pytest.raises(ValueError, match="fewer than world_size=8"):
        NCADataset(dataset, rank=0, world_size=8)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_state_of_a_plain_dataloader_with_workers_is_refused_not_wrong(dataset):
    """Worker copies hold the position; the main process's copy would say "nothing read" and restart the epoch."""
    ds = NCADataset(dataset, raw=True)
    batches = iter(DataLoader(ds, batch_size=4, num_workers=2))
    next(batches)
    with pytest.raises(ValueError, match="StatefulDataLoader"):
        ds.state_dict()
    in_process = NCADataset(dataset, raw=True)
    next(iter(in_process))
    assert in_process.state_dict()["yielded"] == {"0": 1}  # iterated here: its own position is exact


def test_rank_0_says_how_much_an_epoch_leaves_out(dataset, monkeypatch):
    monkeypatch.setattr(loader_mod, "_WARNED_LEFT_OUT", set(), raising=False)  # said before in this process?
    left_out = r"7 shards over world_size=3: each epoch uses 24 of 28 samples \(14% left out"
    with pytest.warns(UserWarning, match=left_out):
        NCADataset(dataset, rank=0, world_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NCADataset(dataset, rank=1, world_size=3)  # once, not once per rank
        NCADataset(dataset, rank=0, world_size=1)  # nothing left out


def test_left_out_warning_once_per_dataset_split_and_world_size(dataset, monkeypatch):
    """The trainer constructs several datasets over one split: the count is said once, not once per dataset."""
    monkeypatch.setattr(loader_mod, "_WARNED_LEFT_OUT", set(), raising=False)
    with pytest.warns(UserWarning, match="7 shards over world_size=2"):
        NCADataset(dataset, rank=0, world_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NCADataset(dataset, rank=0, world_size=2, seed=1)
    with pytest.warns(UserWarning, match="7 shards over world_size=3"):  # another world size leaves out its own
        NCADataset(dataset, rank=0, world_size=3)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_state_is_refused_whenever_workers_read_since_this_process_did(dataset):
    """A position loaded, or reached in-process, goes stale once workers read on: state_dict must not return it."""
    loaded = NCADataset(dataset, raw=True)
    loaded.load_state_dict({**loaded.state_dict(), "num_workers": 2, "yielded": {"0": 3, "1": 3}})
    batches = iter(DataLoader(loaded, batch_size=4, num_workers=2))
    next(batches), next(batches)
    with pytest.raises(ValueError, match="StatefulDataLoader"):
        loaded.state_dict()
    ds = NCADataset(dataset, raw=True)
    next(iter(ds))
    batches = iter(DataLoader(ds, batch_size=4, num_workers=2))
    next(batches)
    with pytest.raises(ValueError, match="StatefulDataLoader"):
        ds.state_dict()
    next(iter(ds))  # iterated here again: its own position is exact again
    assert ds.state_dict()["yielded"] == {"0": 1}


def _stateful_epoch(ds, epoch: int, state=None, stop=None, workers: int = 3):
    """One epoch through torchdata's StatefulDataLoader (which saves and loads each worker's dataset state inside
    the worker): the keys, in the order the loader yields them, and with `stop` its state after that many."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    loader = StatefulDataLoader(ds, batch_size=None, num_workers=workers)
    if state is not None:
        loader.load_state_dict(state)
    ds.set_epoch(epoch)  # the training loop's call, after the checkpoint is loaded
    got = []
    for item in loader:
        got.append(item["key"])
        if len(got) == stop:
            return got, loader.state_dict()
    return got, loader.state_dict()


@pytest.mark.filterwarnings("ignore:This DataLoader will create", "ignore:'set_vital' is deprecated")
def test_stateful_dataloader_resumes_mid_epoch_and_after_an_epoch(dataset):
    """The real StatefulDataLoader, 3 workers: a mid-epoch checkpoint resumes that epoch exactly (every key, in the
    loader's order); an end-of-epoch checkpoint must not pull the next epoch back to the saved one."""
    whole, end_state = _stateful_epoch(NCADataset(dataset, raw=True, seed=3), 2)
    for stop in (1, 9, 20):
        head, state = _stateful_epoch(NCADataset(dataset, raw=True, seed=3), 2, stop=stop)
        rest, _ = _stateful_epoch(NCADataset(dataset, raw=True, seed=3), 2, state=state)
        assert head + rest == whole, stop
    assert sorted(whole) == sorted(all_keys())
    after = NCADataset(dataset, raw=True, seed=3)
    got, _ = _stateful_epoch(after, 3, state=end_state)  # checkpoint at the end of epoch 2, the loop goes on
    fresh = NCADataset(dataset, raw=True, seed=3)
    assert got == _stateful_epoch(fresh, 3)[0] and len(got) == 7 * N and after.epoch == 3


def test_a_window_is_freed_before_the_next_one_is_read(dataset, monkeypatch):
    """Memory is one window of decoded samples: the previous window's must be gone when the next one loads."""
    load, previous = NCADataset._load_window, []

    def tracked(self, window):
        assert sum(ref() is not None for ref in previous) <= 1  # at most the sample last handed out
        samples = load(self, window)
        previous[:] = [weakref.ref(tokens) for _, tokens, _ in samples]
        return samples

    monkeypatch.setattr(NCADataset, "_load_window", tracked)
    assert len(keys(NCADataset(dataset, raw=True, shuffle_shards=2))) == 7 * N


DDP_SCRIPT = """
import json, sys, torch, torch.distributed as dist
from torch.utils.data import DataLoader
from nca_datagen.loader import NCADataset

dist.init_process_group("gloo")
ds = NCADataset(sys.argv[1], raw=True)  # rank and world size from the process group
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1, 1))
seen = {"rank": dist.get_rank(), "len": len(ds), "batches": [], "keys": []}
for epoch in range(2):
    ds.set_epoch(epoch)
    batches = 0
    for batch in DataLoader(ds, batch_size=3, num_workers=2):
        model(batch["tokens"][:, :1].float()).sum().backward()  # all-reduces: a rank with fewer batches hangs
        batches += 1
        seen["keys"] += [(epoch, key) for key in batch["key"]]
    seen["batches"].append(batches)
everyone = [None] * dist.get_world_size()
dist.all_gather_object(everyone, seen)
if dist.get_rank() == 0:
    print("RESULT " + json.dumps(everyone), flush=True)
del model  # DDP's reducer goes before its process group
dist.barrier()  # neither rank tears gloo down while the other still talks to it
dist.destroy_process_group()
"""


@pytest.mark.filterwarnings("ignore:.*7 shards over world_size=2")
def test_real_ddp_two_ranks_with_workers_step_together(dataset, tmp_path):
    """torchrun, two gloo ranks on loopback, DataLoader workers and a DDP model: rank and world size come from
    the process group, both ranks take the same number of batches every epoch (no hang), and their samples are
    disjoint."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), dataset],  # --standalone: a free port on this machine
                          capture_output=True, text=True, env=env, timeout=120)  # a hang fails here
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["batches"] == ranks[1]["batches"] == [5, 5]  # 3 shards x 4 samples a rank: 8 + 4 over 2 workers
    keys = [{tuple(k) for k in r["keys"]} for r in ranks]
    assert len(keys[0]) == len(keys[1]) == 2 * ranks[0]["len"] and not keys[0] & keys[1]
