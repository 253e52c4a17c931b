"""The dataset card's figures, drawn from the manifest and a few samples of the first shards (`figures.py` draws).

- `complexity.png`: probe-ratio histograms of candidate vs kept rules (and per-sample ratios), band edges marked;
- `preview.png`: the first kept rules of the train split, one simulation each, read from the first shard;
- `token-frequency.png`: token rank/frequency, log-log, over up to `SAMPLE_LIMIT` samples, delimiters dropped.

Reading a few samples costs a fraction of a second, far less than regenerating them from the recipe. A figure
that cannot be drawn is skipped with a warning: the card must never fail the dataset it belongs to.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from nca_datagen.figures import PreviewRow, figure_png, plot_histograms, plot_rank_frequency, png_bytes, render_strip
from nca_datagen.manifest import band_of, merged_histograms

PREVIEW_RULES = 6  # rows in the card's preview strip
PREVIEW_FRAMES = 12  # frames per row (a full paper sequence has 27; 12 keep the picture readable)
SAMPLE_LIMIT = 256  # samples read for the preview and token-frequency figures (~260K tokens at paper settings)


def preload() -> None:
    """Import and warm what the card and the manifest's tables use: matplotlib (~0.7 s on first use, more while it
    builds its font cache), its Agg backend, pyarrow's Parquet writer, PIL's plugins. The build calls it in a
    thread while Ray workers make the shards and the driver mostly waits, so those seconds leave the build's
    closing step. Failures are left to the real use to report."""
    try:
        from nca_datagen.plotting import matplotlib_agg

        matplotlib_agg()
        import pyarrow as pa
        import pyarrow.parquet as pq
        from matplotlib.figure import Figure
        from PIL import Image, ImageDraw, ImageFont  # noqa: F401

        fig = Figure(figsize=(1, 1))
        fig.text(0, 0, "warm")
        fig.savefig(io.BytesIO(), format="png")
        pq.write_table(pa.table({"x": [0]}), io.BytesIO(), compression="zstd")
        Image.init()
    except Exception:  # an optimisation only: draw_figures reports what is really wrong
        pass


def draw_figures(manifest: dict, fs=None, root: str | None = None) -> dict[str, tuple[str, bytes]]:
    """{file name: (caption, PNG bytes)} for every figure that can be drawn: histograms from the manifest,
    preview and token frequencies from samples of the dataset's first shard(s) (needs `fs` and `root`)."""
    out: dict[str, tuple[str, bytes] | None] = {}
    hists = _optional("histograms", "", lambda: merged_histograms(manifest))
    if hists:
        out["complexity.png"] = _optional(
            "complexity.png", "gzip ratio of candidate and kept rules (probe trajectory) and of the kept sequences; "
            "dashed lines mark the band edges", lambda: _complexity_png(hists, manifest))
    got = _optional("samples", "", lambda: read_samples(fs, root, manifest)) if fs is not None else None
    if got:
        cfg, split, samples = got
        rows = first_kept_rules(samples, PREVIEW_RULES)
        out["preview.png"] = _optional(
            "preview.png", f"the first {len(rows)} kept rules of the {split} split (simulation 0 of each), frames "
            f"left to right from step s{cfg.nca.burn_in}; colour = cell state, label = rule id and probe gzip "
            "ratio", lambda: _preview_png(cfg, split, rows))
        out["token-frequency.png"] = _optional(
            "token-frequency.png", f"patch-token rank/frequency (log-log) of {len(samples)} {split} sequences, "
            "delimiters dropped", lambda: _token_png(cfg, split, samples))
    return {k: v for k, v in out.items() if v}


def _optional(name: str, caption: str, make):
    """(caption, make()) or None: a figure that fails is skipped with a warning, never fails the card."""
    try:
        result = make()
    except Exception as exc:  # figures are optional; the manifest write must not fail on one
        warnings.warn(f"dataset card: skipped {name} ({type(exc).__name__}: {exc})", stacklevel=3)
        return None
    return (caption, result) if caption else result


def read_samples(fs, root: str, manifest: dict, limit: int = SAMPLE_LIMIT):
    """(DatasetConfig, split, [(key, tokens, meta)]): up to `limit` samples of the first shards of the train
    split (else the first split), streamed from the shards the manifest names. Shards hold their rules'
    simulations contiguously, so the first samples cover the first kept rules."""
    from nca_datagen.config import DatasetConfig
    from nca_datagen.shards import iter_shard_samples

    cfg = DatasetConfig.from_dict(manifest["config"])
    splits = manifest["splits"]
    split = "train" if "train" in splits else next(iter(splits))
    samples = []
    for shard in splits[split]["shards"]:
        for sample in iter_shard_samples(f"{root.rstrip('/')}/{shard['path']}", fs=fs):
            samples.append(sample)
            if len(samples) >= limit:
                return cfg, split, samples
    if not samples:
        raise ValueError(f"the {split} split has no samples")
    return cfg, split, samples


def first_kept_rules(samples, rules: int) -> list[tuple[int, float, np.ndarray]]:
    """(rule id, probe ratio, tokens) of the first `rules` rules seen, each by its lowest simulation index."""
    best: dict[int, tuple[int, float, np.ndarray, int]] = {}  # insertion order = order of first appearance
    for _, tokens, meta in samples:
        rule, sim = int(meta["rule_id"]), int(meta.get("sim", 0))
        if (rule in best and best[rule][3] <= sim) or (rule not in best and len(best) >= rules):
            continue
        best[rule] = (rule, float(meta.get("probe_complexity", float("nan"))), tokens, sim)
    return [(rule, ratio, tokens) for rule, ratio, tokens, _ in best.values()]


def _complexity_png(hists: dict, manifest: dict) -> bytes:
    return figure_png(plot_histograms(hists, band_of(manifest), title="gzip ratio, all splits"))


def _preview_png(cfg, split: str, rows) -> bytes:
    from nca_datagen.tokenizer import sequence_to_frames

    n = cfg.nca
    frames = sequence_to_frames(np.stack([t for _, _, t in rows]), n)[:, :PREVIEW_FRAMES]
    drawn = [PreviewRow(rule, ratio, "kept", f, label=f"rule {rule}   {ratio:.3f}")
             for (rule, ratio, _), f in zip(rows, frames, strict=True)]
    title = f"{split}: first {len(drawn)} kept rules, band {cfg.band}"
    img = render_strip(drawn, n.states, scale=max(2, 36 // max(n.grid)), title=title, first_step=n.burn_in,
                       stride=n.frame_stride)
    return png_bytes(img)


def _token_png(cfg, split: str, samples) -> bytes:
    from nca_datagen.complexity import patch_tokens

    tokens = np.concatenate([patch_tokens(t, cfg.nca.tokens_per_frame).ravel() for _, t, _ in samples])
    title = f"token rank/frequency, {len(samples)} {split} sequences"
    return figure_png(plot_rank_frequency(tokens, cfg.nca.vocab_size - 2, title=title))
