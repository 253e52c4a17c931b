"""The README and the pages under docs/ stay true: every command they show runs here, as written.

Each fenced bash/python block in README.md and docs/*.md carries a marker comment on the line before it:

- `<!-- readme-test: main -->`  the install-and-build command; its `nca-datagen ...` part runs here (CI runs
  the install part).
- `<!-- readme-test: ci -->`    the test command; it must be exactly what `.ci/run` runs.
- `<!-- readme-test: shell -->` every command line runs, in order, in the same scratch folder.
- `<!-- readme-test: python -->` the snippet runs with this interpreter in that folder.
- `<!-- readme-test: python needs MODULE -->` the same, where MODULE is installed (an optional extra's reader);
  elsewhere it is reported as not run.

All blocks run in one scratch folder, the README's first, then each docs page's (in name order): later blocks read
what earlier ones wrote. S3 commands reach a real moto server through the standard AWS environment, with a
bucket named `my-bucket`. `main` and `ci` blocks are the README's alone.
"""

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"<!-- readme-test: (\w+(?: needs [\w.]+)?) -->\s*\n```(\w+)\n(.*?)```", re.S)
ANY_BLOCK = re.compile(r"^```(\w+)\n", re.M)
BIN = Path(sys.executable).parent


def blocks(pages=PAGES):
    return [(kind, lang, body) for page in pages for kind, lang, body in BLOCK.findall(page.read_text())]


def commands(body: str) -> list[str]:
    """Command lines of a shell block: comments dropped, backslash continuations joined."""
    text = body.replace("\\\n", " ")
    lines = [line.split(" #")[0].strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_code_block_is_tested(page):
    tested = len(blocks([page]))
    fenced = len([lang for lang in ANY_BLOCK.findall(page.read_text()) if lang in ("bash", "python", "sh")])
    assert tested == fenced, f"a bash/python block in {page.name} has no readme-test marker"
    kinds = [kind for kind, _, _ in blocks([page])]
    expected = 1 if page == README else 0
    assert kinds.count("main") == expected and kinds.count("ci") == expected


def test_the_first_screen_shows_the_picture_and_both_commands():
    first_screen = "\n".join(README.read_text().splitlines()[:40])
    assert "![" in first_screen and "docs/preview-50plus.png" in first_screen
    assert "readme-test: main" in first_screen and "readme-test: ci" in first_screen


def test_ci_block_is_what_ci_runs():
    (body,) = [body for kind, _, body in blocks() if kind == "ci"]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands(body)[0] in ci_lines


def run_shell(line: str, cwd: Path, env: dict):
    argv = shlex.split(line)
    if argv[0] in ("nca-datagen",):
        argv[0] = str(BIN / argv[0])
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"README command failed: {line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path, s3_server):
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="my-bucket")
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_server, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "HF_HOME": str(tmp_path / ".hf")}  # Hugging Face's cache keys a local folder by its name: a fresh one
    not_run = []
    for kind, _, body in blocks():
        kind, _, needs = kind.partition(" needs ")
        if needs and importlib.util.find_spec(needs) is None:
            not_run.append(needs)
            continue
        if kind == "ci":
            continue
        if kind == "main":
            build = commands(body)[0].split("&&")[-1].strip()
            assert build.startswith("nca-datagen build"), build
            run_shell(build, tmp_path, env)
            manifest = json.loads((tmp_path / build.split("--out ")[1].split()[0] / "manifest.json").read_text())
            assert manifest["splits"]["train"]["tokens"] >= 2_000_000
        elif kind == "shell":
            for line in commands(body):
                run_shell(line, tmp_path, env)
        elif kind == "python":
            done = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, f"README snippet failed:\n{body}\n{done.stderr[-3000:]}"
        else:
            raise AssertionError(f"unknown readme-test kind {kind!r}")
    if not_run:
        print(f"snippets not run, their reader not installed: {', '.join(not_run)}")
