"""Who holds a claim (`claim.py`): the record a claim stores, the line that names its holder to a second writer, and
whether the holder's process still runs on this machine.

- A record names its writer for people (host, pid, user, start time, command) and for takeovers: `machine` (boot
  and pid namespace) says whether its pid means anything here, `pid_start` tells a reused pid from the holder,
  `token` tells this holder's own writes from anyone else's.
- Records are read from files anyone may write: `parse` gives {} for anything not a JSON object.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid


def owner(doing: str, command: str) -> dict:
    """Who holds a claim: enough to name it to a second writer and to tell whether its process still runs."""
    pid = os.getpid()
    return {"tool": "nca-datagen", "doing": doing, "command": command, "host": socket.gethostname(),
            "machine": machine(), "pid": pid, "pid_start": (process_state(pid) or (None, None))[1], "user": user(),
            "started": now(), "heartbeat": now(), "token": uuid.uuid4().hex}


def describe(holder: dict, age: float | None = None) -> str:
    """The holder of a claim for messages; `age`: seconds since its last heartbeat (S3)."""
    if not holder.get("pid"):
        return "another writer (starting: its claim does not name it yet)"
    beat = f", last heartbeat {age:.0f} s ago" if age is not None else ""
    command = f": `{holder['command']}`" if holder.get("command") else ""
    return (f"nca-datagen {holder.get('doing', '?')} (pid {holder['pid']} on {holder.get('host', '?')}, user "
            f"{holder.get('user', '?')}, since {holder.get('started', '?')}{beat}){command}")


def gone(pid, start) -> bool:
    """Whether process `pid` of this machine has ended: no such process, a zombie, or that pid now another
    process's (a start time other than the claim's `start`)."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: it runs
        pass
    now = process_state(pid)
    return now is not None and (now[0] == "Z" or (start is not None and now[1] != start))


def process_state(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks after boot) of a process, from /proc/PID/stat (fields 3 and 22); None
    where that is unreadable (no such process, not Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])


def machine() -> str:
    """This machine's boot and pid namespace: with the host name, what makes a claim's pid one to look up here
    (containers may share a host name, and pids mean nothing across pid namespaces). '' without /proc."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{f.read().strip()} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a name (containers)
        return str(os.getuid())


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def record_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def parse(data: bytes) -> dict:
    """A claim's owner record; {} for one not yet written or not ours."""
    try:
        record = json.loads(data)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}
