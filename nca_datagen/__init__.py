"""nca-datagen: neural-cellular-automata token datasets for pre-pre-training language models.

Heavy optional dependencies (ray, triton, s3fs, plotting) are imported lazily, so `import nca_datagen` is
fast on any machine.
"""

__version__ = "0.1.0"


def build(out, **kwargs):
    """Build an NCA token dataset at `out`: see `nca_datagen.api.build` (imported on first use, so that
    `import nca_datagen` stays fast)."""
    from nca_datagen.api import build as _build

    return _build(out, **kwargs)
