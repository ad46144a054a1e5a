"""The layout's promises, checked on the source: sans-I/O modules import no I/O, and nothing imports in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "collab"
IO_MODULES = {"asyncio", "websockets", "sqlite3", "sqlite_utils", "socket", "selectors", "uvloop"}
SANS_IO = ("collab.sync",)
"""Packages whose modules take bytes and the clock in and give decisions out."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, *, module_level_only: bool) -> set[str]:
    """Modules `path` imports at run time (imports under `if TYPE_CHECKING:` are not run)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_in(path.read_text(), package, module_level_only=module_level_only)


def imports_in(source: str, package: str, *, module_level_only: bool) -> set[str]:
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and is_type_checking(node):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found.add(target)
                # `from . import x` may name a submodule
                found.update(f"{target}.{alias.name}" for alias in node.names)
            if module_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if isinstance(node, ast.ClassDef):
                    visit(node.body)
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list) and children and isinstance(children[0], ast.stmt | ast.excepthandler):
                    visit([c for c in children if isinstance(c, ast.stmt)])
                    for handler in children:
                        if isinstance(handler, ast.ExceptHandler):
                            visit(handler.body)

    visit(ast.parse(source).body)
    return found


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def collab_imports(module: str, *, module_level_only: bool) -> set[str]:
    return {
        target
        for target in imports(MODULES[module], module_level_only=module_level_only)
        if target in MODULES and target != module
    }


def closure(module: str) -> set[str]:
    """Every collab module `module` needs, however indirectly, itself included."""
    seen, todo = {module}, [module]
    while todo:
        for target in collab_imports(todo.pop(), module_level_only=False):
            parent = target.rpartition(".")[0]
            for needed in (target, parent):
                if needed in MODULES and needed not in seen:
                    seen.add(needed)
                    todo.append(needed)
    return seen


SANS_IO_MODULES = sorted(name for name in MODULES if name.startswith(SANS_IO))


def test_the_sans_io_layer_exists() -> None:
    assert {"collab.sync.protocol", "collab.sync.connection", "collab.sync.room", "collab.sync.presence"} <= set(
        SANS_IO_MODULES
    )


@pytest.mark.parametrize("module", SANS_IO_MODULES)
def test_sans_io_modules_import_no_io(module: str) -> None:
    for needed in sorted(closure(module)):
        io = {target.split(".")[0] for target in imports(MODULES[needed], module_level_only=False)} & IO_MODULES
        assert not io, f"{module} needs {needed}, which imports {sorted(io)}"
        assert not needed.startswith(("collab.server", "collab.http", "collab.cli")), f"{module} needs {needed}"


def test_no_import_cycles() -> None:
    graph = {module: collab_imports(module, module_level_only=True) for module in MODULES}
    # A module also runs its package's __init__ first.
    for module, targets in graph.items():
        targets.update(t.rpartition(".")[0] for t in list(targets) if t.rpartition(".")[0] in MODULES)
        targets.discard(module)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1 and not module.startswith(target + "."):
                cycle = [*path[path.index(target) :], target] if target in path else [module, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_imports_that_run() -> None:
    """The checks above would see a sans-I/O module reaching asyncio, however it is imported (so they can fail)."""
    source = (
        "from __future__ import annotations\n"
        "import asyncio\n"
        "from ..server import app\n"
        "if TYPE_CHECKING:\n    import websockets\n"
        "def later():\n    import sqlite3\n"
        "try:\n    import uvloop\nexcept ImportError:\n    pass\n"
    )
    everything = imports_in(source, "collab.sync", module_level_only=False)
    assert {"asyncio", "collab.server", "collab.server.app", "sqlite3", "uvloop"} <= everything
    assert "websockets" not in everything
    assert "sqlite3" not in imports_in(source, "collab.sync", module_level_only=True)
