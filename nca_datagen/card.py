"""The dataset card: `README.md` with Hugging Face YAML front matter, plus PNG figures, beside `manifest.json`.

The front matter names the shards in `configs` only when they are plain `.tar` (`--compression none`): Hugging
Face's WebDataset reader cannot open `.tar.zst`, so for zstd shards the card says so instead.

`write_card(fs, root, manifest)` is called once every shard and table is written, before `manifest.json` is
(`pipelines/finish.py`). The text comes from the manifest alone and is defensive about its shape: a section whose
keys are missing is left out rather than failing the build. The figures are `card_figures.py`'s.
"""

from __future__ import annotations

from nca_datagen.card_figures import draw_figures
from nca_datagen.storage import write_atomic
from nca_datagen.tokenizer import default_context
from nca_datagen.units import format_bytes

PAPER = "Training Language Models via Neural Cellular Automata"
PAPER_URL = "https://arxiv.org/abs/2603.10055"
TAGS = ("synthetic", "cellular-automata", "nca", "pre-pre-training")
# Where the card's code snippets say the dataset is: the reader substitutes their own (tests substitute theirs).
DATASET_URL = "path/or/s3://url/to/this/dataset"
DATASET_DIR = "path/to/this/dataset"  # Hugging Face `datasets` reads a local folder or a Hub repo, not s3://


def write_card(fs, root: str, manifest: dict, *, figures: bool = True) -> dict[str, bytes]:
    """Write README.md (and figures, when `figures`) under `root` on filesystem `fs`; returns {file name: bytes}
    of what it wrote (the manifest records their sizes and sha256)."""
    root = root.rstrip("/")
    written: dict[str, bytes] = {}
    images: dict[str, str] = {}  # figure file name -> caption
    if figures:
        for name, (caption, data) in draw_figures(manifest, fs, root).items():
            write_atomic(fs, f"{root}/{name}", data)
            written[name] = data
            images[name] = caption
    text = render_card(manifest, images).encode("utf-8")
    write_atomic(fs, f"{root}/README.md", text)
    written["README.md"] = text
    return written


# -------------------------------------------------------------------------------------------------- text


def render_card(manifest: dict, images: dict[str, str] | None = None) -> str:
    """The card's markdown. `images` maps figure file names (beside README.md) to captions."""
    images = images or {}
    cfg = manifest.get("config") or {}
    splits = manifest.get("splits") or {}
    parts = [front_matter(manifest, _webdataset_files(splits)), _intro(cfg)]
    if "preview.png" in images:
        parts.append(f"![{images['preview.png']}](preview.png)\n\n*{images['preview.png']}*")
    parts += [_recipe(cfg), _totals(splits), _acceptance(splits, cfg)]
    if "complexity.png" in images:
        parts.append(f"![{images['complexity.png']}](complexity.png)\n\n*{images['complexity.png']}*")
    if "token-frequency.png" in images:
        parts.append(f"![{images['token-frequency.png']}](token-frequency.png)\n\n"
                     f"*{images['token-frequency.png']}*")
    parts += [_format(manifest.get("sequence") or {}), _loading(splits), _provenance(manifest), _citation()]
    return "\n\n".join(p for p in parts if p).rstrip() + "\n"


def render_export_card(manifest: dict, data_files: dict[str, str] | None, body: str) -> str:
    """The card of an export (`nca_datagen.exports`): its source's front matter, introduction and recipe, `configs`
    naming `data_files` ({split: glob}, None for none), then `body` (the format's layout and how to read it)."""
    cfg = manifest.get("config") or {}
    export = (f"This folder is the `{manifest.get('export_format')}` export of the nca-datagen dataset whose shards "
              f"have digest `{manifest.get('dataset_digest')}`, one set of files per source shard: "
              f"`nca-datagen verify` checks it, and `--regenerate N` rebuilds N of its source shards from the recipe "
              f"and re-exports them byte for byte.")
    parts = [front_matter(manifest, data_files), _intro(cfg), export, _recipe(cfg),
             _totals(manifest.get("splits") or {}), body, _provenance(manifest), _citation()]
    return "\n\n".join(p for p in parts if p).rstrip() + "\n"


def front_matter(manifest: dict, data_files: dict[str, str] | None = None) -> str:
    """The YAML front matter Hugging Face reads; with `data_files` ({split: glob beside the card}) its `configs`
    name them: what `load_dataset(folder)` and the Hub's viewer read."""
    splits = manifest.get("splits") or {}
    samples = sum(_split_totals(s).get("samples", 0) or 0 for s in splits.values())
    lines = ["---", f"license: {manifest.get('license', 'apache-2.0')}", "task_categories:", "- text-generation",
             "tags:", *(f"- {t}" for t in TAGS), f"pretty_name: {_pretty_name(manifest)}"]
    if samples:
        lines.append(f"size_categories:\n- {_size_category(samples)}")
    if data_files:
        lines += ["configs:", "- config_name: default", "  data_files:"]
        for name, glob in data_files.items():
            lines += [f"  - split: {name}", f"    path: \"{glob}\""]
    lines.append("---")
    return "\n".join(lines)


def _webdataset_files(splits: dict) -> dict[str, str] | None:
    """The shards `configs` names: plain tar only, as HF's WebDataset reader cannot open .tar.zst (pointing it
    there only fails later)."""
    return {name: f"{name}/*{_shard_ext(split)}" for name, split in splits.items()} if plain_tar(splits) else None


def _pretty_name(manifest: dict) -> str:
    band = (manifest.get("config") or {}).get("band")
    return f"NCA pre-pre-training tokens, gzip band {_band_text(band)}" if band else "NCA pre-pre-training tokens"


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < limit:
            return name
    return "100M<n<1B"


def _shard_ext(split: dict) -> str:
    paths = [s.get("path", "") for s in split.get("shards") or []] + [str(split.get("pattern", ""))]
    return ".tar.zst" if any(p.endswith(".tar.zst") for p in paths) else ".tar"


def plain_tar(splits: dict) -> bool:
    """Whether every split's shards are plain `.tar` (`--compression none`): the only shards Hugging Face
    `datasets` and the Hub's viewer can read, so the only ones the front matter's `configs` name."""
    return bool(splits) and all(_shard_ext(split) == ".tar" for split in splits.values())


def _band_text(band: dict | None) -> str:
    from nca_datagen.complexity import Band

    return Band.from_dict({"lo": 0.0, "hi": 1.0, **band}).label if band else "?"


def _intro(cfg: dict) -> str:
    band = cfg.get("band")
    band_line = (f" Only rules whose trajectories compress to a gzip ratio in the open band "
                 f"({band.get('lo')}, {band.get('hi')}) — \"{_band_text(band)}\" — are kept.") if band else ""
    return (f"# {_pretty_name({'config': cfg})}\n\n"
            f"Synthetic token sequences from random **neural cellular automata** (NCA), for *pre-pre-training* "
            f"language models as in [{PAPER}]({PAPER_URL}) (Lee, Han, Kumar, Agrawal, 2026). In the paper, 164M "
            f"NCA tokens before language pre-training improve perplexity by up to 6% and converge up to 1.6x "
            f"faster than training from scratch, beating 1.6B tokens of natural-language pre-pre-training.\n\n"
            f"Each sequence is one random rule (a 3x3 conv + MLP on a periodic grid) rolled out from a random "
            f"initial state; every frame is cut into patches, each patch is one token, and frames are wrapped in "
            f"`<grid>` ... `</grid>` delimiters. Rules are never mixed within a sequence.{band_line} "
            f"Generated by `nca-datagen`; the recipe below regenerates every shard byte for byte.")


def _recipe(cfg: dict) -> str:
    if not cfg:
        return ""
    nca = cfg.get("nca") or {}
    rows = []
    if nca.get("grid"):
        rows.append(("grid", f"{nca['grid'][0]} x {nca['grid'][1]} cells, periodic boundary"))
    for key, label, fmt in (("states", "states (alphabet)", "{}"), ("patch", "patch", "{0} x {0} cells per token"),
                            ("hidden", "rule network", "3x3 conv -> {0[0]}, 1x1 -> {0[1]}, ReLU, 1x1 -> states"),
                            ("burn_in", "burn-in steps", "{}"), ("frames", "frames per sequence", "{}"),
                            ("frame_stride", "steps between frames", "{}"), ("temperature", "update temperature",
                                                                              "{}")):
        if key in nca:
            rows.append((label, fmt.format(nca[key])))
    vocab = _vocab(nca)
    if vocab:
        rows.append(("token ids", f"0..{vocab - 3} patches, {vocab - 2} `<grid>`, {vocab - 1} `</grid>`"))
        seq = _seq_len(nca)
        if seq:
            rows.append(("tokens per sequence", f"{seq:,}"))
    if cfg.get("band"):
        b = cfg["band"]
        rows.append(("complexity band", f"{_band_text(b)}: keep iff {b.get('lo')} < gzip ratio < {b.get('hi')}"))
    for key, label in (("probe_frames", "probe frames for the filter"), ("rules_per_shard", "rules per shard"),
                       ("sims_per_rule", "simulations per rule"), ("seed", "run seed")):
        if key in cfg:
            rows.append((label, f"{cfg[key]}"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return ("## Recipe\n\n"
            "The gzip ratio of a candidate rule is measured on its own probe trajectory: the first `probe_frames` "
            "frames after burn-in, patch tokens without delimiters, as int32 little-endian bytes, "
            "`len(gzip(bytes, level 9)) / len(bytes)`. Higher means less compressible, i.e. more complex.\n\n"
            f"| setting | value |\n|---|---|\n{table}")


def _vocab(nca: dict) -> int | None:
    try:
        return int(nca["states"]) ** (int(nca["patch"]) ** 2) + 2
    except (KeyError, TypeError, ValueError):
        return None


def _seq_len(nca: dict) -> int | None:
    try:
        h, w = nca["grid"]
        p = int(nca["patch"])
        return int(nca["frames"]) * ((h // p) * (w // p) + 2)
    except (KeyError, TypeError, ValueError):
        return None


def _split_totals(split: dict) -> dict:
    """samples, tokens, bytes, shards of one split: the manifest's own numbers, else summed over its shards."""
    shards = split.get("shards") or []
    totals = {k: split[k] for k in ("samples", "tokens", "bytes") if isinstance(split.get(k), (int, float))}
    for key in ("samples", "tokens", "bytes"):
        if key not in totals and shards:
            totals[key] = sum(int(s.get(key, 0) or 0) for s in shards)
    if split.get("num_shards") is not None or shards:
        totals["shards"] = split.get("num_shards", len(shards))
    return totals


def _totals(splits: dict) -> str:
    if not splits:
        return ""
    rows = []
    for name, split in splits.items():
        t = _split_totals(split)
        rows.append(f"| {name} | {_n(t.get('shards'))} | {_n(t.get('samples'))} | {_n(t.get('tokens'))} | "
                    f"{_size(t.get('bytes'))} |")
    return "## Size\n\n| split | shards | sequences | tokens | bytes on disk |\n|---|---|---|---|---|\n" + \
        "\n".join(rows)


def _acceptance(splits: dict, cfg: dict) -> str:
    rows = []
    for name, split in splits.items():
        c = split.get("counts") or {}
        cand = c.get("candidates")
        if not cand:
            continue
        cells = [f"{_n(c.get(k))} ({100 * (c.get(k) or 0) / cand:.1f}%)" for k in ("kept", "too_simple", "too_complex")]
        rows.append(f"| {name} | {_n(cand)} | " + " | ".join(cells) + " |")
    if not rows:
        return ""
    band = _band_text(cfg.get("band"))
    return (f"## Filter\n\nCandidate rules are probed in id order; each shard keeps the first rules inside the "
            f"band {band}. Rejected rules are counted by reason (ratio at or below the band: too simple; at or "
            f"above: too complex).\n\n| split | candidates | kept | too simple | too complex |\n"
            f"|---|---|---|---|---|\n" + "\n".join(rows))


def _format(sequence: dict) -> str:
    """The shard layout and the training example, cut from this dataset's own sequence length."""
    seq_len = sequence.get("seq_len")
    example = ""
    if seq_len and seq_len > 2:
        context = default_context(seq_len)  # the loader's default, the paper's 1024 of 1026
        example = (f" A training example, as in the paper and `NCADataset`: input = seq[0:{context}], target = "
                   f"seq[1:{context + 1}], with the first frame's targets ignored (-100).")
    return ("## Format\n\nEach split folder holds WebDataset shards (`shard-000000.tar.zst`, ...: a tar compressed "
            "as a whole with zstd; `.tar` when written with `--compression none`). Per sample:\n\n"
            f"- `KEY.tokens.npy`: the full token sequence{f' ({seq_len:,} tokens)' if seq_len else ''}, uint16\n"
            "- `KEY.json`: rule id, simulation index, the sequence's gzip ratio, its rule's probe ratio, the cell "
            "change rate and the number of colours in the last frame\n\n"
            "`manifest.json` holds the full recipe, per-shard sha256, totals, acceptance counts and histograms; "
            "it is written last, so it never names a missing shard." + example)


def _loading(splits: dict) -> str:
    split = next(iter(splits), "train")
    ext = _shard_ext(splits.get(split, {})) if splits else ".tar.zst"
    n = len(splits.get(split, {}).get("shards") or []) if splits else 0
    url = (splits.get(split) or {}).get("pattern") if splits else None
    url = url or f"{split}/shard-{{000000..{max(n - 1, 0):06d}}}{ext}"
    # webdataset opens `pipe:CMD` URLs by running CMD; brace patterns expand before that, one shard per URL
    wds_url = f"pipe:zstd -dc {url}" if ext == ".tar.zst" else url
    return ("## Loading\n\nWith the project's loader, `NCADataset`: a torch `IterableDataset` that splits shards by "
            "rank and worker, shuffles per epoch, resumes exactly, and yields the paper's `input_ids`/`labels`:\n\n"
            "```python\nfrom nca_datagen.loader import NCADataset\n\n"
            f"ds = NCADataset(\"{DATASET_URL}\", \"{split}\")\n"
            "for sample in ds:\n"
            "    input_ids, labels = sample[\"input_ids\"], sample[\"labels\"]  # int64; labels -100 on frame one\n"
            "```\n\n"
            "The raw sequences, in manifest order, each shard checked against its sha256:\n\n"
            "```python\nfrom nca_datagen.loader import iter_sequences\n\n"
            f"for tokens in iter_sequences(\"{DATASET_URL}\", \"{split}\"):\n"
            "    ...  # one uint16 numpy array per sequence\n```\n\n"
            "With stock [WebDataset](https://github.com/webdataset/webdataset) (`pip install webdataset`), "
            "from this folder"
            + (" (it does not decompress zstd itself, so `.tar.zst` shards go through a `pipe:` URL)"
               if ext == ".tar.zst" else "") + ":\n\n"
            "```python\nimport webdataset as wds\n\n"
            f"ds = wds.WebDataset(\"{wds_url}\", shardshuffle=False).decode()\n"
            "for sample in ds:\n    tokens = sample[\"tokens.npy\"]  # uint16 array, the whole sequence\n"
            "    meta = sample[\"json\"]  # rule id, simulation, gzip ratios\n```\n\n"
            f"{_hugging_face(splits, split)}\n\n"
            "Inspect the dataset from the command line: `nca-datagen inspect PATH_OR_URL`.")


def _hugging_face(splits: dict, split: str) -> str:
    """How Hugging Face `datasets` reads this dataset: through the front matter's `configs` (plain tar only)."""
    if not plain_tar(splits):
        return ("Hugging Face `datasets` and the Hub's dataset viewer read only plain-tar WebDataset shards, not these "
                "zstd-compressed ones: build with `nca-datagen build ... --compression none` to load it with "
                "`load_dataset`.")
    return ("With Hugging Face `datasets` (the front matter above names the shards; the Hub's viewer reads the same):"
            "\n\n```python\nfrom datasets import load_dataset\n\n"
            f"ds = load_dataset(\"{DATASET_DIR}\", split=\"{split}\")  # or the dataset's Hub repo id\n"
            "for sample in ds:\n"
            "    tokens, meta = sample[\"tokens.npy\"], sample[\"json\"]  # list of ints, dict\n```")


def _provenance(manifest: dict) -> str:
    rows = []
    for key in ("tool_version", "format_version", "created"):
        if manifest.get(key) is not None:
            rows.append(f"| {key} | {manifest[key]} |")
    prov = manifest.get("provenance") or {}
    for key, value in prov.items():
        if isinstance(value, (str, int, float, bool)):
            rows.append(f"| {key} | {value} |")
    if not rows:
        return ""
    return "## Provenance\n\n| field | value |\n|---|---|\n" + "\n".join(rows)


def _citation() -> str:
    return ("## Citation\n\n```bibtex\n@article{lee2026nca,\n  title   = {" + PAPER + "},\n"
            "  author  = {Lee and Han and Kumar and Agrawal},\n  journal = {arXiv preprint arXiv:2603.10055},\n"
            "  year    = {2026}\n}\n```")


def _n(x) -> str:
    return f"{int(x):,}" if isinstance(x, (int, float)) and x is not None else "—"


def _size(b) -> str:
    return format_bytes(b) if isinstance(b, (int, float)) else "—"
