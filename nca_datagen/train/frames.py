"""NCA validation loss by frame position: does the model infer the rule from the frames it has seen?

A sequence is one rule's frames in a row, each `<grid>` patches `</grid>` (the manifest's `sequence` block). The
rule is never given: a model can only infer it in context. Once it has, a frame follows from the one before (an
argmax CA: only near-tie cells are left to the noise), so the loss of late frames can fall towards zero, while
frame 1 (one frame of evidence) stays near what token statistics give. The overall validation loss mixes the two.

- Frame k's loss is the mean cross-entropy of its patch targets. Delimiters are left out: they sit at fixed
  positions, say nothing about the rule, and the last frame lacks its `</grid>` target (the example stops there).
- Frame 0 has no scored targets (the paper masks it): its entry is None, so list index = frame.
- The baselines, from training data: `unigram_loss_by_frame` (the entropy of frame k's patch tokens: a model that
  knows their frequencies and ignores context) and `unigram_loss` (over every scored target: the baseline of the
  overall validation loss). The floor, a model that knows the rule, is about 0 (see `frame_loss_figure`).

Shape legend: N sequences, T target positions, F frames.
"""

from __future__ import annotations

import numpy as np
import torch

from nca_datagen.train.trainer import unigram_loss

UNIGRAM_SEQUENCES = 4096  # training sequences the unigram losses count: at the paper's 10,002 ids and 36 patch
# tokens a frame, 147K tokens a frame, so the plug-in entropy's downward bias is below (V - 1) / 2n = 0.034 nats


def target_frames(context: int, tokens_per_frame: int) -> np.ndarray:
    """The frame of each of the `context` target positions (target t is token t + 1), -1 for a delimiter."""
    position_T = np.arange(1, context + 1)
    offset_T = position_T % tokens_per_frame
    return np.where((offset_T > 0) & (offset_T < tokens_per_frame - 1), position_T // tokens_per_frame, -1)


def loss_by_frame(sums_T: torch.Tensor, counts_T: torch.Tensor, tokens_per_frame: int) -> list[float | None]:
    """Mean loss of each frame's patch targets from per-position sums and counts (`trainer.target_losses`)."""
    frame_T = target_frames(len(sums_T), tokens_per_frame)
    keep = frame_T >= 0
    n = int(frame_T.max()) + 1
    sums_F = np.bincount(frame_T[keep], weights=sums_T.numpy()[keep], minlength=n)
    counts_F = np.bincount(frame_T[keep], weights=counts_T.numpy()[keep], minlength=n)
    return [float(s / c) if c else None for s, c in zip(sums_F, counts_F, strict=True)]


def unigram_losses(data, context: int, max_sequences: int = UNIGRAM_SEQUENCES) -> dict:
    """{"unigram_loss", "unigram_loss_by_frame"} over the first `max_sequences` training sequences of `data` (an
    `NCAData` or a dataset's URL; `NCAData.first_rows`): the losses of a model that predicts every target from the
    token frequencies alone."""
    from nca_datagen.train.nca import NCAData

    data = NCAData.of(data)
    rows = data.first_rows("train", max_sequences, context)
    labels_NT = np.stack([row["labels"].numpy() for row in rows])
    frame_T = target_frames(context, data.info()["tokens_per_frame"])
    by_frame = [unigram_loss(labels_NT[:, frame_T == k]) if k else None for k in range(int(frame_T.max()) + 1)]
    return {"unigram_loss": unigram_loss(labels_NT[labels_NT != -100]), "unigram_loss_by_frame": by_frame,
            "unigram_sequences": len(rows)}


def frame_loss_figure(by_step: dict[int, list], unigram_by_frame: list, floor: float = 0.0, title: str = "",
                      lines: int = 6):
    """Validation loss against frame position, one line per evaluated step (at most `lines` of them, evenly
    spread, first and last kept), with the unigram loss of each frame and the floor. The default floor, 0, is a
    model that knows the rule: in an argmax CA each frame follows from the previous one but for near-tie cells
    (benchmarks/experiment_compare.py measures what those leave on its data). A plain matplotlib Figure, as
    `compare.curves_figure`."""
    from nca_datagen.plotting import matplotlib_agg

    matplotlib_agg()
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    steps = sorted(by_step)
    n = min(lines, len(steps))
    shown = sorted({steps[round(i * (len(steps) - 1) / max(1, n - 1))] for i in range(n)})
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    colours = colormaps["viridis"]
    for i, step in enumerate(shown):
        frames, losses = _scored(by_step[step])
        ax.plot(frames, losses, marker="o", markersize=3, color=colours(0.9 * i / max(1, len(shown) - 1)),
                label=f"step {step}")
    ax.plot(*_scored(unigram_by_frame), linestyle="--", color="grey", label="unigram (token frequencies)")
    ax.axhline(floor, linestyle=":", color="black", label=f"floor ({floor:.2g}: the rule known)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("frame position in the sequence")
    ax.set_ylabel("validation loss (nats / patch token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes: lines fill them
    fig.tight_layout()
    return fig


def _scored(by_frame: list) -> tuple[list[int], list[float]]:
    """(frames, values) of the frames that have a value (frame 0 has none)."""
    pairs = [(k, v) for k, v in enumerate(by_frame) if v is not None]
    return [k for k, _ in pairs], [v for _, v in pairs]
