"""matplotlib for files only: the Agg backend, with a config folder that can be written.

One place for the set-up every figure of nca-datagen needs (the dataset card, `inspect`, the trainer's curves),
in a module the trainer may import: it touches no generator code, only matplotlib and the cache folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from nca_datagen.storage import cache_folder


def matplotlib_agg():
    """matplotlib with its Agg backend (files only, no display). Its config and font-cache folder defaults to
    ~/.config/matplotlib; where that cannot be written (a read-only HOME) matplotlib warns twice in the user's
    output and makes a throwaway one each run, so it then gets nca-datagen's cache folder (MPLCONFIGDIR)."""
    if "MPLCONFIGDIR" not in os.environ:
        default = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "matplotlib"
        try:
            default.mkdir(parents=True, exist_ok=True)
            writable = os.access(default, os.W_OK)
        except OSError:
            writable = False
        if not writable:
            os.environ["MPLCONFIGDIR"] = str(cache_folder("matplotlib"))
    import matplotlib

    matplotlib.use("Agg", force=False)
    return matplotlib
