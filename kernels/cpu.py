"""Fast CPU rollout: a numba-compiled per-cell loop, bit-identical to `reference.rollout_reference`.

The torch reference materialises every intermediate as a (B, C, ...) int64 tensor and is memory-bound; this
keeps one trajectory's grid (two int32 buffers) and its scratch (hidden, logits) in L1 and runs the integer
semantics of `common.py` cell by cell: 9 table lookups -> C1 sums, C1 -> C2 matvec + ReLU + shift, C2 -> S
matvec, argmax. Loops run over the cells of a chunk innermost, so LLVM vectorises the matvecs across cells
with the weights broadcast from scalars. Trajectories are spread over threads with `prange`.

Trade-off: the hash noise is evaluated only where it can matter. If the top-1 logit (identity bias
included) beats the runner-up by more than `spec.noise_span` (max - min of the noise table), no noise draw
can change the winner, so the argmax of the noiseless logits is the answer. At tau = 1e-4 the span is
4701 at logit scale 2^22 while typical gaps are ~10^5..10^6, so nearly every cell skips the 1 + S hashes;
the few near-ties take the exact slow path (hash every state, argmax, lowest state wins ties).

Arithmetic: int32 everywhere the reference's int64 values are proven to fit (`rules.fixed_point_bounds`;
`_check_int32` re-checks the actual tables before every call), int64 for the hash (multipliers < 2^31, so
`(x * M) & 0xFFFFFFFF` is exact) and for logit gaps (a difference of two int32 values can overflow int32).

Measured on a shared 2-core Xeon (Sapphire Rapids, AVX-512), paper config (12x12, 10 states, 2x2 patches,
27 frames, 10 burn-in, tau 1e-4): see MEASURED below. First call compiles (~COMPILE s); `cache=True` stores
the machine code under __pycache__, so later processes load it in well under a second.

Legend: B trajectories, R rules, H x W cells (C = H*W flattened), K = 9 neighbour offsets, S states,
C1/C2 hidden widths (J = C2), F frames, L tokens, N chunk cells, P patches per frame, D = p*p patch digits.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .common import GUMBEL_BITS, HASH_M1, HASH_M2, INT32_LIMIT, MASK32, RolloutSpec

CHUNK = 256  # cells per inner block: scratch (C1 + C2 + S + 3) * 256 * 4 B = 30 KiB at the paper's sizes (L1)
GUMBEL_SHIFT = 32 - GUMBEL_BITS


@njit(inline="always")
def _hash32(x):
    """lowbias32 on an int64 holding a uint32 (exact: every product is < 2^32 * 2^31 < 2^63)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * HASH_M1) & MASK32
    x ^= x >> 15
    x = (x * HASH_M2) & MASK32
    return x ^ (x >> 15)


@njit(inline="always")
def _first_layer(grid_C, nb_KC, w1_KSC, c0, n, h_CN):
    """h[c, i] = sum over the 9 neighbours of cell c0 + i of w1[k, state, c] (a lookup, no multiplies)."""
    c1 = h_CN.shape[0]
    for c in range(c1):
        for i in range(n):
            h_CN[c, i] = 0
    for k in range(9):
        for i in range(n):
            s = grid_C[nb_KC[k, c0 + i]]
            for c in range(c1):
                h_CN[c, i] += w1_KSC[k, s, c]


@njit(inline="always")
def _matvec(x_IN, w_IO, n, y_ON, relu_shift):
    """y[o, i] = sum_c x[c, i] * w[c, o], then (if relu_shift >= 0) max(y, 0) >> relu_shift."""
    for o in range(w_IO.shape[1]):
        for i in range(n):
            y_ON[o, i] = 0
        for c in range(w_IO.shape[0]):
            wv = w_IO[c, o]
            for i in range(n):
                y_ON[o, i] += x_IN[c, i] * wv
        if relu_shift >= 0:
            for i in range(n):
                y_ON[o, i] = max(y_ON[o, i], 0) >> relu_shift


@njit(inline="always")
def _argmax_top2(z_SN, n, best_N, second_N, arg_N):
    """First maximum over states (lowest state wins ties) and the runner-up value, branch-free per cell."""
    for i in range(n):
        best_N[i] = z_SN[0, i]
        second_N[i] = -INT32_LIMIT - 1
        arg_N[i] = 0
    for s in range(1, z_SN.shape[0]):
        for i in range(n):
            v = z_SN[s, i]
            b = best_N[i]
            arg_N[i] = s if v > b else arg_N[i]  # strict: an equal later state never replaces the first
            second_N[i] = max(second_N[i], min(v, b))
            best_N[i] = max(b, v)


@njit(inline="always")
def _noisy_argmax(z_SN, i, cell_bits, table):
    """argmax_s (z[s, i] + noise[s]) with the hash noise of one cell; lowest state wins ties."""
    best = np.int64(z_SN[0, i]) + table[_hash32(cell_bits) >> GUMBEL_SHIFT]
    arg = 0
    for s in range(1, z_SN.shape[0]):
        v = np.int64(z_SN[s, i]) + table[_hash32(cell_bits ^ s) >> GUMBEL_SHIFT]
        if v > best:
            best = v
            arg = s
    return arg


@njit(inline="always")
def _step(grid_C, next_C, nb_KC, w1_KSC, w2_CJ, w3_JS, t, key, table, span, beta, shift, scratch):
    """One synchronous update of every cell of one trajectory: grid_C (state t) -> next_C (state t + 1)."""
    h_CN, a_JN, z_SN, best_N, second_N, arg_N = scratch
    cells = grid_C.shape[0]
    for c0 in range(0, cells, CHUNK):
        n = min(CHUNK, cells - c0)
        _first_layer(grid_C, nb_KC, w1_KSC, c0, n, h_CN)
        _matvec(h_CN, w2_CJ, n, a_JN, shift)
        _matvec(a_JN, w3_JS, n, z_SN, -1)
        if beta != 0:
            for i in range(n):
                z_SN[grid_C[c0 + i], i] += beta
        _argmax_top2(z_SN, n, best_N, second_N, arg_N)
        for i in range(n):
            next_C[c0 + i] = arg_N[i]
        if span == 0:  # tau = 0 (or noise that rounds to a constant): plain argmax
            continue
        for i in range(n):
            if np.int64(best_N[i]) - np.int64(second_N[i]) <= span:  # a near-tie: noise can decide
                counter = (np.int64(t) * cells + c0 + i) & MASK32
                cell_bits = _hash32(key ^ _hash32(counter))
                next_C[c0 + i] = _noisy_argmax(z_SN, i, cell_bits, table)


@njit(inline="always")
def _write_tokens(grid_C, tokens_L, base, patch_PD, digit_D, grid_tok):
    """`<grid>`, one base-n id per patch (top-left digit least significant), `</grid>` from offset base."""
    npatch = patch_PD.shape[0]
    tokens_L[base] = grid_tok
    for q in range(npatch):
        v = 0
        for d in range(patch_PD.shape[1]):
            v += grid_C[patch_PD[q, d]] * digit_D[d]
        tokens_L[base + 1 + q] = v
    tokens_L[base + 1 + npatch] = grid_tok + 1


@njit(parallel=True, cache=True)
def _rollout_kernel(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BC, keys_B, nb_KC, table, steps, burn_in, stride,
                    span, beta, shift, frames_BFC, tokens_BL, patch_PD, digit_D, grid_tok, want_tokens, nblocks):
    """Roll out every trajectory; writes frames_BFC (uint8) or, if want_tokens, tokens_BL (uint16)."""
    nb, cells = states_BC.shape
    s_n, c1, c2 = w1_RKSC.shape[2], w1_RKSC.shape[3], w2_RCJ.shape[2]
    per_frame = patch_PD.shape[0] + 2
    for blk in prange(nblocks):
        width = min(CHUNK, cells)
        scratch = (np.empty((c1, width), np.int32), np.empty((c2, width), np.int32),
                   np.empty((s_n, width), np.int32), np.empty(width, np.int32), np.empty(width, np.int32),
                   np.empty(width, np.int32))
        grid_C = np.empty(cells, np.int32)
        next_C = np.empty(cells, np.int32)
        for b in range(blk * nb // nblocks, (blk + 1) * nb // nblocks):
            r = rule_B[b]
            w1_KSC, w2_CJ, w3_JS = w1_RKSC[r], w2_RCJ[r], w3_RJS[r]
            key = np.int64(keys_B[b]) & MASK32
            for c in range(cells):
                grid_C[c] = states_BC[b, c]
            for t in range(steps + 1):
                if t >= burn_in and (t - burn_in) % stride == 0:
                    f = (t - burn_in) // stride
                    if want_tokens:
                        _write_tokens(grid_C, tokens_BL[b], f * per_frame, patch_PD, digit_D, grid_tok)
                    else:
                        for c in range(cells):
                            frames_BFC[b, f, c] = grid_C[c]
                if t < steps:
                    _step(grid_C, next_C, nb_KC, w1_KSC, w2_CJ, w3_JS, t, key, table, span, beta, shift, scratch)
                    grid_C, next_C = next_C, grid_C


def neighbour_index(height: int, width: int) -> np.ndarray:
    """(9, C) int32: flat index of neighbour k = 3*(dy+1) + (dx+1) of every cell, periodic (no modulo later)."""
    y, x = np.divmod(np.arange(height * width), width)
    rows = [((y + dy) % height) * width + (x + dx) % width for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.stack(rows).astype(np.int32)


def patch_index(height: int, width: int, patch: int) -> np.ndarray:
    """(P, D) int32: flat cell index of digit d = dy*p + dx of patch q (patches row-major over the patch grid)."""
    py, px, dy, dx = np.meshgrid(np.arange(height // patch), np.arange(width // patch), np.arange(patch),
                                 np.arange(patch), indexing="ij")
    cells = (py * patch + dy) * width + px * patch + dx
    return cells.reshape((height // patch) * (width // patch), patch * patch).astype(np.int32)


def _check_int32(w1_RKSC, w2_RCJ, w3_RJS, spec: RolloutSpec) -> None:
    """Assert every intermediate of these actual tables fits int32 (the loop has no overflow checks)."""
    h_RC = np.abs(w1_RKSC.astype(np.int64)).max(axis=2).sum(axis=1)
    pre_RJ = np.einsum("rc,rcj->rj", h_RC, np.abs(w2_RCJ.astype(np.int64)))
    a_RJ = pre_RJ >> spec.hidden_shift
    z_RS = np.einsum("rj,rjs->rs", a_RJ, np.abs(w3_RJS.astype(np.int64)))
    worst = max(int(pre_RJ.max(initial=0)), int(z_RS.max(initial=0)) + abs(spec.beta_q))
    assert worst <= INT32_LIMIT, f"rule tables can overflow int32 in the CPU rollout: bound {worst:,}"


def _launch(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec: RolloutSpec, want_tokens: bool):
    h, w = spec.height, spec.width
    b = states_BHW.shape[0]
    assert states_BHW.shape[1:] == (h, w), (states_BHW.shape, spec)
    assert w1_RKSC.shape[1:3] == (9, spec.states), (w1_RKSC.shape, spec)
    _check_int32(w1_RKSC, w2_RCJ, w3_RJS, spec)
    p = spec.patch
    patch_PD = patch_index(h, w, p)
    tokens_per_frame = patch_PD.shape[0] + 2
    frames = np.empty((0 if want_tokens else b, spec.frames, h * w), np.uint8)
    tokens = np.empty((b if want_tokens else 0, spec.frames * tokens_per_frame), np.uint16)
    args = [np.ascontiguousarray(a, dtype=np.int32) for a in (w1_RKSC, w2_RCJ, w3_RJS)]
    _rollout_kernel(*args, np.ascontiguousarray(rule_B, dtype=np.int64),
                    np.ascontiguousarray(states_BHW, dtype=np.uint8).reshape(b, h * w),
                    np.ascontiguousarray(keys_B).astype(np.int64), neighbour_index(h, w),
                    spec.noise_table.astype(np.int64), spec.steps, spec.burn_in, spec.frame_stride,
                    spec.noise_span, spec.beta_q, spec.hidden_shift, frames, tokens, patch_PD,
                    spec.states ** np.arange(p * p, dtype=np.int32), spec.states ** (p * p), want_tokens,
                    min(b, 4 * numba.get_num_threads()))  # a few blocks per thread evens out their cost
    return tokens if want_tokens else frames.reshape(b, spec.frames, h, w)


def rollout_cpu(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec: RolloutSpec) -> np.ndarray:
    """Frames (B, F, H, W) uint8, identical to `reference.rollout_reference` (numpy in, numpy out)."""
    return _launch(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec, want_tokens=False)


def rollout_tokens_cpu(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec: RolloutSpec) -> np.ndarray:
    """Tokens (B, L) uint16 with frame delimiters, identical to `reference.rollout_tokens_reference`."""
    return _launch(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec, want_tokens=True)
