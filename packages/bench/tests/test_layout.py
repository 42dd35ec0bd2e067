"""The package layout: every module imports, and the import graph has no cycles."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import ctsynth_bench

ROOT = Path(ctsynth_bench.__file__).parent


def _module_name(path: Path) -> str:
    parts = ("ctsynth_bench", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """ctsynth_bench modules that ``name`` imports anywhere (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # "from pkg import sub" imports the submodule when one exists, else a name of pkg.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_module_imports() -> None:
    for name in _modules():
        importlib.import_module(name)


def test_no_import_cycles() -> None:
    graph = _graph()
    assert (
        "ctsynth_bench.data._loaders" in graph["ctsynth_bench.data._cache"]
    )  # the walk sees imports
    assert _cycles(graph) == [], "import cycles between ctsynth_bench modules"


def test_cycle_finder_finds_a_cycle() -> None:
    graph = _graph()
    graph["ctsynth_bench.data._loaders"] = graph["ctsynth_bench.data._loaders"] | {
        "ctsynth_bench.data._cache"
    }
    assert ["ctsynth_bench.data._cache", "ctsynth_bench.data._loaders"] in _cycles(graph)


def test_rooms_exist() -> None:
    """The tree a newcomer reads: one room per concern (DESIGN.md, packages/bench/README.md)."""
    for room in ("data", "rulesynth", "viz", "cli", "lesiondiffusion", "guidegen"):
        assert (ROOT / room / "__init__.py").is_file(), room
    for name in ("lesiondiffusion", "guidegen"):
        doc = ast.get_docstring(ast.parse((ROOT / name / "__init__.py").read_text()))
        assert doc and "will hold" in doc
