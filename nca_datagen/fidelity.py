"""How faithful the integer arithmetic is to the paper's float network: the grids to compare the two on.

Both sides take the same float weights (`rules.sample_floats`): `rules.float_logits` runs the reference's
network on them in float64, the quantised tables (`rules.quantise_rules`) run our fixed point, and one step's
argmax is compared cell by cell. Tests (`tests/test_fidelity.py`) and the benchmark (`bench_fidelity.py`)
compare on these grids, so the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np

from nca_datagen.rules import float_logits
from nca_datagen.seeds import trajectory_inputs
from nca_datagen.streams import STREAM_FIDELITY


def fidelity_grids(cfg, seed: int, rule_ids, sims, kernels, burn_in: int = 10) -> dict[str, np.ndarray]:
    """Grids (B, H, W) on which to compare quantised rules with `float_logits`, one per (rule id, sim) pair
    and of each kind: "uniform", every cell i.i.d. uniform over the states; "trajectory", the state of a
    noiseless float-network trajectory `burn_in` steps after that pair's initial state in a dataset (split 0).
    `kernels` are each pair's float kernels, (B, ...) as `float_logits` takes them.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, STREAM_FIDELITY]))
    uniform_BHW = rng.integers(0, cfg.states, (len(kernels[0]), *cfg.grid))
    state_BHW = trajectory_inputs(cfg, seed, 0, rule_ids, sims)[0].astype(np.int64)
    for _ in range(burn_in):
        state_BHW = float_logits(state_BHW, *kernels).argmax(-1)
    return {"uniform": uniform_BHW, "trajectory": state_BHW}
