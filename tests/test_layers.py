"""The layers import downwards only, so a newcomer can follow a mutation from HTTP to the
database without meeting a cycle: ``api`` assembles ``resolvers`` and ``schema``; resolvers call
``services``; services write ``models`` through the unit of work; ``auth`` and ``models`` know
nothing of GraphQL."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "coregraph"

# layer -> the coregraph modules and packages it must never import (at any depth of its files)
FORBIDDEN = {
    "models": [
        "coregraph.schema",
        "coregraph.resolvers",
        "coregraph.services",
        "coregraph.api",
        "coregraph.context",
        "coregraph.auth",
        "coregraph.streams",
    ],
    "auth": [
        "coregraph.schema",
        "coregraph.resolvers",
        "coregraph.api",
        "coregraph.context",
        "coregraph.services",
    ],
    "services": [
        "coregraph.schema",
        "coregraph.resolvers",
        "coregraph.api",
        "coregraph.context",
        "coregraph.http",
        "coregraph.ws",
    ],
    "schema": ["coregraph.resolvers", "coregraph.api", "coregraph.http", "coregraph.ws"],
    "resolvers": ["coregraph.api", "coregraph.http", "coregraph.ws"],
    "streams": ["coregraph.schema", "coregraph.resolvers", "coregraph.api"],
    "storage": ["coregraph.schema", "coregraph.resolvers", "coregraph.api"],
    # Outbound HTTP sits below services and streams (both call it) and knows no domain.
    "outbound": [
        "coregraph.schema",
        "coregraph.resolvers",
        "coregraph.api",
        "coregraph.services",
        "coregraph.streams",
        "coregraph.models",
        "coregraph.auth",
        "coregraph.context",
        "coregraph.db",
        "coregraph.http",
        "coregraph.ws",
    ],
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    module = PACKAGE / f"{layer}.py"
    paths = [module] if module.is_file() else sorted((PACKAGE / layer).rglob("*.py"))
    assert paths, f"no coregraph/{layer} package or module"
    violations = []
    for path in paths:
        for module in imported_modules(path):
            for forbidden in FORBIDDEN[layer]:
                if module == forbidden or module.startswith(forbidden + "."):
                    violations.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert not violations, "\n".join(violations)
