"""The integer rules update cells as the paper's float network does: one-step argmax agreement >= 99.9%.

Both sides take the same float weights (`sample_floats`): `float_logits` runs the reference's network on them in
float64, the torch reference (`kernels.reference`, the definition every backend equals bit for bit) runs their
quantised tables. Cells: 200 rules x 2 sims, each on a uniform grid and on a trajectory grid 10 float steps
after its initial state (`fidelity_grids`), 800 grids x 144 = 115,200 cells, seed 0 of
benchmarks/results/fidelity.md (the exploration behind the arithmetic: 16 seeds, the variants tried). Run with
`-s` to see the numbers. The previous arithmetic (12 bits in every layer, hidden activations floored) scores
99.87% on the same cells, below the target, so the threshold tells the two apart.
"""

import dataclasses

import numpy as np
import pytest
import torch

from nca_datagen.config import NCAConfig
from nca_datagen.fidelity import fidelity_grids
from nca_datagen.kernels.common import RolloutSpec, layer_frac_bits
from nca_datagen.kernels.reference import rollout_reference
from nca_datagen.rules import float_logits, quantise_rules, sample_floats

TARGET = 0.999  # issue 18: >= 99.9% one-step agreement with the float network on the same weights
CFG = NCAConfig(temperature=0.0, burn_in=1, frames=1)  # one noiseless step: the float side is a plain argmax
RULES, SIMS, SEED = 200, 2, 0


@pytest.fixture(scope="module")
def cells():
    """Float kernels per rule, each grid's rule index, the grids by kind and the float network's updates."""
    rule_ids = np.repeat(np.arange(RULES), SIMS)
    floats = sample_floats(CFG, SEED, 0, np.arange(RULES))
    kernels = [k[rule_ids] for k in floats]
    grids = fidelity_grids(CFG, SEED, rule_ids, np.tile(np.arange(SIMS), RULES), kernels)
    want = {kind: float_logits(g, *kernels).argmax(-1) for kind, g in grids.items()}
    return floats, rule_ids, grids, want


def integer_update(floats, rule_ids, grids_BHW, frac_bits, spec: RolloutSpec) -> np.ndarray:
    """One noiseless integer step of every grid with the rules quantised to `frac_bits`, under `spec`."""
    tables = quantise_rules(*floats, frac_bits)
    tabs = [torch.from_numpy(t) for t in (tables.w1_RKSC, tables.w2_RCJ, tables.w3_RJS)]
    b = len(grids_BHW)
    frames = rollout_reference(*tabs, torch.from_numpy(rule_ids), torch.from_numpy(grids_BHW),
                               torch.zeros(b, dtype=torch.int64), spec)  # noise keys: unused at tau = 0
    return frames[:, 0].numpy()


def agreement(cells, frac_bits, spec) -> dict[str, float]:
    floats, rule_ids, grids, want = cells
    same = {kind: integer_update(floats, rule_ids, grids[kind], frac_bits, spec) == want[kind] for kind in grids}
    return {"all": float(np.mean([s.mean() for s in same.values()])), **{k: float(s.mean()) for k, s in same.items()}}


def test_cells_are_enough_and_of_both_kinds(cells):
    _, _, grids, want = cells
    assert sum(w.size for w in want.values()) >= 100_000
    assert set(grids) == {"uniform", "trajectory"}
    # trajectory grids are live dynamics: over the paper's random rules ~57% of cells change per step
    # (paper-facts.md §3, the band shares times each band's rate); measured 0.59 here
    changed = (want["trajectory"] != grids["trajectory"]).mean()
    assert 0.45 < changed < 0.7, changed


def test_one_step_agreement_with_the_float_network(cells):
    spec = RolloutSpec.from_config(CFG)
    got = agreement(cells, layer_frac_bits(CFG.weight_frac_bits), spec)
    cells_n = sum(w.size for w in cells[3].values())
    print(f"\none-step agreement with the float64 network over {cells_n:,} cells: "
          + ", ".join(f"{k} {100 * v:.4f}%" for k, v in got.items()))
    assert got["all"] >= TARGET, got


def test_the_previous_arithmetic_falls_short(cells):
    """12 fractional bits in every layer and floored hidden activations (recipe version 1): below the target."""
    spec = dataclasses.replace(RolloutSpec.from_config(CFG), hidden_round=0)
    got = agreement(cells, (12, 12, 12), spec)
    print("\nprevious arithmetic: " + ", ".join(f"{k} {100 * v:.4f}%" for k, v in got.items()))
    assert got["all"] < TARGET, got
