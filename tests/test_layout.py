"""The import contract: data flows one way (ingest → graphstore → train → snapshots → rpc), the
product imports neither the lab nor the CLI, and no module imports itself back through others.

The graph is read from the source (every import statement, those inside functions included), so a
lazy import cannot hide a dependency. Modules are named as Python imports them (``m2grl.rpc.live``)
through the package-to-folder mapping in pyproject.toml.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each room of the package and the rooms it may import besides itself. "core" is what every
# component shares (settings, views, errors, metrics, console helpers, compiled-helper builds).
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    # The client kit (clients/python) installs without m2grl, so it imports nothing of it.
    "client": frozenset(),
    "protos": frozenset({"core", "client"}),
    "snapshots": frozenset({"core"}),
    "graphstore": frozenset({"core"}),
    "ingest": frozenset({"core", "protos", "graphstore"}),
    "train": frozenset({"core", "graphstore", "snapshots"}),
    "rpc": frozenset({"core", "protos", "client", "snapshots"}),
    # The local Kafka/Neo4j launcher checks health through the components' own clients, so that
    # Kafka client code stays in ingest/ and Cypher in graphstore/.
    "services": frozenset({"core", "ingest", "graphstore"}),
    "lab": frozenset({"core", "protos", "client", "snapshots", "graphstore", "ingest", "train", "rpc", "services"}),
    "cli": frozenset({"core", "protos", "client", "snapshots", "graphstore", "ingest", "train", "rpc", "services",
                      "lab"}),
}

ROOMS = {
    "m2grl.cli": "cli", "m2grl.__main__": "cli", "m2grl.lab": "lab", "m2grl.services": "services",
    "m2grl.ingest": "ingest", "m2grl.graphstore": "graphstore", "m2grl.train": "train", "m2grl.rpc": "rpc",
    "m2grl.protos": "protos", "m2grl.snapshots": "snapshots", "m2grl_client": "client",
}


def room_of(module: str) -> str:
    for prefix, room in ROOMS.items():
        if module == prefix or module.startswith(prefix + "."):
            return room
    return "core"


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int


def source_modules(root: Path) -> dict[str, Path]:
    """Module name → file, through pyproject's package-dir mapping."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    mapping: Mapping[str, str] = pyproject["tool"]["setuptools"]["package-dir"]
    modules: dict[str, Path] = {}
    for package, folder in mapping.items():
        for path in sorted((root / folder).glob("*.py")):
            name = package if path.name == "__init__.py" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    base = node.module or ""
    if node.level:
        parts = module.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([base] if base else []))
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        yield candidate if candidate in known else base


def import_edges(modules: Mapping[str, Path]) -> list[Edge]:
    known = set(modules)
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(node, module, path.name == "__init__.py", known):
                while target and target not in known:  # `import a.b.func` style names: the module part
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges.append(Edge(module, target, node.lineno))
    return edges


def forbidden(edges: list[Edge]) -> list[str]:
    out = []
    for edge in edges:
        importer, imported = room_of(edge.importer), room_of(edge.imported)
        if importer != imported and imported not in ALLOWED[importer]:
            out.append(f"{edge.importer} (line {edge.line}) imports {edge.imported}: "
                       f"{importer} may not import {imported}")
    return out


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
        graph.setdefault(edge.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_edges(source_modules(ROOT))


def test_every_room_imports_only_what_it_may(edges: list[Edge]) -> None:
    assert forbidden(edges) == []


def test_no_module_imports_itself_back(edges: list[Edge]) -> None:
    assert cycles(edges) == []


def test_the_graph_sees_every_component(edges: list[Edge]) -> None:
    rooms = {room_of(e.importer) for e in edges} | {room_of(e.imported) for e in edges}
    assert rooms == set(ALLOWED)


def _package(tmp_path: Path, files: dict[str, str]) -> list[Edge]:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools.package-dir]\n"m2grl" = "m2grl"\n"m2grl.rpc" = "rpc"\n"m2grl.train" = "train"\n'
        '"m2grl.lab" = "lab"\n')
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for folder in ("m2grl", "rpc", "train", "lab"):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "__init__.py").touch()
    return import_edges(source_modules(tmp_path))


def test_the_checks_catch_a_reach_back_a_lazy_lab_import_and_a_cycle(tmp_path: Path) -> None:
    edges = _package(tmp_path, {
        "rpc/live.py": "import m2grl.train\n",
        "train/round.py": "def f():\n    from m2grl.lab import bench\n",
        "lab/bench.py": "from . import other\n",
        "lab/other.py": "from m2grl.lab.bench import x\n",
    })
    problems = forbidden(edges)
    assert any("m2grl.rpc.live (line 1) imports m2grl.train" in p for p in problems)
    assert any("m2grl.train.round (line 2) imports m2grl.lab.bench" in p for p in problems)
    assert cycles(edges) == [["m2grl.lab.bench", "m2grl.lab.other"]]
