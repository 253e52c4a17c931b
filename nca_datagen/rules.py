"""The paper's rule family, sampled on the host and quantised to the integer tables the kernels run.

A rule is the reference code's network: wrap-pad the one-hot state on all three axes (so the channel axis
reads [s_{n-1}, s_0, ..., s_{n-1}, s_0]), conv 3x3 VALID (n+2 -> 4), conv 1x1 (4 -> 16), ReLU, conv 1x1
(16 -> n) = logits. Kernels are Flax's lecun_normal: a standard normal truncated at +-2, times
sqrt(1/fan_in) / 0.8796 so the variance is 1/fan_in. Biases are Flax's default zeros, so the integer path
carries none.

Because the first conv's input is one-hot, it is a lookup: `w1[offset, state, :]` is the sum of the kernel
rows for the channels that state lights (two for states 0 and n-1, one otherwise). Weights are drawn as
float64 with numpy, folded, then quantised to fixed point (format in `nca_datagen.kernels.common`).
`float_logits` is the same network in float64 on the unquantised weights (the reference code's semantics, no
folding), against which `fidelity.py` measures what the quantisation changes.

Seeds: a rule's weights come from SeedSequence([run seed, split, rule id, STREAM_RULE]); nothing global.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nca_datagen import streams
from nca_datagen.kernels.common import INT32_LIMIT, RolloutSpec, layer_frac_bits, logit_frac_bits
from nca_datagen.streams import STREAM_RULE

TRUNC_STD_CORRECTION = 0.87962566103423978  # std of a standard normal truncated to [-2, 2] (Flax's constant)
TRUNC_LIMIT = 2.0  # truncation at +-2 standard units

PROBE_SIM = 0  # the probe trajectory lives on its own stream; its sim index is always 0


def fan_ins(cfg) -> tuple[int, int, int]:
    """Fan-in of each layer: 3*3*(n+2) for the wrap-padded conv, then the two hidden widths."""
    c1, c2 = cfg.hidden
    return 9 * (cfg.states + 2), c1, c2


def weight_std(fan_in: int) -> float:
    """The std lecun_normal targets: sqrt(1 / fan_in) (0.096, 0.5, 0.25 at the paper's settings)."""
    return math.sqrt(1.0 / fan_in)


def _truncated_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normal truncated to [-2, 2] by redrawing outliers, in flat (C) order, until none is left."""
    x = rng.standard_normal(shape)
    flat = x.reshape(-1)  # a view: writes land in x
    bad = np.flatnonzero(np.abs(flat) > TRUNC_LIMIT)
    while bad.size:  # only the cells just redrawn can still be out of range
        flat[bad] = rng.standard_normal(bad.size)
        bad = bad[np.abs(flat[bad]) > TRUNC_LIMIT]
    return x


def lecun_normal(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    return _truncated_normal(rng, shape) * (weight_std(fan_in) / TRUNC_STD_CORRECTION)


def rule_rng(seed: int, split_id: int, rule_id: int) -> np.random.Generator:
    """The definition of a rule's stream (`sample_rules` seeds the same streams in bulk)."""
    return np.random.default_rng(np.random.SeedSequence([seed, split_id, rule_id, STREAM_RULE]))


def sample_rule_floats(cfg, seed: int, split_id: int, rule_id: int):
    """One rule's float64 kernels as the reference draws them: (3,3,n+2,C1), (C1,C2), (C2,n)."""
    return _draw_kernels(cfg, rule_rng(seed, split_id, rule_id))


def kernel_shapes(cfg) -> tuple[tuple[int, ...], ...]:
    """Shapes of the three kernels, in drawing order: (3,3,n+2,C1), (C1,C2), (C2,n)."""
    c1, c2 = cfg.hidden
    return (3, 3, cfg.states + 2, c1), (c1, c2), (c2, cfg.states)


def _draw_kernels(cfg, rng: np.random.Generator):
    (s1, s2, s3), (f1, f2, f3) = kernel_shapes(cfg), fan_ins(cfg)
    k1 = lecun_normal(rng, s1, f1)
    k2 = lecun_normal(rng, s2, f2)
    k3 = lecun_normal(rng, s3, f3)
    return k1, k2, k3


def fold_first_layer(k1_YXIC: np.ndarray) -> np.ndarray:
    """(..., 3, 3, n+2, C) conv kernels over wrap-padded one-hot channels -> (..., 9, n, C) lookup tables.

    Padded channel 0 is state n-1 and channel n+1 is state 0; channels 1..n are states 0..n-1.
    """
    n = k1_YXIC.shape[-2] - 2
    table = k1_YXIC[..., 1 : n + 1, :].copy()
    table[..., n - 1, :] += k1_YXIC[..., 0, :]
    table[..., 0, :] += k1_YXIC[..., n + 1, :]
    return table.reshape(*k1_YXIC.shape[:-4], 9, n, k1_YXIC.shape[-1])


def quantise(w: np.ndarray, frac_bits: int) -> np.ndarray:
    return np.rint(w * 2.0**frac_bits).astype(np.int32)


def float_logits(states_BHW: np.ndarray, k1_BYXIC: np.ndarray, k2_BCJ: np.ndarray, k3_BJS: np.ndarray) -> np.ndarray:
    """The paper's network in float64, trajectory b on its own kernels: logits (B, H, W, S).

    The reference code's semantics, step by step: one-hot, wrap-pad all three axes (channels included, so they
    read [s_{n-1}, s_0, ..., s_{n-1}, s_0]), conv 3x3 VALID with the float kernels (no folding), conv 1x1, ReLU,
    conv 1x1; zero biases. `logits.argmax(-1)` is the noiseless update (lowest state wins exact ties).
    """
    n = k3_BJS.shape[-1]
    _, h, w = states_BHW.shape
    padded_BHWI = np.pad(np.eye(n)[states_BHW], [(0, 0), (1, 1), (1, 1), (1, 1)], mode="wrap")
    hid_BHWC = np.zeros((*states_BHW.shape, k1_BYXIC.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            hid_BHWC += np.einsum("byxi,bic->byxc", padded_BHWI[:, dy : dy + h, dx : dx + w], k1_BYXIC[:, dy, dx])
    act_BHWJ = np.maximum(np.einsum("byxc,bcj->byxj", hid_BHWC, k2_BCJ), 0.0)
    return np.einsum("byxj,bjs->byxs", act_BHWJ, k3_BJS)


@dataclass(frozen=True)
class RuleTables:
    """Integer tables of R rules. Legend: R rules, K=9 neighbour offsets, S states, C/J hidden widths."""

    w1_RKSC: np.ndarray  # int32 (R, 9, n, C1): first layer as a lookup, offset k = 3*(dy+1) + (dx+1)
    w2_RCJ: np.ndarray  # int32 (R, C1, C2)
    w3_RJS: np.ndarray  # int32 (R, C2, n)

    def __len__(self) -> int:
        return self.w1_RKSC.shape[0]

    def select(self, idx) -> RuleTables:
        return RuleTables(self.w1_RKSC[idx], self.w2_RCJ[idx], self.w3_RJS[idx])

    @staticmethod
    def concat(parts: list[RuleTables]) -> RuleTables:
        return RuleTables(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("w1_RKSC", "w2_RCJ",
                                                                                            "w3_RJS")))


def sample_rules(cfg, seed: int, split_id: int, rule_ids) -> RuleTables:
    """Draw, fold and quantise the rules `rule_ids` (any order; each rule depends only on its own id)."""
    floats = sample_floats(cfg, seed, split_id, rule_ids)
    return quantise_rules(*floats, layer_frac_bits(cfg.weight_frac_bits))


def sample_floats(cfg, seed: int, split_id: int, rule_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The float64 kernels of the rules `rule_ids`, stacked: (R,3,3,n+2,C1), (R,C1,C2), (R,C2,n).

    Same draws as `sample_rule_floats` rule by rule, seeded through `nca_datagen.streams` (vectorised)."""
    rule_ids = np.asarray(rule_ids, dtype=np.int64).reshape(-1)
    r = len(rule_ids)
    shapes = kernel_shapes(cfg)
    sizes = [math.prod(shape) for shape in shapes]
    budget = _stream_budget(sum(sizes))
    columns = [np.full(r, seed), np.full(r, split_id), rule_ids, np.full(r, STREAM_RULE)]
    normals = np.empty((r, budget))
    for normals_row, rng in zip(normals, streams.generators(columns), strict=True):
        rng.standard_normal(out=normals_row)  # in place: the same draws, no temporary
    pos = np.zeros(r, dtype=np.int64)  # next unread draw of each rule's stream
    kernels = []
    for shape, size, fan_in in zip(shapes, sizes, fan_ins(cfg), strict=True):
        x = _truncate_rows(normals, pos, size)
        kernels.append(x.reshape(r, *shape) * (weight_std(fan_in) / TRUNC_STD_CORRECTION))
    for i in np.flatnonzero(pos > budget):  # a stream ran past its budget: draw that rule the plain way
        for k, kernel in zip(kernels, sample_rule_floats(cfg, seed, split_id, int(rule_ids[i])), strict=True):
            k[i] = kernel
    return tuple(kernels)


def quantise_rules(k1_RYXIC: np.ndarray, k2_RCJ: np.ndarray, k3_RJS: np.ndarray, frac_bits) -> RuleTables:
    """Fold the first layer, then quantise each layer to its fractional bits (`common.layer_frac_bits`)."""
    f1, f2, f3 = frac_bits
    return RuleTables(quantise(fold_first_layer(k1_RYXIC), f1), quantise(k2_RCJ, f2), quantise(k3_RJS, f3))


def _stream_budget(draws: int) -> int:
    """Normals read per rule stream: room for the redraws, 4.8% of the draws (P(|z| > 2) = 4.55%, then redraws
    of redraws), ~31 +- 6 of the paper's 656; 16 + 10% spare (81 there) makes an overrun astronomically
    unlikely, and `sample_rules` handles one anyway."""
    return draws + 16 + draws // 10


def _truncate_rows(normals: np.ndarray, pos: np.ndarray, size: int) -> np.ndarray:
    """`_truncated_normal` on every row at once: row i reads its draws from normals[i, pos[i]:], as the plain
    version reads rng.standard_normal calls in order (numpy's normals do not depend on how calls split them).
    Advances `pos`; a row that runs out of draws gets pos > budget (its values are then redrawn by the caller)."""
    r, budget = normals.shape
    x = normals[np.arange(r)[:, None], np.minimum(pos[:, None] + np.arange(size), budget - 1)]
    pos += size
    i, j = np.nonzero(np.abs(x) > TRUNC_LIMIT)  # row-major: by row, then flat C order within the row
    while i.size:
        counts = np.bincount(i, minlength=r)
        rank = np.arange(i.size) - (np.cumsum(counts) - counts)[i]  # order of each redraw within its row
        x[i, j] = normals[i, np.minimum(pos[i] + rank, budget - 1)]
        pos += counts
        # only the values just redrawn can still be out of range; rows past their budget stop (caller redraws)
        still = (np.abs(x[i, j]) > TRUNC_LIMIT) & (pos[i] <= budget)
        i, j = i[still], j[still]
    return x


def fixed_point_bounds(cfg, frac_bits=None, spec: RolloutSpec | None = None) -> dict[str, int]:
    """Worst-case |value| of every integer intermediate for any rule the sampler can produce.

    Each weight is at most 2 truncation units, i.e. 2 * std / 0.8796 before rounding at its layer's bits; the
    first layer's entries for the wrapped states are sums of two draws, rounded after the sum (so up to
    rint(2 * limit), which can be 2 * rint(limit) + 1); every sum takes all terms at their maximum, and the
    hidden pre-activation also carries the rounding offset (`RolloutSpec.hidden_round`). `frac_bits` and
    `spec` default to the config's own; others describe another format (benchmarks/bench_fidelity.py).
    """
    frac_bits = frac_bits or layer_frac_bits(cfg.weight_frac_bits)
    spec = spec or RolloutSpec.from_config(cfg)
    c1, c2 = cfg.hidden
    limits = [TRUNC_LIMIT * weight_std(fan_in) / TRUNC_STD_CORRECTION for fan_in in fan_ins(cfg)]
    entry1 = int(np.rint(2 * limits[0] * 2.0 ** frac_bits[0]))  # states 0 and n-1 light two padded channels
    w_max = [int(np.rint(limit * 2.0**bits)) for limit, bits in zip(limits, frac_bits, strict=True)]
    h = 9 * entry1
    pre2 = c1 * w_max[1] * h + spec.hidden_round
    a = pre2 >> spec.hidden_shift
    logits = c2 * w_max[2] * a
    noise = max(abs(v) for v in spec.noise_q)
    return {"w1_entry": entry1, "h": h, "w2": w_max[1], "hidden_preact": pre2, "hidden": a, "w3": w_max[2],
            "logits": logits, "logits_plus_noise": logits + spec.beta_q + noise}


def check_fixed_point_fits(cfg) -> None:
    """Raise ValueError (with the fix) if any intermediate could leave int32 for this config."""
    bounds = fixed_point_bounds(cfg)
    worst = max(bounds, key=bounds.get)
    if bounds[worst] > INT32_LIMIT:
        frac = logit_frac_bits(cfg.weight_frac_bits)
        raise ValueError(
            f"this config can overflow int32 in the rollout ({worst} up to {bounds[worst]:,} > {INT32_LIMIT:,}): "
            f"lower temperature ({cfg.temperature}) or identity_bias ({cfg.identity_bias}), whose noise and "
            f"bias enter at scale 2^{frac}, narrow hidden={cfg.hidden}, or lower weight_frac_bits")
