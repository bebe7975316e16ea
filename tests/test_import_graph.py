"""The package's import graph has no cycles: imports inside functions count too (they only hide a cycle).

Read from the source with ``ast``, nothing is imported. ``export/`` is installed as ``dift_fast.export`` and is part
of the graph. An edge goes to the module an import names (``from .store import X`` -> ``dift_fast.store``,
``from . import ops`` -> ``dift_fast.ops``), not to the parent packages Python imports on the way.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"dift_fast": ROOT / "dift_fast", "dift_fast.export": ROOT / "export"}
# Modules the build writes into the installed package (CMake's build record); they import nothing.
GENERATED = ("dift_fast._build_info",)


def package_modules() -> dict[str, Path]:
    """Module name -> source file, for every module of the package (``__init__.py`` names its package)."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def imports_of(name: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its source (module level or inside functions)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import dift_fast.export.graphs.x` style: the module part
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules) | set(GENERATED)
    graph = {name: imports_of(name, path.read_text(), path.name == "__init__.py", known)
             for name, path in modules.items()}
    return {**{name: set() for name in GENERATED}, **graph}


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    described = ["; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(described)


def test_the_cycle_finder_finds_cycles():
    """The checker itself: a cycle hidden in a function-level import is found, an acyclic graph passes."""
    source = {"dift_fast.a": "from .b import x\n", "dift_fast.b": "def f():\n    from . import c\n",
              "dift_fast.c": "import dift_fast.a\n", "dift_fast.d": "from .a import y\n"}
    graph = {name: imports_of(name, text, False, set(source)) for name, text in source.items()}
    assert graph["dift_fast.b"] == {"dift_fast.c"} and graph["dift_fast.c"] == {"dift_fast.a"}
    assert find_cycles(graph) == [["dift_fast.a", "dift_fast.b", "dift_fast.c"]]
    del graph["dift_fast.c"]
    graph["dift_fast.b"] = set()
    assert find_cycles(graph) == []


def test_dift_fast_never_imports_export():
    """``dift_fast`` reaches its accelerated backends through entry points only (export is a consumer)."""
    graph = import_graph()
    bad = {m: sorted(t for t in targets if t.startswith("dift_fast.export"))
           for m, targets in graph.items() if not m.startswith("dift_fast.export")}
    assert not {m: t for m, t in bad.items() if t}
