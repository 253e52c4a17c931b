"""Patch tokens and the training example: the invariants of paper-facts.md §2."""

import numpy as np
import pytest

from nca_datagen.config import NCAConfig
from nca_datagen.tokenizer import (
    IGNORE_INDEX,
    decode_patches,
    encode_patches,
    end_grid_token,
    frames_to_sequence,
    grid_token,
    sequence_to_frames,
    training_example,
)

PAPER = NCAConfig()


def random_frames(cfg, n=3, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.states, (n, cfg.frames, *cfg.grid), dtype=np.uint8)


def test_paper_sequence_layout():
    seq = frames_to_sequence(random_frames(PAPER), PAPER)
    assert PAPER.tokens_per_frame == 38 and PAPER.seq_len == 1026
    assert seq.shape == (3, 1026) and seq.dtype == np.uint16
    frames = seq.reshape(3, 27, 38)
    assert (frames[..., 0] == 10000).all() and (frames[..., -1] == 10001).all()
    assert grid_token(PAPER) == 10000 and end_grid_token(PAPER) == 10001
    assert frames[..., 1:-1].max() <= 9999


def test_patch_digit_order_top_left_least_significant():
    grid = np.zeros((12, 12), dtype=np.uint8)
    grid[:2, :2] = [[1, 0], [1, 0]]
    assert encode_patches(grid, PAPER)[0] == 101
    grid[:2, :2] = [[1, 2], [3, 4]]
    assert encode_patches(grid, PAPER)[0] == 1 + 10 * 2 + 100 * 3 + 1000 * 4


def test_patches_are_row_major():
    grid = np.zeros((12, 12), dtype=np.uint8)
    grid[0, 2] = 1  # top-left cell of the second patch in the first patch row
    grid[2, 0] = 2  # top-left cell of the first patch in the second patch row
    ids = encode_patches(grid, PAPER)
    assert ids[1] == 1 and ids[6] == 2 and ids.sum() == 3


@pytest.mark.parametrize(
    "grid,states,patch",
    [((12, 12), 10, 2), ((7, 9), 5, 1), ((12, 18), 3, 3), ((6, 6), 2, 3), ((6, 8), 15, 2)],
    ids=lambda v: str(v),
)
def test_decode_inverts_encode(grid, states, patch):
    cfg = NCAConfig(grid=grid, states=states, patch=patch, frames=3)
    frames = random_frames(cfg, n=4, seed=states)
    assert np.array_equal(decode_patches(encode_patches(frames, cfg), cfg), frames)
    assert np.array_equal(sequence_to_frames(frames_to_sequence(frames, cfg), cfg), frames)


def test_sequence_to_frames_rejects_misaligned_tokens():
    seq = frames_to_sequence(random_frames(PAPER), PAPER)
    with pytest.raises(ValueError, match="delimiters"):
        sequence_to_frames(np.roll(seq, 1, axis=1), PAPER)


def test_training_example_masks_first_frame_targets():
    seq = frames_to_sequence(random_frames(PAPER, n=1), PAPER)[0]
    inputs, labels = training_example(seq, PAPER.tokens_per_frame)
    assert inputs.shape == labels.shape == (1024,)
    assert np.array_equal(inputs, seq[:1024]) and (labels[:37] == IGNORE_INDEX).all()
    scored = labels != IGNORE_INDEX
    assert scored.sum() == 987
    assert np.array_equal(labels[scored], seq[38:1025])
    assert labels[37] == 10000 and labels[37 + 37] == 10001  # delimiters are scored targets


def test_training_example_context_bounds():
    seq = np.zeros(1026, dtype=np.uint16)
    with pytest.raises(ValueError, match="context"):
        training_example(seq, 38, context=1026)


def test_token_ids_must_fit_uint16():
    NCAConfig(states=15, patch=2)  # 15^4 + 2 = 50627 fits
    with pytest.raises(ValueError, match="uint16"):
        NCAConfig(states=16, patch=2)
