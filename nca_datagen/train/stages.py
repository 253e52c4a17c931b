"""The two training stages as functions: NCA pre-pre-training, and language training (scratch or transfer).

Each builds its data and model, then calls `trainer.fit`; each writes `ckpt.pt`, `metrics.jsonl` and
`run.json` (what was run, and the final numbers) into its output folder and returns that summary. Each
passes `fit` the meta that defines its run (data or corpus, init, transfer, split, evaluation), so rerunning
into the same folder resumes, or finds the run complete, only when those are unchanged.
Defaults follow the paper's recipe (paper-facts §5) scaled down: NCA uses Adam at 1e-4, no weight decay,
linear warmup over the whole budget; text uses AdamW, warmup then cosine. The NCA model's vocabulary is
the dataset's own (10,002 at paper settings; the paper pads to 64,000): embedding and head are replaced at
transfer, so only the blocks' shape matters downstream.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from nca_datagen.corpus import documents_digest, load_documents, spec_list
from nca_datagen.train import frames
from nca_datagen.train import text as text_data
from nca_datagen.train.model import ModelConfig, build_model, count_params, model_config
from nca_datagen.train.trainer import TrainConfig, checkpoint_digest, fit, load_checkpoint, preflight, unigram_loss
from nca_datagen.train.transfer import check_layers, parse_parts, transfer_weights

NCA_DEFAULTS = dict(lr=1e-4, schedule="linear", warmup=-1, weight_decay=0.0)
TEXT_DEFAULTS = dict(lr=5e-4, schedule="cosine", weight_decay=0.1)
TEXT_WARMUP_FRACTION = 0.05  # text warmup, unless given: 5% of the steps (the paper does not state its own)


def _train_config(defaults: dict, overrides: dict) -> TrainConfig:
    kwargs = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    if "warmup" not in kwargs:
        kwargs["warmup"] = max(1, round(TEXT_WARMUP_FRACTION * kwargs.get("steps", TrainConfig.steps)))
    return TrainConfig(**kwargs)


def _summary(out_dir: Path, kind: str, model, cfg: TrainConfig, metrics: list[dict], **extra) -> dict:
    vals = [m["val_loss"] for m in metrics if "val_loss" in m]
    summary = {
        "kind": kind,
        "model": model.cfg.to_dict(),
        "params": count_params(model),
        "params_without_embeddings": count_params(model, embeddings=False),
        "train": dataclasses.asdict(cfg),
        "steps": metrics[-1]["step"] if metrics else 0,
        "final_loss": metrics[-1]["loss"] if metrics else None,
        "final_val_loss": vals[-1] if vals else None,
        "final_val_ppl": math.exp(vals[-1]) if vals else None,
        "checkpoint": str(out_dir / "ckpt.pt"),
        **extra,
    }
    (out_dir / "run.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def nca_plan(data, out_dir, *, model: str = "tiny", val_sequences: int = 64, **train) -> dict:
    """What `pretrain_nca` will run, checked before anything trains: the config and device, the data (a dataset's
    manifest with a train split that has samples, or a recipe that generates) and the run folder
    (`trainer.preflight`). {"cfg", "info", "meta"}."""
    from nca_datagen.train.nca import NCAData

    cfg = _train_config(NCA_DEFAULTS, train)
    data = NCAData.of(data)
    info = data.info()
    if not data.has_split("train"):
        splits = ", ".join(f"{k}: {v}" for k, v in info["samples"].items()) or "none"
        raise ValueError(f"the NCA dataset {data.label} has no training samples (samples per split: {splits}): "
                         f"build one with a train split")
    model_config(model, info["vocab_size"], info["seq_len"] - 2)  # a known size
    meta = {"stage": "nca", "data_id": info["id"], "size": model, "val_sequences": val_sequences}
    preflight(cfg, out_dir, meta)
    return {"cfg": cfg, "info": info, "meta": meta}


def pretrain_nca(data, out_dir, *, model: str = "tiny", val_sequences: int = 64, resume: bool = True,
                 **train) -> dict:
    """Pre-pre-train a `model`-sized decoder on NCA `data`: a dataset's folder or manifest URL, or an
    `nca.NCAData` (a dataset, or a recipe generated as it is read: a band, mixture or curriculum).

    `train` overrides `TrainConfig` fields (steps, batch_size, lr, device, ...). The validation loss uses the
    first `val_sequences` sequences of the val split, when there is one, overall and by frame position
    (`frames`); the summary adds the unigram baselines, and `frame_loss.png` draws them.
    """
    from nca_datagen.train.nca import NCABatches, NCAData, nca_val_batches

    out_dir, data = Path(out_dir), NCAData.of(data)
    plan = nca_plan(data, out_dir, model=model, val_sequences=val_sequences, **train)
    cfg, info = plan["cfg"], plan["info"]
    context = info["seq_len"] - 2
    source = NCABatches(data, cfg.batch_size, seed=cfg.seed)
    val = nca_val_batches(data, cfg.micro_batch_size or cfg.batch_size, val_sequences) if val_sequences else None
    net = build_model(model_config(model, info["vocab_size"], context), seed=cfg.seed)
    metrics = fit(net, source, cfg, out_dir, val_batches=val, resume=resume, desc="nca", meta=plan["meta"],
                  val_details=lambda s, c: {"val_loss_by_frame": frames.loss_by_frame(s, c, info["tokens_per_frame"])})
    by_frame = {m["step"]: m["val_loss_by_frame"] for m in metrics if "val_loss_by_frame" in m}
    extra = {**frames.unigram_losses(data, context), "val_loss_by_frame": by_frame[max(by_frame)]} if by_frame else {}
    if by_frame:
        name = Path(data.url).name if data.url is not None else data.label
        figure = frames.frame_loss_figure(by_frame, extra["unigram_loss_by_frame"],
                                          title=f"NCA validation loss by frame ({name})")
        figure.savefig(out_dir / "frame_loss.png", dpi=120)
    if data.recipe is not None:
        extra["build_options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data.build_options.items()}
    return _summary(out_dir, "nca", net, cfg, metrics, data=data.label, size=model, **extra)


def text_model_config(model: str | dict, context: int) -> ModelConfig:
    """The text model for a size name, or the block shape of a checkpoint's model config (a dict)."""
    if isinstance(model, dict):
        return dataclasses.replace(ModelConfig(**model), vocab_size=text_data.VOCAB_SIZE, context=context)
    return model_config(model, text_data.VOCAB_SIZE, context)


def text_data_for(documents: list[bytes], batch_size: int, context: int, seed: int, val_fraction: float,
                  eval_tokens: int, eval_batch_size: int):
    """(training batches, validation batches, what they hold) of a corpus's documents: split by document with a
    fixed seed (0), so every run on the same corpus validates on the same documents whatever its training seed
    (one document: split by bytes)."""
    train_docs, val_docs = text_data.split_documents(documents, val_fraction, seed=0)
    source = text_data.TextBatches(text_data.token_stream(train_docs), batch_size, context, seed=seed)
    val = text_data.val_batches(text_data.token_stream(val_docs), eval_batch_size, context, eval_tokens)
    return source, val, {"documents": len(documents), "split": "bytes" if len(documents) == 1 else "documents",
                         "train_documents": len(train_docs), "val_documents": len(val_docs),
                         "train_tokens": int(source.stream.numel()), "val_tokens": sum(int(x.numel()) for x, _ in val),
                         "unigram_loss": unigram_loss(source.stream.numpy()),  # the scratch model's first bar
                         "sha256": documents_digest(documents)}


def text_plan(corpus, out_dir, *, model: str = "tiny", init: str | None = None, pending_init: str | None = None,
              transfer="all", reinit_layers=(), context: int = 256, val_fraction: float = 0.05,
              eval_tokens: int = 65536, documents: list[bytes] | None = None, **train) -> dict:
    """What `train_text` will run, checked before anything trains: the config and device, the `init` checkpoint
    and the parts and layers kept from it, the corpus (text, a validation split with a window, a training split
    with a batch) and the run folder (`trainer.preflight`).

    `pending_init` is the model size of an init checkpoint not written yet (compare checks its text runs before
    pre-pre-training): its digest is then left out of the run folder's check. `documents`, if given, are the
    corpus already read (compare reads it once for both runs).
    """
    cfg = _train_config(TEXT_DEFAULTS, train)
    state = load_checkpoint(init) if init and pending_init is None else None  # before the corpus: fails fast
    has_init = state is not None or pending_init is not None
    model_cfg = text_model_config(pending_init or (state["model_config"] if state else model), context)
    parts, layers = parse_parts(transfer), check_layers(reinit_layers, model_cfg.depth)
    documents = load_documents(corpus) if documents is None else documents
    source, val, corpus_info = text_data_for(documents, cfg.batch_size, context, cfg.seed, val_fraction,
                                             eval_tokens, cfg.micro_batch_size or cfg.batch_size)
    # the corpus and the init checkpoint by content, not as typed: ./c/ and c are one corpus, files added to c
    # make another, and a checkpoint replaced in place is another starting point
    meta = {"stage": "text", "corpus_sha256": corpus_info["sha256"],
            "init_sha256": checkpoint_digest(init) if state else None,
            "transfer": list(parts) if has_init else None, "reinit_layers": list(layers) if has_init else None,
            "val_fraction": val_fraction, "eval_tokens": eval_tokens}
    preflight(cfg, out_dir, meta, unknown=("init_sha256",) if pending_init else ())
    return {"cfg": cfg, "state": state, "model_config": model_cfg, "source": source, "val": val,
            "corpus_info": corpus_info, "meta": meta}


def train_text(corpus, out_dir, *, model: str = "tiny", init: str | None = None, transfer="all",
               reinit_layers=(), context: int = 256, val_fraction: float = 0.05, eval_tokens: int = 65536,
               resume: bool = True, documents: list[bytes] | None = None, **train) -> dict:
    """Train a byte-level language model on `corpus` from scratch, or from the NCA checkpoint `init`
    (then the block shape comes from the checkpoint, and `transfer` / `reinit_layers` choose what is kept).

    `train` overrides `TrainConfig` fields. Validation covers at most `eval_tokens` tokens of the held-out
    documents (0: all of them). `documents`: the corpus already read, as `text_plan` takes it.
    """
    out_dir = Path(out_dir)
    plan = text_plan(corpus, out_dir, model=model, init=init, transfer=transfer, reinit_layers=reinit_layers,
                     context=context, val_fraction=val_fraction, eval_tokens=eval_tokens, documents=documents,
                     **train)
    cfg, state, meta = plan["cfg"], plan["state"], plan["meta"]
    net = build_model(plan["model_config"], seed=cfg.seed)
    report = transfer_weights(net, state["model"], transfer, reinit_layers) if state else None
    desc = "text (scratch)" if report is None or not report["kept"] else "text (from init)"
    metrics = fit(net, plan["source"], cfg, out_dir, val_batches=plan["val"], resume=resume, desc=desc, meta=meta)
    if report is not None:  # after fit, which refuses a folder holding another run before anything is written
        (out_dir / "transfer.json").write_text(json.dumps(report, indent=2) + "\n")
    return _summary(out_dir, "text", net, cfg, metrics, corpus=spec_list(corpus),
                    corpus_info=plan["corpus_info"], init=str(Path(init).resolve()) if init else None,
                    val_fraction=val_fraction, eval_tokens=eval_tokens,
                    transfer={"parts": meta["transfer"], "reinit_layers": meta["reinit_layers"]} if report else None)
