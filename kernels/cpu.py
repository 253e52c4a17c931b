"""Fast CPU rollout: a numba-compiled per-cell loop, bit-identical to `reference.rollout_reference`.

The torch reference materialises every intermediate as a (B, C, ...) int64 tensor and is memory-bound; this
keeps one trajectory's grid and its scratch (hidden, logits) in L1 and runs the integer semantics of
`common.py` for all cells of a chunk at a time: first-layer lookups -> C1 sums, C1 -> C2 matvec + rounding
offset + ReLU + shift, C2 -> S matvec, argmax. Cells are the innermost loop, so LLVM vectorises every stage across
cells with the weights broadcast from scalars (AVX2/AVX-512 ymm lanes here). Trajectories are spread over threads
(`prange`).

Three tricks, each exact:
- Padded grid: the state lives in an (H+2) x (W+2) uint8 buffer whose border is the periodic wrap, so each
  neighbour is a fixed offset (no modulo, no index table); the 2 border positions per row are computed too
  and overwritten (17% extra work at W = 12, cheaper than gathers).
- Packed lookups: the first layer's entries, shifted to be non-negative, are packed as `bits`-wide lanes in
  int64 words (16 bits, 4 channels per word at the paper's settings; a 9-term sum cannot carry into the next
  lane), and for S <= TRIPLE_MAX_STATES a whole row of 3 neighbours is one lookup into an S^3 table built per
  rule. So 9 x C1 scalar lookups become 3 vector gathers per cell.
- Noise only where it can matter: if the top-1 logit (identity bias included) beats the runner-up by more than
  `spec.noise_span` (max - min of the noise table), no noise draw can change the winner. At tau = 1e-4 the
  span is 4701 at logit scale 2^22 while typical gaps are ~10^5..10^6, so nearly every cell skips the 1 + S
  hashes; near-ties take the exact path (hash every state, argmax, lowest state wins ties).

Arithmetic: int32 where the reference's int64 values are proven to fit (`rules.fixed_point_bounds`;
`_check_int32` re-checks the actual tables on every call), int64 for the hash (multipliers < 2^31, so
`(x * M) & 0xFFFFFFFF` is exact), the packed lanes and logit gaps (an int32 difference can overflow).

Measured on a shared 2-core Xeon (Sapphire Rapids) at the paper's config (12x12, 10 states, 2x2 patches,
27 frames, 10 burn-in, tau 1e-4), batch 512-2048, 2 threads (benchmarks/bench_rollout.py): 5.1-5.3M tokens/s
(26M cell updates/s) in a quiet moment, 5.7M at batch 512 and 7.1M at 2048 in the committed run
(results/bench_rollout.md), 3.7M tokens/s on one thread; 1.4-2.4M tokens/s while other jobs kept
the load average at 5-8. The torch reference, same box, quiet: 0.22-0.32M tokens/s. Compiling takes 26-31
CPU-s (35-54 s wall under load); `cache=True` stores the machine code under kernels/__pycache__, so a later
process's first call (numba import + cache load) takes 0.4-1.5 s. Editing this file invalidates the cache.

Legend: B trajectories, R rules, H x W cells, K = 9 neighbour offsets, S states, C1/C2 hidden widths (J = C2),
F frames, L tokens, N positions of a chunk, P padded-grid positions (or patches in `patch_PD`), D = p*p patch
digits, W packed words per first-layer entry (in array suffixes), T = S^3 row-triple index.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange

from .common import GUMBEL_BITS, HASH_M1, HASH_M2, INT32_LIMIT, MASK32, RolloutSpec

CHUNK = 256  # positions per block: scratch (C1 + C2 + S + 3) * 4 B + 8 B per position = 36 KiB at the paper's widths
TRIPLE_MAX_STATES = 11  # row-triple tables hold 3 * S^3 int64 words: 32 KiB at S = 11, beyond that L1 overflows
GUMBEL_SHIFT = 32 - GUMBEL_BITS

# GNU OpenMP, numba's default threading layer on Linux, kills a process forked after it ran a kernel (DataLoader
# workers started after a trainer generated its validation shards in-process). The fork-safe layer (TBB if
# installed, else numba's workqueue) ran this kernel as fast here (2 cores, 2,000 paper-config trajectories, best of
# 5: 2.9-3.2M tokens/s vs 2.8-3.4M with OpenMP); it needs launches from one thread at a time per process, which is
# how every caller launches. NUMBA_THREADING_LAYER still chooses.
if numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "forksafe"


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
def _build_triples(w1p_WKS, tri_WRT):
    """Row-triple tables: tri[w, row, a + S*b + S^2*c] = w1p[w, 3row, a] + w1p[w, 3row+1, b] + w1p[w, 3row+2, c]."""
    s_n = w1p_WKS.shape[2]
    for wd in range(w1p_WKS.shape[0]):
        for row in range(3):
            t0, t1, t2 = w1p_WKS[wd, 3 * row], w1p_WKS[wd, 3 * row + 1], w1p_WKS[wd, 3 * row + 2]
            out = tri_WRT[wd, row]
            for c in range(s_n):
                for b in range(s_n):
                    base = (c * s_n + b) * s_n
                    for a in range(s_n):
                        out[base + a] = t0[a] + t1[b] + t2[c]


@njit(inline="always")
def _first_layer(pad_P, p, n, wp, w1p_WKS, tri_WRT, triples, bits, bias9, acc_N, h_CN):
    """h[c, i] = sum over the 9 neighbours of position p + i of w1[k, state, c]: a lookup, no multiplies.

    Tables hold `bits`-wide biased lanes (entry + bias >= 0) packed into int64 words, so one lookup adds
    64 // bits channels at once and the 9-term sums never carry across lanes (9 * 2 * bias < 2^bits). With
    triples, one lookup covers a whole row of 3 neighbours (index a + S*b + S^2*c from 3 byte loads).
    """
    s_n = w1p_WKS.shape[2]
    lanes = 64 // bits
    mask = (np.int64(1) << bits) - 1
    c1 = h_CN.shape[0]
    for wd in range(w1p_WKS.shape[0]):
        if triples:
            for row in range(3):
                o = p + (row - 1) * wp - 1
                t = tri_WRT[wd, row]
                for i in range(n):
                    j = o + i
                    v = t[np.int32(pad_P[j]) + s_n * (np.int32(pad_P[j + 1]) + s_n * np.int32(pad_P[j + 2]))]
                    acc_N[i] = v if row == 0 else acc_N[i] + v
        else:
            for k in range(9):
                o = p + (k // 3 - 1) * wp + k % 3 - 1
                t = w1p_WKS[wd, k]
                for i in range(n):
                    v = t[pad_P[o + i]]
                    acc_N[i] = v if k == 0 else acc_N[i] + v
        for lane in range(min(lanes, c1 - wd * lanes)):
            h = h_CN[wd * lanes + lane]
            sh = bits * lane
            for i in range(n):
                h[i] = np.int32((acc_N[i] >> sh) & mask) - bias9


@njit(inline="always")
def _matvec(x_IN, w_IO, n, y_ON, offset, relu_shift):
    """y[o, i] = offset + sum_c x[c, i] * w[c, o], then (if relu_shift >= 0) max(y, 0) >> relu_shift."""
    for o in range(w_IO.shape[1]):
        y = y_ON[o]
        x, wv = x_IN[0], w_IO[0, o]
        for i in range(n):
            y[i] = x[i] * wv + offset
        for c in range(1, w_IO.shape[0]):
            x, wv = x_IN[c], w_IO[c, o]
            for i in range(n):
                y[i] += x[i] * wv
        if relu_shift >= 0:
            for i in range(n):
                y[i] = max(y[i], 0) >> relu_shift


@njit(inline="always")
def _argmax_top2(z_SN, n, best_N, second_N, arg_N):
    """First maximum over states (lowest state wins ties) and the runner-up value, branch-free per cell."""
    for i in range(n):
        best_N[i] = z_SN[0, i]
        second_N[i] = -INT32_LIMIT - 1
        arg_N[i] = 0
    for s in range(1, z_SN.shape[0]):
        z = z_SN[s]
        for i in range(n):
            v = z[i]
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
def _wrap_pad(pad_P, h, w):
    """Refresh the 1-cell periodic border of an (h+2) x (w+2) padded grid from its interior."""
    wp = w + 2
    for y in range(1, h + 1):
        pad_P[y * wp] = pad_P[y * wp + w]
        pad_P[y * wp + w + 1] = pad_P[y * wp + 1]
    for x in range(wp):  # whole rows last, so the corners get the diagonal neighbour
        pad_P[x] = pad_P[h * wp + x]
        pad_P[(h + 1) * wp + x] = pad_P[wp + x]


@njit(inline="always")
def _step(cur_P, next_P, h, w, t, key, rule, scratch):
    """One synchronous update of every cell of one trajectory: cur_P (state t) -> next_P (state t + 1).

    Works on the padded grid's flat positions from cell (0, 0) to cell (h-1, w-1): neighbours are fixed
    offsets, no modulo; the 2 border positions per row in between are computed and then overwritten.
    """
    w1p_WKS, tri_WRT, triples, bits, bias9, w2_CJ, w3_JS, shift, hround, beta, table, span = rule
    acc_N, h_CN, a_JN, z_SN, best_N, second_N, arg_N = scratch
    wp = w + 2
    first, npos = wp + 1, (h - 1) * wp + w
    for q0 in range(0, npos, CHUNK):
        n = min(CHUNK, npos - q0)
        p = first + q0
        _first_layer(cur_P, p, n, wp, w1p_WKS, tri_WRT, triples, bits, bias9, acc_N, h_CN)
        _matvec(h_CN, w2_CJ, n, a_JN, hround, shift)
        _matvec(a_JN, w3_JS, n, z_SN, 0, -1)
        if beta != 0:
            for i in range(n):
                z_SN[cur_P[p + i], i] += beta
        _argmax_top2(z_SN, n, best_N, second_N, arg_N)
        for i in range(n):
            next_P[p + i] = arg_N[i]
        if span == 0:  # tau = 0 (or noise that rounds to a constant): plain argmax
            continue
        for i in range(n):
            if np.int64(best_N[i]) - np.int64(second_N[i]) <= span:  # a near-tie: noise can decide
                y, x = (p + i) // wp - 1, (p + i) % wp - 1
                if x < 0 or x >= w:
                    continue  # a border position
                counter = (np.int64(t) * (h * w) + y * w + x) & MASK32
                next_P[p + i] = _noisy_argmax(z_SN, i, _hash32(key ^ _hash32(counter)), table)
    _wrap_pad(next_P, h, w)


@njit(inline="always")
def _write_tokens(pad_P, tokens_L, base, patch_PD, digit_D, grid_tok):
    """`<grid>`, one base-n id per patch (top-left digit least significant), `</grid>` from offset base."""
    npatch = patch_PD.shape[0]
    tokens_L[base] = grid_tok
    for q in range(npatch):
        v = 0
        for d in range(patch_PD.shape[1]):
            v += pad_P[patch_PD[q, d]] * digit_D[d]
        tokens_L[base + 1 + q] = v
    tokens_L[base + 1 + npatch] = grid_tok + 1


@njit(inline="always")
def _load_grid(cells_HW, pad_P):
    """Initial state (H, W) -> interior of the padded grid, then its periodic border."""
    h, w = cells_HW.shape
    for y in range(h):
        for x in range(w):
            pad_P[(y + 1) * (w + 2) + x + 1] = cells_HW[y, x]
    _wrap_pad(pad_P, h, w)


@njit(inline="always")
def _store_frame(pad_P, frame_HW):
    h, w = frame_HW.shape
    for y in range(h):
        for x in range(w):
            frame_HW[y, x] = pad_P[(y + 1) * (w + 2) + x + 1]


@njit(inline="always")
def _rollout_one(b, cur_P, next_P, rule, scratch, schedule, out):
    """Trajectory b from its initial state in cur_P: record frames (or tokens) at the schedule's steps."""
    steps, burn_in, stride, key = schedule
    frames_BFHW, tokens_BL, patch_PD, digit_D, grid_tok, want_tokens = out
    h, w = frames_BFHW.shape[2], frames_BFHW.shape[3]
    per_frame = patch_PD.shape[0] + 2
    for t in range(steps + 1):
        if t >= burn_in and (t - burn_in) % stride == 0:
            f = (t - burn_in) // stride
            if want_tokens:
                _write_tokens(cur_P, tokens_BL[b], f * per_frame, patch_PD, digit_D, grid_tok)
            else:
                _store_frame(cur_P, frames_BFHW[b, f])
        if t < steps:
            _step(cur_P, next_P, h, w, t, key, rule, scratch)
            cur_P, next_P = next_P, cur_P


@njit(parallel=True, cache=True, nogil=True)
def _rollout_kernel(w1p_RWKS, bits, bias9, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, table, steps, burn_in,
                    stride, span, beta, shift, hround, frames_BFHW, tokens_BL, patch_PD, digit_D, grid_tok, want_tokens,
                    nblocks):
    """Roll out every trajectory; writes frames_BFHW (uint8) or, if want_tokens, tokens_BL (uint16).

    frames_BFHW always has the true (H, W) in its last two axes (and 0 rows when tokens are wanted).
    """
    nb, h, w = states_BHW.shape
    nwords, s_n = w1p_RWKS.shape[1], w1p_RWKS.shape[3]
    c1, c2 = w2_RCJ.shape[1], w2_RCJ.shape[2]
    triples = s_n <= TRIPLE_MAX_STATES
    out = (frames_BFHW, tokens_BL, patch_PD, digit_D, grid_tok, want_tokens)
    for blk in prange(nblocks):  # one block of consecutive trajectories per task; scratch allocated per block
        width = min(CHUNK, (h - 1) * (w + 2) + w)
        scratch = (np.empty(width, np.int64), np.empty((c1, width), np.int32), np.empty((c2, width), np.int32),
                   np.empty((s_n, width), np.int32), np.empty(width, np.int32), np.empty(width, np.int32),
                   np.empty(width, np.int32))
        tri_WRT = np.empty((nwords, 3, s_n ** 3 if triples else 0), np.int64)
        cur_P = np.empty((h + 2) * (w + 2), np.uint8)
        next_P = np.empty((h + 2) * (w + 2), np.uint8)
        built = -1  # the rule whose triple tables are in tri_WRT (consecutive sims of a rule reuse them)
        for b in range(blk * nb // nblocks, (blk + 1) * nb // nblocks):
            r = rule_B[b]
            if triples and r != built:
                _build_triples(w1p_RWKS[r], tri_WRT)
                built = r
            rule = (w1p_RWKS[r], tri_WRT, triples, bits, bias9, w2_RCJ[r], w3_RJS[r], shift, hround, beta, table,
                    span)
            _load_grid(states_BHW[b], cur_P)
            _rollout_one(b, cur_P, next_P, rule, scratch, (steps, burn_in, stride, np.int64(keys_B[b]) & MASK32),
                         out)


def pack_first_layer(w1_RKSC: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Pack the first-layer tables into int64 words of biased lanes: (R, words, 9, S) int64, bits, 9 * bias.

    Lane width is the fewest bits that hold a 9-term sum of entries shifted to be non-negative (16 bits, so
    4 channels per word, at the paper's settings); the kernel subtracts 9 * bias after unpacking.
    """
    r, _, s_n, c1 = w1_RKSC.shape
    bias = int(np.abs(w1_RKSC).max(initial=0))
    bits = max(1, (18 * bias).bit_length())
    lanes = 64 // bits
    words = -(-c1 // lanes)
    shifted = np.zeros((r, 9, s_n, words * lanes), np.int64)
    shifted[..., :c1] = w1_RKSC.astype(np.int64) + bias
    lanes_RKSWL = shifted.reshape(r, 9, s_n, words, lanes)
    packed = np.zeros((r, 9, s_n, words), np.uint64)
    for lane in range(lanes):
        packed |= lanes_RKSWL[..., lane].astype(np.uint64) << np.uint64(bits * lane)
    return np.ascontiguousarray(packed.view(np.int64).transpose(0, 3, 1, 2)), bits, 9 * bias


def patch_index(height: int, width: int, patch: int) -> np.ndarray:
    """(P, D) int32: padded-grid position of digit d = dy*p + dx of patch q (patches row-major)."""
    py, px, dy, dx = np.meshgrid(np.arange(height // patch), np.arange(width // patch), np.arange(patch),
                                 np.arange(patch), indexing="ij")
    pos = (py * patch + dy + 1) * (width + 2) + px * patch + dx + 1
    return pos.reshape((height // patch) * (width // patch), patch * patch).astype(np.int32)


def _check_int32(w1_RKSC, w2_RCJ, w3_RJS, spec: RolloutSpec) -> None:
    """Assert every intermediate of these actual tables fits int32 (the loop has no overflow checks)."""
    h_RC = np.abs(w1_RKSC.astype(np.int64)).max(axis=2).sum(axis=1)
    pre_RJ = np.einsum("rc,rcj->rj", h_RC, np.abs(w2_RCJ.astype(np.int64))) + spec.hidden_round
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
    frames = np.empty((0 if want_tokens else b, spec.frames, h, w), np.uint8)  # (H, W) read from it
    tokens = np.empty((b if want_tokens else 0, spec.frames * tokens_per_frame), np.uint16)
    w2, w3 = (np.ascontiguousarray(a, dtype=np.int32) for a in (w2_RCJ, w3_RJS))
    run_interruptibly(_rollout_kernel, *pack_first_layer(w1_RKSC), w2, w3, np.ascontiguousarray(rule_B, dtype=np.int64),
                      np.ascontiguousarray(states_BHW, dtype=np.uint8), np.asarray(keys_B).astype(np.int64),
                      spec.noise_table.astype(np.int64), spec.steps, spec.burn_in, spec.frame_stride,
                      spec.noise_span, spec.beta_q, spec.hidden_shift, spec.hidden_round, frames, tokens, patch_PD,
                      spec.states ** np.arange(p * p, dtype=np.int32), spec.states ** (p * p), want_tokens,
                      min(b, 4 * numba.get_num_threads()))  # a few blocks per thread evens out their cost
    return tokens if want_tokens else frames


def run_interruptibly(compiled, *args):
    """Call `compiled` (nogil machine code, which never looks at signals) in a thread while the main thread waits
    in Python, so Ctrl-C and SIGTERM reach the caller at once however long the call runs. The call itself cannot be
    stopped: it is a daemon thread that ends with the process, and the build exits after an interrupt."""
    if threading.current_thread() is not threading.main_thread():  # signals only ever reach the main thread
        return compiled(*args)
    outcome: list = []
    threads = numba.get_num_threads()  # thread-local in numba: a new thread would start at NUMBA_NUM_THREADS

    def call():
        try:
            numba.set_num_threads(threads)
            outcome.append((True, compiled(*args)))
        except BaseException as exc:  # handed to the caller below
            outcome.append((False, exc))

    worker = threading.Thread(target=call, name="nca-compiled", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)  # a timed wait is interruptible: KeyboardInterrupt (or the SIGTERM handler) raises here
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def rollout_cpu(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec: RolloutSpec) -> np.ndarray:
    """Frames (B, F, H, W) uint8, identical to `reference.rollout_reference` (numpy in, numpy out)."""
    return _launch(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec, want_tokens=False)


def rollout_tokens_cpu(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec: RolloutSpec) -> np.ndarray:
    """Tokens (B, L) uint16 with frame delimiters, identical to `reference.rollout_tokens_reference`."""
    return _launch(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec, want_tokens=True)
