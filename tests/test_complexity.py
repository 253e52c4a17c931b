"""The gzip ratio (paper-facts.md §3) and the band type."""

import gzip

import numpy as np
import pytest

from nca_datagen.complexity import (
    Band,
    bytes_gzip_ratio,
    grid_stats,
    gzip_ratio,
    gzip_size,
    histogram,
    patch_tokens,
    sequence_ratios,
)
from nca_datagen.config import NCAConfig
from nca_datagen.tokenizer import encode_patches


def test_constant_grid_scores_the_papers_floor():
    # 360 zero tokens = 1440 zero bytes -> 32 gzip bytes (14 of deflate + 18 of container)
    assert gzip_ratio(np.zeros(360, dtype=np.int64)) == pytest.approx(32 / 1440)
    grid = np.zeros((10, 12, 12), dtype=np.uint8)  # a constant probe: 10 frames of one state
    assert round(gzip_ratio(encode_patches(grid, NCAConfig())), 4) == 0.0222


def test_uniform_random_tokens_score_the_ceiling():
    ratios = [gzip_ratio(np.random.default_rng(s).integers(0, 10000, 360)) for s in range(20)]
    assert np.mean(ratios) == pytest.approx(0.669, abs=0.01)


@pytest.mark.parametrize("seed", range(5))
def test_ratio_equals_gzip_module_exactly(seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, rng.integers(2, 10000), int(rng.integers(1, 2000)))
    raw = tokens.astype("<i4").tobytes()
    assert gzip_ratio(tokens) == len(gzip.compress(raw, compresslevel=9, mtime=0)) / len(raw)


def test_ratio_uses_int32_little_endian_bytes():
    tokens = np.arange(300)
    as_bytes = tokens.astype("<i4").tobytes()
    assert gzip_ratio(tokens.astype(np.uint16)) == len(gzip.compress(as_bytes, 9, mtime=0)) / 1200


def test_empty_tokens_rejected():
    with pytest.raises(ValueError, match="empty"):
        gzip_ratio(np.array([], dtype=np.int32))


def test_patch_tokens_strip_delimiters():
    seq = np.array([10, 1, 2, 11, 10, 3, 4, 11])
    assert patch_tokens(seq, 4).tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    "text,lo,hi",
    [
        ("0.5:1.0", 0.5, 1.0), ("0.5:", 0.5, 1.0), (":0.3", 0.0, 0.3), ("50%+", 0.5, 1.0),
        ("30-40%", 0.3, 0.4), ("30%-40%", 0.3, 0.4), ("0.3-0.4", 0.3, 0.4), ("web", 0.5, 1.0),
        ("math", 0.5, 1.0), ("code", 0.3, 0.4), (" Code ", 0.3, 0.4), ("20-30%", 0.2, 0.3),
    ],
)
def test_band_parse(text, lo, hi):
    band = Band.parse(text)
    assert (band.lo, band.hi) == pytest.approx((lo, hi))


@pytest.mark.parametrize("text", ["0.6:0.4", "0.5:1.5", "150%+", "40-30%", "-0.1:0.5", "fast", "", ":", "0.5"])
def test_band_parse_rejects_bad_input(text):
    with pytest.raises(ValueError) as err:
        Band.parse(text)
    assert "band" in str(err.value) and ("0.5:1.0" in str(err.value) or "lo < hi" in str(err.value))


def test_band_is_open_interval_with_reasons():
    band = Band.parse("0.3-0.4")
    r = np.array([0.2, 0.3, 0.35, 0.4, 0.5])
    assert band.contains(r).tolist() == [False, False, True, False, False]
    assert [band.verdict(x) for x in r] == ["too_simple", "too_simple", "kept", "too_complex", "too_complex"]
    assert Band.from_dict(band.to_dict()) == band


@pytest.mark.parametrize("text,label", [("50%+", "50%+"), ("0.5:1.0", "50%+"), ("code", "30-40%"), (":0.1", "0-10%"),
                                        ("0.35:0.425", "35-42.5%")])
def test_band_label_is_the_percent_form(text, label):
    assert Band.parse(text).label == label and Band.parse(label) == Band.parse(text)


def test_gzip_size_is_the_gzip_container_without_building_it():
    raw = bytes(range(256)) * 7 + b"nca" * 100
    assert gzip_size(raw) == len(gzip.compress(raw, 9, mtime=0))
    assert bytes_gzip_ratio(raw) == gzip_size(raw) / len(raw)


def test_histogram_has_fixed_edges():
    h = histogram(np.array([0.0, 0.49, 0.51, 0.99]), bins=2)
    assert h == {"lo": 0.0, "hi": 1.0, "counts": [2, 2]}


def test_grid_stats():
    frames = np.zeros((2, 3, 4, 4), dtype=np.uint8)
    frames[1, 1:, 0, :2] = [1, 2]  # second sequence: 2 of 16 cells change once, in 1 of 2 transitions
    stats = grid_stats(frames)
    assert stats["cell_change_rate"].tolist() == [0.0, 2 / 32]
    assert stats["colors_last_frame"].tolist() == [1, 3]


def test_sequence_ratio_uses_the_probe_window():
    rng = np.random.default_rng(0)
    seq = np.concatenate([[10, *rng.integers(0, 10, 36), 11] for _ in range(27)])
    assert sequence_ratios(seq[None], 38, 10)[0] == gzip_ratio(patch_tokens(seq, 38)[:10])
    assert sequence_ratios(seq[None], 38)[0] == gzip_ratio(patch_tokens(seq, 38))
