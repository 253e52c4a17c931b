"""generate_shard: the filter's bookkeeping, purity, and failure on bands no rule reaches."""

import numpy as np
import pytest

import nca_datagen.generate as gen
from nca_datagen.config import DatasetConfig, NCAConfig
from nca_datagen.generate import UnreachableBandError, add_sample_stats, generate_shard, probe_ratios, select_rules
from nca_datagen.rules import sample_rules
from nca_datagen.shards import shard_bytes

SMALL = DatasetConfig(nca=NCAConfig(frames=4), rules_per_shard=3, sims_per_rule=2, band="0.4:1.0")


def test_shard_contents_and_counts():
    data = generate_shard(SMALL, "train", 2, backend="torch")
    assert data.tokens_NL.shape == (6, 4 * 38) and data.tokens_NL.dtype == np.uint16
    cols = data.columns
    assert set(cols) >= {"rule_id", "sim", "complexity", "probe_complexity", "cell_change_rate",
                         "colors_last_frame"}
    assert all(len(v) == 6 for v in cols.values())
    assert cols["sim"].tolist() == [0, 1] * 3
    assert (cols["rule_id"] >= 2 * gen.RULE_ID_STRIDE).all() and len(set(cols["rule_id"].tolist())) == 3
    assert ((cols["probe_complexity"] > 0.4) & (cols["probe_complexity"] < 1.0)).all()
    c = data.counts
    assert c["kept"] == 3 and c["candidates"] == c["kept"] + c["too_simple"] + c["too_complex"]
    assert len(data.candidate_ratio_M) == c["candidates"]
    assert set(data.timings) == {"probe_filter", "rollout_tokenize", "stats"}


def test_generate_is_pure_and_splits_differ():
    a = generate_shard(SMALL, "train", 0, backend="torch")
    b = generate_shard(SMALL, "train", 0, backend="torch")
    assert a.tokens_NL.tobytes() == b.tokens_NL.tobytes()
    assert all(np.array_equal(a.columns[k], b.columns[k]) for k in a.columns)
    val = generate_shard(SMALL, "val", 0, backend="torch")
    t_train = sample_rules(SMALL.nca, SMALL.seed, 0, a.columns["rule_id"][:1])
    t_val = sample_rules(SMALL.nca, SMALL.seed, 1, val.columns["rule_id"][:1])
    assert not np.array_equal(t_train.w1_RKSC, t_val.w1_RKSC)


def test_statistics_added_later_give_the_same_shard():
    full = generate_shard(SMALL, "train", 0, backend="torch")
    bare = generate_shard(SMALL, "train", 0, backend="torch", stats=False)  # what a GPU generator actor returns
    assert "complexity" not in bare.columns and "stats" not in bare.timings
    add_sample_stats(bare, SMALL)
    assert add_sample_stats(bare, SMALL) is bare and "stats" in bare.timings  # idempotent
    assert shard_bytes(bare) == shard_bytes(full)


def test_kept_rules_do_not_depend_on_probe_batch_size(monkeypatch):
    want = select_rules(SMALL, "train", 1, backend="torch")
    monkeypatch.setattr(gen, "PROBE_BATCH_MIN", 1)
    got = select_rules(SMALL, "train", 1, backend="torch")
    assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_counts_follow_the_band():
    cfg = DatasetConfig(nca=NCAConfig(frames=2), rules_per_shard=4, sims_per_rule=1, band="0.3-0.5")
    kept, ratios, counts = select_rules(cfg, "train", 0, backend="torch")
    assert counts["too_simple"] == int((ratios <= 0.3).sum())
    assert counts["too_complex"] == int((ratios >= 0.5).sum())
    assert cfg.band.contains(ratios[-1])  # the last candidate counted is the last one kept
    assert np.allclose(probe_ratios(cfg, "train", kept, backend="torch"), ratios[cfg.band.contains(ratios)])


def test_unreachable_band_stops_with_the_observed_range():
    cfg = DatasetConfig(nca=NCAConfig(frames=2), band="0.9:1.0", rules_per_shard=2, max_candidates_per_shard=100)
    with pytest.raises(UnreachableBandError) as err:
        generate_shard(cfg, "train", 0, backend="torch")
    msg = str(err.value)
    assert "kept 0 of 100" in msg and "0.9" in msg and "span 0.0" in msg


def test_negative_shard_index_rejected():
    with pytest.raises(ValueError, match="shard_index"):
        generate_shard(SMALL, "train", -1)
    with pytest.raises(ValueError, match="split"):
        generate_shard(SMALL, "test", 0)
