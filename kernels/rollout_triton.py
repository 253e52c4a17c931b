"""Fused Triton rollout: initial state -> burn-in -> every frame -> patch tokens, in one kernel launch.

Bit-identical to `kernels.reference` (the definition, imported below): the same int32 fixed point, the same
lowbias32 noise hash, the same quantised Gumbel table, the same tie rule (lowest state wins). Only tokens
(and, behind a constexpr flag, frames) are written to memory; a grid never leaves the chip between steps.

Layout. One program owns BLOCK_T trajectories x all H*W cells as a 2-D int32 register tile
`state[BLOCK_T, CELLS_PAD]` (CELLS_PAD = next power of 2 >= H*W; padded cells are masked on every load
and store and compute harmless values in between). One step of one cell:

    neighbours   9 x state[idx_k] (gather or scratch load)  idx_k: periodic (y+dy, x+dx), hoisted
    first layer  h_c = sum_k w1[rule, k, nb_k, c]           9*C1 = 36 L1-resident table loads
    hidden       a_j = relu(sum_c h_c * w2[c, j]) >> SHIFT  C1*C2 = 64 int32 multiply-adds
    logits       z_s = sum_j a_j * w3[j, s] (+ beta, noise) C2*S = 160 multiply-adds
    update       running argmax over s with a strict `>`, so the lowest state wins every tie

Neighbours, two ways (the SCRATCH constexpr; `neighbours=` at launch). A periodic roll is not a Triton
primitive. "gather" (the default, measured on the H200) keeps the grid in registers: `tl.gather` on a
warp-local layout (a warp owns a row, 8 cells per thread) lowers to shuffles, ~430 per step per thread, and
Triton converts layouts around each gather through shared memory, ~20 CTA barriers a step. "scratch" writes
the tile to a per-program scratch row between two barriers and reads the 9 neighbours back as plain loads
(L1 hits): no shuffles, no layout conversions, 2 barriers a step, under half the instructions (see
ELEMENTS_PER_PROGRAM below); it waits for a GPU run before it can become the default. The weights w2/w3
depend only on the row (trajectory), so they are [BLOCK_T, 1] loads: one load per thread serves all of that
thread's cells in the row, and the 224 of them per step stay in L1 (0.9 KiB per rule at the paper's sizes;
the w1 table is 1.4 KiB). Keeping them in registers across steps needs 224 registers per row before any
working set, i.e. spills, so they are re-read each step (see `pin` in `_step`).

Block sizes: BLOCK_T = 512 // CELLS_PAD trajectories per program (2 at 12x12) over 4 warps, ~4 cells per
thread, for "gather" (compiled for sm_90: 255 registers, a 112-byte stack; measured with triton 3.9's ptxas,
no GPU; on the H200 1.12e9 tokens/s of kernel time); 256 // CELLS_PAD over 2 warps for "scratch" (255
registers, no stack, 1,989 instructions per step against 4,462). benchmarks/gpu_check.py sweeps variants
(neighbours, block_t, num_warps, maxnreg) on the H200.
Needs Triton >= 3.3 (tl.gather came in 3.2, tuples in jit code in 3.3); the H200 image has 3.6, CI 3.9.

Budget at the paper's config (12x12, 10 states, 4/16 hidden, 27 frames + 10 burn-in = 36 steps,
1026 tokens): 2e9 tokens/s = 1.0e10 cell-updates/s = 0.039 cell-updates per clock per SM on an H200
(132 SMs, 1.98 GHz). One cell-update is ~224 IMAD + ~100 hash ops (12 lowbias32) + ~60 other integer ops
~= 390 lane-ops; at 64 INT32 lanes/clock/SM that is 0.16 cell-updates/clock/SM at full issue, 0.09 after
the 144 -> 256 padding: ~2.4x headroom over the target. Everything in the step loop is int32/uint32; the
only int64 arithmetic is the per-row base pointers, computed once per program.

Noise (temperature > 0) only matters where the noiseless top-1/top-2 logit gap is at most `spec.noise_span`
(max - min of the table): ~1% of cell updates at tau = 1e-4. SIMD lanes do not skip work, so by default every
cell hashes and reads the 16 KiB table for all S states (random addresses: many L1 wavefronts per load).
SPARSE_NOISE (`sparse_noise=True`) keeps the S logits, finds that gap, and reads the table only where it
can change the winner; the hash still runs everywhere. Temperature 0 (all-zero table) compiles without any
noise code (USE_NOISE is a constexpr for the whole launch).

Legend: B trajectories, R rules, K = 9 neighbour offsets, S states, C1/C2 hidden widths, F frames,
L tokens per sequence, C = H*W cells.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .common import GUMBEL_BITS, HASH_M1, HASH_M2, RolloutSpec
from .reference import rollout_reference, rollout_tokens_reference  # noqa: F401  (the definition)

_M1 = tl.constexpr(HASH_M1)
_M2 = tl.constexpr(HASH_M2)
_TABLE_SHIFT = tl.constexpr(32 - GUMBEL_BITS)


@triton.jit
def _hash32(x):
    """lowbias32 on uint32: the multiply wraps mod 2^32, which is the reference's `(x * M) & 0xFFFFFFFF`."""
    x = x ^ (x >> 16)
    x = (x * _M1).to(tl.uint32)
    x = x ^ (x >> 15)
    x = (x * _M2).to(tl.uint32)
    return x ^ (x >> 15)


@triton.jit
def _publish(state, scratch_row, cells):
    """SCRATCH mode: write the tile to this program's scratch rows so any thread can read any cell."""
    tl.debug_barrier()  # every thread has finished reading the previous contents
    tl.store(scratch_row + cells, state.to(tl.uint8))
    tl.debug_barrier()  # bar.sync orders the stores before every thread's loads (CTA-wide memory ordering)


@triton.jit
def _cells_at(state, idx, scratch_row, BLOCK_T: tl.constexpr, WIDTH: tl.constexpr, SCRATCH: tl.constexpr):
    """state[row, idx[row, j]] as int32 [BLOCK_T, WIDTH]: from scratch (after `_publish`) or by a register gather."""
    if SCRATCH:
        return tl.load(scratch_row + idx).to(tl.int32)
    return tl.gather(state, tl.broadcast_to(idx, (BLOCK_T, WIDTH)), 1)


@triton.jit
def _noise(cell_bits, s, noise_ptr, mask):
    """Quantised Gumbel noise of state s for every cell (0 where `mask` is off: no memory access there)."""
    bits = _hash32(cell_bits ^ s)
    return tl.load(noise_ptr + (bits >> _TABLE_SHIFT).to(tl.int32), mask=mask, other=0)


@triton.jit
def _step(state, t, pin, mask, row_ok, rows_off, cols_off, cells, key, w1_row, w2_row, w3_row, noise_ptr, beta_q,
          noise_span, scratch_row, H: tl.constexpr, W: tl.constexpr, S: tl.constexpr, C1: tl.constexpr,
          C2: tl.constexpr, SHIFT: tl.constexpr, BLOCK_T: tl.constexpr, CELLS_PAD: tl.constexpr,
          USE_NOISE: tl.constexpr, USE_BETA: tl.constexpr, SCRATCH: tl.constexpr, SPARSE_NOISE: tl.constexpr):
    """One synchronous update of the tile `state` (int32 [BLOCK_T, CELLS_PAD]) from time t to t + 1."""
    # `pin` is always 0 at run time, but the compiler cannot know it: the weight addresses then vary with t,
    # so LLVM cannot hoist the 224 per-row w2/w3 loads out of the time loop. Hoisted, they need 224 live
    # registers per row held; compiled for sm_90 (triton 3.9, BLOCK_T=2, 4 warps) that was 168 registers plus
    # a 2888-byte stack of spills per thread (370 KB per program: more than L1). With the pin: 255 registers and
    # an 88-byte stack, and the re-read weights are L1 hits.
    w2_row = w2_row + t * pin
    w3_row = w3_row + t * pin
    # First layer: a lookup per neighbour. h is a tuple of C1 int32 tiles (unrolled at compile time).
    # (Tuples are grown by concatenation: the form Triton's frontend compiles, hence the RUF005 waivers.)
    h = ()
    for _c in tl.static_range(C1):
        h = h + (tl.zeros((BLOCK_T, CELLS_PAD), dtype=tl.int32),)  # noqa: RUF005
    if SCRATCH:
        _publish(state, scratch_row, cells)
    for k in tl.static_range(9):  # k = 3*(dy+1) + (dx+1), the reference's offset order
        nb = _cells_at(state, rows_off[k // 3] + cols_off[k % 3], scratch_row, BLOCK_T, CELLS_PAD, SCRATCH)
        base = (k * S + nb) * C1
        hn = ()
        for c in tl.static_range(C1):
            hn = hn + (h[c] + tl.load(w1_row + base + c, mask=mask, other=0),)  # noqa: RUF005
        h = hn
    # Hidden layer: 1x1 conv C1 -> C2, ReLU, arithmetic shift back to scale 2^(f-2).
    a = ()
    for j in tl.static_range(C2):
        pre = h[0] * tl.load(w2_row + j, mask=row_ok, other=0)
        for c in tl.static_range(1, C1):
            pre += h[c] * tl.load(w2_row + c * C2 + j, mask=row_ok, other=0)
        a = a + (tl.maximum(pre, 0) >> SHIFT,)  # noqa: RUF005
    if USE_NOISE:
        # cell_bits = hash32(key ^ hash32(t*C + cell)); counters wrap mod 2^32 like the reference's mask.
        counter = (t * (H * W) + cells).to(tl.uint32)
        cell_bits = _hash32(key ^ _hash32(counter))
    # Logits state by state with a running argmax: strict `>` keeps the lowest state on ties. SPARSE_NOISE adds
    # noise in a second pass only where the noiseless top-2 gap is <= noise_span (max - min of the table): a
    # wider gap cannot be closed by any noise, so elsewhere the noiseless winner is the noisy one. Its table
    # loads are masked off there (at tau = 1e-4 ~1% of cells need them), so the random 16 KiB-table reads stop
    # costing L1 wavefronts; the hash still runs on every lane. It keeps the S logits live (S more registers
    # per cell) and must be timed on a GPU before it can be the default.
    best = tl.zeros((BLOCK_T, CELLS_PAD), dtype=tl.int32)
    second = tl.full((BLOCK_T, CELLS_PAD), -(2**31), dtype=tl.int32)  # below every logit: S >= 2 replaces it
    arg = tl.zeros((BLOCK_T, CELLS_PAD), dtype=tl.int32)
    zs = ()
    for s in tl.static_range(S):
        z = a[0] * tl.load(w3_row + s, mask=row_ok, other=0)
        for j in tl.static_range(1, C2):
            z += a[j] * tl.load(w3_row + j * S + s, mask=row_ok, other=0)
        if USE_BETA:
            z += tl.where(state == s, beta_q, 0)
        if USE_NOISE and not SPARSE_NOISE:
            z += _noise(cell_bits, s, noise_ptr, mask)
        if USE_NOISE and SPARSE_NOISE:
            zs = zs + (z,)  # noqa: RUF005
        if s == 0:
            best = z
        else:
            take = z > best
            if USE_NOISE and SPARSE_NOISE:
                second = tl.where(take, best, tl.maximum(second, z))
            best = tl.where(take, z, best)
            arg = tl.where(take, s, arg)
    if USE_NOISE and SPARSE_NOISE:
        # best - second >= 0 unless it wraps (|logits| < 2^31 only each): a wrap reads as "needs noise", the
        # exact path, never the other way round
        need = mask & (best - second <= noise_span)
        noisy_best = zs[0] + _noise(cell_bits, 0, noise_ptr, need)
        noisy_arg = tl.zeros((BLOCK_T, CELLS_PAD), dtype=tl.int32)
        for s in tl.static_range(1, S):
            z = zs[s] + _noise(cell_bits, s, noise_ptr, need)
            take = z > noisy_best
            noisy_best = tl.where(take, z, noisy_best)
            noisy_arg = tl.where(take, s, noisy_arg)
        arg = tl.where(need, noisy_arg, arg)
    return arg


@triton.jit
def _emit(state, f, row_ok, tok_row, frame_row, tokens_per_frame, mask, cells, scratch_row,
          H: tl.constexpr, W: tl.constexpr, S: tl.constexpr, PATCH: tl.constexpr,
          BLOCK_T: tl.constexpr, PATCHES_PAD: tl.constexpr,
          WRITE_TOKENS: tl.constexpr, WRITE_FRAMES: tl.constexpr, SCRATCH: tl.constexpr):
    """Write frame f of every row: `<grid>`, the patch ids row-major, `</grid>` (and/or the raw cells)."""
    if WRITE_FRAMES:
        tl.store(frame_row + f * (H * W) + cells, state.to(tl.uint8), mask=mask)
    if WRITE_TOKENS:
        PATCHES: tl.constexpr = (H // PATCH) * (W // PATCH)
        GRID_TOK: tl.constexpr = S ** (PATCH * PATCH)
        q = tl.arange(0, PATCHES_PAD)[None, :]
        q_ok = q < PATCHES
        qc = tl.where(q_ok, q, 0)
        corner = (qc // (W // PATCH)) * (PATCH * W) + (qc % (W // PATCH)) * PATCH  # top-left cell of patch q
        tok = tl.zeros((BLOCK_T, PATCHES_PAD), dtype=tl.int32)
        if SCRATCH:
            _publish(state, scratch_row, cells)
        for i in tl.static_range(PATCH):
            for j in tl.static_range(PATCH):  # digit i*p + j: top-left is the least significant
                cell = _cells_at(state, corner + (i * W + j), scratch_row, BLOCK_T, PATCHES_PAD, SCRATCH)
                tok += cell * (S ** (i * PATCH + j))
        start = f * tokens_per_frame
        tl.store(tok_row + start + 1 + q, tok, mask=row_ok & q_ok)
        delim = tl.full((BLOCK_T, 1), GRID_TOK, dtype=tl.int32)
        tl.store(tok_row + start, delim, mask=row_ok)
        tl.store(tok_row + start + (PATCHES + 1), delim + 1, mask=row_ok)


# Runtime integers are never specialised: by default Triton compiles a separate kernel for ints divisible by 16
# or equal to 1, so batch sizes 1000 and 1024 (or stride 1 and 2) would each pay a full compile (a minute of
# ptxas here) for no gain, as no address in the kernel is vectorised over them.
@triton.jit(do_not_specialize=["B", "burn_in", "frames", "stride", "beta_q", "noise_span", "pin"])
def nca_rollout_kernel(
    w1_ptr,  # int32 (R, 9, S, C1): first layer as a lookup, offset k = 3*(dy+1) + (dx+1)
    w2_ptr,  # int32 (R, C1, C2): hidden 1x1 conv
    w3_ptr,  # int32 (R, C2, S): output 1x1 conv (logits)
    rule_ptr,  # int64 (B,): rule index of each trajectory into the R tables
    state_ptr,  # uint8 (B, H*W): initial states, row-major cells
    key_ptr,  # int64 (B,): uint32 noise keys
    noise_ptr,  # int32 (2^GUMBEL_BITS,): temperature-scaled Gumbel table at logit scale
    tok_ptr,  # int32 (B, F*(P+2)): output tokens (written iff WRITE_TOKENS)
    frame_ptr,  # uint8 (B, F, H*W): output frames (written iff WRITE_FRAMES)
    B,  # number of trajectories
    burn_in,  # steps before the first frame
    frames,  # F
    stride,  # steps between frames
    beta_q,  # identity bias at logit scale (used iff USE_BETA)
    noise_span,  # max - min of the noise table (used iff SPARSE_NOISE)
    pin,  # always 0; opaque to the compiler (see _step), never specialised
    scratch_ptr,  # uint8 (programs * BLOCK_T, CELLS_PAD): each program's neighbour exchange (used iff SCRATCH)
    H: tl.constexpr, W: tl.constexpr, S: tl.constexpr, PATCH: tl.constexpr,
    C1: tl.constexpr, C2: tl.constexpr, SHIFT: tl.constexpr,
    BLOCK_T: tl.constexpr,  # trajectories per program
    CELLS_PAD: tl.constexpr,  # next power of 2 >= H*W
    PATCHES_PAD: tl.constexpr,  # next power of 2 >= (H/P)*(W/P)
    USE_NOISE: tl.constexpr, USE_BETA: tl.constexpr,
    WRITE_TOKENS: tl.constexpr, WRITE_FRAMES: tl.constexpr,
    SCRATCH: tl.constexpr,  # neighbours through scratch memory (True) or register gathers (False)
    SPARSE_NOISE: tl.constexpr,  # noise table reads only where noise can change the winner (see _step)
):
    C: tl.constexpr = H * W
    pid = tl.program_id(0)
    row = pid * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]  # [BLOCK_T, 1]
    row_ok = row < B
    cells = tl.arange(0, CELLS_PAD)[None, :]  # [1, CELLS_PAD]
    mask = row_ok & (cells < C)
    row64 = row.to(tl.int64)  # the only int64 values: per-row base offsets, computed once

    state = tl.load(state_ptr + row64 * C + cells, mask=mask, other=0).to(tl.int32)
    rule = tl.load(rule_ptr + row, mask=row_ok, other=0)
    w1_row = w1_ptr + rule * (9 * S * C1)
    w2_row = w2_ptr + rule * (C1 * C2)
    w3_row = w3_ptr + rule * (C2 * S)
    key = tl.load(key_ptr + row, mask=row_ok, other=0).to(tl.uint32)
    tokens_per_frame = ((H // PATCH) * (W // PATCH) + 2)
    tok_row = tok_ptr + row64 * (frames * tokens_per_frame)
    frame_row = frame_ptr + row64 * (frames * C)
    scratch_row = scratch_ptr + row64 * CELLS_PAD  # rows of the whole last program exist: no mask needed

    # Periodic neighbour offsets, hoisted out of the time loop: row offsets for dy = -1, 0, 1 and column
    # offsets for dx = -1, 0, 1; neighbour k's flat index is rows_off[k // 3] + cols_off[k % 3].
    cc = tl.where(cells < C, cells, 0)  # padded cells read real (harmless) neighbours
    y = cc // W
    x = cc % W
    rows_off = (tl.where(y == 0, H - 1, y - 1) * W, y * W, tl.where(y == H - 1, 0, y + 1) * W)
    cols_off = (tl.where(x == 0, W - 1, x - 1), x, tl.where(x == W - 1, 0, x + 1))

    # Segment f = -1 is the burn-in; segment f >= 0 emits frame f (the state at t = burn_in + f * stride), then
    # runs the `stride` steps to the next frame (none after the last). Measured for sm_90 (triton 3.9, BLOCK_T=2,
    # 4 warps, compile times on a busy shared 2-core box, so rough):
    #   this nest: the step instantiated once            255 registers, 112-byte stack, compiled in  75 s
    #   burn-in loop + frame loop (two step copies)      255 registers,  88-byte stack, compiled in 227 s
    #   one flat loop over t with `if frame: emit`       255 registers, 1288-byte stack, compiled in 140 s
    for f in range(-1, frames):
        if f >= 0:
            _emit(state, f, row_ok, tok_row, frame_row, tokens_per_frame, mask, cells, scratch_row,
                  H, W, S, PATCH, BLOCK_T, PATCHES_PAD, WRITE_TOKENS, WRITE_FRAMES, SCRATCH)
        t0 = tl.where(f < 0, 0, burn_in + f * stride)
        n_steps = tl.where(f < 0, burn_in, tl.where(f + 1 < frames, stride, 0))
        for i in range(n_steps):
            state = _step(state, t0 + i, pin, mask, row_ok, rows_off, cols_off, cells, key, w1_row, w2_row,
                          w3_row, noise_ptr, beta_q, noise_span, scratch_row, H, W, S, C1, C2, SHIFT, BLOCK_T,
                          CELLS_PAD, USE_NOISE, USE_BETA, SCRATCH, SPARSE_NOISE)


# ----------------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------------

# Elements (trajectories x padded cells) per program on a GPU: 512 over 4 warps = 4 cells per thread, so the
# tuple of C2 = 16 hidden tiles is 64 registers. Compiled for sm_90 with triton 3.9's ptxas (no GPU here),
# paper sizes (256 padded cells), registers / stack bytes per thread by (BLOCK_T, num_warps):
#     (2, 4) default: 255 / 112      (1, 4): 255 / 352      (1, 2): 255 / 272 (older loop structure)
#     (4, 8): 32 / 7440              (4, 4) at 12x18: 32 / 4768     (8, 4) at 7x9 (64 padded cells): 255 / 208
# i.e. ptxas spends the registers on in-flight weight loads (ILP), and 1024-element tiles fall off a cliff
# (whatever the warps), so 512 it is. Grids larger than 512 cells get one trajectory per program and more warps
# (up to 32), ~4 cells per thread: correct, but untuned and probably past that cliff (not measured).
# On the H200 (benchmarks/results/h200/gpu_check_triton.md) the (2, 4) default was the fastest shape measured.
GPU_ELEMENTS_PER_PROGRAM = 512
GPU_CELLS_PER_THREAD = 4
# Neighbour exchange (the SCRATCH constexpr; see the module docstring). Compiled for sm_90 with triton 3.9's
# ptxas at the paper's sizes: "scratch" at (1 trajectory, 2 warps) is 1,989 instructions per step per thread
# for 4 cells, 255 registers, no stack, no shared memory; "gather" at (2, 4) is 4,462 instructions, 255
# registers, a 112-byte stack, ~430 shuffles and ~20 barriers. "gather" stays the default until a GPU run has
# checked "scratch" bit for bit and timed it (benchmarks/gpu_check.py does both). NCA_TRITON_NEIGHBOURS sets the
# default for a process (e.g. a build).
NEIGHBOURS = ("gather", "scratch")
ELEMENTS_PER_PROGRAM = {"gather": GPU_ELEMENTS_PER_PROGRAM, "scratch": 256}
# The interpreter's cost is per operation, not per element: one program over many rows is fastest there.
INTERPRET_MAX_BLOCK_T = 64


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=16)
def _noise_table(spec: RolloutSpec, device: str) -> torch.Tensor:
    return torch.as_tensor(spec.noise_table, dtype=torch.int32, device=device)


def default_neighbours() -> str:
    mode = os.environ.get("NCA_TRITON_NEIGHBOURS", "gather")
    if mode not in NEIGHBOURS:
        raise ValueError(f"NCA_TRITON_NEIGHBOURS={mode!r}: choose one of {', '.join(NEIGHBOURS)}")
    return mode


def _default_block_t(batch: int, cells_pad: int, neighbours: str = "gather") -> int:
    if interpreting():
        return min(INTERPRET_MAX_BLOCK_T, triton.next_power_of_2(max(batch, 1)))
    return max(1, ELEMENTS_PER_PROGRAM[neighbours] // cells_pad)


def _default_num_warps(elements: int) -> int:
    return min(32, max(1, elements // (32 * GPU_CELLS_PER_THREAD)))


def _check(name: str, t: torch.Tensor, dtype: torch.dtype, ndim: int, device: torch.device) -> None:
    if t.dtype != dtype or t.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d {dtype} tensor, got {t.ndim}-d {t.dtype} {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the states are on {device}: put every input on one device")
    if not t.is_contiguous():
        raise ValueError(f"{name} is not contiguous: pass `.contiguous()` tensors")


def _launch(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec: RolloutSpec, *, write_tokens: bool,
            write_frames: bool, block_t: int | None = None, num_warps: int | None = None,
            neighbours: str | None = None, maxnreg: int | None = None, sparse_noise: bool = False):
    device = states_BHW.device
    if device.type != "cuda" and not interpreting():
        raise ValueError(f"the triton backend needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 before "
                         "importing it to run on CPU, or use backend='numba' / 'torch'")
    b = states_BHW.shape[0]
    r, k, s, c1 = w1_RKSC.shape
    c2 = w2_RCJ.shape[-1]
    _check("w1_RKSC", w1_RKSC, torch.int32, 4, device)
    _check("w2_RCJ", w2_RCJ, torch.int32, 3, device)
    _check("w3_RJS", w3_RJS, torch.int32, 3, device)
    _check("rule_B", rule_B, torch.int64, 1, device)
    _check("states_BHW", states_BHW, torch.uint8, 3, device)
    _check("keys_B", keys_B, torch.int64, 1, device)
    h, w, p = spec.height, spec.width, spec.patch
    assert (k, s) == (9, spec.states) and w2_RCJ.shape == (r, c1, c2) and w3_RJS.shape == (r, c2, s), (
        w1_RKSC.shape, w2_RCJ.shape, w3_RJS.shape, spec)
    assert states_BHW.shape[1:] == (h, w) and rule_B.shape == (b,) and keys_B.shape == (b,), (
        states_BHW.shape, rule_B.shape, keys_B.shape, spec)
    assert h % p == 0 and w % p == 0, spec

    tokens_per_frame = (h // p) * (w // p) + 2
    tokens = torch.empty(b if write_tokens else 0, spec.frames * tokens_per_frame, dtype=torch.int32, device=device)
    frames = torch.empty(b if write_frames else 0, spec.frames, h, w, dtype=torch.uint8, device=device)
    if b == 0:
        return tokens, frames
    lo, hi = (int(v) for v in torch.aminmax(rule_B))  # one sync; an out-of-range rule would read garbage
    if lo < 0 or hi >= r:
        raise ValueError(f"rule_B holds indices {lo}..{hi} but there are {r} rule tables")
    neighbours = neighbours or default_neighbours()
    if neighbours not in NEIGHBOURS:
        raise ValueError(f"neighbours={neighbours!r}: choose one of {', '.join(NEIGHBOURS)}")
    cells_pad = triton.next_power_of_2(h * w)
    block_t = block_t or _default_block_t(b, cells_pad, neighbours)
    assert block_t & (block_t - 1) == 0, f"block_t={block_t} must be a power of 2"
    grid = (triton.cdiv(b, block_t),)
    # Unused outputs get a valid 1-element dummy so the pointer argument is never dangling.
    dummy = torch.empty(1, dtype=torch.int32, device=device)
    scratch = (torch.empty(grid[0] * block_t, cells_pad, dtype=torch.uint8, device=device)
               if neighbours == "scratch" else dummy.view(torch.uint8))
    options = {"maxnreg": maxnreg} if maxnreg else {}  # a register cap for ptxas (a tuning knob)
    nca_rollout_kernel[grid](
        w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, _noise_table(spec, str(device)),
        tokens if write_tokens else dummy, frames if write_frames else dummy.view(torch.uint8),
        b, spec.burn_in, spec.frames, spec.frame_stride, spec.beta_q, spec.noise_span, 0, scratch,
        H=h, W=w, S=s, PATCH=p, C1=c1, C2=c2, SHIFT=spec.hidden_shift,
        BLOCK_T=block_t, CELLS_PAD=cells_pad,
        PATCHES_PAD=triton.next_power_of_2((h // p) * (w // p)),
        USE_NOISE=spec.noise_span != 0, USE_BETA=spec.beta_q != 0,
        WRITE_TOKENS=write_tokens, WRITE_FRAMES=write_frames, SCRATCH=neighbours == "scratch",
        SPARSE_NOISE=bool(sparse_noise),
        num_warps=num_warps or _default_num_warps(block_t * cells_pad), **options,
    )
    return tokens, frames


# ----------------------------------------------------------------------------------------------------------
# Public functions: the reference's signature (plus keyword-only tuning knobs)
# ----------------------------------------------------------------------------------------------------------


def rollout_triton(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec: RolloutSpec, **tuning) -> torch.Tensor:
    """Frames (B, F, H, W) uint8, identical to `rollout_reference`. `tuning`: block_t, num_warps, neighbours,
    maxnreg, sparse_noise (see `_launch`); none of them changes the output."""
    return _launch(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec, write_tokens=False,
                   write_frames=True, **tuning)[1]


def rollout_tokens_triton(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec: RolloutSpec,
                          **tuning) -> torch.Tensor:
    """Token sequences (B, L) int32, identical to `rollout_tokens_reference`; frames never reach memory."""
    return _launch(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec, write_tokens=True,
                   write_frames=False, **tuning)[0]
