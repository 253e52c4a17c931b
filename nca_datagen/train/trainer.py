"""The training loop shared by every stage: optimizer, schedule, accumulation, checkpoints, resume, logging.

One function, `fit`, takes a model, a batch source and a `TrainConfig`. A batch source is any object with
`next() -> (input_ids_BT, labels_BT)` (CPU LongTensors, labels -100 where ignored) and
`state_dict()` / `load_state_dict()` for its position; the NCA stage wraps the public loader, the text stage
its byte windows. Choices:

- The loss is the mean cross-entropy over non-ignored targets of each micro-batch, AVERAGED over the
  micro-batches of a step (each micro-batch loss is divided by the accumulation count). The paper's reference
  code sums them instead, which multiplies the effective learning rate by the accumulation count; we do not.
- bf16 autocast on CUDA, plain fp32 on CPU (CPU bf16 autocast is slow and changes numerics).
- The learning rate is a pure function of the step (linear warmup, then constant or cosine), so the
  schedule's state is the step; checkpoints hold model, optimizer, step, RNG and the data source's position,
  and a resumed run writes the same losses as an uninterrupted one (bit for bit on CPU; tested).
- Adam with weight decay 0 is AdamW with weight decay 0, so one optimizer serves both stages.
- A run is resumed only by the run it was: the checkpoint's `meta` (what the stage says defines it: data or
  corpus, init, transfer, ...) and RESUME_FIELDS must match, else `fit` refuses, listing `field: old -> new`.
  The alternative, resuming whatever `ckpt.pt` holds, silently kept an old finished run under new settings.

Outputs in `out_dir`: `ckpt.pt` (written atomically), `metrics.jsonl` (one record per logged step).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import pickle
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CHECKPOINT_FORMAT = "nca-datagen-train/1"
# TrainConfig fields a resumed run must share with its checkpoint (the rest, like device or logging, may change)
RESUME_FIELDS = ("steps", "batch_size", "lr", "schedule", "warmup", "min_lr_ratio", "weight_decay", "beta1", "beta2",
                 "grad_clip", "seed")


@dataclass
class TrainConfig:
    steps: int = 100  # optimizer steps; the schedule spans exactly this many
    batch_size: int = 8  # sequences per optimizer step (paper: 32 NCA, 512 text, at 1024 tokens)
    micro_batch_size: int = 0  # sequences per forward/backward; 0 = batch_size (no gradient accumulation)
    lr: float = 1e-4  # peak learning rate (paper: 1e-4 NCA, 5e-4 web/math text, 2e-4 code)
    schedule: str = "linear"  # "linear": warmup then constant (paper NCA); "cosine": warmup then cosine decay
    warmup: int = -1  # warmup steps; -1 = the whole budget (the paper's NCA schedule)
    min_lr_ratio: float = 0.1  # cosine ends at lr * this
    weight_decay: float = 0.0  # decoupled (AdamW) decay on matrices only; 0 = plain Adam (paper NCA)
    beta1: float = 0.9  # Adam betas
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 = off
    seed: int = 0  # model init and any training randomness; data order has its own seed in the source
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    compile: bool = False  # torch.compile the model (GPU: faster after a warm-up compile; CPU: rarely worth it)
    eval_every: int = 0  # validation every this many steps; 0 = only after the last step
    ckpt_every: int = 0  # checkpoint every this many steps; 0 = only after the last step
    log_every: int = 1  # write a metrics record every this many steps (each log syncs the GPU)
    stop_at: int = 0  # stop after this step although the schedule runs to `steps` (preemption, tests); 0 = off
    quiet: bool = False  # no progress bar
    tracker: str = ""  # also log to "tensorboard" or "wandb" (must be installed; never imported otherwise)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps={self.steps}, batch_size={self.batch_size}: both must be >= 1")
        if self.warmup < -1:
            raise ValueError(f"warmup={self.warmup}: give steps >= 0, or -1 for the whole budget")
        micro = self.micro_batch_size or self.batch_size
        if self.batch_size % micro:
            raise ValueError(f"batch_size={self.batch_size} is not a multiple of micro_batch_size={micro}")
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule={self.schedule!r}: choose 'linear' or 'cosine'")
        if self.tracker not in ("", "tensorboard", "wandb"):
            raise ValueError(f"tracker={self.tracker!r}: choose 'tensorboard', 'wandb' or leave it empty")

    @property
    def warmup_steps(self) -> int:
        return self.steps if self.warmup < 0 else self.warmup


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup from lr/warmup, then constant or
    cosine down to lr * min_lr_ratio at the last step."""
    warmup = cfg.warmup_steps
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "linear":
        return cfg.lr
    progress = (step - warmup) / max(1, cfg.steps - warmup - 1)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is visible: use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a torch device: use --device auto, cpu, cuda or cuda:N") from None


def autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing (fp32) elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with decay on matrices (dim >= 2) only; with weight_decay 0 this is exactly Adam."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = device.type == "cuda"  # one kernel for all parameters on GPU; CPU keeps the default for-each path
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def train_step(model, optimizer, input_ids_BT, labels_BT, micro_batch_size: int, grad_clip: float, device):
    """One optimizer step over a batch split into micro-batches; returns the mean loss (a device tensor, not
    synced). Each micro-batch loss is divided by the number of micro-batches: the step's loss is their mean."""
    micro = micro_batch_size or input_ids_BT.shape[0]
    pieces = list(zip(input_ids_BT.split(micro), labels_BT.split(micro), strict=True))
    total = torch.zeros((), device=device)
    for x_BT, y_BT in pieces:
        with autocast(device):
            loss = model(x_BT.to(device, non_blocking=True), y_BT.to(device, non_blocking=True)) / len(pieces)
        loss.backward()
        total += loss.detach()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def target_losses(model, batches, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of scored targets) at each target position over `batches` (a list of
    (input_ids_BT, labels_BT) of one T), as float64 and int64 tensors of shape (T,) on the CPU. Positions are
    what a stage may break the loss down by (NCA: frames); their sum is the validation loss."""
    was_training = model.training
    model.eval()
    sums_T = counts_T = None
    for x_BT, y_BT in batches:
        y_BT = y_BT.to(device)
        with autocast(device):
            logits_BTV = model(x_BT.to(device))
        loss_BT = F.cross_entropy(logits_BTV.float().flatten(0, 1), y_BT.flatten(), ignore_index=-100,
                                  reduction="none").view_as(y_BT)  # (B*T, V) rows: the contiguous fast path
        if sums_T is None:
            sums_T = torch.zeros(y_BT.shape[1], dtype=torch.float64, device=device)
            counts_T = torch.zeros(y_BT.shape[1], dtype=torch.int64, device=device)
        sums_T += loss_BT.double().sum(0)  # ignored targets add 0
        counts_T += (y_BT != -100).sum(0)
    model.train(was_training)
    return sums_T.cpu(), counts_T.cpu()


def unigram_loss(tokens) -> float:
    """The loss of a model that knows only token frequencies: the plug-in entropy (nats) of `tokens` (ids >= 0).
    Beating it is the least a model must do to have learned anything from context."""
    counts = np.bincount(np.asarray(tokens).ravel())
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def validation_record(model, batches, device, details=None) -> dict:
    """{"val_loss": mean cross-entropy over every non-ignored target of `batches`} plus the fields
    `details(sums_T, counts_T)` derives from the per-position losses."""
    sums_T, counts_T = target_losses(model, batches, device)
    record = {"val_loss": float(sums_T.sum() / max(int(counts_T.sum()), 1))}
    return {**record, **details(sums_T, counts_T)} if details else record


def save_checkpoint(path: Path, model, optimizer, step: int, cfg: TrainConfig, source, meta: dict) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "model_config": model.cfg.to_dict(),
        "train_config": asdict(cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "data": source.state_dict(),
        "meta": meta,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a reader never sees a half-written checkpoint


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict:
    """A checkpoint dict (on the CPU). Accepts the file or the run folder that holds `ckpt.pt`. With `mmap` its
    tensors are mapped from the file and read only if used: a check of its settings costs no full read."""
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path} (give a ckpt.pt or the run folder that holds one)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:  # a text file, an empty or foreign file
        raise ValueError(f"{path} is not an nca-datagen training checkpoint (torch.load: {exc})") from None
    found = state.get("format") if isinstance(state, dict) else type(state).__name__
    if found != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an nca-datagen training checkpoint (format {found!r})")
    return state


def checkpoint_digest(path: str | os.PathLike) -> str:
    """A short sha256 of a checkpoint file (or of the run folder's `ckpt.pt`): a run started from it is
    identified by what it started from, so a checkpoint replaced in place is another run's starting point."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path / "ckpt.pt" if path.is_dir() else path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def read_metrics(out_dir: str | os.PathLike) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_changes(state: dict, cfg: TrainConfig, meta: dict, unknown=()) -> dict:
    """{field: (checkpoint's value, this run's)} over what defines a run: the stage's `meta` and the
    RESUME_FIELDS of its TrainConfig. `desc` is left out (a label, derived from the rest), and so are the `unknown`
    meta fields (compare checks its text runs before the NCA checkpoint they start from exists)."""
    old_meta = state.get("meta") or {}
    fields = [*meta, *(k for k in old_meta if k not in meta)]
    changed = {k: (old_meta.get(k), meta.get(k)) for k in fields
               if k != "desc" and k not in unknown and old_meta.get(k) != meta.get(k)}
    changed.update({k: (state["train_config"][k], getattr(cfg, k)) for k in RESUME_FIELDS
                    if state["train_config"][k] != getattr(cfg, k)})
    return changed


def check_same_run(state: dict, ckpt_path: Path, cfg: TrainConfig, meta: dict, unknown=()) -> None:
    """Refuse a checkpoint another run wrote (other `meta` or RESUME_FIELDS), listing `field: old -> new`."""
    changed = _run_changes(state, cfg, meta, unknown)
    if changed:
        diff = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
        raise ValueError(f"{ckpt_path} was trained with other settings ({diff}): rerun with its settings, or "
                         f"choose another --out folder")


def check_writable(out_dir) -> None:
    """A run folder that exists or can be made, and can be written: checked without creating it."""
    out_dir = Path(out_dir)
    existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--out {out_dir}: {existing} is a file, not a folder; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out_dir}: {existing} is not writable; choose another --out")


def check_tracker(tracker: str) -> None:
    """The package a tracker needs is installed (found, not imported: wandb takes seconds to import)."""
    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(tracker)
    if package and importlib.util.find_spec(package) is None:
        raise ValueError(f"tracker={tracker!r} needs `pip install {package}`")


def preflight(cfg: TrainConfig, out_dir, meta: dict, unknown=()) -> None:
    """What `fit` would refuse, checked before anything trains: the device, the tracker's package, and the run
    folder (writable; a checkpoint there must be this run's, `unknown` meta fields aside)."""
    resolve_device(cfg.device)
    check_tracker(cfg.tracker)
    check_writable(out_dir)
    ckpt_path = Path(out_dir) / "ckpt.pt"
    if ckpt_path.exists():
        check_same_run(load_checkpoint(ckpt_path, mmap=True), ckpt_path, cfg, meta, unknown)


def _resume(ckpt_path: Path, model, optimizer, source, metrics_path: Path, cfg: TrainConfig, meta: dict) -> int:
    state = load_checkpoint(ckpt_path)
    check_same_run(state, ckpt_path, cfg, meta)
    if state["model_config"] != model.cfg.to_dict():
        raise ValueError(f"{ckpt_path} holds a different model ({state['model_config']}); "
                         f"use the same model settings or choose another --out folder")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    source.load_state_dict(state["data"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    step = state["step"]
    kept = [r for r in read_metrics(metrics_path.parent) if r["step"] <= step]  # drop records past the checkpoint
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return step


def fit(model, source, cfg: TrainConfig, out_dir, *, val_batches=None, val_details=None, meta: dict | None = None,
        resume: bool = True, desc: str = "train") -> list[dict]:
    """Train `model` (a `Decoder` on the CPU) for `cfg.steps` steps from `source`; returns the metrics records.

    With `resume` and a `ckpt.pt` in `out_dir`, continue from it (one line on stderr says so), provided the same
    run wrote it: the same `meta` and RESUME_FIELDS, else ValueError. `val_batches` (a list of batches) is
    evaluated after step `cfg.steps` (not when `stop_at` ends the run sooner) and, with `eval_every`, before the
    first step (a record with step 0 and no training loss) and every `eval_every` steps, whatever `log_every` is.
    `val_details(sums_T, counts_T)` adds fields to each validation record from the per-position losses (see
    `target_losses`): the NCA stage's loss by frame.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, metrics_path = out_dir / "ckpt.pt", out_dir / "metrics.jsonl"
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    step = 0
    meta = {**(meta or {}), "desc": desc}
    if resume and ckpt_path.exists():
        step = _resume(ckpt_path, model, optimizer, source, metrics_path, cfg, meta)
        done = f"already complete ({step} of {cfg.steps} steps): nothing to train"
        print(f"{out_dir}: " + (done if step >= cfg.steps else f"resuming at step {step} of {cfg.steps}"),
              file=sys.stderr)
    elif metrics_path.exists():
        metrics_path.unlink()
    run_model = torch.compile(model) if cfg.compile else model
    end = min(cfg.steps, cfg.stop_at or cfg.steps)
    logger = _Logger(metrics_path, cfg, out_dir, desc, start=step, end=end)
    model.train()
    try:
        if step == 0 and val_batches is not None and cfg.eval_every:  # the curve's starting point
            logger.log({"step": 0, **validation_record(model, val_batches, device, val_details)}, None)
        while step < end:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            x_BT, y_BT = source.next()
            loss = train_step(run_model, optimizer, x_BT, y_BT, cfg.micro_batch_size, cfg.grad_clip, device)
            step += 1
            last = step == end
            validate = val_batches is not None and (step == cfg.steps or bool(cfg.eval_every
                                                                               and step % cfg.eval_every == 0))
            if step % cfg.log_every == 0 or last or validate:  # a validation point is always logged
                record = {"step": step, "loss": float(loss), "lr": lr, "tokens": step * x_BT.numel()}
                tokens_per_s = x_BT.numel() / (time.perf_counter() - t0)  # this step, before any evaluation
                if validate:
                    record.update(validation_record(model, val_batches, device, val_details))
                logger.log(record, tokens_per_s)
            if last or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
                save_checkpoint(ckpt_path, model, optimizer, step, cfg, source, meta)
    finally:
        logger.close()
        model.to("cpu")
    return read_metrics(out_dir)


class _Logger:
    """metrics.jsonl, a rich progress bar (loss, tokens/s) and, if asked for, TensorBoard or W&B."""

    def __init__(self, path: Path, cfg: TrainConfig, out_dir: Path, desc: str, start: int, end: int):
        self.tracker = self._tracker(cfg, out_dir, desc)  # first: a missing package leaves nothing open
        self.file = open(path, "a")  # noqa: SIM115 -- held for the whole run, closed in close()
        self.progress = self.task = None
        if not cfg.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self.progress.start()
            self.task = self.progress.add_task(desc, total=end, completed=start, info="")

    @staticmethod
    def _tracker(cfg: TrainConfig, out_dir: Path, desc: str):
        check_tracker(cfg.tracker)
        if cfg.tracker == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter(str(out_dir / "tensorboard"))
        if cfg.tracker == "wandb":
            import wandb

            return wandb.init(project="nca-datagen", name=desc, dir=str(out_dir), config=asdict(cfg))
        return None

    def log(self, record: dict, tokens_per_s: float | None) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.progress is not None and tokens_per_s is not None:
            val = f" val {record['val_loss']:.3f}" if "val_loss" in record else ""
            self.progress.update(self.task, completed=record["step"],
                                 info=f"loss {record['loss']:.3f}{val} {tokens_per_s:,.0f} tok/s")
        if self.tracker is not None and hasattr(self.tracker, "add_scalar"):
            for key, value in record.items():
                if key != "step":
                    self.tracker.add_scalar(key, value, record["step"])
        elif self.tracker is not None:
            self.tracker.log(record, step=record["step"])

    def close(self) -> None:
        self.file.close()
        if self.progress is not None:
            self.progress.stop()
        if self.tracker is not None:
            (self.tracker.close if hasattr(self.tracker, "close") else self.tracker.finish)()
