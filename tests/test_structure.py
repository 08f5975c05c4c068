"""Structure (issue 13): no import cycle between the core modules, and the health probes
in a module of their own that imports no other trio_pool module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "trio_pool"
CORE = (
    "_connection",
    "_pool",
    "_state",
    "_tls",
    "_probe",
    "_route",
    "_line",
    "_run",
    "_connector",
    "_maintenance",
)


def internal_imports(module: str) -> set[str]:
    """The trio_pool modules ``module`` imports, at run time or for type checking alone."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.module and node.module.startswith("trio_pool."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.split(".")[1]
                for alias in node.names
                if alias.name.startswith("trio_pool.")
            )
    return found


def test_no_import_cycle_among_private_modules() -> None:
    modules = sorted(
        p.stem for p in PACKAGE.glob("_*.py") if p.stem != "__init__" and p.stem != "__main__"
    )
    graph = {m: internal_imports(m) & set(modules) for m in modules}
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

    for module in modules:
        visit(module)
    assert set(CORE) <= set(modules)


def test_layers() -> None:
    assert internal_imports("_probe") == set()
    assert internal_imports("_tls") == set()
    assert "_pool" not in internal_imports("_state")
    assert not internal_imports("_connection") & {"_pool", "_state"}


@pytest.mark.parametrize("module", CORE)
def test_each_core_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import trio_pool.{module}"], check=True, timeout=60
    )
