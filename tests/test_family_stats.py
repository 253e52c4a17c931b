"""The rule family is the paper's: band shares of random rules match paper-facts.md §3.

Reference (4000 random rules of the authors' code): (0,.1) 13.9%, (.1,.2) 6.0%, (.2,.3) 7.0%, (.3,.4) 8.0%,
(.4,.5) 19.2%, (.5,1) 45.7%; median ratio 0.483. We allow +-3 percentage points and +-0.02 on the median;
with 2000 rules the binomial standard error of a share is at most 1.1 points.
"""

import numpy as np
import pytest

from nca_datagen.config import DatasetConfig
from nca_datagen.generate import probe_ratios

PAPER_SHARES = {(0.0, 0.1): 13.9, (0.1, 0.2): 6.0, (0.2, 0.3): 7.0, (0.3, 0.4): 8.0, (0.4, 0.5): 19.2, (0.5, 1.0): 45.7}


@pytest.mark.slow
def test_band_shares_and_median_match_the_paper():
    ratios = probe_ratios(DatasetConfig(seed=2026), "train", np.arange(2000))
    shares = {band: 100 * float(((ratios > band[0]) & (ratios < band[1])).mean()) for band in PAPER_SHARES}
    report = {f"{lo}-{hi}": (round(shares[(lo, hi)], 1), want) for (lo, hi), want in PAPER_SHARES.items()}
    for band, want in PAPER_SHARES.items():
        assert abs(shares[band] - want) <= 3.0, report
    assert abs(np.median(ratios) - 0.483) <= 0.02, np.median(ratios)
    assert ratios.max() < 0.67  # nothing beats uniform random tokens
