"""Generate as you read: `NCADataset.from_recipe` yields exactly what `build` + `NCADataset` yield.

The identity test builds a small dataset with the real `build` command and reads it three ways (stored, generated
from the band and budget, generated from the manifest) through torchdata's StatefulDataLoader with two workers, on
two ranks, over two epochs, with a mid-epoch resume; every batch must be the same, metadata included.
"""

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from shard_fixtures import REAL
from torchdata.stateful_dataloader import StatefulDataLoader

from nca_datagen.cli import main
from nca_datagen.config import DatasetConfig, recipe_fingerprint
from nca_datagen.loader import NCADataset
from nca_datagen.shards import ShardError, iter_shard_samples, shard_samples, write_shard

TINY = {"frames": 4, "samples_per_shard": 4, "sims_per_rule": 2}  # 4 sequences of 152 tokens per shard
TRAIN_TOKENS = 8 * 4 * 152  # 8 train shards (and one val shard: 12.5% rounded up)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "ds"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    done = CliRunner().invoke(main, ["build", "--complexity", "30-40%", "--tokens", str(TRAIN_TOKENS), *flags,
                                     "--executor", "inline", "--out", str(out), "-q"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    return str(out)


def canon(batch: dict) -> str:
    """A batch as comparable text: every field, tensors as lists (NaN compares as 'nan')."""
    return repr({k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in sorted(batch.items())})


def epoch_batches(ds, epoch, state=None, stop=None):
    """Batches of one epoch through a StatefulDataLoader with 2 workers; with `stop`, the first `stop` batches and
    the loader's state after them. `state` resumes."""
    loader = StatefulDataLoader(ds, batch_size=3, num_workers=2)
    if state is not None:
        loader.load_state_dict(state)
    ds.set_epoch(epoch)
    batches = []
    for batch in loader:
        batches.append(canon(batch))
        if len(batches) == stop:
            return batches, loader.state_dict()
    return batches, None


@pytest.mark.filterwarnings("ignore:This DataLoader will create", "ignore:'set_vital' is deprecated")
def test_generated_and_built_datasets_yield_identical_batches(built):
    """Two ranks x two epochs x two workers; epoch 1 also interrupted after 2 batches and resumed."""
    makers = {
        "stored": lambda rank: NCADataset(built, raw=True, seed=7, rank=rank, world_size=2),
        "budget": lambda rank: NCADataset.from_recipe("30-40%", tokens=TRAIN_TOKENS, build_options=TINY, raw=True,
                                                      seed=7, rank=rank, world_size=2),
        "manifest": lambda rank: NCADataset.from_recipe(built, check_sha256=True, raw=True, seed=7, rank=rank,
                                                        world_size=2),
    }
    runs = {}
    for name, make in makers.items():
        for rank in (0, 1):
            ds = make(rank)
            whole = [epoch_batches(ds, epoch)[0] for epoch in (0, 1)]
            head, state = epoch_batches(make(rank), 1, stop=2)
            rest, _ = epoch_batches(make(rank), 1, state=state)
            assert head + rest == whole[1], (name, rank)  # the resumed epoch is the uninterrupted one
            runs[name, rank] = whole
    for rank in (0, 1):
        assert runs["stored", rank] == runs["budget", rank] == runs["manifest", rank], rank
    assert runs["stored", 0][0] != runs["stored", 0][1] != runs["stored", 1][0]  # epochs and ranks differ
    assert len(runs["stored", 0][0]) == 6  # 4 shards x 4 samples a rank over 2 workers, batches of 3: 2 x (3 + 3 + 2)


def test_training_examples_and_the_val_split_are_identical_too(built):
    for split in ("train", "val"):
        stored = list(NCADataset(built, split, seed=1, context=100))
        generated = list(NCADataset.from_recipe("30-40%", split, tokens=TRAIN_TOKENS, build_options=TINY, seed=1,
                                                context=100))
        assert len(stored) == len(generated) > 0
        for a, b in zip(stored, generated, strict=True):
            assert set(a) == {"input_ids", "labels"} and all(torch.equal(a[k], b[k]) for k in a)


def test_a_position_saved_on_stored_data_resumes_on_regenerated_data(built):
    """A manifest's regeneration has the stored dataset's identity: a checkpoint moves between them both ways."""
    stored = NCADataset(built, raw=True, seed=2)
    it = iter(stored)
    [next(it) for _ in range(11)]
    state = stored.state_dict()
    rest = [x["key"] for x in it]
    regenerated = NCADataset.from_recipe(built, raw=True, seed=2)
    regenerated.load_state_dict(state)
    assert [x["key"] for x in regenerated] == rest
    budget = NCADataset.from_recipe("30-40%", tokens=TRAIN_TOKENS, build_options=TINY, seed=2)
    with pytest.raises(ValueError, match="dataset: "):  # same samples, but nothing proves it without the manifest
        budget.load_state_dict(state)


def test_shard_samples_are_what_the_written_shard_reads_back(tmp_path):
    from nca_datagen.generate import generate_shard

    data = generate_shard(REAL, "train", 3)
    record = write_shard(data, str(tmp_path), recipe=recipe_fingerprint(REAL, "zstd"))
    read = list(iter_shard_samples(str(tmp_path / record["path"])))
    made = shard_samples(data)
    assert [k for k, _, _ in made] == [k for k, _, _ in read]
    for (_, t1, m1), (_, t2, m2) in zip(made, read, strict=True):
        assert t1.dtype == t2.dtype and np.array_equal(t1, t2)
        assert m1 == m2 and list(m1) == list(m2)  # same values, same key order


def test_check_sha256_names_a_shard_the_manifest_disowns(built, tmp_path):
    """A manifest whose shard 2 lists another digest: generation with the check refuses that shard, naming it."""
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][2]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    ds = NCADataset.from_recipe(str(copy), check_sha256=True, raw=True, shuffle=False, shuffle_shards=1)
    it = iter(ds)
    assert len([next(it) for _ in range(8)]) == 8  # shards 0 and 1 pass their check
    with pytest.raises(ShardError, match=r"train/shard-000002\.tar\.zst regenerated from the recipe has sha256"):
        next(it)
    assert ds.source.stats == {"generated": 3, "checked": 2}
    unchecked = NCADataset.from_recipe(str(copy), raw=True, shuffle=False)
    assert len(list(unchecked)) == 32  # the check is opt-in
    with pytest.warns(UserWarning, match="skipping bad shard"):
        skipped = list(NCADataset.from_recipe(str(copy), check_sha256=True, skip_bad_shards=True, raw=True))
    assert len(skipped) == 28


def test_a_manifest_of_another_recipe_version_is_refused_by_name(built, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(built, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["recipe"] = {"version": 1, "fingerprint": recipe_fingerprint(manifest["config"], "zstd", 1)}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"made by recipe version 1 .*this nca-datagen makes version 2"):
        NCADataset.from_recipe(str(copy))
    assert len(NCADataset(str(copy))) == 32  # its stored shards still read


def test_an_unbounded_stream_generates_shards_by_index(built):
    """No budget: shards 0, 1, 2, ... for ever, split by rank and worker in index order; bounded prefix identical."""
    ds = NCADataset.from_recipe("30-40%", build_options=TINY, raw=True, shuffle=False, rank=1, world_size=2)
    with pytest.raises(TypeError, match="unbounded"):
        len(ds)
    plan = ds.worker_plan(0, 1, 2)
    assert [next(plan)[0] for _ in range(3)] == [3, 7, 11]  # rank 1 of 2, worker 1 of 2: shards 1 + 2 (1 + 2k)
    it = iter(ds)
    head = [next(it) for _ in range(20)]  # 5 shards: past the built dataset's 4 for rank 1
    assert [x["key"][6:12] for x in head[::4]] == ["000001", "000003", "000005", "000007", "000009"]
    stored = list(NCADataset(built, raw=True, shuffle=False, rank=1, world_size=2))
    assert [canon(x) for x in head[:16]] == [canon(x) for x in stored]
    state = ds.state_dict()
    resumed = NCADataset.from_recipe("30-40%", build_options=TINY, raw=True, shuffle=False, rank=1, world_size=2)
    resumed.load_state_dict(state)
    again = iter(resumed)
    assert [next(again)["key"] for _ in range(6)] == [next(it)["key"] for _ in range(6)]


def test_a_config_file_or_object_is_a_recipe(built, tmp_path):
    manifest = json.loads((Path(built) / "manifest.json").read_text())
    bare, wrapped = tmp_path / "recipe.json", tmp_path / "wrapped.json"
    bare.write_text(json.dumps(manifest["config"]))
    wrapped.write_text(json.dumps({"config": manifest["config"], "note": "any other fields are ignored"}))
    want = [x["key"] for x in NCADataset(built, raw=True, seed=4)]
    config = DatasetConfig.from_dict(manifest["config"])
    for recipe in (str(bare), str(wrapped), config):
        ds = NCADataset.from_recipe(recipe, tokens=TRAIN_TOKENS, raw=True, seed=4)
        assert [x["key"] for x in ds] == want, recipe


def test_from_recipe_plans_what_build_plans():
    """`from_recipe("50%+", tokens=...)` must plan what `build --complexity 50%+ --tokens ...` plans: the same
    config and shards (both come from `pipelines.plan`), and the build command's default band."""
    from nca_datagen.api import make_plan

    for options in ({}, {"frames": 8, "seed": 3, "samples_per_shard": 40, "sims_per_rule": 4}):
        ds = NCADataset.from_recipe("50%+", tokens="2M", build_options=options)
        plan = make_plan(complexity="50%+", tokens="2M", **options)
        assert ds.source.config == plan.config and ds.source.num_shards == plan.shards["train"]
    default = next(p.default for p in main.get_command(None, "build").params if p.name == "complexity")
    assert default == inspect.signature(NCADataset.from_recipe).parameters["recipe"].default


@pytest.mark.parametrize(("call", "message"), [
    (lambda b: NCADataset.from_recipe(b, tokens="1M"), "manifest fixes its recipe"),
    (lambda b: NCADataset.from_recipe("50%+", check_sha256=True), "needs a manifest"),
    (lambda b: NCADataset.from_recipe("50%+", build_options={"frame": 4}), r"\['frame'\]: not build options"),
    (lambda b: NCADataset.from_recipe("50%+", tokens="2M", split="val", val_tokens=0), "plans no val shards"),
    (lambda b: NCADataset.from_recipe(b + "/manifest.json", split="test"), "split 'test' is not in"),
    (lambda b: NCADataset.from_recipe("missing.json"), "config file missing.json does not exist"),
    (lambda b: NCADataset.from_recipe("nowhere/at-all"), "no dataset at"),
])
def test_user_errors_say_what_to_do(built, call, message):
    with pytest.raises(ValueError, match=message):
        call(built)


@pytest.mark.gpu
def test_the_gpu_generates_the_same_samples(built):
    cpu = [canon(x) for x in NCADataset.from_recipe(built, raw=True, device="cpu")]
    gpu = [canon(x) for x in NCADataset.from_recipe(built, raw=True, device="cuda", check_sha256=True)]
    assert cpu == gpu
