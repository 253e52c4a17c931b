"""Pictures and the preview / inspect / complexity commands, on tiny inputs (torch backend: no JIT warm-up)."""

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from nca_datagen.cli import main
from nca_datagen.complexity import Band
from nca_datagen.config import DatasetConfig, NCAConfig
from nca_datagen.palette import MAX_DRAWABLE_STATES, PALETTE_HEX, colourise, palette
from nca_datagen.viz import PreviewRow, render_gif_frames, render_strip, sample_preview, save_image

# Datasets for the tests are built with the compiled CPU path when it is installed: after its one-time compile
# (cached on disk) it is ~50x faster than the torch reference on tiny shards; every backend gives the same tokens.
BUILD_BACKEND = "numba" if importlib.util.find_spec("numba") else "torch"
DOCS = Path(__file__).resolve().parents[1] / "docs"
# The exact commands the README shows for the committed pictures (their --out is rewritten to a tmp dir here).
README_PREVIEWS = {
    "preview-50plus.png": "preview --complexity 50%+ --rules 8 --seed 0 --out docs/preview-50plus.png",
    "preview-30-40.png": "preview --complexity 30-40% --rules 8 --seed 0 --out docs/preview-30-40.png",
    "preview-50plus.gif": "preview --complexity 50%+ --rules 8 --seed 0 --frames 27 --out docs/preview-50plus.gif",
}


@pytest.fixture(autouse=True)
def torch_backend(monkeypatch):
    """Commands run on the torch reference: no compile step, and the README pictures (made with the default
    backend) must come out the same from it."""
    monkeypatch.setenv("NCA_BACKEND", "torch")


def png(path_or_bytes) -> Image.Image:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def colours_in(img) -> set:
    return {tuple(c) for c in np.asarray(img.convert("RGB")).reshape(-1, 3).tolist()}


def all_states_frames(states=10, frames=3, h=4, w=5):
    cells = (np.arange(frames * h * w) % states).reshape(frames, h, w).astype(np.uint8)
    return cells


# ------------------------------------------------------------------------------------------------- palette


def test_palette_is_distinct_and_bounded():
    rgb = palette(MAX_DRAWABLE_STATES)
    assert rgb.shape == (16, 3) and len({tuple(c) for c in rgb.tolist()}) == 16
    assert PALETTE_HEX[:8] == ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00",
                               "#CC79A7")  # Okabe-Ito, in its usual order
    with pytest.raises(ValueError, match="at most 16 states"):
        palette(17)
    cells = np.arange(10, dtype=np.uint8).reshape(2, 5)
    out = colourise(cells, 10)
    assert len({tuple(c) for c in out.reshape(-1, 3).tolist()}) == 10
    with pytest.raises(ValueError, match="outside"):
        colourise(cells, 5)


# ------------------------------------------------------------------------------------------------ drawings


def test_strip_size_grows_by_exactly_one_cell_per_frame_and_row():
    def size(frames, rows, scale=3):
        rs = [PreviewRow(i, 0.5, "kept", all_states_frames(frames=frames)) for i in range(rows)]
        return png(_png_bytes(render_strip(rs, 10, scale=scale))).size

    w0, h0 = size(frames=30, rows=2)  # wide enough that the frames, not the title or legend, set the width
    w1, h1 = size(frames=31, rows=2)
    w2, h2 = size(frames=30, rows=3)
    gap = 3  # max(2, scale)
    assert (w1 - w0, h1 - h0) == (5 * 3 + 2 + gap, 0)  # one grid 5 cells wide, its 1-px border both sides, a gap
    assert (w2 - w0, h2 - h0) == (0, 4 * 3 + 2 + gap)


def test_strip_draws_every_state_in_its_own_colour_with_crisp_cells():
    frames = all_states_frames(states=10, frames=2, h=4, w=5)
    img = render_strip([PreviewRow(0, 0.6, "kept", frames)], 10, scale=6)
    got = colours_in(img)
    assert {tuple(c) for c in palette(10).tolist()} <= got
    # crisp: state 7 (pink, used by nothing but cells and the legend below the grids) fills exactly its 4 cells
    # (twice per frame, two frames) as whole 6x6 blocks, with no blended edge pixels
    arr = np.asarray(img.convert("RGB"))[: img.height - 40]  # the legend is the bottom 2 text lines
    ys, _ = np.nonzero((arr == palette(10)[7]).all(axis=-1))
    assert len(ys) == 4 * 36
    assert all(np.bincount(ys)[np.unique(ys)] % 6 == 0)


def test_gif_has_one_frame_per_step_and_all_rules():
    rows = [PreviewRow(i, r, Band(0.3, 0.4).verdict(r), all_states_frames(frames=4)) for i, r in
            enumerate((0.1, 0.35, 0.6))]
    buf = io.BytesIO()
    save_image(render_gif_frames(rows, 10, scale=4), buf, fmt="GIF")
    gif = Image.open(io.BytesIO(buf.getvalue()))
    assert gif.format == "GIF" and gif.n_frames == 4 and gif.info.get("loop") == 0
    gif.seek(2)
    assert {tuple(c) for c in palette(10).tolist()} <= colours_in(gif)


def test_preview_ratios_are_the_filters():
    """The preview measures rules exactly as generate.probe_ratios does, and labels them with Band.verdict."""
    from nca_datagen.generate import probe_ratios

    cfg = DatasetConfig(nca=NCAConfig(), band=Band(0.4, 0.5))  # 19% of rules: found fast, both rejections common
    rows = sample_preview(cfg, 4, frames=12, backend="torch")
    ids = [r.rule_id for r in rows]
    np.testing.assert_allclose([r.ratio for r in rows], probe_ratios(cfg, "train", ids, backend="torch"))
    assert all(r.verdict == cfg.band.verdict(r.ratio) for r in rows)
    assert {r.verdict for r in rows} == {"kept", "too_simple", "too_complex"}  # a mix: half kept, both rejections
    assert all(r.frames_FHW.shape == (12, 12, 12) for r in rows)


# -------------------------------------------------------------------------------------------------- preview


@pytest.mark.parametrize("name", sorted(README_PREVIEWS))
def test_readme_preview_commands_reproduce_docs(tmp_path, name):
    args = README_PREVIEWS[name].split()
    out = tmp_path / name
    args[args.index("--out") + 1] = str(out)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    img, committed = png(out), png(DOCS / name)
    assert img.size == committed.size and getattr(img, "n_frames", 1) == getattr(committed, "n_frames", 1)
    same = (np.asarray(img.convert("RGB")) == np.asarray(committed.convert("RGB"))).all(axis=-1).mean()
    assert same > 0.97, f"{name}: only {same:.1%} of pixels match the committed picture; re-run the README command"
    assert "4 kept" in result.output


def test_preview_gif_and_errors(tmp_path):
    out = tmp_path / "p.gif"
    args = ["preview", "--complexity", "0.3:0.6", "--rules", "2", "--grid", "6x6", "--frames", "3", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert Image.open(out).n_frames == 3
    bad = CliRunner().invoke(main, ["preview", "--states", "17", "--out", str(tmp_path / "x.png")])
    assert bad.exit_code != 0 and "at most 16 states" in bad.output
    bad = CliRunner().invoke(main, ["preview", "--out", str(tmp_path / "x.jpg")])
    assert bad.exit_code != 0 and ".png or .gif" in bad.output


# -------------------------------------------------------------------------------------------------- inspect


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from nca_datagen.generate import generate_shard
    from nca_datagen.manifest import write_manifest
    from nca_datagen.shards import write_shard

    out = str(tmp_path_factory.mktemp("ds"))
    cfg = DatasetConfig(nca=NCAConfig(frames=4), rules_per_shard=2, sims_per_rule=2)
    recs = {s: [write_shard(generate_shard(cfg, s, i, backend=BUILD_BACKEND), out) for i in range(n)]
            for s, n in (("train", 2), ("val", 1))}
    return out, write_manifest(out, cfg, recs, provenance={})


def test_inspect_reports_the_manifest_totals(dataset, tmp_path):
    url, manifest = dataset
    result = CliRunner().invoke(main, ["inspect", url, "--json", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert got["totals"] == manifest["totals"]
    for split, s in manifest["splits"].items():
        assert got["splits"][split]["samples"] == s["samples"] and got["splits"][split]["counts"] == s["counts"]
    assert sum(got["histograms"]["candidates"]["counts"]) == sum(s["counts"]["candidates"]
                                                               for s in manifest["splits"].values())
    assert sorted(Path(p).name for p in got["figures"]) == ["complexity-train.png", "complexity-val.png",
                                                            "complexity.png"]
    assert png(tmp_path / "complexity.png").size[0] > 300

    text = CliRunner().invoke(main, ["inspect", url])
    assert text.exit_code == 0, text.output
    t = manifest["totals"]
    assert f"│ total │      {t['num_shards']} │" in text.output.replace("┃", "│")
    assert f"{t['samples']:,}" in text.output and f"{t['tokens']:,}" in text.output
    assert "probe gzip ratio of candidate rules" in text.output


def test_inspect_refuses_a_folder_without_a_dataset(tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    assert result.exit_code != 0
    assert "no dataset at" in result.output and "manifest.json" in result.output


# ----------------------------------------------------------------------------------------------- complexity


def test_complexity_of_a_corpus(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "dull.txt").write_bytes(b"abc " * 400)
    (tmp_path / "noise.txt").write_bytes(rng.integers(32, 127, 4000, dtype=np.uint8).tobytes())
    dull = json.loads(CliRunner().invoke(main, ["complexity", str(tmp_path / "dull.txt"), "--json"]).output)
    noise = json.loads(CliRunner().invoke(main, ["complexity", str(tmp_path / "*.txt"), "--json"]).output)
    assert dull["chunks"] == 1600 // 360 and dull["documents"] == 1
    assert dull["token_ratio"]["mean"] < 0.1 < noise["token_ratio"]["mean"] < noise["random_byte_token_ratio"]
    assert noise["documents"] == 2
    text = CliRunner().invoke(main, ["complexity", str(tmp_path)])
    assert text.exit_code == 0, text.output
    assert "30-40%" in text.output and "code" in text.output and "train sweep" in text.output
    bad = CliRunner().invoke(main, ["complexity", str(tmp_path / "missing.txt")])
    assert bad.exit_code != 0 and "has no files" in bad.output


def _png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
