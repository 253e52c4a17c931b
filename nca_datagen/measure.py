"""`nca-datagen complexity`: your own corpus on the NCA bands' gzip scale.

The measure is the paper's, applied to text: every byte is one token, a window of 360 tokens (the size of the NCA
probe) is written as int32 little-endian and gzipped at level 9; the ratio is compressed/raw size, averaged over
windows. Byte tokens carry at most 8 of 32 bits, so their ceiling (random bytes) is lower than NCA tokens' 0.669;
the "NCA-scale estimate" rescales by the two ceilings: a rough guide, which `train sweep` measures properly.
"""

from __future__ import annotations

import json
import shlex

import click
import numpy as np

from nca_datagen.complexity import PAPER_BAND_SHARES, PRESETS, Band, bytes_gzip_ratio, gzip_ratio, gzip_size

CHUNK_TOKENS = 360  # the paper's probe: 10 frames x 36 patch tokens, delimiters removed
NCA_RANDOM_CEILING = 0.669  # uniformly random NCA patch tokens (10^4 ids) under the paper's measure
PAPER_BEST = {(0.5, 1.0): "web text, math", (0.3, 0.4): "code"}  # paper-facts.md §3 and §6


def corpus_chunks(docs: list[bytes], chunk: int = CHUNK_TOKENS, max_chunks: int = 20_000) -> list[bytes]:
    """Every whole `chunk`-byte window of every document (a document's ragged tail is dropped), then at most
    `max_chunks` of them, evenly spaced, so a big corpus is sampled the same way on every run."""
    chunks = [d[i:i + chunk] for d in docs for i in range(0, len(d) - chunk + 1, chunk)]
    if len(chunks) > max_chunks:
        chunks = [chunks[i] for i in np.linspace(0, len(chunks) - 1, max_chunks).round().astype(int)]
    return chunks


def measure_corpus(docs: list[bytes], chunk: int = CHUNK_TOKENS, max_chunks: int = 20_000) -> dict:
    """gzip ratios of a corpus: bytes as int32 tokens (the NCA measure), raw bytes, and the random ceiling."""
    chunks = corpus_chunks(docs, chunk, max_chunks)
    if not chunks:
        longest = max((len(d) for d in docs), default=0)
        raise ValueError(f"the corpus has no document of at least {chunk} bytes (longest: {longest}); "
                         f"give more text or a smaller --chunk")
    as_tokens = np.array([gzip_ratio(np.frombuffer(c, np.uint8)) for c in chunks])
    as_bytes = np.array([bytes_gzip_ratio(c) for c in chunks])
    rng = np.random.default_rng(0)  # the ceiling of this encoding: uniformly random bytes, same measure
    ceiling = float(np.mean([gzip_ratio(rng.integers(0, 256, chunk, dtype=np.uint8)) for _ in range(64)]))
    total = sum(len(d) for d in docs)
    whole = sum(gzip_size(d) for d in docs) / total
    mean = float(as_tokens.mean())
    return {
        "documents": len(docs), "bytes": total, "chunk_tokens": chunk, "chunks": len(chunks),
        "token_ratio": _stats(as_tokens), "byte_ratio": _stats(as_bytes), "whole_document_byte_ratio": whole,
        "random_byte_token_ratio": ceiling,
        "nca_scale_estimate": mean / ceiling * NCA_RANDOM_CEILING,
    }


def _stats(x: np.ndarray) -> dict:
    q = np.quantile(x, [0.1, 0.5, 0.9])
    return {"mean": float(x.mean()), "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2])}


@click.command("complexity")
@click.argument("paths", nargs=-1, required=True)
@click.option("--chunk", default=CHUNK_TOKENS, show_default=True, type=click.IntRange(16),
              help="Tokens (bytes) per measured window; 360 is the paper's probe size.")
@click.option("--max-chunks", default=20_000, show_default=True, type=click.IntRange(1),
              help="Windows measured at most (evenly spaced over the corpus).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def complexity_command(paths, chunk, max_chunks, as_json):
    """gzip ratio of your own text or code, beside the NCA complexity bands.

    PATHS are files, folders (recursive), globs, .jsonl files (their "text" field) or `stdlib` (this Python's
    standard-library sources): the same corpus spec as `nca-datagen train text`.

    \b
    The measure is the paper's, applied to text: every byte is one token, a window of 360 tokens (the size of
    the NCA probe) is written as int32 little-endian and gzipped at level 9; the ratio is compressed/raw size,
    averaged over windows. Byte tokens carry at most 8 of 32 bits, so their ceiling (random bytes) is lower than
    NCA tokens' 0.669; the "NCA-scale estimate" rescales by the two ceilings. It is a rough guide: which band
    helps your corpus is measured by `nca-datagen train sweep`.
    """
    from nca_datagen.corpus import binary_note, read_corpus

    try:
        docs, binary = read_corpus(list(paths))
        if binary:
            click.echo(f"note: {binary_note(binary)}", err=True)
        result = measure_corpus(docs, chunk, max_chunks)
    except (ValueError, OSError) as exc:  # a corpus problem, not a usage one: one line, no usage text
        raise click.ClickException(str(exc)) from exc
    result["paths"] = list(paths)
    result["paper_bands"] = [{"band": [lo, hi], "share_of_random_rules": share, "paper_best_for": PAPER_BEST.get(
        (lo, hi))} for (lo, hi), share in PAPER_BAND_SHARES]
    result["presets"] = dict(PRESETS)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    _print_complexity(result)


def _print_complexity(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from nca_datagen.units import format_bytes

    console = Console(highlight=False)
    console.print(f"[bold]{', '.join(r['paths'])}[/bold]: {r['documents']:,} documents, {format_bytes(r['bytes'])}; "
                  f"{r['chunks']:,} windows of {r['chunk_tokens']} tokens measured")
    t = Table(title="gzip ratio (compressed / raw, level 9; higher = less compressible)", title_justify="left")
    t.add_column("measure")
    for col in ("mean", "p10", "median", "p90"):
        t.add_column(col, justify="right")
    for key, label in (("token_ratio", "bytes as int32 tokens (NCA measure)"),
                       ("byte_ratio", f"raw bytes, {r['chunk_tokens']}-byte windows")):
        s = r[key]
        t.add_row(label, *(f"{s[c]:.3f}" for c in ("mean", "p10", "median", "p90")))
    t.add_row("raw bytes, whole documents", f"{r['whole_document_byte_ratio']:.3f}", "", "", "")
    t.add_row("random bytes as int32 tokens", f"{r['random_byte_token_ratio']:.3f}", "", "", "")
    console.print(t)
    est = r["nca_scale_estimate"]
    console.print(f"NCA-scale estimate: {r['token_ratio']['mean']:.3f} / {r['random_byte_token_ratio']:.3f} x "
                  f"{NCA_RANDOM_CEILING} = [bold]{est:.3f}[/bold]\n(your ratio as a share of random bytes' ratio, "
                  f"times random NCA tokens' ratio: a rough guide)")
    bands = Table(title="NCA complexity bands (probe gzip ratio of random rules, paper)", title_justify="left")
    for col in ("band", "random rules", "paper's best for", ""):
        bands.add_column(col)
    for (lo, hi), share in PAPER_BAND_SHARES:
        here = "◀ your corpus" if lo < est <= hi or (lo == 0 and est <= hi) else ""
        bands.add_row(Band(lo, hi).label, f"{share:.1%}", PAPER_BEST.get((lo, hi), ""), here)
    console.print(bands)
    console.print("The paper's recommendations: web text and math 50%+, code 30-40% (presets: "
                  + ", ".join(f"--complexity {k} = {v}" for k, v in PRESETS.items()) + ").\n"
                  "To measure which band helps your corpus, pre-pre-train small models per band and compare:\n"
                  "  nca-datagen train sweep " + _text_args(r["paths"]) + " --out sweep/", soft_wrap=True)


def _text_args(paths: list[str]) -> str:
    if len(paths) > 3:  # a shell-expanded glob: show the form, not every file
        return "--text PATH [--text PATH ...]"
    return " ".join(f"--text {shlex.quote(p)}" for p in paths)
