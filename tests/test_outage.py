"""A build whose object store goes away: an outage of a minute is ridden out; a store gone for good stops the
build in about a minute with one message, and the rerun resumes. A real moto S3 server, stopped and restarted on
its port (its buckets live on in this process), and real `nca-datagen build` processes."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CONSOLE = str(Path(sys.executable).with_name("nca-datagen"))
# 60 shards of 20 sequences, ~0.1 s each: the build is still running when the store goes away
ARGS = ["--frames", "27", "--samples-per-shard", "20", "--sims-per-rule", "2", "--tokens", "1.2M", "--val-tokens",
        "0", "--executor", "inline"]


@pytest.fixture
def store(s3_server):
    """(start, stop, endpoint, bucket URL) of a moto server of our own, on a port that outlives its stops."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    servers = []

    def start():
        servers.append(ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False))
        servers[-1].start()

    def stop():
        servers[-1].stop()

    start()
    bucket = f"outage-{port}"  # the servers of this process share their buckets: one of its own
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    yield start, stop, endpoint, f"s3://{bucket}/ds"
    stop()


def _build(endpoint, url):
    return subprocess.Popen([CONSOLE, "build", *ARGS, "--out", url, "--endpoint-url", endpoint],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_shards(endpoint, url, n=2, timeout=60):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fs.invalidate_cache()
        if len(fs.glob(url.removeprefix("s3://") + "/train/shard-*.json")) >= n:
            return
        time.sleep(0.2)
    raise AssertionError("the build wrote no shards")


def _build_then_stop_the_store(store):
    """A build that has written shards when its store goes away: (the build, time.monotonic() at the stop)."""
    _, stop, endpoint, url = store
    build = _build(endpoint, url)
    _wait_for_shards(endpoint, url)
    stop()
    return build, time.monotonic()


@pytest.mark.slow
def test_an_outage_of_a_minute_is_ridden_out(store):
    start, _, endpoint, url = store
    build, _ = _build_then_stop_the_store(store)
    time.sleep(60)
    start()
    output, _ = build.communicate(timeout=300)
    assert build.returncode == 0, output
    assert "is not answering" in output and "answers again" in output
    from click.testing import CliRunner

    from nca_datagen.cli import main

    verified = CliRunner().invoke(main, ["verify", url, "--endpoint-url", endpoint])
    assert verified.exit_code == 0, verified.output


@pytest.mark.slow
def test_a_store_gone_for_good_stops_the_build_in_about_a_minute(store):
    start, _, endpoint, url = store
    build, stopped = _build_then_stop_the_store(store)
    output, _ = build.communicate(timeout=600)
    took = time.monotonic() - stopped
    assert build.returncode == 1, output
    assert took < 100, f"{took:.0f} s after the store went away"
    assert "did not answer for 60 s" in output and "rerun the same command" in output
    assert "Traceback" not in output and [line[:6] for line in output.splitlines()].count("Error:") == 1
    start()
    rerun = subprocess.run([CONSOLE, "build", *ARGS, "--out", url, "--endpoint-url", endpoint], capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "building" in rerun.stderr + rerun.stdout


def test_requests_orphaned_by_a_dropped_connection_print_no_traceback(caplog):
    """When a connection drops, aiohttp leaves tasks whose connection error nobody awaits; asyncio would print
    their tracebacks beside our one-line message. Other loop errors still reach asyncio's handler, and a handler
    the loop already had still gets what we do not drop."""
    import asyncio

    from aiohttp.client_exceptions import ClientConnectionResetError, ServerDisconnectedError

    from nca_datagen import storage

    def orphaned(exc):
        return {"message": "Task exception was never retrieved", "exception": exc}

    fs, _ = storage.filesystem("s3://bucket/ds", {"endpoint_url": "http://127.0.0.1:9"})
    storage.filesystem("s3://bucket/other", {"endpoint_url": "http://127.0.0.1:9"})  # installed once, not nested
    with caplog.at_level("ERROR", logger="asyncio"):
        fs.loop.call_exception_handler(orphaned(ClientConnectionResetError("Cannot write to closing transport")))
        fs.loop.call_exception_handler(orphaned(ServerDisconnectedError()))
        assert not caplog.records
        fs.loop.call_exception_handler(orphaned(RuntimeError("a bug of ours")))
        fs.loop.call_exception_handler({"message": "Exception in callback", "exception": ConnectionError("live")})
    assert [record.exc_info[1].args for record in caplog.records] == [("a bug of ours",), ("live",)]
    seen = []
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: seen.append(context["exception"]))
    storage._quiet_dropped_connections(loop)
    loop.call_exception_handler(orphaned(ConnectionResetError()))
    loop.call_exception_handler(orphaned(KeyError("kept")))
    loop.close()
    assert [type(e) for e in seen] == [KeyError]
