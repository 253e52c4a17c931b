"""Pictures and the preview / inspect / complexity commands, on tiny inputs (torch backend: no JIT warm-up)."""

import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from nca_datagen.cli import main
from nca_datagen.complexity import Band
from nca_datagen.config import DatasetConfig, NCAConfig
from nca_datagen.figures import PreviewRow, render_gif_frames, render_strip, save_image
from nca_datagen.palette import MAX_DRAWABLE_STATES, PALETTE_HEX, colourise, palette
from nca_datagen.preview import sample_preview

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
    out = tmp_path / "new" / "p.gif"  # the missing folder is made
    args = ["preview", "--complexity", "0.3:0.6", "--rules", "2", "--grid", "6x6", "--frames", "3", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {out}: 2 rules"), result.output
    assert Image.open(out).n_frames == 3
    one = CliRunner().invoke(main, [*args[:4], "1", *args[5:]])
    assert one.output.startswith(f"wrote {out}: 1 rule ("), one.output
    bad = CliRunner().invoke(main, ["preview", "--states", "17", "--out", str(tmp_path / "x.png")])
    assert bad.exit_code != 0 and "at most 16 states" in bad.output
    bad = CliRunner().invoke(main, ["preview", "--out", str(tmp_path / "x.jpg")])
    assert bad.exit_code != 0 and ".png or .gif" in bad.output


def test_preview_seed_takes_builds_range(tmp_path):
    """--seed takes what `build --seed` does, 0..2**64-1; one past it is a usage error, not an OverflowError."""
    out = tmp_path / "p.png"
    args = ["preview", "--complexity", "0.3:0.6", "--rules", "1", "--grid", "6x6", "--frames", "2", "--out", str(out)]
    bad = CliRunner().invoke(main, [*args, "--seed", str(2**64)])
    assert bad.exit_code == 2 and isinstance(bad.exception, SystemExit), bad.output
    assert "18446744073709551616 is not in the range 0<=x<=18446744073709551615" in bad.output
    top = CliRunner().invoke(main, [*args, "--seed", str(2**64 - 1)])
    assert top.exit_code == 0, top.output
    assert out.exists()


def s3_object(s3_server: str, url: str) -> bytes:
    """The bytes of the object at s3://BUCKET/KEY, read with plain boto3 (not the code under test)."""
    import boto3

    bucket, key = url.removeprefix("s3://").split("/", 1)
    return boto3.client("s3", endpoint_url=s3_server).get_object(Bucket=bucket, Key=key)["Body"].read()


@pytest.mark.parametrize("name,endpoint", [("p.png", "flag"), ("p.gif", "env")])
def test_preview_writes_to_s3(tmp_path, monkeypatch, s3_server, s3_bucket, name, endpoint):
    """--out s3://... lands in the bucket (and nowhere local), and "wrote" names the object's URL; the endpoint
    comes from --endpoint-url or from AWS_ENDPOINT_URL."""
    monkeypatch.chdir(tmp_path)
    url = f"{s3_bucket}/figs/{name}"
    args = ["preview", "--complexity", "0.3:0.6", "--rules", "2", "--grid", "6x6", "--frames", "3", "--out", url]
    if endpoint == "flag":
        args += ["--endpoint-url", s3_server]
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {url}: 2 rules"), result.output
    img = png(s3_object(s3_server, url))
    assert img.format == name[-3:].upper() and getattr(img, "n_frames", 1) == (3 if name.endswith("gif") else 1)
    assert list(tmp_path.iterdir()) == []  # no ./s3:/bucket/... folder


def test_preview_to_a_missing_bucket_is_one_line(s3_server):
    result = CliRunner().invoke(main, ["preview", "--rules", "1", "--grid", "6x6", "--frames", "2", "--complexity",
                                       "0.3:0.6", "--out", "s3://no-such-bucket/p.png", "--endpoint-url", s3_server])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "cannot write s3://no-such-bucket/p.png" in result.output


# -------------------------------------------------------------------------------------------------- inspect


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from shard_fixtures import write_fake

    from nca_datagen.generate import generate_shard
    from nca_datagen.pipelines.finish import finish_dataset

    out = str(tmp_path_factory.mktemp("ds"))
    cfg = DatasetConfig(nca=NCAConfig(frames=4), rules_per_shard=2, sims_per_rule=2)
    recs = {s: [write_fake(generate_shard(cfg, s, i, backend=BUILD_BACKEND), out, cfg) for i in range(n)]
            for s, n in (("train", 2), ("val", 1))}
    return out, finish_dataset(out, cfg, recs, provenance={})


def test_inspect_reports_the_manifest_totals(dataset, tmp_path):
    url, manifest = dataset
    figs = tmp_path / "new" / "figs"  # missing folders are made
    result = CliRunner().invoke(main, ["inspect", url, "--json", "--out-dir", str(figs)])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert got["totals"] == manifest["totals"]
    for split, s in manifest["splits"].items():
        assert got["splits"][split]["samples"] == s["samples"] and got["splits"][split]["counts"] == s["counts"]
    assert sum(got["histograms"]["candidates"]["counts"]) == sum(s["counts"]["candidates"]
                                                               for s in manifest["splits"].values())
    assert got["figures"] == [str(figs / n) for n in ("complexity.png", "complexity-train.png", "complexity-val.png")]
    assert png(figs / "complexity.png").size[0] > 300

    text = CliRunner().invoke(main, ["inspect", url])
    assert text.exit_code == 0, text.output
    t = manifest["totals"]
    assert f"│ total │      {t['num_shards']} │" in text.output.replace("┃", "│")
    assert f"{t['samples']:,}" in text.output and f"{t['tokens']:,}" in text.output
    assert "probe gzip ratio of candidate rules" in text.output


def test_inspect_writes_figures_to_s3(dataset, tmp_path, monkeypatch, s3_server, s3_bucket):
    """--out-dir s3://... puts the PNGs in the bucket (and nowhere local); the output names their URLs."""
    url, _ = dataset
    monkeypatch.chdir(tmp_path)
    figs = f"{s3_bucket}/figs"
    expect = [f"{figs}/complexity.png", f"{figs}/complexity-train.png", f"{figs}/complexity-val.png"]
    result = CliRunner().invoke(main, ["inspect", url, "--json", "--out-dir", figs, "--endpoint-url", s3_server])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["figures"] == expect
    for fig in expect:
        assert png(s3_object(s3_server, fig)).size[0] > 300
    text = CliRunner().invoke(main, ["inspect", url, "--out-dir", f"{figs}/", "--endpoint-url", s3_server])
    assert text.exit_code == 0, text.output
    assert all(f"wrote {fig}\n" in text.output for fig in expect), text.output
    assert list(tmp_path.iterdir()) == []  # no ./s3:/bucket/... folder


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


@pytest.mark.parametrize("code", [
    "import io\nfrom nca_datagen.plotting import matplotlib_agg\nmatplotlib_agg()\n"
    "from matplotlib.figure import Figure\nfig = Figure()\nfig.text(0, 0, 'x')\n"
    "fig.savefig(io.BytesIO(), format='png')\n",
    "import io\nfrom nca_datagen.train.compare import plot_curves\n"  # the trainer's compare and sweep plots
    "plot_curves({'scratch': [(0, 3.0), (1, 2.0)]}, io.BytesIO(), 'title')\n",
], ids=["viz", "compare"])
def test_matplotlib_under_a_read_only_home_stays_quiet(tmp_path, code):
    """matplotlib warned twice ("mkdir -p failed ... set MPLCONFIGDIR") in the user's output when HOME could not
    be written; it now gets nca-datagen's cache folder (here the temporary folder's, as HOME is a file)."""
    import subprocess
    import sys

    (tmp_path / "home").write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MPLCONFIGDIR" not in done.stderr and "mkdir" not in done.stderr, done.stderr
    assert (tmp_path / "nca-datagen" / "matplotlib").is_dir()
