"""
The house rules, checked on the source (issue 13): no import cycle inside
L{peatio_ws}, and only private modules (C{_*.py}) reach into private names,
ours on other objects or another library's.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.paths import REPO

PACKAGE = REPO / "peatio_ws"
#: Public API despite the underscore: namedtuple's methods.
NAMEDTUPLE_API = frozenset({"_replace", "_asdict", "_fields", "_make"})


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def _runtime_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported (not under TYPE_CHECKING)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def import_graph() -> dict[str, set[str]]:
    """Module -> the peatio_ws modules it imports at import time (module level or in functions)."""
    names = {name for name, _ in modules()}
    graph: dict[str, set[str]] = {}
    for name, path in modules():
        targets: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    package = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                    base = ".".join([*package, base] if base else package)
                found = [base] + [f"{base}.{alias.name}" for alias in node.names]
            targets.update(t for t in found if t in names and t != name)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            # A package importing its own submodules (to re-export) is not a cycle.
            if target.startswith(node + "."):
                continue
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def private_reaches(path: Path) -> list[str]:
    """C{obj._name} on anything but self/cls/super(), and C{from lib import _name}, in one file."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in NAMEDTUPLE_API
        ):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("peatio_ws"):
            found += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names if a.name.startswith("_")]
    return found


class ArchitectureTests(SynchronousTestCase):
    def test_no_import_cycle(self) -> None:
        """No module of peatio_ws imports, directly or not, a module that imports it."""
        graph = import_graph()
        self.assertIn("peatio_ws.websocket.connection", graph)
        self.assertIsNone(find_cycle(graph))

    def test_cycle_finder(self) -> None:
        """The finder itself finds a cycle when there is one."""
        self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
        self.assertIsNone(find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}))

    def test_only_private_modules_reach_into_private_names(self) -> None:
        """Outside C{_*.py} modules, no code touches a private name of another object or library."""
        offenders = {}
        for _, path in modules():
            if path.name.startswith("_") and path.name != "__init__.py":
                continue
            reaches = private_reaches(path)
            if reaches:
                offenders[str(path.relative_to(PACKAGE))] = reaches
        self.assertEqual(offenders, {})
