"""Shared test setup. Tests are CPU-first; GPU tests carry @pytest.mark.gpu and skip without CUDA."""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

# Without a GPU the Triton kernels can only run in the interpreter. Triton reads this when a kernel is
# decorated, so it has to be set before any kernel module is imported.
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The loader caches remote shards under ~/.cache/nca-datagen/shards by default; tests that read s3:// should not fill
# this machine's cache, so it is off unless a test turns it on (tests/test_cache.py, with its own folder).
os.environ.setdefault("NCA_DATAGEN_CACHE_BYTES", "0")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint for tests: moto's HTTP server on 127.0.0.1, a free port, dummy credentials in the env.

    Yields the endpoint URL. The environment gets credentials and a region only; tests choose how the endpoint
    reaches the code (`monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)` or `--endpoint-url`). Use `s3_bucket`
    for a fresh, empty bucket per test.
    """
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
                            "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the `s3_server`; returns its s3:// URL (no trailing slash)."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"
