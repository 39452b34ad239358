"""The package's rooms keep to their side of the process boundary.

``django_raft/node/`` runs only inside ``raftnode``; ``client/`` runs in web, shell and
worker processes; ``protocol/`` is what both speak; ``core/`` is the sans-IO Raft.
Read from the source (every import, those inside functions too), so that a web
process can never load the node by accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "django_raft"

ENTRY_POINTS = {
    "django_raft.management.commands.raftnode": "the command that starts a node",
}
"""Modules outside ``node/`` that may import it, and why."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every ``django_raft`` module ``path`` imports, wherever the import stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "django_raft" or m.startswith("django_raft.")}


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def in_room(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def test_the_modules_were_found() -> None:
    for room in ("core", "protocol", "client", "node"):
        assert any(in_room(m, f"django_raft.{room}") for m in MODULES), room
    assert "django_raft.node.runner" in MODULES["django_raft.node.http.server"]


def test_nothing_outside_the_node_imports_the_node() -> None:
    reaching = {
        module: sorted(m for m in imported if in_room(m, "django_raft.node"))
        for module, imported in MODULES.items()
        if not in_room(module, "django_raft.node") and module not in ENTRY_POINTS
    }
    assert {module: found for module, found in reaching.items() if found} == {}


@pytest.mark.parametrize("room", ["protocol", "core"])
def test_the_lower_rooms_import_no_client(room: str) -> None:
    reaching = {
        module: sorted(m for m in imported if in_room(m, "django_raft.client"))
        for module, imported in MODULES.items()
        if in_room(module, f"django_raft.{room}")
    }
    assert {module: found for module, found in reaching.items() if found} == {}


def test_the_core_imports_only_itself() -> None:
    outside = {
        module: sorted(m for m in imported if not in_room(m, "django_raft.core"))
        for module, imported in MODULES.items()
        if in_room(module, "django_raft.core")
    }
    assert {module: found for module, found in outside.items() if found} == {}


def test_every_module_says_what_it_owns() -> None:
    silent = [
        module
        for module in MODULES
        if "migrations" not in module
        and module.split(".")[-1] != "proto"
        and not module.endswith("_pb2")
        and not ast.get_docstring(ast.parse((PACKAGE.parent / module_path(module)).read_text()))
    ]
    assert silent == []


def module_path(module: str) -> Path:
    path = Path(*module.split("."))
    package = PACKAGE.parent / path / "__init__.py"
    return package.relative_to(PACKAGE.parent) if package.exists() else path.with_suffix(".py")
