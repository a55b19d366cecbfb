"""The package's layers: no import cycle, at module level or inside functions (a deferred import is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import cnnlab

ROOT = Path(cnnlab.__file__).parent


def _module_names() -> dict[str, Path]:
    return {".".join(("cnnlab",) + f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f
            for f in ROOT.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The cnnlab modules ``path`` imports anywhere; ``from pkg import submodule`` counts as the submodule."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnlab"):
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            out.update(subs if len(subs) == len(node.names) else [node.module, *subs])
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("cnnlab"))
    return {m for m in out if m in modules}


def test_no_import_cycles():
    modules = _module_names()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, path + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
