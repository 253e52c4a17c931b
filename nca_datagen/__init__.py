"""nca-datagen: neural-cellular-automata token datasets for pre-pre-training language models.

Heavy optional dependencies (ray, triton, s3fs, plotting) are imported lazily, so `import nca_datagen` is
fast on any machine.
"""

__version__ = "0.1.0"
