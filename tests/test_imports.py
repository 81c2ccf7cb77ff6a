"""Dependencies point one way (STYLE.md): models <- controllers; models <- rl; safety alone; studies on top."""

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
    "safety": {"common", "safety"},
    "studies": {"common", "models", "controllers", "rl", "safety", "studies"},
}
# safety must stand alone: only these third-party roots (plus the standard library)
# highspy/clarabel/scipy: the exact correction hands cvxpy's compiled data to cvxpy's own LP/QP solvers
SAFETY_THIRD_PARTY = {"torch", "numpy", "cvxpy", "safetensors", "scipy", "highspy", "clarabel"}


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
