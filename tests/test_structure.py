"""Structure (issues 13 and 21): no import cycle anywhere in the package (``trio_pool`` and
``trio_pool.http`` alike), the layers in their order, no private attribute of a dependency,
and every private module importable first in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "trio_pool"
#: Private attributes of trio and h2 we once used and must not again (issue 21).
FOREIGN_PRIVATE = frozenset(
    {"_schedule_points", "_open_streams", "_runner", "_cancel_status", "_parent_nursery"}
)
#: The synchronous state machine: it reads no clock and wakes no task itself.
STATE_MODULES = (
    "_addresses",
    "_records",
    "_counters",
    "_ledger",
    "_line",
    "_streams",
    "_state",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            found.append(child)
            visit(child)

    visit(tree)
    return found


def internal_imports(module: str) -> set[str]:
    """The trio_pool modules ``module`` imports at run time (at the top or in a function;
    ``import trio_pool.x`` and ``from . import x`` name ``x``)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("trio_pool"):
                continue
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    found.add(f"{target}.{alias.name}")
                elif target in MODULES:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
    found.discard(module)
    # A package's __init__ is run by importing anything in it: not an edge of its own.
    return {m for m in found if not module.startswith(m + ".")}


def test_every_package_is_covered() -> None:
    assert "trio_pool.http._client" in MODULES
    assert "trio_pool.http._http2" in MODULES
    assert "trio_pool._state" in MODULES


def test_no_import_cycle_anywhere_in_the_package() -> None:
    graph = {m: internal_imports(m) for m in MODULES}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, f"import cycle: {' -> '.join([*visiting, module])}"
        visiting.append(module)
        for dependency in sorted(graph[module]):
            visit(dependency)
        visiting.pop()
        done.add(module)

    for module in MODULES:
        visit(module)


def test_the_import_graph_sees_imports_across_packages() -> None:
    """The graph the cycle check walks has the edges from ``trio_pool.http`` into the
    core (a check that saw no edge could never fail)."""
    assert "trio_pool._pool" in internal_imports("trio_pool.http._client")


def test_layers() -> None:
    assert internal_imports("trio_pool._probe") == set()
    assert internal_imports("trio_pool._tls") == set()
    for module in STATE_MODULES:
        imports = internal_imports(f"trio_pool.{module}")
        assert not imports & {"trio_pool._pool", "trio_pool.http"}, module
    assert not internal_imports("trio_pool._connection") & {
        "trio_pool._pool",
        "trio_pool._state",
    }


#: The one module allowed to work around h2 (pinned in pyproject.toml, its behaviour
#: checked by tests/test_h2_adapter.py).
H2_ADAPTER = "trio_pool.http._h2_adapter"


def test_no_private_attribute_of_a_dependency() -> None:
    used = [
        f"{module}:{node.lineno} .{node.attr}"
        for module, path in MODULES.items()
        if module != H2_ADAPTER
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in FOREIGN_PRIVATE
    ]
    assert used == []


@pytest.mark.parametrize("module", STATE_MODULES)
def test_the_state_machine_reads_no_clock_and_wakes_no_task(module: str) -> None:
    """Time and wake-ups come in from the pool (issue 21): ``trio.current_time``,
    ``current_task`` and ``reschedule`` appear nowhere in the state modules."""
    tree = ast.parse(MODULES[f"trio_pool.{module}"].read_text())
    named = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)} | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert not named & {"current_time", "current_task", "reschedule", "current_clock"}


@pytest.mark.parametrize(
    "module",
    sorted(m for m in MODULES if m.rpartition(".")[2].startswith("_") and "__main__" not in m),
)
def test_each_private_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {module}"], check=True, timeout=60
    )
