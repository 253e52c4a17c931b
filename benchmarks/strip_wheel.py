"""Drop files a run does not need from a wheel, keeping it an installable wheel.

    python benchmarks/strip_wheel.py WHEEL [--drop GLOB ...] [-o OUT]

Used by `benchmarks/gpu_wheels.sh` to fit Ray's wheel under the device tool's 64 MiB carry limit: ray 2.60's
cp312 wheel is 79 MB, 31 MB of which is `ray/jars/ray_dist.jar` (Java workers only) and ~1.5 MB dashboard
source maps (`*.js.map`). The defaults drop exactly those. Every kept entry is copied with its ZipInfo
(name, date, `external_attr` = unix mode, so `raylet` and `gcs_server` stay executable after `pip install`)
and the same compression method; the top-level `*.dist-info/RECORD` is rewritten without the dropped paths.
Nested `*.dist-info` folders (Ray vendors some packages) are data to pip and are kept as they are.
Writes WHEEL in place (atomically) unless -o is given; stripping an already stripped wheel is a no-op.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_DROP = ("ray/jars/*", "*.js.map")


def record_name(names: list[str]) -> str:
    """The wheel's own RECORD: `NAME-VERSION.dist-info/RECORD` at the top level."""
    records = [n for n in names if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        raise ValueError(f"expected one top-level *.dist-info/RECORD, found {records}")
    return records[0]


def strip_record(text: str, dropped: set[str]) -> str:
    rows = [row for row in csv.reader(io.StringIO(text)) if row and row[0] not in dropped]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def strip_wheel(src: Path, dst: Path, drop: tuple[str, ...] = DEFAULT_DROP) -> dict:
    """Copy `src` to `dst` without the entries matching any glob of `drop`; return what changed."""
    with zipfile.ZipFile(src) as zin:
        infos = zin.infolist()
        names = [i.filename for i in infos]
        record = record_name(names)
        dropped = {n for n in names if n != record and any(fnmatch.fnmatch(n, g) for g in drop)}
        dropped_bytes = sum(i.compress_size for i in infos if i.filename in dropped)
        tmp = Path(tempfile.mkstemp(prefix=dst.name + ".", suffix=".tmp", dir=dst.parent)[1])
        try:
            with zipfile.ZipFile(tmp, "w") as zout:
                for info in infos:
                    if info.filename in dropped:
                        continue
                    new = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                    new.external_attr = info.external_attr  # unix mode bits (executables stay executable)
                    new.create_system = info.create_system
                    new.compress_type = info.compress_type
                    new.comment = info.comment
                    if info.filename == record:
                        zout.writestr(new, strip_record(zin.read(info).decode("utf-8"), dropped))
                    elif info.is_dir():
                        zout.writestr(new, b"")
                    else:
                        new.file_size = info.file_size  # lets zipfile pick zip64 headers up front when needed
                        with zin.open(info) as fin, zout.open(new, "w") as fout:
                            shutil.copyfileobj(fin, fout, 1 << 20)
            os.chmod(tmp, 0o644)  # mkstemp made it 0600
            os.replace(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    unmatched = [g for g in drop if not any(fnmatch.fnmatch(n, g) for n in dropped)]
    return {"wheel": dst.name, "dropped_files": len(dropped), "dropped_compressed_bytes": dropped_bytes,
            "bytes_before": src.stat().st_size if src != dst else None, "bytes_after": dst.stat().st_size,
            "unmatched_globs": unmatched}


def check_wheel(path: Path) -> None:
    """RECORD lists exactly the wheel's files (RECORD itself included); the zip's CRCs are intact."""
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
        if bad:
            raise ValueError(f"{path.name}: corrupt entry {bad}")
        names = [i.filename for i in z.infolist() if not i.is_dir()]
        record = record_name(names)
        listed = {row[0] for row in csv.reader(io.StringIO(z.read(record).decode("utf-8"))) if row}
    missing, extra = set(names) - listed, listed - set(names)
    if missing or extra:
        raise ValueError(f"{path.name}: RECORD mismatch: unlisted {sorted(missing)[:5]}, absent {sorted(extra)[:5]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--drop", action="append", metavar="GLOB", help=f"entry glob to drop (default: {DEFAULT_DROP})")
    ap.add_argument("-o", "--out", type=Path, help="output wheel (default: rewrite WHEEL in place)")
    args = ap.parse_args(argv)
    before = args.wheel.stat().st_size
    result = strip_wheel(args.wheel, args.out or args.wheel, tuple(args.drop or DEFAULT_DROP))
    result["bytes_before"] = before
    check_wheel(args.out or args.wheel)
    print(f"{result['wheel']}: dropped {result['dropped_files']} files, {before / 2**20:.1f} -> "
          f"{result['bytes_after'] / 2**20:.1f} MiB")
    if result["unmatched_globs"]:
        print(f"  (nothing matched {result['unmatched_globs']}: already stripped, or the wheel's layout changed)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
