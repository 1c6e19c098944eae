"""The package's shape is part of its contract: stage folders in pipeline order, no cycles.

The layers are declared once, in ``[tool.importlinter]`` of pyproject.toml; import-linter checks
them here. Its layers contract forbids an import from a lower stage of a higher one, lazy and
type-only imports included; the cycle check below covers cycles *inside* a stage, which the
layers contract does not see.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "splitc"


def test_import_linter_contracts_hold() -> None:
    linter = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(linter), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_import_cycles_anywhere() -> None:
    graph = grimp.build_graph("splitc", include_external_packages=False, cache_dir=None)
    edges = nx.DiGraph([(m, t) for m in graph.modules for t in graph.find_modules_directly_imported_by(m)])
    cycles = list(nx.simple_cycles(edges))
    assert not cycles, cycles[:5]


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def test_no_module_imports_a_private_name_of_another() -> None:
    offenders = []
    for name, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("splitc") or (
                    isinstance(node, ast.ImportFrom) and node.level):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offenders.append(f"{name}: from {node.module} import {alias.name}")
    assert not offenders, offenders


def test_stage_folders_are_the_pipeline() -> None:
    """Every module lives in a stage folder; the top level holds only the package marker."""
    stages = {"core", "data", "models", "graph", "passes", "learn", "compile", "deploy", "report", "cli"}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == stages, sorted(folders ^ stages)
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert not loose, loose


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def test_no_module_or_function_outgrows_the_house_rule() -> None:
    """STYLE: split a module before it passes about 400 lines, a function before 60."""
    big, long = [], []
    for name, path in _modules():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            big.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not big and not long, big + long
