"""Shared benchmark output: every benchmark writes `results/NAME.json` and a markdown table `results/NAME.md`.

Rows are flat dicts; the JSON also records the machine (CPU count, GPU, library versions) so numbers quoted
later can be traced to the run that measured them. Quote ratios from one run: these machines are shared.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import numpy
    import torch

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def write_report(name: str, rows: list[dict], meta: dict | None = None, out_dir: Path | None = None) -> Path:
    """Write NAME.json (rows + machine + meta) and NAME.md; print the table; return the JSON path."""
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "machine": machine(), "meta": meta or {}, "rows": rows}
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    table = markdown_table(rows)
    header = f"# {name}\n\nMachine: {record['machine']}\n\n"
    (out_dir / f"{name}.md").write_text(header + table)
    print(table)
    return json_path


def device_steps(tsv: str | Path) -> dict:
    """{"ok", "steps"} of a device script's steps file (benchmarks/device_steps.sh writes one line per step: name,
    rc or "skipped", seconds, timeout); ok when every step that ran exited 0."""
    steps = []
    for line in Path(tsv).read_text().splitlines():
        name, rc, sec, limit = line.split("\t")
        steps.append({"step": name, "rc": None if rc == "skipped" else int(rc), "skipped": rc == "skipped",
                      "seconds": int(sec), "timeout_s": int(limit), "timed_out": rc in ("124", "137")})
    return {"ok": all(s["rc"] == 0 for s in steps if not s["skipped"]), "steps": steps}
