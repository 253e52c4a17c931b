"""The package's shape, checked statically: no import cycle, click only in the command-line modules, and modules
small enough to read in one sitting."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the installed package: nca_datagen/, with kernels/ and pipelines/ mapped to nca_datagen.kernels / .pipelines
FOLDERS = {"nca_datagen": ROOT / "nca_datagen", "nca_datagen.kernels": ROOT / "kernels",
           "nca_datagen.pipelines": ROOT / "pipelines", "nca_datagen.train": ROOT / "nca_datagen" / "train",
           "nca_datagen.exports": ROOT / "nca_datagen" / "exports"}
# the modules that are the command line: they alone may import click, and nothing in the library imports them
COMMAND_LINE = {"nca_datagen.__main__", "nca_datagen.cli", "nca_datagen.cli_options", "nca_datagen.preview",
                "nca_datagen.inspection", "nca_datagen.measure", "nca_datagen.pipelines.build", "nca_datagen.train.cli"}
MAX_LINES = 450
LONGER = {"nca_datagen.kernels.rollout_triton"}  # one kernel file: reference, kernel, launcher, read top to bottom


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports, anywhere in its file (a lazy import is a dependency too)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, `level - 1` packages up
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            submodules = {f"{base}.{a.name}" for a in node.names} & set(modules())
            # `from package import submodule` depends on the submodule; `from module import name`, on the module
            found |= submodules or {base}
    known = modules()
    return {m for m in found if m in known and m != name}


def test_no_import_cycle():
    graph = {name: imports(name, path) for name, path in modules().items()}
    done, stack = set(), []

    def visit(name):
        if name in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(name):], name]))
        if name in done:
            return
        stack.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        stack.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_click_only_in_the_command_line_modules():
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        uses_click = any((isinstance(node, ast.Import) and any(a.name == "click" for a in node.names))
                         or (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("click"))
                         for node in ast.walk(tree))
        assert not uses_click or name in COMMAND_LINE, f"{name} imports click: only the command line may"
        if name not in COMMAND_LINE:
            assert not imports(name, path) & (COMMAND_LINE - {"nca_datagen.cli_options"}), \
                f"{name} imports a command module"


@pytest.mark.parametrize("name", sorted(set(modules()) - LONGER))
def test_modules_stay_short(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines; split it by concept (at most {MAX_LINES})"
