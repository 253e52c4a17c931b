"""Claims: one writer per dataset location, the claim kept in the output itself.

`build` and `publish` hold a claim on their output while they write it (`with claim(url, ...)`). A second writer
fails at once with `LocationBusy`, naming the holder (host, pid, user, start time, command, last heartbeat),
whatever its machine, user, HOME, or spelling of the path or endpoint: the claim is the file `CLAIM` at the
output's root, so every writer of that output meets it there. Its holder removes it when it lets go (a normal
end, an exception, Ctrl-C); the name is hidden, readers never glob it, and `manifest` counts it as ours.

- Local folders: CLAIM is a lock file held with `flock`. The kernel drops the lock when its holder ends, even on
  SIGKILL, so a crashed writer's claim is taken over at once, and safely. On a shared filesystem whose locks
  reach the server (NFSv4; Linux turns flock into NFS byte-range locks) that holds across machines too; where
  locks stay local (NFSv3 mounted `nolock`, some FUSE filesystems) writers on other machines are not seen.
- S3: CLAIM is an object created only if absent (a conditional PUT, If-None-Match: *) and refreshed every
  HEARTBEAT_S by a compare-and-swap (If-Match: its last ETag). A claim is taken over when
  1. its holder ran on this machine (same host name, boot and pid namespace) and that process is gone (no such
     pid, a zombie, or a pid reused by a process with another start time): at once;
  2. otherwise, when its last heartbeat is older than STALE_S by the store's clock (the object's Last-Modified
     against the Date of the response that read it; this machine's clock only if a store sends no Date), so
     clocks of different machines never meet.
  The takeover is itself a compare-and-swap on the ETag the claim was judged by: of two takers exactly one wins.
  A holder whose refresh finds another writer's claim has lost it: `check()` raises `ClaimLost` (writers call it
  between shards). A refresh the store does not answer is no loss; the next one tries again.
- gs://, az:// and memory://: CLAIM is an object created only if absent (fsspec's `mode="create"`: GCS's
  ifGenerationMatch=0, which gcsfs calls experimental; Azure's If-None-Match: *; for memory://, which lives in
  one process, a lock of this process), so a second writer is refused from any machine. There is no heartbeat,
  hence no takeover: a claim its holder could not remove (killed, or the store gone as it ended) stays until
  removed by hand, as the refusal says.
- hf://: no claim. `publish` writes a Hub repo in one commit whose parent is the revision it checked, and the Hub
  refuses that commit when another landed meanwhile (`pipelines/hub.py`); nothing else writes there.
- Other fsspec stores: refused, as no atomic create-if-absent is known for them.

The trade-off on S3: a lease, not a kernel lock. A holder silent for STALE_S (suspended, cut off from the store)
can be taken over while it still runs; it learns so at its next heartbeat and `check()`, but writes already in
flight may land. STALE_S is six heartbeats, so that takes a minute of silence. A holder that cannot reach the
store when it lets go leaves its claim behind, to be taken over by rule 1 or 2.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import time
from email.utils import parsedate_to_datetime

from nca_datagen import holders, storage
from nca_datagen.errors import ClaimLost, LocationBusy, StorageError

CLAIM = ".nca-datagen-claim.json"  # at the output's root; hidden, so readers that glob the folder skip it
HEARTBEAT_S = 10.0  # how often an S3 holder refreshes its claim
STALE_S = 60.0  # an S3 claim this long without a heartbeat (six missed ones) is taken over
_RACED = ("PreconditionFailed", "ConditionalRequestConflict")  # S3's 412, and the 409 of a write racing a delete
CLAIM_KINDS = {"file": "lock", "s3": "lease", "gs": "create", "az": "create", "memory": "create"}
MAX_CLAIM_BYTES = 1 << 16  # a claim record is a few hundred bytes: one larger is not ours to parse
CHECK_EVERY_S = HEARTBEAT_S  # how often a created claim's holder reads it back (only a hand can remove it)
_CREATING = threading.Lock()  # memory:// creates atomically only under it (its writers all live in this process)


@contextlib.contextmanager
def claim(url: str, storage_options: dict | None = None, *, doing: str, command: str = "",
          heartbeat: float = HEARTBEAT_S, stale_after: float = STALE_S):
    """Hold the claim on the dataset location `url` while `doing` ("build", "publish") writes it with `command`
    (the command line, to name it to other writers). Yields the claim: `check()` raises `ClaimLost` once it is no
    longer this writer's. Raises `LocationBusy`, or ValueError when the location cannot be written."""
    fs, root = storage.filesystem(url, storage_options)
    owner = holders.owner(doing, command)
    kind = claim_kind(fs, root)
    if kind == "lock":
        held = _LocalClaim(root, owner)
    elif kind == "lease":
        held = _S3Claim(fs, root, owner, heartbeat, stale_after)
    else:
        held = _CreatedClaim(fs, root, owner)
    try:
        try:
            held.acquire()
        except storage.errors() as exc:
            raise StorageError(f"cannot write to {storage.url_of(fs, root)} ({type(exc).__name__}: {exc}); check "
                               f"{storage.access_hint(fs)}") from exc
        yield held
    finally:
        held.release()


def claim_kind(fs, root: str) -> str:
    """How a writer claims `root` on `fs` (module docstring): "lock", "lease" or "create". StorageError for a
    store no writer may claim, so nothing writes there but `publish` to hf://."""
    scheme = storage.scheme(fs)
    if scheme in CLAIM_KINDS:
        return CLAIM_KINDS[scheme]
    where = storage.url_of(fs, root)
    if scheme == "hf":
        raise StorageError(f"{where}: a Hugging Face repo is written by `publish` alone, in one commit: build to a "
                           f"local folder, then `nca-datagen publish FOLDER {where}`")
    raise StorageError(f"{where}: no claim for {scheme}:// outputs (no atomic create-if-absent is known there, so "
                       f"nothing would keep a second writer out); write to a local folder, s3://, gs://, az:// or "
                       f"memory://")


# -- local folders ---------------------------------------------------------------------------------------------


class _LocalClaim:
    """CLAIM as a lock file: flock'ed, then the owner written into it."""

    def __init__(self, root: str, owner: dict):
        self.where, self.path, self.owner = root, os.path.join(root, CLAIM), owner
        self.fd: int | None = None
        self.made: list[str] = []  # the folders this claim created, deepest first

    def acquire(self) -> None:
        import fcntl

        while True:
            self.made = _make_folders(self.where) or self.made
            try:
                fd, writable = _open_claim(self.path)
            except FileNotFoundError:  # a holder letting go removed the folder it had made: make it again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:  # BlockingIOError: held; others: no locks here (an NFS mount without them)
                holder = holders.parse(os.pread(fd, MAX_CLAIM_BYTES, 0)) if isinstance(exc, BlockingIOError) else None
                os.close(fd)
                if holder is None:
                    raise
                raise LocationBusy(_busy(self.where, holder, "a lock the kernel drops when its holder ends, even "
                                                             "killed")) from None
            if _names(fd, self.path) and writable:
                break
            try:
                if _names(fd, self.path):  # another user's file, left unlocked by its ended holder: ours to replace
                    os.unlink(self.path)
            finally:
                os.close(fd)  # (or its holder removed it as we opened it): lock the file there now
        self.fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, holders.record_bytes(self.owner), 0)

    def check(self) -> None:
        if not _names(self.fd, self.path):
            raise ClaimLost(f"{self.path} was removed or replaced while this {self.owner['doing']} held it: another "
                            f"writer may be writing {self.where} now; stop it, then rerun")

    def release(self) -> None:
        if self.fd is not None:
            try:
                if _names(self.fd, self.path):
                    os.unlink(self.path)  # while still locked: a writer that opened it sees it gone and retries
            finally:
                os.close(self.fd)
                self.fd = None
        for folder in self.made:  # folders made for the claim alone go with it; a used one stays
            try:
                os.rmdir(folder)
            except OSError:
                break


def _make_folders(folder: str) -> list[str]:
    """Create `folder` and its missing parents; the ones created, deepest first."""
    missing = []
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    if missing:
        os.makedirs(missing[0], exist_ok=True)
    return missing


def _open_claim(path: str) -> tuple[int, bool]:
    """(a descriptor of the claim file, created if absent, whether it is writable): another user's claim file
    may be only readable, which is enough to lock it and to read its holder."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644), True
    except PermissionError as exc:
        try:
            return os.open(path, os.O_RDONLY), False
        except FileNotFoundError:  # none there, and the folder is not ours to write
            raise exc from None


def _names(fd: int | None, path: str) -> bool:
    """Whether `path` is still the file open as `fd` (not removed, or removed and created anew)."""
    try:
        here, held = os.stat(path), os.fstat(fd)
    except (OSError, TypeError):
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


# -- S3 --------------------------------------------------------------------------------------------------------


class _S3Claim:
    """CLAIM as an object, created only if absent, refreshed by compare-and-swap from a daemon thread."""

    def __init__(self, fs, root: str, owner: dict, heartbeat: float, stale_after: float):
        self.fs, self.where, self.path, self.owner = fs, storage.url_of(fs, root), storage.join(root, CLAIM), owner
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self.etag: str | None = None  # of the object as this holder last wrote it
        self.lost: str | None = None  # why the claim is no longer ours, once it is not
        self.replaced: dict | None = None  # the holder of a claim this one took over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        for _ in range(3):  # a claim released or taken over while we read it: look again
            if self._put(IfNoneMatch="*"):  # what s3fs's mode="create" sends, on s3fs releases without it too
                break
            current = self._read()
            if current is None:
                continue
            if current["record"].get("token") == self.owner["token"]:  # our own write, its answer lost
                self.etag = current["etag"]
                break
            if not self._takeover_due(current):
                raise LocationBusy(_busy(self.where, current["record"], self._rule(), current["age"]))
            if self._put(IfMatch=current["etag"]):
                self.replaced = current["record"]
                break
        else:
            raise LocationBusy(f"{self.where}: its claim changed hands three times while this {self.owner['doing']} "
                               f"tried to take it; another writer is starting there, rerun to see which")
        self._thread = threading.Thread(target=self._beat, name="nca-datagen-claim", daemon=True)
        self._thread.start()

    def check(self) -> None:
        if self.lost:
            raise ClaimLost(f"{self.where}: the claim of this {self.owner['doing']} {self.lost}; another writer may "
                            f"be writing there now, so this one stops. Rerun once that one has ended")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)  # one refresh in flight at most
        if self.etag is None or self.lost:
            return
        with contextlib.suppress(*storage.errors()):  # unreachable now: the claim is taken over later (rules)
            current = self._read()
            if current is not None and current["record"].get("token") == self.owner["token"]:
                self.fs.rm_file(self.path)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            self.owner.update(heartbeat=holders.now(), beats=self.owner.get("beats", 0) + 1)  # a new ETag every time
            try:
                if self._put(IfMatch=self.etag) or self._still_ours():
                    continue
            except FileNotFoundError:  # If-Match on a deleted object
                pass
            except storage.errors():  # the store did not answer: try again at the next beat
                continue
            self.lost = self._lost_to()
            return

    def _put(self, **condition) -> bool:
        """Write the owner under `condition` (If-None-Match or If-Match); False when the condition failed."""
        try:
            out = self.fs.pipe_file(self.path, holders.record_bytes(self.owner), **condition)
        except OSError as exc:
            if _error_code(exc) in _RACED:
                return False
            raise
        self.etag = out["ETag"]
        return True

    def _still_ours(self) -> bool:
        """After a failed refresh: whether the object is still this holder's (a refresh that landed but whose
        answer was lost, so the ETag we sent was out of date), taking its ETag if so."""
        current = self._read()
        if current is None or current["record"].get("token") != self.owner["token"]:
            return False
        self.etag = current["etag"]
        return True

    def _lost_to(self) -> str:
        """How the claim was lost, for `check()`'s message."""
        try:
            current = self._read()
        except storage.errors():
            return "was taken over"
        return "was deleted" if current is None else f"was taken over by {holders.describe(current['record'])}"

    def _read(self) -> dict | None:
        """The claim as stored: {"record", "etag", "age"} (seconds since its last write by the store's clock);
        None when there is none."""
        from fsspec.asyn import sync

        try:
            response, body = sync(self.fs.loop, _get_object, self.fs, self.path)
        except FileNotFoundError:
            return None
        date = response["ResponseMetadata"]["HTTPHeaders"].get("date")
        now = parsedate_to_datetime(date) if date else dt.datetime.now(dt.timezone.utc)
        return {"record": holders.parse(body), "etag": response["ETag"],
                "age": (now - response["LastModified"]).total_seconds()}

    def _takeover_due(self, current: dict) -> bool:
        """The takeover rule (module docstring): the holder's process is gone from this machine, or the claim
        has had no heartbeat for `stale_after` seconds."""
        holder = current["record"]
        ours = (holder.get("host"), holder.get("machine")) == (self.owner["host"], self.owner["machine"])
        return (ours and holders.gone(holder.get("pid"), holder.get("pid_start"))) or current["age"] > self.stale_after

    def _rule(self) -> str:
        return (f"taken over at once from its own machine once its process has ended, from anywhere once it has "
                f"had no heartbeat for {self.stale_after:g} s")


async def _get_object(fs, path: str):
    """(get_object's response, its body): the claim, its ETag and the store's Last-Modified and Date at once."""
    bucket, key, _ = fs.split_path(path)
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    try:
        return response, await response["Body"].read()
    finally:
        response["Body"].close()


def _error_code(exc: BaseException) -> str | None:
    """S3's error code behind a storage error: s3fs turns botocore's ClientError into an OSError (a
    FileExistsError for a failed If-None-Match) and keeps it as the cause."""
    response = getattr(exc.__cause__, "response", None) or getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code")


# -- objects created only if absent (gs://, az://, memory://) ------------------------------------------------


class _CreatedClaim:
    """CLAIM as an object created only if absent; no heartbeat and no takeover (module docstring)."""

    def __init__(self, fs, root: str, owner: dict):
        self.fs, self.where, self.path, self.owner = fs, storage.url_of(fs, root), storage.join(root, CLAIM), owner
        self.held, self.checked = False, time.monotonic()

    def acquire(self) -> None:
        try:
            with _CREATING:
                self.fs.pipe_file(self.path, holders.record_bytes(self.owner), mode="create")
        except FileExistsError:
            holder = self._read()
            rule = (f"created only if absent and never taken over: if that writer has ended, delete "
                    f"{storage.url_of(self.fs, self.path)} and rerun")
            raise LocationBusy(_busy(self.where, holder or {}, rule)) from None
        self.held = True

    def check(self) -> None:
        if time.monotonic() - self.checked < CHECK_EVERY_S:
            return
        self.checked = time.monotonic()
        if (self._read() or {}).get("token") != self.owner["token"]:
            raise ClaimLost(f"{storage.url_of(self.fs, self.path)} was removed or replaced while this "
                            f"{self.owner['doing']} held it: another writer may be writing {self.where} now; "
                            f"stop it, then rerun")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with contextlib.suppress(*storage.errors()):  # unreachable now: the claim stays, and says whose it is
            if (self._read() or {}).get("token") == self.owner["token"]:
                self.fs.rm_file(self.path)

    def _read(self) -> dict | None:
        try:
            return holders.parse(storage.read_bytes(self.fs, self.path, MAX_CLAIM_BYTES))
        except FileNotFoundError:
            return None


def _busy(where: str, holder: dict, rule: str, age: float | None = None) -> str:
    return (f"{where} is being written by {holders.describe(holder, age)}. Wait for it to end, or stop it, then rerun "
            f"(its claim, {CLAIM} there, is {rule})")
