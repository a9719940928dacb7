"""The package's structure: imports point one way, and no module imports itself back."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import grimp
import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "oasisvq"


def _cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """A cycle of module imports, or None (every import counts: module level and inside
    functions, all but those under ``if TYPE_CHECKING``)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph.modules):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = grimp.build_graph("oasisvq", exclude_type_checking_imports=True)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_a_cycle_is_found_when_there_is_one() -> None:
    graph = grimp.ImportGraph()
    for m in ("a", "a.b", "a.c"):
        graph.add_module(m)
    graph.add_import(importer="a.b", imported="a.c")
    assert _cycle(graph) is None
    graph.add_import(importer="a.c", imported="a.b")
    assert _cycle(graph) in (["a.b", "a.c", "a.b"], ["a.c", "a.b", "a.c"])


def test_imports_inside_functions_say_why() -> None:
    """An import inside a function is a deliberate lazy import (a slow or optional
    dependency): the line says why in a comment."""
    silent = []
    for path in SRC.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom):
                        line = lines[inner.lineno - 1]
                        if "#" not in line:
                            silent.append(f"{path.relative_to(SRC)}:{inner.lineno}: {line.strip()}")
    assert not silent, "\n".join(silent)


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter is not installed")
def test_the_layers_contract_holds() -> None:
    """pyproject.toml's import-linter contract: cli -> ... -> errors, never upwards."""
    root = SRC.parents[1]
    done = subprocess.run(["lint-imports"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
