"""Fidelity of the fixed-point arithmetic: one-step argmax agreement with the paper's float network, by variant.

For each seed: 200 random rules x 2 sims, each on a uniform grid and on a trajectory grid 10 float steps after
its initial state (`fidelity.fidelity_grids`, the cells tests/test_fidelity.py uses at seed 0): 115,200 cells.
Each variant quantises the same float weights (`rules.sample_floats`) to its layers' fractional bits and runs
one noiseless step through the torch reference with its hidden shift and rounding; the float side is
`rules.float_logits` in float64. A variant counts as usable only if its worst case fits int32 for every
alphabet (2..64 states) at the paper's hidden widths (`rules.fixed_point_bounds`). For scale, the last row is
the float network against itself with the paper's own tau = 1e-4 Gumbel noise.

    python -m benchmarks.bench_fidelity [--seeds 8] [--rules 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from benchmarks.report import write_report
from nca_datagen.config import NCAConfig
from nca_datagen.fidelity import fidelity_grids
from nca_datagen.kernels.common import INT32_LIMIT, RolloutSpec, layer_frac_bits
from nca_datagen.kernels.reference import rollout_reference
from nca_datagen.rules import (
    fixed_point_bounds,
    float_logits,
    quantise_rules,
    sample_floats,
    sample_rules,
)

CFG = NCAConfig(temperature=0.0, burn_in=1, frames=1)  # one noiseless step
SIMS = 2
PAPER_TAU = 1e-4
# name: (fractional bits of w1, w2, w3; right shift after the ReLU; rounded (True) or floored)
VARIANTS = {
    "v1 (recipe 1): 12/12/12, >>14 floor": ((12, 12, 12), 14, False),
    "12/12/12, >>14 round": ((12, 12, 12), 14, True),
    "12/12/12, >>13 floor": ((12, 12, 12), 13, False),
    "12/12/12, >>13 round": ((12, 12, 12), 13, True),
    "13/12/11, >>14 floor": ((13, 12, 11), 14, False),
    "v2 (shipped): 13/12/11, >>14 round": ((13, 12, 11), 14, True),
    "13/12/12, >>15 round": ((13, 12, 12), 15, True),  # the logits' 22 bits as 10 hidden + 12 output weights
    "13/12/10, >>13 round": ((13, 12, 10), 13, True),  # ... as 12 + 10
    "14/11/11, >>14 round": ((14, 11, 11), 14, True),
    "14/12/11, >>15 round": ((14, 12, 11), 15, True),
    "13/12/12, >>14 round": ((13, 12, 12), 14, True),
    "12/12/12 weights, exact hidden (>>0)": ((12, 12, 12), 0, False),
    "13/12/11 weights, exact hidden (>>0)": ((13, 12, 11), 0, False),
}
SHIPPED = "v2 (shipped): 13/12/11, >>14 round"
LEGEND = """
Seeds 0..{seeds_last}: per seed {rules} rules x {sims} sims, each on a uniform grid and on a trajectory grid (10 float
steps after its initial state), {cells:,} cells; tests/test_fidelity.py checks seed 0. A variant is the fractional
bits of w1/w2/w3, the right shift after the ReLU and rounded or floored hidden activations. `per_100k`:
disagreements with the float64 network per 100,000 cells (all, by grid kind, on the worst seed; every seed's in
the JSON's meta). `flip_margin`: the float network's top-1 minus top-2 logit at the disagreeing cells.
`int32_worst_fraction`: the proven worst case over 2..64 states at the paper's widths, as a fraction of 2^31 - 1
(above 1: does not fit int32). The last row is the float network's own tau = 1e-4 noise against its argmax.
"""


def variant_spec(shift: int, rounded: bool) -> RolloutSpec:
    return dataclasses.replace(RolloutSpec.from_config(CFG), hidden_shift=shift,
                               hidden_round=(1 << shift) >> 1 if rounded else 0)


def int32_headroom(frac_bits, shift: int, rounded: bool) -> float:
    """Worst case over 2..64 states (paper widths, the paper's tau) as a fraction of int32's limit."""
    worst = 0
    for states in range(2, 65):
        cfg = NCAConfig(states=states, patch=1)
        spec = dataclasses.replace(RolloutSpec.from_config(cfg), hidden_shift=shift,
                                   hidden_round=(1 << shift) >> 1 if rounded else 0)
        worst = max(worst, *fixed_point_bounds(cfg, frac_bits, spec).values())
    return worst / INT32_LIMIT


def float_cells(seed: int, rules: int) -> dict:
    """The seed's float kernels, grids, float updates and float top-1/top-2 margins."""
    rule_ids = np.repeat(np.arange(rules), SIMS)
    floats = sample_floats(CFG, seed, 0, np.arange(rules))
    kernels = [k[rule_ids] for k in floats]
    grids = fidelity_grids(CFG, seed, rule_ids, np.tile(np.arange(SIMS), rules), kernels)
    logits = {kind: float_logits(g, *kernels) for kind, g in grids.items()}
    top2 = {kind: np.sort(z, axis=-1)[..., -2:] for kind, z in logits.items()}
    return {"floats": floats, "rule_ids": rule_ids, "grids": grids, "logits": logits,
            "want": {k: z.argmax(-1) for k, z in logits.items()},
            "margin": {k: t[..., 1] - t[..., 0] for k, t in top2.items()}}


def integer_update(cells: dict, kind: str, frac_bits, spec: RolloutSpec) -> np.ndarray:
    tables = quantise_rules(*cells["floats"], frac_bits)
    tabs = [torch.from_numpy(t) for t in (tables.w1_RKSC, tables.w2_RCJ, tables.w3_RJS)]
    grids = torch.from_numpy(cells["grids"][kind])
    frames = rollout_reference(*tabs, torch.from_numpy(cells["rule_ids"]), grids,
                               torch.zeros(len(grids), dtype=torch.int64), spec)  # noise keys: unused at tau = 0
    return frames[:, 0].numpy()


def noise_flips(cells: dict, seed: int) -> dict[str, np.ndarray]:
    """Where the float network's own Categorical(logits / tau) (Gumbel-max) differs from its argmax."""
    rng = np.random.default_rng([seed, 18])
    return {k: (z / PAPER_TAU + rng.gumbel(size=z.shape)).argmax(-1) != cells["want"][k]
            for k, z in cells["logits"].items()}


def check_shipped_is_the_recipe(cells: dict, seed: int, rules: int) -> None:
    """The shipped variant is what the package's own sampler and spec produce, so this measures the recipe."""
    frac_bits, shift, rounded = VARIANTS[SHIPPED]
    assert tuple(frac_bits) == layer_frac_bits(CFG.weight_frac_bits)
    assert variant_spec(shift, rounded) == RolloutSpec.from_config(CFG)
    ours, theirs = sample_rules(CFG, seed, 0, np.arange(rules)), quantise_rules(*cells["floats"], frac_bits)
    assert all(np.array_equal(getattr(ours, n), getattr(theirs, n)) for n in ("w1_RKSC", "w2_RCJ", "w3_RJS"))


def summarise(name: str, flips_by_seed: list[dict], margins: list[np.ndarray], cells_per_kind: int) -> dict:
    """Agreement over all seeds (as text, 4 decimals), and disagreements per 100k cells overall, by grid kind
    and on the worst seed, with the float network's top-1/top-2 margin at the disagreeing cells."""
    kinds = list(flips_by_seed[0])
    rate = {kind: float(np.mean([f[kind].mean() for f in flips_by_seed])) for kind in kinds}
    worst_seed = max(np.mean([f[k].mean() for k in kinds]) for f in flips_by_seed)
    flips = np.concatenate(margins)
    overall = float(np.mean(list(rate.values())))
    return {"variant": name, "agreement": f"{100 * (1 - overall):.4f}%", "per_100k": 1e5 * overall,
            **{f"{kind}_per_100k": 1e5 * r for kind, r in rate.items()}, "worst_seed_per_100k": 1e5 * worst_seed,
            "cells": len(flips_by_seed) * len(kinds) * cells_per_kind, "flips": int(flips.size),
            "flip_margin_median": float(np.median(flips)) if flips.size else 0.0,
            "flip_margin_max": float(flips.max()) if flips.size else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=16, help="seeds 0..N-1; the test uses seed 0")
    p.add_argument("--rules", type=int, default=200, help="rules per seed (x 2 sims x 2 grid kinds x 144 cells)")
    p.add_argument("--name", default="fidelity", help="results/NAME.{json,md}")
    args = p.parse_args()
    torch.set_num_threads(1)  # small int64 ops: threads only contend on a shared box
    t0 = time.perf_counter()
    flips = {name: [] for name in [*VARIANTS, "float64 + tau 1e-4 noise"]}
    margins = {name: [] for name in flips}
    for seed in range(args.seeds):
        cells = float_cells(seed, args.rules)
        check_shipped_is_the_recipe(cells, seed, args.rules)
        for name, (frac_bits, shift, rounded) in VARIANTS.items():
            spec = variant_spec(shift, rounded)
            flips[name].append({k: integer_update(cells, k, frac_bits, spec) != w for k, w in cells["want"].items()})
        flips["float64 + tau 1e-4 noise"].append(noise_flips(cells, seed))
        for name, by_kind in flips.items():
            margins[name].append(np.concatenate([cells["margin"][k][f] for k, f in by_kind[-1].items()]))
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    cells_per_kind = args.rules * SIMS * CFG.grid[0] * CFG.grid[1]
    rows = [summarise(name, flips[name], margins[name], cells_per_kind) for name in flips]
    for row in rows:
        spec = VARIANTS.get(row["variant"])
        row["int32_worst_fraction"] = float(int32_headroom(*spec)) if spec else None
    per_seed = {name: [round(1e5 * float(np.mean([f.mean() for f in by_kind.values()])), 1) for by_kind in runs]
                for name, runs in flips.items()}
    json_path = write_report(args.name, rows, {"seeds": list(range(args.seeds)), "rules_per_seed": args.rules,
                                               "sims": SIMS, "burn_in": 10, "disagreements_per_100k_by_seed": per_seed,
                                               "seconds": round(time.perf_counter() - t0, 1)})
    with json_path.with_suffix(".md").open("a") as md:
        md.write(LEGEND.format(seeds_last=args.seeds - 1, rules=args.rules, sims=SIMS, cells=cells_per_kind * 2))


if __name__ == "__main__":
    main()
