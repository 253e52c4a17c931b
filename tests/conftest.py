"""Shared test setup. Tests are CPU-first; GPU tests carry @pytest.mark.gpu and skip without CUDA."""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

# Without a GPU the Triton kernels can only run in the interpreter. Triton reads this when a kernel is
# decorated, so it has to be set before any kernel module is imported.
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
