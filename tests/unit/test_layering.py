"""The import direction of DESIGN.md, enforced: crds <- store <- runtime <- {controllers,
agent, net} <- cli. A layer may import itself and the layers below it, nothing else.

Controllers decide, they never touch the host: no netlink, no docker in them.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "shoal"

ALLOWED: dict[str, set[str]] = {
    "crds": {"crds"},
    "store": {"crds", "store"},
    "runtime": {"crds", "store", "runtime"},
    "controllers": {"crds", "store", "runtime", "controllers"},
    "net": {"crds", "store", "runtime", "net"},
    "agent": {"crds", "store", "runtime", "net", "agent"},
    "cli": {"crds", "store", "runtime", "controllers", "agent", "net", "cli"},
}
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    "crds": {"aetcd", "grpc", "docker", "pyroute2"},
    "store": {"docker", "pyroute2"},
    "runtime": {"docker", "pyroute2"},
    "controllers": {"docker", "pyroute2", "aetcd", "grpc"},
}


def _imports(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules() -> list[tuple[str, pathlib.Path]]:
    out = []
    for layer in ALLOWED:
        for path in sorted((ROOT / layer).rglob("*.py")):
            out.append((layer, path))
    return out


def test_every_layer_exists() -> None:
    for layer in ALLOWED:
        assert (ROOT / layer / "__init__.py").exists(), f"missing package shoal/{layer}"


@pytest.mark.parametrize(("layer", "path"), _modules(),
                         ids=[str(p.relative_to(ROOT)) for _, p in _modules()])
def test_imports_point_down(layer: str, path: pathlib.Path) -> None:
    for name in sorted(_imports(path)):
        parts = name.split(".")
        if parts[0] == "shoal" and len(parts) > 1 and parts[1] in ALLOWED:
            assert parts[1] in ALLOWED[layer], (
                f"{path.relative_to(ROOT.parent)} imports {name}: layer {layer} may only "
                f"import {sorted(ALLOWED[layer])}")
        assert parts[0] not in FORBIDDEN_THIRD_PARTY.get(layer, set()), (
            f"{path.relative_to(ROOT.parent)} imports {name}, which layer {layer} must not use")
