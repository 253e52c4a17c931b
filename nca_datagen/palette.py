"""The fixed colour palette for drawing NCA cell states (up to 16), the same in every picture.

States 0-7 are the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"), chosen so that the eight
colours stay distinguishable under the common colour-vision deficiencies (deuteranopia, protanopia,
tritanopia). The paper's alphabet has 10 states, so states 8 and 9 are white and mid grey: they differ from
every Okabe-Ito colour in lightness, which survives any colour-vision deficiency. States 10-15 come from Paul
Tol's "muted" scheme (indigo, wine, olive, green, rose, pale cyan); they are distinguishable for most viewers
but no 16-colour set is safe for everyone. More than 16 states cannot be drawn with distinct, nameable colours:
`palette(states)` raises instead of cycling colours, which would make two states look the same.

    state  colour           hex
    0      black            #000000
    1      orange           #E69F00
    2      sky blue         #56B4E9
    3      bluish green     #009E73
    4      yellow           #F0E442
    5      blue             #0072B2
    6      vermillion       #D55E00
    7      reddish purple   #CC79A7
    8      white            #FFFFFF
    9      grey             #999999
    10     indigo           #332288
    11     wine             #882255
    12     olive            #999933
    13     green            #117733
    14     rose             #CC6677
    15     pale cyan        #88CCEE
"""

from __future__ import annotations

import numpy as np

PALETTE_HEX = (
    "#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",  # Okabe-Ito
    "#FFFFFF", "#999999",  # lightness-only: safe for every viewer
    "#332288", "#882255", "#999933", "#117733", "#CC6677", "#88CCEE",  # Paul Tol, muted
)
MAX_DRAWABLE_STATES = len(PALETTE_HEX)


def palette(states: int) -> np.ndarray:
    """RGB colours (states, 3) uint8 for states 0..states-1; raises ValueError beyond 16 states."""
    if not 1 <= states <= MAX_DRAWABLE_STATES:
        raise ValueError(
            f"states={states}: pictures draw at most {MAX_DRAWABLE_STATES} states with distinct colours "
            f"(see nca_datagen/palette.py); preview a config with --states {MAX_DRAWABLE_STATES} or fewer")
    rgb = [tuple(int(h[i:i + 2], 16) for i in (1, 3, 5)) for h in PALETTE_HEX[:states]]
    return np.array(rgb, dtype=np.uint8)


def colourise(cells: np.ndarray, states: int) -> np.ndarray:
    """Cell states (..., H, W) -> RGB (..., H, W, 3) uint8."""
    cells = np.asarray(cells)
    if cells.size and int(cells.max()) >= states:
        raise ValueError(f"cell state {int(cells.max())} is outside 0..{states - 1}")
    return palette(states)[cells]
