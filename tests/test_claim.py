"""One writer per dataset location (`nca_datagen.claim`), through real processes: `nca-datagen build` and
`publish` run by their console script, and claimants (`python -c`) that claim when told, each with its own HOME
and XDG_CACHE_HOME, on local folders and a real S3 server (moto) reached as 127.0.0.1 and as localhost."""

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shard_fixtures import make_dataset

from nca_datagen import storage
from nca_datagen.claim import CLAIM, ClaimLost, LocationBusy, claim
from nca_datagen.holders import owner

CONSOLE = str(Path(sys.executable).with_name("nca-datagen"))
SMALL = ["--tokens", "10K", "--samples-per-shard", "10", "--executor", "inline"]  # 2 shards of 10 sequences
HOST = socket.gethostname()

# Claims when it reads `claim [JSON keyword arguments]`, then holds the claim until the next line: `release`,
# `raise` (an exception inside the claim) or `watch` (call check() as a build does between shards, until it fails).
CLAIMANT = r"""
import json, os, sys, time
from nca_datagen import storage
from nca_datagen.claim import ClaimLost, LocationBusy, claim

url, opts = sys.argv[1], json.loads(sys.argv[2]) or None
fs, root = storage.filesystem(url, opts)
fs.exists(root)  # connect before `ready`, so that claimants told together race on the claim itself
print("ready", flush=True)
while line := sys.stdin.readline():
    kwargs = json.loads(line.partition(" ")[2] or "{}")
    try:
        with claim(url, opts, doing="build", command=f"claimant {os.getpid()}", **kwargs) as held:
            print("held", flush=True)
            what = sys.stdin.readline().strip()
            if what == "raise":
                raise RuntimeError("a failure inside the claim")
            start = time.monotonic()
            while what == "watch" and time.monotonic() - start < 20:
                try:
                    held.check()
                except ClaimLost as exc:
                    print(f"lost after {time.monotonic() - start:.1f} s: {exc}", flush=True)
                    break
                time.sleep(0.05)
    except LocationBusy as exc:
        print(f"busy: {exc}", flush=True)
        continue
    except RuntimeError:
        pass
    print("released", flush=True)
"""


def env_of(tmp_path, name: str) -> dict:
    """The environment of another user session: its own HOME and XDG_CACHE_HOME, no fault injection."""
    home = tmp_path / f"home-{name}"
    (home / "cache").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("NCA_DATAGEN_FAIL_SHARDS", "RAY_ADDRESS")}
    return {**env, "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache")}


def readline(stream, timeout: float = 30.0) -> str:
    """One line from a child's stdout, or fail after `timeout` seconds (never hang the test run)."""
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no answer in {timeout} s (so far {line!r})"
        byte = os.read(stream.fileno(), 1)
        assert byte, f"the process ended (so far {line!r})"
        line += byte
    return line.decode().strip()


class Claimant:
    """A `python -c` process (CLAIMANT) claiming `url`."""

    def __init__(self, url, env, opts=None):
        self.proc = subprocess.Popen([sys.executable, "-c", CLAIMANT, str(url), json.dumps(opts or {})], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.pid = self.proc.pid
        assert readline(self.proc.stdout) == "ready"

    def tell(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")

    def answer(self) -> str:
        return readline(self.proc.stdout)

    def claim(self, **kwargs) -> str:
        self.tell(f"claim {json.dumps(kwargs)}")
        return self.answer()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()  # reaped: no zombie left to look alive

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()


@pytest.fixture
def claimants():
    made = []

    def start(url, env, opts=None):
        made.append(Claimant(url, env, opts))
        return made[-1]

    yield start
    for one in made:
        one.close()


def s3_objects(fs, root: str) -> dict[str, str]:
    """{key under root: ETag}, fresh."""
    fs.invalidate_cache()
    return {path[len(root) + 1:]: info["ETag"] for path, info in fs.find(root, detail=True).items()}


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def start_hanging_build(out, env, *flags):
    """A real `nca-datagen build` whose first shard hangs (fault injection), once it has claimed `out`, marked it
    and logged its start: it then writes nothing until it is stopped."""
    proc = subprocess.Popen([CONSOLE, "build", *SMALL, "--out", str(out), *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**env, "NCA_DATAGEN_FAIL_SHARDS": "train:0:hang"})
    while not readline(proc.stderr, timeout=60).startswith("building 2 of 2 shards"):
        pass
    return proc


def stop(proc, signum=signal.SIGINT) -> tuple[int, str]:
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, (out + err).decode()


# -- 1, 2: a second writer with another HOME and another spelling is refused ------------------------------------


def test_a_local_claim_holds_for_other_homes_and_spellings(tmp_path, claimants):
    real = tmp_path / "real"
    out = real / "ds"
    (tmp_path / "link").symlink_to(real)
    holder = claimants(out, env_of(tmp_path, "a"))
    assert holder.claim() == "held"
    claimed = (out / CLAIM).read_bytes()
    for spelling in (f"{out}/", "./real/ds", str(tmp_path / "link" / "ds")):
        started = time.monotonic()
        second = subprocess.run([CONSOLE, "build", *SMALL, "--out", spelling], cwd=tmp_path,
                                env=env_of(tmp_path, "b"), capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, (spelling, second.stdout, second.stderr)
        assert f"is being written by nca-datagen build (pid {holder.pid} on {HOST}" in second.stderr, second.stderr
        assert f"claimant {holder.pid}" in second.stderr and "Traceback" not in second.stderr
        assert time.monotonic() - started < 10  # at once, not after a wait
        assert tree(out) == {CLAIM: claimed}  # the second build wrote nothing
    holder.tell("release")
    assert holder.answer() == "released"
    assert not out.exists()  # the claim made the folder; nothing else was put there


def test_two_local_builds_overlap_and_the_second_is_refused_then_ctrl_c_releases(tmp_path):
    out = tmp_path / "ds"
    first = start_hanging_build(out, env_of(tmp_path, "a"))
    try:
        before = tree(out)
        assert CLAIM in before and "build.json" in before
        second = subprocess.run([CONSOLE, "build", *SMALL, "--out", "ds/"], cwd=tmp_path, env=env_of(tmp_path, "b"),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and f"(pid {first.pid} on {HOST}" in second.stderr, second.stderr
        assert "`nca-datagen build --tokens 10000 --samples-per-shard 10 --out" in second.stderr  # the first's command
        assert tree(out) == before
    finally:
        code, output = stop(first)
    assert code == 128 + signal.SIGINT, output
    assert not (out / CLAIM).exists()


def test_an_s3_claim_holds_for_other_homes_and_endpoint_spellings(tmp_path, s3_server, s3_bucket, claimants):
    url, localhost = f"{s3_bucket}/ds", s3_server.replace("127.0.0.1", "localhost")
    make_dataset(str(tmp_path / "src"), {"train": 1})
    holder = claimants(url, env_of(tmp_path, "a"), {"endpoint_url": s3_server})
    assert holder.claim() == "held"
    fs, root = storage.filesystem(url, {"endpoint_url": s3_server})
    before = s3_objects(fs, root)
    second = subprocess.run([CONSOLE, "publish", str(tmp_path / "src"), f"{url}/", "--endpoint-url", localhost],
                            env=env_of(tmp_path, "b"), capture_output=True, text=True, timeout=60)
    assert second.returncode == 1, second.stdout + second.stderr
    assert f"{url} is being written by nca-datagen build (pid {holder.pid} on {HOST}" in second.stderr
    assert re.search(r"since \S+Z, last heartbeat \d s ago\): `claimant \d+`", second.stderr), second.stderr
    assert s3_objects(fs, root) == before  # the publish wrote nothing
    holder.tell("release")
    assert holder.answer() == "released"
    assert s3_objects(fs, root) == {}


def test_two_s3_builds_overlap_and_the_second_is_refused_then_ctrl_c_releases(tmp_path, s3_server, s3_bucket):
    url, localhost = f"{s3_bucket}/ds", s3_server.replace("127.0.0.1", "localhost")
    fs, root = storage.filesystem(url, {"endpoint_url": s3_server})
    first = start_hanging_build(url, env_of(tmp_path, "a"), "--endpoint-url", s3_server)
    try:
        before = s3_objects(fs, root)
        assert CLAIM in before and "build.json" in before
        second = subprocess.run([CONSOLE, "build", *SMALL, "--out", url, "--endpoint-url", localhost],
                                env=env_of(tmp_path, "b"), capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and f"(pid {first.pid} on {HOST}" in second.stderr, second.stderr
        after = s3_objects(fs, root)
        assert {k: v for k, v in after.items() if k != CLAIM} == {k: v for k, v in before.items() if k != CLAIM}
        assert json.loads(fs.cat_file(f"{root}/{CLAIM}"))["pid"] == first.pid  # still the first build's
    finally:
        code, output = stop(first)
    assert code == 128 + signal.SIGINT, output
    assert CLAIM not in s3_objects(fs, root) and "build.json" in s3_objects(fs, root)  # resumable, unclaimed


# -- 3, 4: crashed and stale claims are taken over, once -------------------------------------------------------


def test_a_killed_holders_local_claim_is_taken_at_once(tmp_path, claimants):
    out = tmp_path / "ds"
    first = claimants(out, env_of(tmp_path, "a"))
    assert first.claim() == "held"
    first.kill()
    assert (out / CLAIM).exists()  # SIGKILL let go of no file, but of the lock
    started = time.monotonic()
    assert claimants(out, env_of(tmp_path, "b")).claim() == "held"
    assert time.monotonic() - started < 5


def test_a_killed_holders_s3_claim_is_taken_at_once_on_its_machine(tmp_path, s3_server, s3_bucket, claimants):
    url, opts = f"{s3_bucket}/ds", {"endpoint_url": s3_server}
    first = claimants(url, env_of(tmp_path, "a"), opts)
    assert first.claim() == "held"
    first.kill()
    second = claimants(url, env_of(tmp_path, "b"), {"endpoint_url": s3_server.replace("127.0.0.1", "localhost")})
    started = time.monotonic()
    assert second.claim() == "held"  # the default 60 s of staleness did not have to pass (rule 1)
    assert time.monotonic() - started < 5


def put_claim(fs, root: str, **fields) -> dict:
    """Put a claim object as a writer elsewhere would (what its holder wrote last)."""
    record = {**owner("build", "nca-datagen build --elsewhere"), **fields}
    fs.pipe_file(f"{root}/{CLAIM}", json.dumps(record).encode())
    return record


def test_an_s3_claim_from_another_machine_is_taken_only_once_stale(tmp_path, s3_server, s3_bucket, claimants):
    url, opts = f"{s3_bucket}/ds", {"endpoint_url": s3_server}
    fs, root = storage.filesystem(url, opts)
    put_claim(fs, root, host="elsewhere", machine="another boot", pid=1)
    taker = claimants(url, env_of(tmp_path, "a"), opts)
    busy = taker.claim(stale_after=30)
    assert busy.startswith("busy: ") and "(pid 1 on elsewhere" in busy and "--elsewhere" in busy
    assert "no heartbeat for 30 s" in busy  # the takeover rule, in the message
    time.sleep(2.2)  # Last-Modified and Date count whole seconds: 2.2 s is an age of 2 s at least
    assert taker.claim(stale_after=1) == "held"
    assert json.loads(fs.cat_file(f"{root}/{CLAIM}"))["pid"] == taker.pid


def test_an_s3_claim_on_this_machine_is_taken_when_its_pid_is_reused(s3_server, s3_bucket):
    """Rule 1 reads the pid's start time: a live pid of another process (reused) is no holder; a live holder is."""
    url, opts = f"{s3_bucket}/ds", {"endpoint_url": s3_server}
    fs, root = storage.filesystem(url, opts)
    put_claim(fs, root)  # this very process, alive
    with pytest.raises(LocationBusy, match=f"pid {os.getpid()} on {HOST}"), claim(url, opts, doing="build"):
        pass
    stale = put_claim(fs, root, pid_start=12345)  # the same pid, another start: the holder has ended
    with claim(url, opts, doing="build") as held:
        assert held.replaced == stale


def test_racing_takers_of_one_stale_s3_claim_exactly_one_wins(tmp_path, s3_server, s3_bucket, claimants):
    url, opts = f"{s3_bucket}/ds", {"endpoint_url": s3_server}
    fs, root = storage.filesystem(url, opts)
    racers = [claimants(url, env_of(tmp_path, str(i)), opts) for i in range(3)]
    put_claim(fs, root, host="elsewhere", machine="another boot")
    time.sleep(2.2)
    for round_ in range(4):  # first the other machine's stale claim (rule 2), then a killed winner's (rule 1)
        for racer in racers:
            racer.tell('claim {"stale_after": 1}' if round_ == 0 else "claim")
        answers = [racer.answer() for racer in racers]
        assert sorted(a.split(":")[0] for a in answers) == ["busy", "busy", "held"], (round_, answers)
        winner = racers[answers.index("held")]
        assert json.loads(fs.cat_file(f"{root}/{CLAIM}"))["pid"] == winner.pid
        winner.kill()
        racers[racers.index(winner)] = claimants(url, env_of(tmp_path, f"r{round_}"), opts)


# -- 5, 6: a lost claim is noticed; a released claim leaves nothing ---------------------------------------------


def test_an_s3_holder_notices_its_claim_taken_within_two_heartbeats(tmp_path, s3_server, s3_bucket, claimants):
    url, opts = f"{s3_bucket}/ds", {"endpoint_url": s3_server}
    fs, root = storage.filesystem(url, opts)
    holder = claimants(url, env_of(tmp_path, "a"), opts)
    assert holder.claim(heartbeat=0.5) == "held"
    usurper = put_claim(fs, root, host="elsewhere", pid=4242)  # as a taker that judged it stale would
    holder.tell("watch")
    lost = holder.answer()
    assert lost.startswith("lost after ") and float(lost.split()[2]) <= 1.5, lost
    assert "was taken over by nca-datagen build (pid 4242 on elsewhere" in lost
    assert holder.answer() == "released"
    assert json.loads(fs.cat_file(f"{root}/{CLAIM}"))["token"] == usurper["token"]  # the holder left it alone


def test_a_local_holder_notices_its_claim_file_replaced(tmp_path, claimants):
    out = tmp_path / "ds"
    holder = claimants(out, env_of(tmp_path, "a"))
    assert holder.claim() == "held"
    (out / CLAIM).unlink()
    (out / CLAIM).write_text("{}")
    holder.tell("watch")
    assert holder.answer().startswith("lost after 0.0 s: ")
    assert holder.answer() == "released"
    assert (out / CLAIM).read_text() == "{}"  # not its file: left alone


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("how", ["release", "raise"])
def test_a_released_claim_leaves_nothing(tmp_path, request, claimants, where, how):
    if where == "s3":
        opts = {"endpoint_url": request.getfixturevalue("s3_server")}
        url = f"{request.getfixturevalue('s3_bucket')}/ds"
        fs, root = storage.filesystem(url, opts)
        left = lambda: s3_objects(fs, root)  # noqa: E731
    else:
        opts, url = None, tmp_path / "ds"
        left = lambda: tree(tmp_path / "ds") if url.exists() else None  # noqa: E731
    holder = claimants(url, env_of(tmp_path, "a"), opts)
    assert holder.claim() == "held" and CLAIM in left()
    holder.tell(how)
    assert holder.answer() == "released"
    assert not left()  # no claim, and locally no folder: the claim had made it


def test_an_in_process_exception_and_a_busy_claim_release_everything(tmp_path):
    out = tmp_path / "new" / "ds"
    with pytest.raises(RuntimeError), claim(out, doing="build"):
        assert (out / CLAIM).exists()
        raise RuntimeError
    assert not (tmp_path / "new").exists()  # both folders the claim made went with it
    with claim(out, doing="build") as held:
        held.check()
        with pytest.raises(LocationBusy), claim(out, doing="build"):
            pass
        held.check()  # the refused claim took nothing away
    assert not (tmp_path / "new").exists()
    with pytest.raises(ClaimLost):
        held.check()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_refused_build_into_a_foreign_folder_leaves_it_as_it_was(tmp_path, request, where):
    if where == "s3":
        server = request.getfixturevalue("s3_server")
        out, flags = f"{request.getfixturevalue('s3_bucket')}/foreign", ["--endpoint-url", server]
        fs, root = storage.filesystem(out, {"endpoint_url": server})
        fs.pipe_file(f"{root}/train/shard-000000.tar", b"someone's")
        snapshot = lambda: s3_objects(fs, root)  # noqa: E731
    else:
        out, flags = tmp_path / "foreign", []
        (out / "train").mkdir(parents=True)
        (out / "train" / "shard-000000.tar").write_text("someone's")
        snapshot = lambda: tree(out)  # noqa: E731
    before = snapshot()
    for command in (["build", *SMALL, "--out", str(out)], ["publish", str(tmp_path / "missing"), str(out)]):
        result = subprocess.run([CONSOLE, *command, *flags], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "holds no nca-datagen dataset" in result.stderr, result.stderr
        assert snapshot() == before


def test_a_refused_publish_leaves_no_claim_and_no_folder(tmp_path):
    result = subprocess.run([CONSOLE, "publish", str(tmp_path / "missing"), str(tmp_path / "new" / "dst")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no dataset at" in result.stderr, result.stderr
    assert not (tmp_path / "new").exists()


def test_a_claim_left_by_a_killed_writer_is_no_part_of_the_dataset(tmp_path):
    """verify does not complain about it, publish does not copy it, and a build resumes beside it."""
    src = tmp_path / "src"
    make_dataset(str(src), {"train": 1})
    (src / CLAIM).write_text(json.dumps(owner("build", "killed")))
    verified = subprocess.run([CONSOLE, "verify", str(src)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    published = subprocess.run([CONSOLE, "publish", str(src), str(tmp_path / "dst")], capture_output=True,
                               text=True, timeout=60)
    assert published.returncode == 0, published.stderr
    assert not (tmp_path / "dst" / CLAIM).exists() and (src / CLAIM).exists()  # not its claim: left in SRC


def test_a_build_whose_claim_is_taken_stops_before_its_manifest(tmp_path):
    """The driver checks its claim between shards and before the manifest: a writer whose local claim file was
    replaced (someone forced their way in) stops with ClaimLost instead of finishing over the other's shards."""
    out = tmp_path / "ds"
    proc = subprocess.Popen([CONSOLE, "build", "--frames", "27", "--samples-per-shard", "20", "--sims-per-rule", "2",
                             "--tokens", "2M", "--val-tokens", "0", "--executor", "inline", "--quiet", "--out",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    claim_file = out / CLAIM
    deadline = time.monotonic() + 60
    while not list(out.glob("train/shard-*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    claim_file.unlink()
    claim_file.write_text('{"owner": "someone else"}')
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "claim" in output.lower(), output
    assert not (out / "manifest.json").exists()
    assert claim_file.read_text() == '{"owner": "someone else"}'  # the new holder's claim is left alone
