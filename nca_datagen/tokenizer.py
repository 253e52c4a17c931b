"""Patch tokens: grids of cell states <-> token sequences, and the paper's training example.

A p x p patch becomes one id, the cells read in row-major order as base-n digits with the top-left cell the
least significant: for 2x2, `c[0,0] + n*c[0,1] + n^2*c[1,0] + n^3*c[1,1]`. Patches are ordered row-major over
the patch grid. Each frame is wrapped in `<grid>` = n^(p*p) and `</grid>` = n^(p*p) + 1, so the paper's
12x12 / 10 states / 2x2 frame is 38 tokens and a 27-frame sequence 1026.

Shape legend: N sequences, F frames, H x W cells, P patches per frame, L tokens per sequence.
"""

from __future__ import annotations

import functools

import numpy as np

from nca_datagen.config import NCAConfig

IGNORE_INDEX = -100  # label value that cross-entropy skips (torch's default ignore_index)


def grid_token(cfg: NCAConfig) -> int:
    return cfg.states ** (cfg.patch * cfg.patch)


def end_grid_token(cfg: NCAConfig) -> int:
    return grid_token(cfg) + 1


def _digit_weights(cfg: NCAConfig) -> np.ndarray:
    p = cfg.patch
    return (cfg.states ** np.arange(p * p, dtype=np.int64)).reshape(p, p)


def encode_patches(grids_NHW: np.ndarray, cfg: NCAConfig) -> np.ndarray:
    """Cells (..., H, W) -> patch ids (..., P) as int64."""
    *lead, h, w = grids_NHW.shape
    p = cfg.patch
    blocks = grids_NHW.astype(np.int64).reshape(*lead, h // p, p, w // p, p).swapaxes(-3, -2)
    return (blocks * _digit_weights(cfg)).sum(axis=(-1, -2)).reshape(*lead, (h // p) * (w // p))


@functools.lru_cache(maxsize=8)
def _patch_cells(states: int, patch: int) -> np.ndarray:
    """(n^(p*p),) records of p*p bytes: the cells of every patch id, row-major (at most 65536 x p*p bytes).

    One opaque p*p-byte record per id, so a lookup is one `np.take` of fixed-size items: ~10x faster than
    indexing a (n^(p*p), p, p) uint8 table."""
    ids = np.arange(states ** (patch * patch), dtype=np.int64)
    digits = (ids[:, None] // states ** np.arange(patch * patch, dtype=np.int64) % states).astype(np.uint8)
    return np.ascontiguousarray(digits).view(np.dtype((np.void, patch * patch))).reshape(-1)


def decode_patches(ids_NP: np.ndarray, cfg: NCAConfig) -> np.ndarray:
    """Patch ids (..., P) -> cells (..., H, W) as uint8. Inverse of `encode_patches` (a table lookup)."""
    h, w = cfg.grid
    p = cfg.patch
    *lead, _ = ids_NP.shape
    patches = np.take(_patch_cells(cfg.states, p), np.asarray(ids_NP))
    # Move whole patch rows (p bytes each) from (patch row, patch col, row in patch) to frame order: copying
    # p-byte items is ~5x faster than moving single cells.
    rows = patches.view(np.dtype((np.void, p))).reshape(*lead, h // p, w // p, p)
    return np.ascontiguousarray(rows.swapaxes(-2, -1)).view(np.uint8).reshape(*lead, h, w)


def token_dtype(cfg: NCAConfig) -> np.dtype:
    """uint16: config validation guarantees every id, delimiters included, fits."""
    assert cfg.vocab_size - 1 <= np.iinfo(np.uint16).max, cfg
    return np.dtype(np.uint16)


def frames_to_sequence(grids_NFHW: np.ndarray, cfg: NCAConfig) -> np.ndarray:
    """Frames (N, F, H, W) -> token sequences (N, F * (P + 2)) with a `<grid>` ... `</grid>` per frame."""
    ids = encode_patches(grids_NFHW, cfg)
    n, f, _ = ids.shape
    seq = np.empty((n, f, ids.shape[-1] + 2), dtype=token_dtype(cfg))
    seq[..., 0] = grid_token(cfg)
    seq[..., 1:-1] = ids
    seq[..., -1] = end_grid_token(cfg)
    return seq.reshape(n, -1)


def sequence_to_frames(seq_NL: np.ndarray, cfg: NCAConfig) -> np.ndarray:
    """Token sequences (N, L) -> frames (N, F, H, W); raises if the delimiters are not where they belong."""
    seq = np.asarray(seq_NL)
    frames = seq.reshape(seq.shape[0], -1, cfg.tokens_per_frame)
    if not ((frames[..., 0] == grid_token(cfg)).all() and (frames[..., -1] == end_grid_token(cfg)).all()):
        raise ValueError("sequence does not match this config: frame delimiters are not at the frame bounds")
    return decode_patches(frames[..., 1:-1], cfg)


def default_context(seq_len: int) -> int:
    """The example length C the paper trains on: the sequence less 2 tokens (1024 of 1026)."""
    return seq_len - 2


def training_example(seq_L: np.ndarray, tokens_per_frame: int, context: int | None = None):
    """The paper's example: inputs seq[:C], targets seq[1:C+1], the first frame's targets ignored.

    With C = 1024 and 38 tokens per frame: 37 ignored targets (the rest of frame one, which has no
    in-context evidence of the rule yet) and 987 scored positions, delimiters included.
    Returns (input_ids, labels) as int64 arrays.
    """
    seq = np.asarray(seq_L, dtype=np.int64)
    context = default_context(len(seq)) if context is None else context
    if not 0 < context < len(seq):
        raise ValueError(f"context={context} must be in 1..{len(seq) - 1} for sequences of {len(seq)} tokens")
    input_ids = seq[:context]
    labels = seq[1 : context + 1].copy()
    labels[: tokens_per_frame - 1] = IGNORE_INDEX
    return input_ids, labels
