"""Fault injection for tests and drills: make chosen shards fail or hang, without mocking Ray or storage.

`NCA_DATAGEN_FAIL_SHARDS` is a comma-separated list of `split:index[:mode]`; `NCA_DATAGEN_FAULT_DIR` holds the
markers of `once` faults (default: the temporary folder). Modes:

| mode | the shard |
|---|---|
| `always` (default) | raises every time |
| `once` | raises on its first attempt only (a marker file makes that hold across processes and nodes) |
| `hang` | sleeps for an hour before it is generated: a build to interrupt part-way |
| `hang-written` | is written with its record, then sleeps: a worker stopped before the driver hears of it |

Nothing here runs in a normal build: the executors wrap their shard functions with `injecting` only when the
driver's environment sets the variable, and ship the spec with the wrapper, so workers on other nodes see it too.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import time

FAULTS_ENV = "NCA_DATAGEN_FAIL_SHARDS"
FAULT_DIR_ENV = "NCA_DATAGEN_FAULT_DIR"
MODES = ("always", "once", "hang", "hang-written")


class InjectedFault(RuntimeError):
    """Raised by an injected fault (never in normal runs)."""


def parse_faults(spec: str) -> dict[tuple[str, int], str]:
    """'train:3,val:0:once' -> {('train', 3): 'always', ('val', 0): 'once'}."""
    faults = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        parts = item.split(":")
        mode = parts[2] if len(parts) == 3 else "always"
        if len(parts) not in (2, 3) or not parts[1].isdigit() or mode not in MODES:
            raise ValueError(f"{FAULTS_ENV}={spec!r}: expected split:index[:{'|'.join(MODES)}], e.g. train:3:once")
        faults[(parts[0], int(parts[1]))] = mode
    return faults


def wrap(fn, shard_of=lambda *args: args[1:3], written: bool = False):
    """`fn` itself, or, when the environment asks for faults, `fn` with them injected. `shard_of` picks
    (split, index) out of `fn`'s arguments; `written`: `fn` writes the shard (only `hang-written` acts after it)."""
    spec = os.environ.get(FAULTS_ENV, "")
    if not spec:
        return fn
    parse_faults(spec)  # a malformed spec fails in the driver, before any worker starts
    fault_dir = os.environ.get(FAULT_DIR_ENV) or tempfile.gettempdir()

    @functools.wraps(fn)  # a plain function (Ray's remote wants one), carrying the spec to any node
    def injecting(*args):
        split, index = shard_of(*args)
        mode = parse_faults(spec).get((split, index))
        if mode is not None and mode != "hang-written":
            _before(mode, split, index, fault_dir, args)
        result = fn(*args)
        if mode == "hang-written" and written:
            time.sleep(3600)
        return result

    return injecting


def _before(mode: str, split: str, index: int, fault_dir: str, args) -> None:
    if mode == "hang":
        time.sleep(3600)
    if mode == "once":
        key = hashlib.sha256(f"{getattr(args[0], 'out_url', '')}|{split}|{index}".encode()).hexdigest()[:16]
        marker = os.path.join(fault_dir, f"nca-datagen-fault-{key}")
        if os.path.exists(marker):
            return
        with open(marker, "w") as f:
            f.write(f"{split}:{index} failed once\n")
    raise InjectedFault(f"injected fault ({FAULTS_ENV}) in {split} shard {index}")
