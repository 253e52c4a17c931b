"""Kernel facts without a GPU: registers, stack and the per-step instruction mix of each Triton variant.

    python -m benchmarks.kernel_sass                 # every variant of benchmarks/gpu_check.py, paper config
    python -m benchmarks.kernel_sass --variant 1     # one of them
    PYTHONPATH=/tmp/t36 python -m benchmarks.kernel_sass --name kernel_sass_triton36
        # another Triton's compiler, e.g. the H200 image's: pip install --no-deps --target /tmp/t36 triton==3.6.0

Triton compiles ahead of time for a target it is told about (here sm_90, the H100/H200) with the ptxas it
bundles, so the compiled kernel can be inspected on a CPU-only machine: `cuobjdump --dump-resource-usage`
gives registers and stack (spills), `cuobjdump -sass` the machine code. The time-step loop is the inner of the
kernel's two backward branches; its instruction count and mix (IMAD, LDG, SHFL, BAR, ...) per thread per step
are a proxy for cost, not a timing: it says nothing of latency hiding, so only a GPU run
(benchmarks/gpu_check.py) decides between variants. Output: benchmarks/results/kernel_sass.{json,md}.
Compiling takes ~20 s a variant, mostly Triton's own passes; the counts depend on the Triton/ptxas version.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import time
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from benchmarks import gpu_check
from benchmarks.gpu_check import VARIANTS
from benchmarks.report import write_report
from nca_datagen.config import NCAConfig
from nca_datagen.kernels import rollout_triton as rt
from nca_datagen.kernels.common import RolloutSpec

TARGET = GPUTarget("cuda", 90, 32)  # sm_90 (Hopper), 32 threads per warp
NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
# Argument types of nca_rollout_kernel's runtime arguments, in order (pointers then integers).
RUNTIME_TYPES = {"w1_ptr": "*i32", "w2_ptr": "*i32", "w3_ptr": "*i32", "rule_ptr": "*i64", "state_ptr": "*u8",
                 "key_ptr": "*i64", "noise_ptr": "*i32", "tok_ptr": "*i32", "frame_ptr": "*u8", "B": "i32",
                 "burn_in": "i32", "frames": "i32", "stride": "i32", "beta_q": "i32", "noise_span": "i32", "pin": "i32",
                 "scratch_ptr": "*u8"}
SASS_LINE = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);")


def compile_for_sm90(layout: rt.TileLayout, maxnreg: int | None, sparse_noise: bool, cfg: NCAConfig | None = None,
                     write_frames: bool = False):
    """The token kernel (plus frames if asked) of `cfg` (default: the paper's) with the launcher's constexprs
    for `layout`, compiled for sm_90. Needs no GPU; fails where Triton's compiler rejects the kernel."""
    fn = rt.nca_rollout_kernel
    cfg = cfg or NCAConfig()
    const = rt.kernel_constexprs(RolloutSpec.from_config(cfg), cfg.hidden, layout, write_tokens=True,
                                 write_frames=write_frames, sparse_noise=sparse_noise)
    missing = set(fn.arg_names) - set(RUNTIME_TYPES) - set(const)
    assert not missing, f"kernel_sass.RUNTIME_TYPES is out of date: {missing}"
    signature = {name: RUNTIME_TYPES.get(name, "constexpr") for name in fn.arg_names}
    src = ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in const.items()})
    options = {"num_warps": layout.num_warps, **({"maxnreg": maxnreg} if maxnreg else {})}
    return triton.compile(src, target=TARGET, options=options)


def cuobjdump(cubin: bytes, flag: str, work: Path) -> str:
    path = work / "kernel.cubin"
    path.write_bytes(cubin)
    return subprocess.run([str(NVIDIA_BIN / "cuobjdump"), flag, str(path)], capture_output=True, text=True,
                          check=True).stdout


def step_loop_mix(sass: str) -> tuple[int, collections.Counter]:
    """Instruction count and opcode mix of the time-step loop: the largest loop that holds no other loop."""
    ins = [(int(m[1], 16), m[2]) for m in map(SASS_LINE.match, sass.splitlines()) if m]
    index = {addr: i for i, (addr, _) in enumerate(ins)}
    loops = []  # (body length, first address, branch address) of every backward branch
    for i, (addr, text) in enumerate(ins):
        target = re.search(r"BRA\s.*?(0x[0-9a-f]+)", text)
        if target and int(target[1], 16) < addr:
            loops.append((i - index[int(target[1], 16)], int(target[1], 16), addr))
    innermost = [lp for lp in loops if not any(o is not lp and lp[1] <= o[1] and o[2] <= lp[2] for o in loops)]
    length, lo, hi = max(innermost)
    opcodes = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]
                                  for addr, text in ins if lo <= addr <= hi)
    return length, opcodes


def facts(variant: dict, work: Path) -> dict:
    cfg = NCAConfig()
    row, layout = gpu_check.shown(variant, 1 << 17)
    t0 = time.perf_counter()
    kernel = compile_for_sm90(layout, row["maxnreg"], row["sparse_noise"])
    row["compile_s"] = round(time.perf_counter() - t0, 1)
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", cuobjdump(kernel.asm["cubin"], "--dump-resource-usage",
                                                                       work))
    row.update(regs=int(usage[1]), stack_bytes=int(usage[2]), shared_bytes=int(usage[3]))
    length, mix = step_loop_mix(cuobjdump(kernel.asm["cubin"], "-sass", work))
    real_cells = layout.trajectories * cfg.grid[0] * cfg.grid[1]  # per program, padding excluded
    row.update(step_instructions=length, per_real_cell=round(length * 32 * layout.num_warps / real_cells),
               **{op: mix[op] for op in ("IMAD", "LDG", "SHFL", "BAR", "STS", "LDS", "LDL", "STL")})
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", type=int, action="append", help="index into gpu_check.VARIANTS (repeatable)")
    ap.add_argument("--name", default="kernel_sass", help="results name (e.g. kernel_sass_triton36 for another "
                    "Triton on PYTHONPATH)")
    args = ap.parse_args(argv)
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in args.variant or range(len(VARIANTS)):
            row = facts(VARIANTS[i], Path(tmp))
            print(row, flush=True)
            rows.append(row)
    write_report(args.name, rows, meta={"target": "sm_90", "config": "paper 12x12 n10 p2, tau 1e-4, tokens",
                                            "note": "per thread, per time step; a proxy, not a timing"})


if __name__ == "__main__":
    main()
