"""The layout's promises, checked on the source: sans-I/O modules import no I/O, and nothing imports in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "collab"
IO_MODULES = {
    *("asyncio", "anyio", "uvloop", "selectors", "threading", "concurrent"),  # event loops and threads
    *("websockets", "socket", "ssl", "sqlite3", "sqlite_utils"),
}
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
    """Every statement at any depth is visited (`with`, `try`, `match` cases, class bodies...) except the
    bodies of `if TYPE_CHECKING:`, and of functions when `module_level_only` (they run later, if at all)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        match node:
            case ast.If() if is_type_checking(node):
                for statement in node.orelse:
                    visit(statement)
                return
            case ast.FunctionDef() | ast.AsyncFunctionDef() if module_level_only:
                return
            case ast.Import(names=names):
                found.update(alias.name for alias in names)
            case ast.ImportFrom(module=module, names=names, level=level):
                if level:
                    base = package.split(".")[: len(package.split(".")) - level + 1]
                    target = ".".join(base + ([module] if module else []))
                else:
                    target = module or ""
                found.add(target)
                # `from . import x` may name a submodule
                found.update(f"{target}.{alias.name}" for alias in names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
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
        "match engine:\n    case 'threads':\n        from concurrent import futures\n"
        "with suppress(ImportError):\n    import ssl\n"
        "class Loop:\n    import selectors\n    def run(self):\n        import threading\n"
    )
    everything = imports_in(source, "collab.sync", module_level_only=False)
    assert {"asyncio", "collab.server", "collab.server.app", "sqlite3", "uvloop"} <= everything
    assert {"concurrent", "concurrent.futures", "ssl", "selectors", "threading"} <= everything
    assert "websockets" not in everything
    module_level = imports_in(source, "collab.sync", module_level_only=True)
    assert {"asyncio", "uvloop", "concurrent", "ssl", "selectors"} <= module_level
    assert not {"sqlite3", "threading", "websockets"} & module_level
