"""The import structure docs/design.md promises, read from the source (nothing is imported).

Every import counts, the ones inside functions and under ``TYPE_CHECKING`` too: a circle of lazy
imports is still a circle to read and to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Installed names of the source folders (pyproject's package-dir mapping).
PACKAGES = {
    "moca_rt": "moca_rt",
    "moca_rt.kernels": "kernels",
    "moca_rt.export": "export",
    "moca_rt.train": "train",
}


def _modules() -> dict[str, Path]:
    """{module name: file} of every module of the four packages."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join([package, *(p for p in parts if p != "__init__")])
            found[name] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours that an imported dotted name lives in (the longest match)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> set[str]:
    """Our modules that ``module`` imports."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        targets |= {t for n in names if (t := _resolve(n)) is not None and t != module}
    return targets


GRAPH = {m: _imports(m) for m in MODULES}


def _circles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return groups


def _edges(source: str, target: str) -> list[str]:
    """``a -> b`` for every import from a module under ``source`` into one under ``target``."""
    return [
        f"{a} -> {b}"
        for a in sorted(GRAPH)
        if a == source or a.startswith(source + ".")
        for b in sorted(GRAPH[a])
        if b == target or b.startswith(target + ".")
    ]


def test_the_graph_is_read() -> None:
    assert "moca_rt.kernels.kmeans" in MODULES and "moca_rt.engines.names" in MODULES
    assert "moca_rt.pipeline" in GRAPH["moca_rt.build"]
    assert "moca_rt.kernels.dispatch" in GRAPH["moca_rt.kernels.kmeans"]  # relative import


def test_no_import_circles() -> None:
    assert _circles() == []


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("moca_rt.engines", "moca_rt.export"),  # the runtime owns its wire contract
        ("moca_rt.kernels", "moca_rt.pipeline"),  # kernels are leaves
        ("moca_rt.engines", "moca_rt.pipeline"),  # engines are leaves
        ("moca_rt.media", "moca_rt.pipeline"),
        ("moca_rt.datasets", "moca_rt.media"),
        ("moca_rt.datasets", "moca_rt.metrics"),
    ],
)
def test_layer_does_not_import(source: str, target: str) -> None:
    assert _edges(source, target) == []


def test_modeling_imports_only_config_and_checkpoints() -> None:
    allowed = {"moca_rt.config", "moca_rt.checkpoints"}
    found = [
        f"{a} -> {b}"
        for a in sorted(GRAPH)
        if a.startswith("moca_rt.modeling.")
        for b in sorted(GRAPH[a])
        if b not in allowed and not b.startswith("moca_rt.modeling")
    ]
    assert found == []


def test_the_runtime_does_not_import_train() -> None:
    runtime = [m for m in GRAPH if not m.startswith("moca_rt.train")]
    assert [f"{a} -> {b}" for a in runtime for b in GRAPH[a] if b.startswith("moca_rt.train")] == []
