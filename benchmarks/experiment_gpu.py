"""Experiment on one H200 (issue 18, section 2): does NCA pre-pre-training of a ~30M-parameter model on the paper's
code band help it learn Python source? Both bands the paper names for code and web text, against scratch, within
one device call of at most ~9 minutes, builds and compiles included (`benchmarks/experiment_gpu.sh` runs it on a
bare machine; this module is the orchestrator, and `--quick` runs the whole pipeline on a CPU in well under a minute).

1. Data: `nca-datagen build` (the CLI, in a child process with a timeout) of the bands `30-40%` (the paper's best
   for code) and `50%+` (web and math), every recipe flag at its default (the paper's rule family and sequences),
   --tokens of training data each (default 80M, env EXPERIMENT_GPU_TOKENS; the paper: 164M). Inline on the GPU
   by default, the two bands side by side (one core each; as fast here as Ray, whose start-up and Triton compile
   would come first, and with no dependence on Ray under the machine's gVisor kernel, where it has never run);
   `--executor ray` builds through Ray with GPU actors, a failed Ray build then redone inline.
   Meanwhile this process compiles the NCA and the text model once (`bench_train.bench`: torch.compile keeps its
   kernels in an on-disk cache, so each run's own compile then mostly loads them) and times their steps.
2. Pre-pre-training (`stages.pretrain_nca`) of `medium` on each band: the same steps for both, at most one pass
   over the data (the paper's one pass of 164M tokens), fewer if the measured step time says the call would not
   fit; validation overall and by frame position on 256 sequences of the val split (rules disjoint from train).
3. Transfer (`compare.compare`, `--transfer all`) to `stdlib`, the running Python's standard-library sources (~31M
   bytes): scratch, then each band's checkpoint, on identical text batches with the same seed (0); at most one
   epoch (the paper: one), the same steps for all three.
4. Report: benchmarks/results/h200/experiment_gpu.{json,md,png} (`--quick`: experiment_gpu-quick.* in --results):
   final validation loss and per-byte perplexity, their change vs scratch, the speed-up to scratch's final loss as
   the paper computes it (`compare.summarize`), validation curves, the NCA validation loss at the end by frame,
   each phase's budget and time, and what was cut. The record is rewritten after every phase, so a run killed at
   the call's limit still leaves what it finished.

Choices (the paper's recipe, paper-facts section 5, scaled to the model and the time; nothing tuned on a
validation split):
- Model `medium`: 8 blocks x 512 wide, 8 heads, SwiGLU 1536: 27.3M block parameters; 37.5M with the NCA vocabulary
  (10,002), 27.5M as a byte-level text model: the paper's architecture (Llama-style, RoPE 1e4) at 1/44 of its
  block parameters, the only named size in 20-40M.
- NCA stage: 32 x 1024 tokens a step (the paper's); Adam, no weight decay; lr 4e-4 = the paper's 1e-4 at width
  2048 x 2048 / 512 (Adam learning rates of hidden matrices scale as 1 / width, muP's rule); linear warmup over the
  whole run (the paper's schedule: its warmup spans the whole 164M-token budget); grad clip 1 (trainer default).
- Text stage: AdamW, weight decay 0.1 (the trainer's default; the paper states none), lr 8e-4 = the paper's code
  lr 2e-4 scaled the same way, warmup 5% then cosine to 10% of the peak; context 1024 (the paper's); 32 x 1024
  bytes a step rather than the paper's 512 x 1024: one epoch of the stdlib would be ~57 steps at the paper's
  batch, too few for the schedule or a curve; at 32 it is ~900. 20 validations on 256 KiB of held-out documents.
- One seed (0): the call has room for one; benchmarks/results/compare.md gives a CPU-scale seed-to-seed spread.

Time budget. The call is 540 s; experiment_gpu.sh's deadline is 490 s (50 s for the kill, packing and a slow
start); this process gets what is left after the set-up less 15 s, ~440 s. Every phase has a deadline:

| phase | expected | bound |
|---|---|---|
| set-up in the shell: nvidia-smi, carried wheels, `pip install -e .` | ~35 s | each step's timeout |
| build both bands, in parallel with compiling and timing both models | ~60 s | BUILD_SHARE of the deadline (154 s) |
| NCA runs, 2 x (~2,300 steps x ~30 ms / SAFETY + 25 s) | ~2 x 105 s | sized to the time left |
| text runs, 3 x (~900 steps x ~25 ms / SAFETY + 25 s) | ~3 x 52 s | sized to the time left, 1 epoch at most |
| report | < 5 s | REPORT_S (15 s) kept |

How it is sized: an inline build is ~20 s of Triton compile (each process; ptxas), ~0.5 s of GPU (0.23e9
tokens/s with transfers) and 12-22 CPU-s of host work per 100M tokens (results/host_stages.md, docs/benchmarks.md)
on its core, plus ~6x the probe filtering in the 30-40% band (8% of random rules pass, against 46% for 50%+):
~25-50 s a band; with Ray, ~7 s of start-up and ~4 s to finish a band, its host work over 16 cores. The step times
are measured at the start (`calibrate`); the expectations above assume ~1.1M tokens/s for `medium` (245 MFLOP a
token; the ~100M `base` model, 669 MFLOP, trained at 610K tokens/s, 41% MFU, benchmarks/results/h200/train_gpu.md;
a narrower model uses the GPU less well).
`size_runs` then gives text up to one epoch (at most TEXT_SHARE of the time) and the NCA stage the rest, up to one
pass over the data, each run costing steps x step time / SAFETY + an overhead (its compile from the warm cache,
evaluations, checkpoint: 25 s until the first NCA run has measured it). The default 80M tokens is one pass at that
estimate; a faster GPU leaves time over, a slower one trains on part of the data (reported as a cut). Before each
run the time left is checked again: band 50%+ is dropped if its NCA run would leave the text stage under half its
planned steps, the text stage is shortened if the NCA runs overran, and the last text run is dropped if it cannot
finish; a run that fails is recorded and the others go on. The report lists every cut.

    python -m benchmarks.experiment_gpu                # on the GPU machine (bash benchmarks/experiment_gpu.sh)
    python -m benchmarks.experiment_gpu --quick        # CPU, tiny: the whole pipeline end to end (~20 s)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks.experiment_compare import commit
from benchmarks.experiment_gpu_report import write
from benchmarks.report import RESULTS, machine

BANDS = ("30-40%", "50%+")  # the paper's best band for code first: it runs first and is the last to be cut
SEED = 0
SAFETY = 0.85  # share of a measured step rate a run is sized for: evaluation, logging and clock noise
TEXT_SHARE = 0.5  # the text stage gets at most this share of the time the runs have
REPORT_S = 15  # the figure and the note, after the last run
BUILD_TIMEOUT_S = {"inline": 100, "ray": 60}  # one band's build: ~25-50 s expected at 80M tokens inline, ~15-35 s
# with Ray; Ray's is shorter so that a Ray that hangs (it has never run on this machine's gVisor kernel) still
# leaves the inline retry its time
STOP_S = 15  # a stopped build's time to shut its Ray down
BUILD_SHARE = 0.35  # both builds end within this share of the deadline (154 s of 440): the runs need the rest
FULL = {
    "device": "cuda", "compile": True, "model": "medium", "tokens": 80_000_000, "recipe": {}, "corpus": "stdlib",
    "nca": {"batch_size": 32, "lr": 4e-4, "val_sequences": 256},
    "text": {"batch_size": 32, "context": 1024, "lr": 8e-4, "eval_tokens": 2**18},
    "text_evals": 20,  # validations of each text run (compare's default), the curves' points
    "max_steps": {"nca": None, "text": None},  # None: one pass over the NCA data, one epoch of the text
    "run_overhead_s": 25,  # a run's compile from the warm cache, evaluations, checkpoint (prior; then measured)
    "deadline_s": 440,
}
QUICK = {  # a 6x6 grid of 4 states, 8 frames: both bands reachable (a 3-state grid has no 50%+ rules)
    "device": "cpu", "compile": False, "model": "tiny", "tokens": 20_000,
    "corpus": "email/*.py",  # of the stdlib: 20 files, 0.36 MB (the whole stdlib is tokenized ~8 times a run)
    "recipe": {"grid": "6x6", "states": 4, "frames": 8, "sims_per_rule": 4, "samples_per_shard": 40},
    "nca": {"batch_size": 4, "lr": 3e-3, "val_sequences": 16},
    "text": {"batch_size": 4, "context": 64, "lr": 3e-3, "eval_tokens": 2048},
    "text_evals": 4,
    "max_steps": {"nca": 8, "text": 8},
    "run_overhead_s": 3,
    "deadline_s": 300,
}


class Clock:
    """Time left before the deadline, each phase's budget and use, and what was cut for time."""

    def __init__(self, deadline_s: float):
        self.t0, self.deadline_s = time.perf_counter(), deadline_s
        self.phases, self.cuts = [], []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.deadline_s - self.elapsed()

    @contextlib.contextmanager
    def phase(self, name: str, budget_s: float, may_fail: bool = False):
        """Times the block against its budget. `may_fail`: an exception is recorded as a cut and the run goes on
        (one failed training run must not lose the others); the caller checks for the block's result."""
        start = self.elapsed()
        row = {"phase": name, "budget_s": round(budget_s, 1), "start_s": round(start, 1)}
        self.phases.append(row)
        try:
            yield row
        except Exception as exc:
            if not may_fail:
                raise
            traceback.print_exc()
            row["error"] = repr(exc)[:1000]
            self.cut(f"{name}: failed ({repr(exc)[:200]})")
        finally:
            row["used_s"] = round(self.elapsed() - start, 1)

    def cut(self, what: str) -> None:
        print(f"cut: {what}", file=sys.stderr)
        self.cuts.append(what)


def slug(band: str) -> str:
    return band.replace("%", "pct").replace("+", "plus")


def recipe_flags(recipe: dict) -> list[str]:
    return [x for k, v in recipe.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def build_band(band: str, out: Path, tokens: int, plan: dict, executor: str, timeout_s: float) -> dict:
    """One band's dataset through the CLI in its own process group, stopped (`stop`) at `timeout_s`."""
    # plain tar shards where zstandard is missing (the image lacks it; .whl/ carries it): the loader reads both
    compression = "zstd" if importlib.util.find_spec("zstandard") else "none"
    cmd = [sys.executable, "-m", "nca_datagen", "build", "--complexity", band, "--tokens", str(tokens),
           "--seed", str(SEED), "--executor", executor, "--device", plan["device"], "--compression", compression,
           "--quiet", "--out", str(out), *recipe_flags(plan["recipe"])]
    t0 = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            stop(proc)
            rc = "timeout"
    return {"band": band, "executor": executor, "compression": compression, "rc": rc,
            "seconds": round(time.perf_counter() - t0, 1), "timeout_s": round(timeout_s), "out": str(out)}


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM first: the build then stops as on Ctrl-C and shuts its Ray down (a SIGKILL leaves Ray's workers
    running, in process groups of their own); SIGKILL to its group if it has not ended within STOP_S."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def build_all(data: Path, tokens: int, plan: dict, executor: str, clock: Clock) -> dict:
    """Both bands within BUILD_SHARE of the deadline: inline side by side (one core and the GPU each), Ray one
    after the other (each build starts its own Ray on every core). A failed Ray build is redone inline, into a
    folder of its own (the failed one may still hold a claim), and once Ray has failed no band tries it again."""
    data.mkdir(parents=True, exist_ok=True)
    end, failed = clock.elapsed() + BUILD_SHARE * clock.deadline_s, set()

    def one(band: str) -> dict:
        tries = []
        for i, ex in enumerate(x for x in dict.fromkeys([executor, "inline"]) if x not in failed):
            timeout = min(BUILD_TIMEOUT_S[ex], end - clock.elapsed())
            if timeout < 10:
                clock.cut(f"build of {band} ({ex}): the build phase's time is spent")
                break
            tries.append(build_band(band, data / (slug(band) + (f"-{ex}" if i else "")), tokens, plan, ex, timeout))
            if tries[-1]["rc"] == 0:
                return {"tries": tries, "ok": True, **built(tries[-1]["out"])}
            failed.add(ex)
        return {"tries": tries, "ok": False}

    with ThreadPoolExecutor(len(BANDS) if executor == "inline" else 1) as pool:
        return dict(zip(BANDS, pool.map(one, BANDS), strict=True))


def built(url: str) -> dict:
    from nca_datagen.train.nca import dataset_info

    info = dataset_info(url)
    return {"out": url, "samples": info["samples"], "tokens": info["tokens"], "vocab_size": info["vocab_size"],
            "seq_len": info["seq_len"]}


def calibrate(plan: dict, device: torch.device) -> dict:
    """Compile (when asked) and time both models' training steps at the runs' shapes (`bench_train.bench`, the
    step `fit` runs): seconds a step of each stage. A compile that fails falls back to eager for the runs."""
    from benchmarks.bench_train import bench
    from nca_datagen.api import make_plan
    from nca_datagen.train.text import VOCAB_SIZE

    layout = make_plan(complexity=BANDS[0], tokens=plan["tokens"], **plan["recipe"]).config.nca
    shapes = {"nca": (layout.vocab_size, layout.seq_len - 2, plan["nca"]["batch_size"]),
              "text": (VOCAB_SIZE, plan["text"]["context"], plan["text"]["batch_size"])}
    out = {}
    for stage, (vocab, context, batch) in shapes.items():
        t0 = time.perf_counter()
        try:
            row = bench(plan["model"], stage, batch, batch, 10, 3, device, plan["compile"], context, vocab=vocab)
        except Exception as exc:  # an inductor failure must not sink the experiment: the runs go eager
            print(f"compile failed ({exc!r}): the runs go eager", file=sys.stderr)
            plan["compile"] = False
            row = {**bench(plan["model"], stage, batch, batch, 10, 3, device, False, context, vocab=vocab),
                   "compile_error": repr(exc)[:500]}
        out[stage] = {**row, "step_s": row["ms_per_step"] / 1000, "seconds": round(time.perf_counter() - t0, 1)}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def size_runs(left_s: float, step_s: dict, overhead_s: float, limits: dict) -> dict:
    """Steps of each NCA run and each text run that fit `left_s` (2 NCA runs, 3 text runs): text first, up to
    `limits["text"]` steps and TEXT_SHARE of the time, the NCA stage the rest, up to `limits["nca"]` steps."""
    work = left_s - 5 * overhead_s
    text_cost = step_s["text"] / SAFETY
    text = min(limits["text"], int(TEXT_SHARE * work / (3 * text_cost)))
    nca = min(limits["nca"], int((work - 3 * text * text_cost) / 2 * SAFETY / step_s["nca"]))
    return {"nca": max(1, nca), "text": max(1, text)}


def run_cost(steps: int, step_s: float, overhead_s: float) -> float:
    return steps * step_s / SAFETY + overhead_s


def nca_run(data: str, out: Path, plan: dict, steps: int) -> dict:
    from nca_datagen.train.stages import pretrain_nca

    nca = plan["nca"]
    return pretrain_nca(data, out, model=plan["model"], steps=steps, batch_size=nca["batch_size"], lr=nca["lr"],
                        eval_every=max(1, steps // 5), val_sequences=nca["val_sequences"], device=plan["device"],
                        compile=plan["compile"], seed=SEED, quiet=True)


def text_runs(ckpt: str, out: Path, plan: dict, steps: int, documents, scratch: dict | None) -> dict:
    """Scratch (unless given) and the run from `ckpt`, through `compare` (same batches, seed, validation)."""
    from nca_datagen.train.compare import compare

    return compare(ckpt, plan["corpus"], out, steps=steps, model=plan["model"], transfer="all", scratch=scratch,
                   documents=documents, device=plan["device"], compile=plan["compile"], seed=SEED, quiet=True,
                   eval_every=max(1, steps // plan["text_evals"]), **plan["text"])


def text_epoch_steps(documents, plan: dict) -> dict:
    from nca_datagen.train.stages import text_data_for

    text = plan["text"]
    source, _, info = text_data_for(documents, text["batch_size"], text["context"], SEED, 0.05, text["eval_tokens"],
                                    text["batch_size"])
    return {"steps": source.batches_per_epoch, "train_tokens": info["train_tokens"]}


def pretrain_all(record: dict, plan: dict, work: Path, clock: Clock, save) -> None:
    """Both NCA runs, the same steps; band 2 only if the text stage keeps its minimum after it."""
    steps, costs = record["sizing"]["steps"]["nca"], record["sizing"]
    for i, band in enumerate(BANDS):
        if not record["builds"][band]["ok"]:
            clock.cut(f"NCA run of {band}: its build failed")
            continue
        need = run_cost(steps, costs["step_s"]["nca"], costs["overhead_s"])
        if i and clock.left() - need < costs["text_min_s"]:
            clock.cut(f"band {band}: its NCA run (~{need:.0f} s) would leave the text stage under "
                      f"{costs['text_min_s']:.0f} s")
            continue
        t0 = time.perf_counter()
        with clock.phase(f"nca {band}", need, may_fail=True):
            record["nca"][band] = nca_run(record["builds"][band]["out"], work / slug(band) / "nca", plan, steps)
            measured = time.perf_counter() - t0 - steps * costs["step_s"]["nca"]
            costs["overhead_s"] = max(costs["overhead_s"] if i else 0, measured)  # the first run's, at least
        save()


def transfer_all(record: dict, plan: dict, work: Path, documents, clock: Clock, save) -> None:
    """Scratch and each band's text run, the same steps: as many as the time left allows, up to the plan's."""
    costs, bands = record["sizing"], [b for b in BANDS if b in record["nca"]]
    planned = costs["steps"]["text"]
    runs = 1 + len(bands)
    fit = int((clock.left() - REPORT_S - runs * costs["overhead_s"]) * SAFETY / (runs * costs["step_s"]["text"]))
    steps = max(1, min(planned, fit))
    if steps < planned:
        clock.cut(f"text stage: {steps} of the {planned} planned steps")
    costs["steps"]["text_run"] = steps
    scratch = None
    for i, band in enumerate(bands):
        need = run_cost(steps, costs["step_s"]["text"], costs["overhead_s"]) * (2 if scratch is None else 1)
        if i and clock.left() - REPORT_S < need:
            clock.cut(f"text run from {band}: ~{need:.0f} s needed, {clock.left() - REPORT_S:.0f} s left")
            continue
        n_runs, t0 = (2 if scratch is None else 1), time.perf_counter()
        with clock.phase(f"text {'scratch + ' if scratch is None else ''}{band}", need, may_fail=True):
            report = text_runs(record["nca"][band]["checkpoint"], work / slug(band), plan, steps, documents, scratch)
            costs["overhead_s"] = max(1.0, (time.perf_counter() - t0) / n_runs - steps * costs["step_s"]["text"])
            scratch = record["scratch"] = report["scratch_run"]
            record["text"][band] = {k: v for k, v in report.items() if k not in ("scratch_run", "nca_run")}
        save()


def plan_runs(record: dict, plan: dict, documents, clock: Clock) -> None:
    """The steps of every run, from the measured step times and the time left."""
    epoch = text_epoch_steps(documents, plan)
    ok = [b for b in BANDS if record["builds"][b]["ok"]]
    one_pass = min(record["builds"][b]["samples"]["train"] for b in ok) // plan["nca"]["batch_size"]
    cap = plan["max_steps"]
    limits = {"nca": min(one_pass, cap["nca"] or one_pass), "text": min(epoch["steps"], cap["text"] or epoch["steps"])}
    step_s = {stage: record["calibration"][stage]["step_s"] for stage in ("nca", "text")}
    steps = size_runs(clock.left() - REPORT_S, step_s, plan["run_overhead_s"], limits)
    record["sizing"] = {"step_s": step_s, "overhead_s": plan["run_overhead_s"], "limits": limits,
                        "one_pass_steps": one_pass, "text_epoch": epoch, "steps": steps,
                        "text_min_s": 3 * run_cost(max(1, steps["text"] // 2), step_s["text"], plan["run_overhead_s"])}
    if steps["nca"] < limits["nca"]:
        clock.cut(f"NCA stage: {steps['nca']} of the {limits['nca']} steps the data holds (one pass)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="A tiny end-to-end run on the CPU (well under a minute).")
    p.add_argument("--tokens", default=os.environ.get("EXPERIMENT_GPU_TOKENS"),
                   help="Training tokens per band (80M by default; env EXPERIMENT_GPU_TOKENS; 2M, 164M, ...).")
    p.add_argument("--deadline-s", type=float, default=None, help="Seconds this process may take (full: 440).")
    p.add_argument("--executor", choices=("inline", "ray"), default="inline",
                   help="Build executor: inline (the two bands side by side) or ray (one after the other).")
    p.add_argument("--work", default=None, help="Scratch folder (datasets, checkpoints; default under /tmp).")
    p.add_argument("--results", default=None, help="Where the JSON, markdown and PNG go (default: "
                                                   "benchmarks/results/h200, --quick: benchmarks/results).")
    args = p.parse_args()
    record = run(args)
    print(Path(record["paths"]["md"]).read_text())


def resolve(args) -> tuple[dict, Path, Path, str]:
    from nca_datagen.units import parse_count

    plan = json.loads(json.dumps(QUICK if args.quick else FULL))  # a copy: calibrate may turn compile off
    if args.tokens:
        plan["tokens"] = parse_count(str(args.tokens), what="tokens")
    plan["deadline_s"] = args.deadline_s or plan["deadline_s"]
    plan["corpus_label"] = " ".join(dict.fromkeys(["stdlib", plan["corpus"]]))  # "stdlib" or "stdlib email/*.py"
    if plan["corpus"] != "stdlib":
        from nca_datagen.corpus import stdlib_dir

        plan["corpus"] = str(stdlib_dir() / plan["corpus"])
    if plan["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: this experiment is for the H200 (try --quick on a CPU)")
    executor = args.executor
    name = "experiment_gpu-quick" if args.quick else "experiment_gpu"
    work = Path(args.work or f"/tmp/nca-datagen-{name}")
    results = Path(args.results) if args.results else (RESULTS if args.quick else RESULTS / "h200")
    return plan, work, results / name, executor


def run(args) -> dict:
    plan, work, stem, executor = resolve(args)
    clock = Clock(plan["deadline_s"])
    if (work / "runs").exists():  # fresh runs every time; datasets are kept (a rebuild is then a no-op)
        shutil.rmtree(work / "runs")
    stem.parent.mkdir(parents=True, exist_ok=True)
    record = {"experiment": stem.name, "quick": args.quick, "commit": commit() or "unknown (no git)",
              "machine": machine(), "plan": plan, "executor": executor, "text": {}, "nca": {}, "builds": {},
              "paths": {k: f"{stem}.{k}" for k in ("json", "md", "png")}}

    def save():
        record.update(phases=clock.phases, cuts=clock.cuts, total_s=round(clock.elapsed(), 1))
        write(record)

    with clock.phase("build, compile (in parallel)", BUILD_SHARE * clock.deadline_s), ThreadPoolExecutor(1) as pool:
        builds = pool.submit(build_all, work / "data", plan["tokens"], plan, executor, clock)
        record["calibration"] = calibrate(plan, torch.device(plan["device"]))
        record["builds"] = builds.result()
    save()
    if not any(b["ok"] for b in record["builds"].values()):
        raise SystemExit(f"no band was built: see the logs in {work / 'data'}")
    from nca_datagen.corpus import load_documents

    documents = load_documents(plan["corpus"])
    plan_runs(record, plan, documents, clock)
    save()
    pretrain_all(record, plan, work / "runs", clock, save)
    transfer_all(record, plan, work / "runs", documents, clock, save)
    save()
    return record


if __name__ == "__main__":
    main()
