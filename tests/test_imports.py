"""Dependencies point one way (STYLE.md): models <- controllers <- safety; models <- rl; studies on top;
and no module of safectrl imports itself back through others (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "safectrl"
# subpackage -> safectrl subpackages it may import
ALLOWED = {
    "common": {"common"},
    "models": {"common", "models"},
    "controllers": {"common", "models", "controllers"},
    "rl": {"common", "models", "rl"},
    "safety": {"common", "models", "controllers", "safety"},  # a safety layer wraps a controller
    "studies": {"common", "models", "controllers", "rl", "safety", "studies"},
}
# the third-party roots safety may import (plus the standard library)
# highspy/daqp/clarabel/scipy: the exact correction hands cvxpy's compiled data to LP/QP solvers directly;
# casadi: the predictive safety filter's model
SAFETY_THIRD_PARTY = {"torch", "numpy", "cvxpy", "safetensors", "scipy", "highspy", "daqp", "clarabel", "casadi"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("sub", sorted(ALLOWED))
def test_subpackage_imports_point_one_way(sub):
    for path in (PACKAGE / sub).rglob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "safectrl" and len(parts) > 1:
                assert parts[1] in ALLOWED[sub], f"{path.relative_to(PACKAGE)} imports {name}"


def test_safety_imports_only_torch_numpy_cvxpy():
    import sys

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in (PACKAGE / "safety").rglob("*.py"):
        for name in _imports(path):
            root = name.split(".")[0]
            assert root in stdlib | SAFETY_THIRD_PARTY | {"safectrl"}, f"{path.name} imports {name}"


def test_nothing_imports_studies():
    for path in PACKAGE.rglob("*.py"):
        if "studies" in path.relative_to(PACKAGE).parts:
            continue
        for name in _imports(path):
            assert not name.startswith("safectrl.studies"), f"{path.relative_to(PACKAGE)} imports {name}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the safectrl modules it imports, anywhere in its source (functions included).

    ``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``; relative imports
    are resolved against the importing module's package. A parent package imported implicitly is not an edge:
    every import would then pass through ``safectrl/__init__``.
    """
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*base_parts, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in paths:  # `import safectrl.rl.sac as x`: the module itself
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_import_graph_is_built_from_the_source():
    graph = _import_graph()
    assert "safectrl.studies.executor" in graph["safectrl.studies.study"]  # a module-level import
    assert "safectrl.controllers.task_nmpc" in graph["safectrl.studies.study"]  # one inside a function
    assert "safectrl.rl" in graph["safectrl"]  # `from safectrl.rl import register_envs`: a name of a package


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles (imports inside functions count): " + "; ".join(
        " <-> ".join(c) for c in cycles)
