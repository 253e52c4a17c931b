"""Trainer throughput: tokens/s of `trainer.train_step` (forward, backward, AdamW step) and, on a GPU, model
FLOPs utilisation.

Data are random token ids of the NCA shape (vocab 10,002, context 1024, first-frame targets masked) or of
the byte-level text stage (vocab 257, context 256), so the numbers measure the trainer, not the loader. The
step is the same function `fit` runs.

MFU = flops_per_token(cfg, T) x tokens/s / peak, where flops_per_token = 6 x (matmul parameters: blocks and
head, not the embedding lookup) + 12 x depth x T x width for attention scores and weighted sums (causality
not discounted: the PaLM / nanoGPT convention). Peak is the bf16 dense tensor-core rate: 989 TFLOP/s for
H100 / H200 SXM (H200 has H100's compute, more memory), 312 for A100; override with --peak-tflops.

    python -m benchmarks.bench_train                      # CPU: tiny and mini, a few steps each
    python -m benchmarks.bench_train --gpu                # GPU: the ~100M `base` model, bf16, compiled
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from benchmarks.report import write_report
from nca_datagen.train.model import build_model, count_params, flops_per_token, model_config
from nca_datagen.train.trainer import TrainConfig, make_optimizer, train_step

NCA_VOCAB, NCA_CONTEXT, FIRST_FRAME = 10002, 1024, 37
SHAPES = {"nca": (NCA_VOCAB, NCA_CONTEXT, FIRST_FRAME), "text": (257, 256, 0)}  # vocab, context, masked targets
PEAK_BF16_TFLOPS = {"H100": 989.5, "H200": 989.5, "A100": 312.0, "L40S": 362.0, "4090": 165.2}


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return override or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def bench(size: str, shape: str, batch: int, micro: int, steps: int, warmup: int, device: torch.device,
          compile: bool, context: int | None = None, peak: float | None = None, vocab: int | None = None) -> dict:
    default_vocab, default_context, masked = SHAPES[shape]
    vocab, context = vocab or default_vocab, context or default_context
    cfg = model_config(size, vocab, context)
    model = build_model(cfg).to(device)
    train_cfg = TrainConfig(steps=steps, batch_size=batch, micro_batch_size=micro, compile=compile)
    optimizer = make_optimizer(model, train_cfg, device)
    run_model = torch.compile(model) if compile else model
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (batch, context), generator=gen)
    y = torch.randint(0, vocab, (batch, context), generator=gen)
    y[:, :masked] = -100
    x, y = x.to(device), y.to(device)
    for _ in range(warmup):  # compile, cuDNN / allocator warm-up
        train_step(run_model, optimizer, x, y, micro, 1.0, device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = train_step(run_model, optimizer, x, y, micro, 1.0, device)
    float(loss)  # one sync at the end
    _sync(device)
    seconds = time.perf_counter() - t0
    tokens_per_s = steps * batch * context / seconds
    row = {"model": size, "data": shape, "params_M": count_params(model) / 1e6,
           "block_params_M": count_params(model, embeddings=False) / 1e6, "device": str(device),
           "dtype": "bf16 autocast" if device.type == "cuda" else "fp32", "compile": compile,
           "batch": batch, "micro_batch": micro, "context": context, "steps": steps,
           "tokens_per_s": tokens_per_s, "ms_per_step": 1000 * seconds / steps}
    peak = peak_tflops(device, peak)
    achieved = flops_per_token(cfg, context) * tokens_per_s
    row["model_tflops"] = achieved / 1e12
    if peak:
        row["mfu"] = achieved / (peak * 1e12)
    if device.type == "cuda":
        row["peak_mem_GB"] = torch.cuda.max_memory_allocated(device) / 1e9
    return row


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="Benchmark the GPU configs (needs CUDA).")
    p.add_argument("--sizes", default=None, help="Comma list of model sizes (default: tiny,mini on CPU; base on GPU).")
    p.add_argument("--batch", type=int, default=None, help="Sequences per step (default: 4 CPU, 32 GPU).")
    p.add_argument("--micro", type=int, default=0, help="Micro-batch (default: the batch).")
    p.add_argument("--shapes", default=None, help="Comma list of data shapes, nca / text (default: both on CPU, "
                                                  "nca on GPU).")
    p.add_argument("--context", type=int, default=None, help="Override the shape's context.")
    p.add_argument("--steps", type=int, default=None, help="Timed steps (default: 3 CPU, 20 GPU).")
    p.add_argument("--no-compile", action="store_true", help="GPU: eager instead of torch.compile.")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: on the shared 2-core box, 2 threads "
                                                          "contending with other jobs ran 3-20x slower).")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak for MFU, if not detected.")
    p.add_argument("--name", default=None, help="Report name (default: train_cpu / train_gpu).")
    args = p.parse_args()
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA GPU visible")
    device = torch.device("cuda" if args.gpu else "cpu")
    torch.set_num_threads(args.threads)
    if args.gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    sizes = (args.sizes or ("base" if args.gpu else "tiny,mini")).split(",")
    batch = args.batch or (32 if args.gpu else 4)
    steps = args.steps or (20 if args.gpu else 3)
    shapes = (args.shapes or ("nca" if args.gpu else "nca,text")).split(",")
    rows = [bench(s, shape, batch, args.micro or batch, steps, 3 if args.gpu else 1, device,
                  compile=args.gpu and not args.no_compile, context=args.context, peak=args.peak_tflops)
            for shape in shapes for s in sizes]
    meta = {"threads": args.threads if not args.gpu else None,
            "data": "random ids; nca: vocab 10002, context 1024, first 37 targets masked; text: vocab 257, "
                    "context 256",
            "flops_per_token": "6 x matmul params (blocks + head) + 12 x depth x T x width",
            "peak_bf16_tflops": args.peak_tflops or PEAK_BF16_TFLOPS,
            "configs": {s: dataclasses.asdict(model_config(s, NCA_VOCAB, NCA_CONTEXT)) for s in sizes}}
    write_report(args.name or ("train_gpu" if args.gpu else "train_cpu"), rows, meta)


if __name__ == "__main__":
    main()
