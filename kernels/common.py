"""The integer semantics every rollout backend shares: fixed-point scales, the noise hash, the Gumbel table.

Each backend (torch reference, numba CPU loop, Triton kernel) re-implements these few lines in its own
language; this module holds the constants and a numpy version the others are tested against.

Fixed point (f = `NCAConfig.weight_frac_bits`, 12 by default; `layer_frac_bits` gives each layer its bits):

    weights          w1_q = rint(w1 * 2^(f+1)), w2_q = rint(w2 * 2^f), w3_q = rint(w3 * 2^(f-1))   int32
    first layer      h  = sum over 9 neighbours of w1_q[offset, state]          scale 2^(f+1)  (a table lookup)
    hidden           a  = (relu(sum_c h_c * w2_q[c, j]) + 2^(f+1)) >> (f + 2)  scale 2^(f-1)  (rounded half up)
    logits           z  = sum_j a_j * w3_q[j, s]                                scale 2^(2f-2) = 2^22
    sampling         s' = argmax_s (z_s + beta_q * [s == s_now] + noise_q[s]), lowest s wins ties

Why these bits: the logits' worst case (every weight at its truncation limit, at 2 states) is 282 in float units,
so int32 leaves them 22 fractional bits (2^22 * 282 = 0.55 * 2^31), shared between the hidden activations and
the output weights: 11 + 11 here, which measured best (10 + 12 and 12 + 10 disagree more). The first layer's
small weights (std 0.096, against 0.5 and 0.25) take the bit the output layer gives up, and the hidden
pre-activation, at scale 2^(2f+1), reaches 0.49 * 2^31 at worst. Hidden activations are rounded, not floored
(flooring biases every hidden unit by half a step): backends add `hidden_round` = 2^(f+1) to the pre-activation
sum, then take relu and shift, which gives the same number (a negative sum gives 0 either way, as 2^(f+1) <
2^(f+2)). One-step argmax agreement with the same network in float64 on the same weights: 99.93% over 1.8M cells,
against 99.86% for 12 bits in every layer with floored hidden activations at 2^-10 (tests/test_fidelity.py,
benchmarks/results/fidelity.md); every disagreement is a near-tie (float logit margin < 1e-3).

`beta_q = floor(beta * 2^(2f-2) + 1/2)` and `noise_q = GUMBEL_TABLE[i] * tau` quantised at the same scale. Because
argmax((z + beta*onehot) / tau + g) = argmax(z + beta*onehot + tau*g), the paper's Categorical((logits +
beta*onehot) / tau) is the Gumbel-max trick at logit scale, with no division. The shift after the ReLU keeps
every intermediate inside int32; `nca_datagen.rules.fixed_point_bounds` proves it from the truncation bounds.

Noise: a counter-based hash (no state, any order, any device). For sequence key k, step t, cell c, state s:

    cell_bits  = hash32(k ^ hash32(t * H * W + c))      (mod 2^32)
    state_bits = hash32(cell_bits ^ s)
    noise_q[s] = GUMBEL_Q[state_bits >> (32 - GUMBEL_BITS)]

hash32 is Chris Wellons' `lowbias32` with multipliers below 2^31, so a backend with only int64 can evaluate
it exactly as `(x * M) & 0xFFFFFFFF` without overflow.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np

MASK32 = 0xFFFFFFFF
HASH_M1 = 0x21F0AAAD  # lowbias32 multipliers (both < 2^31: int64 products never overflow)
HASH_M2 = 0x735A2D97
GUMBEL_BITS = 12  # table of 4096 quantiles: u = (i + 0.5) / 4096, g in [-2.20, 9.01]
INT32_LIMIT = 2**31 - 1


def hash32(x):
    """lowbias32 on uint32 values held in any integer numpy type (returns uint64 values < 2^32)."""
    x = np.asarray(x, dtype=np.uint64) & MASK32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(HASH_M1)) & MASK32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(HASH_M2)) & MASK32
    x ^= x >> np.uint64(15)
    return x


def gumbel_quantiles() -> np.ndarray:
    """Standard Gumbel quantiles at the centres of 2^GUMBEL_BITS equal-probability cells (float64)."""
    u = (np.arange(2**GUMBEL_BITS, dtype=np.float64) + 0.5) / 2**GUMBEL_BITS
    return -np.log(-np.log(u))


def layer_frac_bits(weight_frac_bits: int) -> tuple[int, int, int]:
    """Fractional bits of the three layers' weights: (f + 1, f, f - 1) (see the module docstring for why)."""
    return weight_frac_bits + 1, weight_frac_bits, weight_frac_bits - 1


def hidden_shift(weight_frac_bits: int) -> int:
    """Right shift after the ReLU: pre-activations at scale 2^(2f+1) -> hidden activations at 2^(f-1)."""
    return weight_frac_bits + 2


def logit_frac_bits(weight_frac_bits: int) -> int:
    """Scale of the logits (and of beta and the noise): hidden 2^(f-1) times output weights 2^(f-1)."""
    f1, f2, f3 = layer_frac_bits(weight_frac_bits)
    return f1 + f2 - hidden_shift(weight_frac_bits) + f3


@dataclass(frozen=True)
class RolloutSpec:
    """Everything a rollout kernel needs besides the rule tables and initial states (all integers)."""

    height: int
    width: int
    states: int
    patch: int
    burn_in: int
    frames: int
    frame_stride: int
    hidden_shift: int  # right shift applied after the ReLU
    hidden_round: int  # added to the hidden pre-activation before the ReLU and shift: 2^(shift-1) rounds half up
    beta_q: int  # identity bias at logit scale
    noise_q: tuple[int, ...]  # temperature-scaled Gumbel table at logit scale (all zeros when tau = 0)

    @classmethod
    @functools.lru_cache(maxsize=64)  # ~3 ms to build (4096 table entries), asked for on every rollout call
    def from_config(cls, cfg) -> RolloutSpec:
        """Build from a hashable `NCAConfig` (duck-typed so kernels/ does not import the package's config)."""
        frac = logit_frac_bits(cfg.weight_frac_bits)
        noise = np.rint(cfg.temperature * gumbel_quantiles() * 2.0**frac).astype(np.int64)
        return cls(
            height=cfg.grid[0], width=cfg.grid[1], states=cfg.states, patch=cfg.patch,
            burn_in=cfg.burn_in, frames=cfg.frames, frame_stride=cfg.frame_stride,
            hidden_shift=hidden_shift(cfg.weight_frac_bits),
            hidden_round=1 << (hidden_shift(cfg.weight_frac_bits) - 1),
            beta_q=math.floor(cfg.identity_bias * 2.0**frac + 0.5),
            noise_q=tuple(int(v) for v in noise),
        )

    @functools.cached_property
    def noise_table(self) -> np.ndarray:
        return np.asarray(self.noise_q, dtype=np.int32)  # cached, shared by every caller: never write to it

    @functools.cached_property
    def noise_span(self) -> int:
        """max - min of the noise table: a top-1/top-2 logit gap above this cannot be changed by noise."""
        return max(self.noise_q) - min(self.noise_q)

    @property
    def steps(self) -> int:
        return self.burn_in + (self.frames - 1) * self.frame_stride

    def is_frame_step(self, t: int) -> bool:
        """Whether the state after `t` steps is a recorded frame (t counts from the initial state, t = 0)."""
        return t >= self.burn_in and (t - self.burn_in) % self.frame_stride == 0

    def frame_index(self, t: int) -> int:
        return (t - self.burn_in) // self.frame_stride


def triton_interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET set, and not to 0): the Triton
    backend then works on CPU tensors (CI's exactness tests), else it needs CUDA."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
