"""Fused Triton rollout: initial state -> burn-in -> every frame -> patch tokens, in one kernel launch.

Bit-identical to `kernels.reference` (the definition, imported below): the same int32 fixed point, the same
lowbias32 noise hash, the same quantised Gumbel table, the same tie rule (lowest state wins). Only tokens
(and, behind a constexpr flag, frames) are written to memory; a grid never leaves the chip between steps.

Layout. One program owns a 2-D int32 register tile of ROWS x CH cells (both powers of 2; padded cells are
masked on every load and store and compute harmless values in between). "gather" gives each trajectory one
row of all its H*W cells padded to a power of 2 (CH = 256 at 12x12: 56% real cells); "scratch" packs TPP
trajectories into rows of CH = 4 cells (CPT = 36 rows each at 12x12: 7 trajectories fill 252 of 256 rows,
98% real cells), see `tile_layout`. One step of one cell:

    neighbours   9 x state[idx_k] (gather or scratch load)          idx_k: periodic (y+dy, x+dx), hoisted
    first layer  h_c = sum_k w1[rule, k, nb_k, c]                   9*C1 = 36 L1-resident table loads
    hidden       a_j = relu(ROUND + sum_c h_c * w2[c, j]) >> SHIFT  C1*C2 = 64 int32 multiply-adds (rounded)
    logits       z_s = sum_j a_j * w3[j, s] (+ beta, noise)         C2*S = 160 multiply-adds
    update       running argmax over s with a strict `>`, so the lowest state wins every tie

Neighbours, two ways (the SCRATCH constexpr; `neighbours=` at launch). A periodic roll is not a Triton
primitive. "gather" (the default, measured on the H200) keeps the grid in registers: `tl.gather` on a
warp-local layout (a warp owns a row, 8 cells per thread) lowers to shuffles, ~430 per step per thread, and
Triton converts layouts around each gather through shared memory, ~20 CTA barriers a step. "scratch" writes
the tile to the program's scratch memory between two barriers and reads the 9 neighbours back as plain loads
(L1 hits): no shuffles, no layout conversions, 2 barriers a step, and rows can then hold parts of
trajectories, so padding all but vanishes. It waits for a GPU run before it can become the default. The
weights w2/w3 depend only on the trajectory, so they are per-row loads: one load per thread serves all of
that thread's cells in the row, and the 224 of them per step stay in L1 (0.9 KiB per rule at the paper's
sizes; the w1 table is 1.4 KiB). Keeping them in registers across steps needs 224 registers per row before
any working set, i.e. spills, so they are re-read each step (see `pin` in `_step`).

Instruction counts per step, compiled for sm_90 with triton 3.9's ptxas (no GPU; benchmarks/kernel_sass.py,
results/kernel_sass.md), per real cell: "gather" at (2 trajectories, 4 warps) 1,982 (4,460 per thread, 255
registers, a 112-byte stack; 1.12e9 tokens/s of kernel time on the H200); "scratch" at (7 trajectories,
8 warps) 645 (2,538 per thread, 255 registers, no stack); under triton 3.6 (the H200 image's) 668 with a
496-byte stack (results/kernel_sass_triton36.md; the tile's orientation follows the Triton version, see
`scratch_rows_first`). benchmarks/gpu_check.py sweeps variants (neighbours, trajectories per program, cells
per row, num_warps, maxnreg, sparse noise) on the H200.
Needs Triton >= 3.3 (tl.gather came in 3.2, tuples in jit code in 3.3); the H200 image has 3.6, CI 3.9.

Budget at the paper's config (12x12, 10 states, 4/16 hidden, 27 frames + 10 burn-in = 36 steps,
1026 tokens): 2e9 tokens/s = 1.0e10 cell-updates/s = 0.039 cell-updates per clock per SM on an H200
(132 SMs, 1.98 GHz). One cell-update is ~224 IMAD + ~100 hash ops (12 lowbias32) + ~60 other integer ops
~= 390 lane-ops; at 64 INT32 lanes/clock/SM that is 0.16 cell-updates/clock/SM at full issue, 0.09 after
gather's 144 -> 256 padding (~2.4x headroom over the target), 0.16 with scratch's packing. Everything in the
step loop is int32/uint32; the only int64 arithmetic is the per-row base pointers, computed once per program.

Noise (temperature > 0) only matters where the noiseless top-1/top-2 logit gap is at most `spec.noise_span`
(max - min of the table): ~1% of cell updates at tau = 1e-4. SIMD lanes do not skip work, so by default every
cell hashes and reads the 16 KiB table for all S states (random addresses: many L1 wavefronts per load).
SPARSE_NOISE (`sparse_noise=True`) keeps the S logits, finds that gap, and reads the table only where it
can change the winner; the hash still runs everywhere. Temperature 0 (all-zero table) compiles without any
noise code (USE_NOISE is a constexpr for the whole launch).

Legend: B trajectories, R rules, K = 9 neighbour offsets, S states, C1/C2 hidden widths, F frames,
L tokens per sequence, C = H*W cells; tile: ROWS rows of CH cells, CPT rows per trajectory, TPP trajectories
per program.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

import torch
import triton
import triton.language as tl

from .common import GUMBEL_BITS, HASH_M1, HASH_M2, RolloutSpec, triton_interpreting
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
def _publish(state, scratch_own):
    """SCRATCH mode: write the tile to this program's scratch so any thread can read any cell."""
    tl.debug_barrier()  # every thread has finished reading the previous contents
    tl.store(scratch_own, state.to(tl.uint8))
    tl.debug_barrier()  # bar.sync orders the stores before every thread's loads (CTA-wide memory ordering)


@triton.jit
def _cells_at(state, idx, scratch, ROWS: tl.constexpr, WIDTH: tl.constexpr, SCRATCH: tl.constexpr):
    """Cells `idx` as int32 [ROWS, WIDTH]: scratch loads (after `_publish`; idx includes the trajectory's slot) or
    a register gather within each row (idx is a cell of the row's own trajectory)."""
    # (a constexpr ternary, not an early return: after `return` Triton would still type-check the gather)
    return tl.load(scratch + idx).to(tl.int32) if SCRATCH else tl.gather(state, tl.broadcast_to(idx, (ROWS, WIDTH)), 1)


@triton.jit
def _noise(cell_bits, s, noise_ptr, mask):
    """Quantised Gumbel noise of state s for every cell (0 where `mask` is off: no memory access there)."""
    bits = _hash32(cell_bits ^ s)
    return tl.load(noise_ptr + (bits >> _TABLE_SHIFT).to(tl.int32), mask=mask, other=0)


@triton.jit
def _step(state, t, pin, mask, row_ok, rows_off, cols_off, cell, own, key, w1_row, w2_row, w3_row, noise_ptr, beta_q,
          noise_span, scratch, H: tl.constexpr, W: tl.constexpr, S: tl.constexpr, C1: tl.constexpr,
          C2: tl.constexpr, SHIFT: tl.constexpr, ROUND: tl.constexpr, ROWS: tl.constexpr, CH: tl.constexpr,
          USE_NOISE: tl.constexpr, USE_BETA: tl.constexpr, SCRATCH: tl.constexpr, SPARSE_NOISE: tl.constexpr):
    """One synchronous update of the int32 cell tile `state` (ROWS x CH, either orientation) from t to t + 1."""
    # `pin` is always 0 at run time, but the compiler cannot know it: the weight addresses then vary with t,
    # so LLVM cannot hoist the 224 per-row w2/w3 loads out of the time loop. Hoisted, they need 224 live
    # registers per row held; compiled for sm_90 (triton 3.9, 2 rows, 4 warps) that was 168 registers plus
    # a 2888-byte stack of spills per thread (370 KB per program: more than L1). With the pin: 255 registers and
    # an 88-byte stack, and the re-read weights are L1 hits.
    w2_row = w2_row + t * pin
    w3_row = w3_row + t * pin
    # First layer: a lookup per neighbour. h is a tuple of C1 int32 tiles (unrolled at compile time).
    # (Tuples are grown by concatenation: the form Triton's frontend compiles, hence the RUF005 waivers.)
    h = ()
    for _c in tl.static_range(C1):
        h = h + (tl.zeros_like(state),)  # noqa: RUF005
    if SCRATCH:
        _publish(state, scratch + own)
    for k in tl.static_range(9):  # k = 3*(dy+1) + (dx+1), the reference's offset order
        nb = _cells_at(state, rows_off[k // 3] + cols_off[k % 3], scratch, ROWS, CH, SCRATCH)
        base = (k * S + nb) * C1
        hn = ()
        for c in tl.static_range(C1):
            hn = hn + (h[c] + tl.load(w1_row + base + c, mask=mask, other=0),)  # noqa: RUF005
        h = hn
    # Hidden layer: 1x1 conv C1 -> C2, ReLU, arithmetic shift back to scale 2^(f-1), rounded half up: the
    # accumulator starts at ROUND = 2^(SHIFT-1), the addend of the first multiply-add (no extra instruction).
    a = ()
    for j in tl.static_range(C2):
        pre = ROUND + h[0] * tl.load(w2_row + j, mask=row_ok, other=0)
        for c in tl.static_range(1, C1):
            pre += h[c] * tl.load(w2_row + c * C2 + j, mask=row_ok, other=0)
        a = a + (tl.maximum(pre, 0) >> SHIFT,)  # noqa: RUF005
    if USE_NOISE:
        # cell_bits = hash32(key ^ hash32(t*C + cell)); counters wrap mod 2^32 like the reference's mask.
        counter = (t * (H * W) + cell).to(tl.uint32)
        cell_bits = _hash32(key ^ _hash32(counter))
    # Logits state by state with a running argmax: strict `>` keeps the lowest state on ties. SPARSE_NOISE adds
    # noise in a second pass only where the noiseless top-2 gap is <= noise_span (max - min of the table): a
    # wider gap cannot be closed by any noise, so elsewhere the noiseless winner is the noisy one. Its table
    # loads are masked off there (at tau = 1e-4 ~1% of cells need them), so the random 16 KiB-table reads stop
    # costing L1 wavefronts; the hash still runs on every lane. It keeps the S logits live (S more registers
    # per cell) and must be timed on a GPU before it can be the default.
    best = tl.zeros_like(state)
    second = tl.zeros_like(state) + (-(2**31))  # below every logit: S >= 2 replaces it
    arg = tl.zeros_like(state)
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
        noisy_arg = tl.zeros_like(state)
        for s in tl.static_range(1, S):
            z = zs[s] + _noise(cell_bits, s, noise_ptr, need)
            take = z > noisy_best
            noisy_best = tl.where(take, z, noisy_best)
            noisy_arg = tl.where(take, s, noisy_arg)
        arg = tl.where(need, noisy_arg, arg)
    return arg


@triton.jit
def _emit(state, f, frames, tokens_per_frame, tok_rows, tok_ok, slot_off, frame_rows, mask, cell, own, scratch,
          H: tl.constexpr, W: tl.constexpr, S: tl.constexpr, PATCH: tl.constexpr,
          TOK_ROWS: tl.constexpr, PATCHES_PAD: tl.constexpr,
          WRITE_TOKENS: tl.constexpr, WRITE_FRAMES: tl.constexpr, SCRATCH: tl.constexpr):
    """Write frame f of every trajectory: `<grid>`, the patch ids row-major, `</grid>` (and/or the raw cells)."""
    if WRITE_FRAMES:
        tl.store(frame_rows + f * (H * W) + cell, state.to(tl.uint8), mask=mask)
    if WRITE_TOKENS:
        PATCHES: tl.constexpr = (H // PATCH) * (W // PATCH)
        GRID_TOK: tl.constexpr = S ** (PATCH * PATCH)
        q = tl.arange(0, PATCHES_PAD)[None, :]
        q_ok = q < PATCHES
        qc = tl.where(q_ok, q, 0)
        corner = (qc // (W // PATCH)) * (PATCH * W) + (qc % (W // PATCH)) * PATCH  # top-left cell of patch q
        tok = tl.zeros((TOK_ROWS, PATCHES_PAD), dtype=tl.int32)
        if SCRATCH:
            _publish(state, scratch + own)
        for i in tl.static_range(PATCH):
            for j in tl.static_range(PATCH):  # digit i*p + j: top-left is the least significant
                nb = _cells_at(state, slot_off + corner + (i * W + j), scratch, TOK_ROWS, PATCHES_PAD, SCRATCH)
                tok += nb * (S ** (i * PATCH + j))
        start = f * tokens_per_frame
        tl.store(tok_rows + start + 1 + q, tok, mask=tok_ok & q_ok)
        delim = tl.full((TOK_ROWS, 1), GRID_TOK, dtype=tl.int32)
        tl.store(tok_rows + start, delim, mask=tok_ok)
        tl.store(tok_rows + start + (PATCHES + 1), delim + 1, mask=tok_ok)


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
    scratch_ptr,  # uint8 (programs, ROWS * CH): each program's neighbour exchange (used iff SCRATCH)
    H: tl.constexpr, W: tl.constexpr, S: tl.constexpr, PATCH: tl.constexpr,
    C1: tl.constexpr, C2: tl.constexpr,
    SHIFT: tl.constexpr, ROUND: tl.constexpr,  # hidden activations: (pre-activation + ROUND) >> SHIFT after ReLU
    ROWS: tl.constexpr,  # tile rows per program (a power of 2)
    CH: tl.constexpr,  # cells per tile row (a power of 2)
    CPT: tl.constexpr,  # tile rows per trajectory: cdiv(H*W, CH), 1 in gather mode
    TPP: tl.constexpr,  # trajectories per program, <= ROWS // CPT
    TOK_ROWS: tl.constexpr,  # rows of the token tile: next power of 2 >= TPP (= ROWS in gather mode)
    PATCHES_PAD: tl.constexpr,  # next power of 2 >= (H/P)*(W/P)
    USE_NOISE: tl.constexpr, USE_BETA: tl.constexpr,
    WRITE_TOKENS: tl.constexpr, WRITE_FRAMES: tl.constexpr,
    SCRATCH: tl.constexpr,  # neighbours through scratch memory (True) or register gathers (False)
    SPARSE_NOISE: tl.constexpr,  # noise table reads only where noise can change the winner (see _step)
    ROWS_FIRST: tl.constexpr,  # scratch tile as [ROWS, CH] (True) or [CH, ROWS]; gather is always [ROWS, CH]
):
    C: tl.constexpr = H * W
    SLOT: tl.constexpr = CPT * CH  # a trajectory's cells in scratch, padded up to whole rows
    pid = tl.program_id(0)
    # The tile is [ROWS, CH] for gather (rows are trajectories, gathered along axis 1); for scratch its
    # orientation follows the compiler (ROWS_FIRST, see `scratch_rows_first`) so that each thread holds one
    # row's CH cells and a per-row weight load serves all of them.
    if SCRATCH and not ROWS_FIRST:
        r = tl.arange(0, ROWS)[None, :]
        j = tl.arange(0, CH)[:, None]
    else:
        r = tl.arange(0, ROWS)[:, None]
        j = tl.arange(0, CH)[None, :]
    if CPT == 1:  # a row is a whole trajectory: cells are the same for every row (fewer registers)
        local = r
        cell = j
    else:
        local = r // CPT  # trajectory within the program
        cell = (r % CPT) * CH + j
    traj = pid * TPP + local
    row_ok = (traj < B) & (local < TPP)
    mask = row_ok & (cell < C)
    traj64 = traj.to(tl.int64)  # the only int64 values: per-row base offsets, computed once

    state = tl.load(state_ptr + traj64 * C + cell, mask=mask, other=0).to(tl.int32)
    rule = tl.load(rule_ptr + traj, mask=row_ok, other=0)
    w1_row = w1_ptr + rule * (9 * S * C1)
    w2_row = w2_ptr + rule * (C1 * C2)
    w3_row = w3_ptr + rule * (C2 * S)
    key = tl.load(key_ptr + traj, mask=row_ok, other=0).to(tl.uint32)
    frame_rows = frame_ptr + traj64 * (frames * C)
    # Scratch: the program's ROWS * CH bytes; element (r, j) owns byte r*CH + j, which is byte `cell` of its
    # trajectory's slot (local * SLOT). Neighbour reads address slot + cell; padding rows (local >= TPP) read
    # the last real slot instead, so no read leaves the program's scratch.
    scratch = scratch_ptr + pid.to(tl.int64) * (ROWS * CH)
    # (`* (1 + pin)`, i.e. * 1, hides from Triton that `own` is contiguous along the CH axis: it would give the
    # store a layout of its own and convert the tile through shared memory every step: +1 barrier, sm_90)
    own = r * CH + j * (1 + pin)
    slot_off = 0
    if SCRATCH:
        slot_off = tl.minimum(local, TPP - 1) * SLOT
    # Tokens: one tile row per trajectory of the program (TOK_ROWS >= TPP rows).
    tr = tl.arange(0, TOK_ROWS)[:, None]
    tok_traj = pid * TPP + tr
    tok_ok = (tok_traj < B) & (tr < TPP)
    tokens_per_frame = ((H // PATCH) * (W // PATCH) + 2)
    tok_rows = tok_ptr + tok_traj.to(tl.int64) * (frames * tokens_per_frame)
    tok_slot = 0
    if SCRATCH:
        tok_slot = tl.minimum(tr, TPP - 1) * SLOT

    # Periodic neighbour offsets, hoisted out of the time loop: row offsets for dy = -1, 0, 1 (plus the
    # trajectory's scratch slot) and column offsets for dx = -1, 0, 1; neighbour k's index is
    # rows_off[k // 3] + cols_off[k % 3].
    cc = tl.where(cell < C, cell, 0)  # padded cells read real (harmless) neighbours
    y = cc // W
    x = cc % W
    rows_off = (slot_off + tl.where(y == 0, H - 1, y - 1) * W, slot_off + y * W,
                slot_off + tl.where(y == H - 1, 0, y + 1) * W)
    cols_off = (tl.where(x == 0, W - 1, x - 1), x, tl.where(x == W - 1, 0, x + 1))

    # Segment f = -1 is the burn-in; segment f >= 0 emits frame f (the state at t = burn_in + f * stride), then
    # runs the `stride` steps to the next frame (none after the last). Measured for sm_90 (triton 3.9, 2 rows,
    # 4 warps, compile times on a busy shared 2-core box, so rough):
    #   this nest: the step instantiated once            255 registers, 112-byte stack, compiled in  75 s
    #   burn-in loop + frame loop (two step copies)      255 registers,  88-byte stack, compiled in 227 s
    #   one flat loop over t with `if frame: emit`       255 registers, 1288-byte stack, compiled in 140 s
    for f in range(-1, frames):
        if f >= 0:
            _emit(state, f, frames, tokens_per_frame, tok_rows, tok_ok, tok_slot, frame_rows, mask, cell, own,
                  scratch, H, W, S, PATCH, TOK_ROWS, PATCHES_PAD, WRITE_TOKENS, WRITE_FRAMES, SCRATCH)
        t0 = tl.where(f < 0, 0, burn_in + f * stride)
        n_steps = tl.where(f < 0, burn_in, tl.where(f + 1 < frames, stride, 0))
        for i in range(n_steps):
            state = _step(state, t0 + i, pin, mask, row_ok, rows_off, cols_off, cell, own, key, w1_row, w2_row,
                          w3_row, noise_ptr, beta_q, noise_span, scratch, H, W, S, C1, C2, SHIFT, ROUND, ROWS, CH,
                          USE_NOISE, USE_BETA, SCRATCH, SPARSE_NOISE)


# ----------------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------------

# Elements (tile rows x cells per row) per program on a GPU, ~4 cells per thread, so the tuple of C2 = 16
# hidden tiles is 64 registers. "gather" (a row is a whole trajectory, padded to a power of 2): compiled for
# sm_90 with triton 3.9's ptxas (no GPU here), paper sizes (256 padded cells), registers / stack bytes per
# thread by (trajectories, num_warps):
#     (2, 4) default: 255 / 112      (1, 4): 255 / 352      (1, 2): 255 / 272 (older loop structure)
#     (4, 8): 32 / 7440              (4, 4) at 12x18: 32 / 4768     (8, 4) at 7x9 (64 padded cells): 255 / 208
# i.e. ptxas spends the registers on in-flight weight loads (ILP), and 1024-element gather tiles fall off a
# cliff (whatever the warps), so 512 it is; on the H200 (benchmarks/results/h200/gpu_check_triton.md) (2, 4)
# was the fastest gather shape measured. "scratch" packs trajectories into rows of SCRATCH_CELLS_PER_ROW cells:
# at the paper's 144 cells, 7 trajectories fill 252 of 256 rows (98% real cells against 144/256 = 56% for a
# padded row); see kernel_sass.md for its registers and instructions. Grids larger than 512 cells get one
# trajectory per program and more warps (up to 32): correct, but untuned.
GPU_ELEMENTS_PER_PROGRAM = {"gather": 512, "scratch": 1024}
GPU_CELLS_PER_THREAD = 4
SCRATCH_CELLS_PER_ROW = 4
# Neighbour exchange (the SCRATCH constexpr; see the module docstring). "gather" stays the default until a GPU
# run has checked "scratch" bit for bit and timed it (benchmarks/gpu_check.py does both). NCA_TRITON_NEIGHBOURS
# sets the default for a process (e.g. a build).
NEIGHBOURS = ("gather", "scratch")
# The interpreter's cost is per operation, not per element: one program over many trajectories is fastest there.
INTERPRET_MAX_TRAJECTORIES = 64


@functools.lru_cache(maxsize=16)
def _noise_table(spec: RolloutSpec, device: str) -> torch.Tensor:
    return torch.as_tensor(spec.noise_table, dtype=torch.int32, device=device)


def default_neighbours() -> str:
    mode = os.environ.get("NCA_TRITON_NEIGHBOURS", "gather")
    if mode not in NEIGHBOURS:
        raise ValueError(f"NCA_TRITON_NEIGHBOURS={mode!r}: choose one of {', '.join(NEIGHBOURS)}")
    return mode


def _power_of_2(name: str, value: int) -> None:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name}={value} must be a power of 2")


@dataclasses.dataclass(frozen=True)
class TileLayout:
    """How one program's [rows, cells_per_row] tile covers its trajectories (the kernel's layout constexprs)."""

    neighbours: str  # "gather" or "scratch"
    rows: int  # ROWS: tile rows, a power of 2
    cells_per_row: int  # CH: a power of 2; gather: the padded grid, one trajectory per row
    rows_per_trajectory: int  # CPT: cdiv(cells, CH); 1 for gather
    trajectories: int  # TPP: trajectories per program
    num_warps: int

    @property
    def token_rows(self) -> int:  # TOK_ROWS: gather emits straight from the state tile's rows
        return self.rows if self.neighbours == "gather" else triton.next_power_of_2(self.trajectories)

    @property
    def rows_first(self) -> bool:  # ROWS_FIRST: gather tiles always are [ROWS, CH]; scratch follows Triton
        return self.neighbours == "gather" or scratch_rows_first()

    @property
    def cells_per_thread(self) -> float:
        return self.rows * self.cells_per_row / (32 * self.num_warps)

    def programs(self, batch: int) -> int:
        return triton.cdiv(batch, self.trajectories)


def tile_layout(height: int, width: int, batch: int, *, neighbours: str | None = None, block_t: int | None = None,
                cells_per_row: int | None = None, num_warps: int | None = None) -> TileLayout:
    """The launch layout: the defaults above, or the tuning knobs (block_t = trajectories per program)."""
    neighbours = neighbours or default_neighbours()
    if neighbours not in NEIGHBOURS:
        raise ValueError(f"neighbours={neighbours!r}: choose one of {', '.join(NEIGHBOURS)}")
    cells = height * width
    if neighbours == "gather":
        if cells_per_row:
            raise ValueError("cells_per_row is a scratch knob: a gather row holds one whole trajectory")
        ch, cpt = triton.next_power_of_2(cells), 1
    else:
        ch = cells_per_row or SCRATCH_CELLS_PER_ROW
        _power_of_2("cells_per_row", ch)
        cpt = triton.cdiv(cells, ch)
    if block_t is None and triton_interpreting():
        block_t = min(INTERPRET_MAX_TRAJECTORIES, max(batch, 1))
        block_t = triton.next_power_of_2(block_t) if neighbours == "gather" else block_t
    elif block_t is None:
        block_t = max(1, GPU_ELEMENTS_PER_PROGRAM[neighbours] // (ch * cpt))
    if neighbours == "gather":
        _power_of_2("block_t", block_t)  # gather: the tile's rows are the trajectories
    rows = triton.next_power_of_2(block_t * cpt)
    num_warps = num_warps or min(32, max(1, rows * ch // (32 * GPU_CELLS_PER_THREAD)))
    return TileLayout(neighbours, rows, ch, cpt, block_t, num_warps)


def scratch_rows_first() -> bool:
    """Whether the scratch tile leads with its rows ([ROWS, CH]) under the installed Triton, else [CH, ROWS].

    Either way each thread must hold one row's CH cells. Triton lays a load out by its pointer's contiguity,
    and on a tie (the kernel's table lookups have none on any axis) Triton < 3.7 spreads threads over axis 0
    first, 3.7 and later over the last axis; the tile must put the rows there, or Triton converts the tile's
    layout through shared memory every step. Compiled for sm_90 (benchmarks/kernel_sass.py, paper config):
    the matching orientation has 2 barriers a step under triton 3.4, 3.6, 3.7, 3.8 and 3.9; the other 45."""
    major, minor = (int(part) for part in re.findall(r"\d+", triton.__version__)[:2])
    return (major, minor) < (3, 7)


def kernel_constexprs(spec: RolloutSpec, hidden: tuple[int, int], layout: TileLayout, *, write_tokens: bool,
                      write_frames: bool, sparse_noise: bool = False) -> dict:
    """Every constexpr argument of `nca_rollout_kernel` (the launcher's, and benchmarks/kernel_sass.py's)."""
    h, w, p = spec.height, spec.width, spec.patch
    c1, c2 = hidden
    return dict(H=h, W=w, S=spec.states, PATCH=p, C1=c1, C2=c2, SHIFT=spec.hidden_shift,
                ROUND=spec.hidden_round,
                ROWS=layout.rows, CH=layout.cells_per_row, CPT=layout.rows_per_trajectory, TPP=layout.trajectories,
                TOK_ROWS=layout.token_rows, PATCHES_PAD=triton.next_power_of_2((h // p) * (w // p)),
                USE_NOISE=spec.noise_span != 0, USE_BETA=spec.beta_q != 0,
                WRITE_TOKENS=write_tokens, WRITE_FRAMES=write_frames, SCRATCH=layout.neighbours == "scratch",
                SPARSE_NOISE=bool(sparse_noise), ROWS_FIRST=layout.rows_first)


def _check(name: str, t: torch.Tensor, dtype: torch.dtype, ndim: int, device: torch.device) -> None:
    if t.dtype != dtype or t.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d {dtype} tensor, got {t.ndim}-d {t.dtype} {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the states are on {device}: put every input on one device")
    if not t.is_contiguous():
        raise ValueError(f"{name} is not contiguous: pass `.contiguous()` tensors")


def _launch(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec: RolloutSpec, *, write_tokens: bool,
            write_frames: bool, maxnreg: int | None = None, sparse_noise: bool = False, **layout_knobs):
    device = states_BHW.device
    if device.type != "cuda" and not triton_interpreting():
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
    layout = tile_layout(h, w, b, **layout_knobs)  # checks the knobs before any early return

    tokens_per_frame = (h // p) * (w // p) + 2
    tokens = torch.empty(b if write_tokens else 0, spec.frames * tokens_per_frame, dtype=torch.int32, device=device)
    frames = torch.empty(b if write_frames else 0, spec.frames, h, w, dtype=torch.uint8, device=device)
    if b == 0:
        return tokens, frames
    lo, hi = (int(v) for v in torch.aminmax(rule_B))  # one sync; an out-of-range rule would read garbage
    if lo < 0 or hi >= r:
        raise ValueError(f"rule_B holds indices {lo}..{hi} but there are {r} rule tables")
    grid = (layout.programs(b),)
    # Unused outputs get a valid 1-element dummy so the pointer argument is never dangling.
    dummy = torch.empty(1, dtype=torch.int32, device=device)
    scratch = (torch.empty(grid[0], layout.rows * layout.cells_per_row, dtype=torch.uint8, device=device)
               if layout.neighbours == "scratch" else dummy.view(torch.uint8))
    options = {"maxnreg": maxnreg} if maxnreg else {}  # a register cap for ptxas (a tuning knob)
    nca_rollout_kernel[grid](
        w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, _noise_table(spec, str(device)),
        tokens if write_tokens else dummy, frames if write_frames else dummy.view(torch.uint8),
        b, spec.burn_in, spec.frames, spec.frame_stride, spec.beta_q, spec.noise_span, 0, scratch,
        **kernel_constexprs(spec, (c1, c2), layout, write_tokens=write_tokens, write_frames=write_frames,
                            sparse_noise=sparse_noise),
        num_warps=layout.num_warps, **options,
    )
    return tokens, frames


# ----------------------------------------------------------------------------------------------------------
# Public functions: the reference's signature (plus keyword-only tuning knobs)
# ----------------------------------------------------------------------------------------------------------


def rollout_triton(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec: RolloutSpec, **tuning) -> torch.Tensor:
    """Frames (B, F, H, W) uint8, identical to `rollout_reference`. `tuning`: neighbours, block_t (trajectories
    per program), cells_per_row (scratch), num_warps (see `tile_layout`), maxnreg, sparse_noise; none of them
    changes the output."""
    return _launch(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec, write_tokens=False,
                   write_frames=True, **tuning)[1]


def rollout_tokens_triton(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec: RolloutSpec,
                          **tuning) -> torch.Tensor:
    """Token sequences (B, L) int32, identical to `rollout_tokens_reference`; frames never reach memory."""
    return _launch(w1_RKSC, w2_RCJ, w3_RJS, rule_B, states_BHW, keys_B, spec, write_tokens=True,
                   write_frames=False, **tuning)[0]
