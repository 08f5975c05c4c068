"""What ``./run`` installs for each command, and the extras in pyproject.toml it relies on.

``./run`` is exercised in a scratch copy whose ``.venv/bin/python`` is a stand-in that only
records how it was called: nothing is installed and nothing leaves the machine.
"""

from __future__ import annotations

import ast
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

import trio_pool

from . import nginx, proxies

ROOT = Path(__file__).resolve().parent.parent


def extras() -> dict[str, set[str]]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        declared = tomllib.load(file)["project"]["optional-dependencies"]
    return {
        extra: {re.split(r"[<>=!~\[ ;]", requirement)[0].lower() for requirement in requirements}
        for extra, requirements in declared.items()
    }


def test_extras_per_command() -> None:
    declared = extras()
    assert declared["demo"] == {"trustme"}  # all the demo needs beyond trio_pool itself
    assert declared["demo"] <= declared["test"]  # ./run demo is satisfied by a test install
    assert {"matplotlib", "aiohttp", "httpx", "trustme"} <= declared["bench"]
    # The whole suite runs whole: the chart tests need matplotlib, the sdist test hatchling.
    assert {"matplotlib", "hatchling"} <= declared["test"]


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A copy of ./run and pyproject.toml with a stand-in .venv/bin/python."""
    shutil.copy(ROOT / "run", tmp_path / "run")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$*" >> "$(dirname "$0")/../../calls"\n')
    python.chmod(0o755)
    return tmp_path


def run_demo(scratch: Path) -> tuple[list[str], str]:
    done = subprocess.run(
        ["bash", str(scratch / "run"), "demo", "--requests", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    calls = scratch / "calls"
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return lines, done.stderr


def test_run_demo_installs_the_demo_extra_once(scratch: Path) -> None:
    calls, stderr = run_demo(scratch)
    assert calls == [
        "-m pip install -q --disable-pip-version-check -e .[demo]",
        "-m trio_pool demo --requests 5",
    ]
    # One line says what the wait is for.
    assert stderr.count("\n") == 1
    assert "pip install -e '.[demo]'" in stderr
    # Set up: the next run goes straight to the demo.
    assert run_demo(scratch) == (["-m trio_pool demo --requests 5"], "")


def test_run_demo_reuses_a_test_install_and_redoes_a_stale_one(scratch: Path) -> None:
    version = hashlib.sha1((scratch / "pyproject.toml").read_bytes()).hexdigest()[:12]
    (scratch / ".venv" / f".installed-test-{version}").touch()  # ./run tests ran before
    assert run_demo(scratch)[0] == ["-m trio_pool demo --requests 5"]

    # pyproject.toml changed since: the demo extra is installed again.
    with (scratch / "pyproject.toml").open("a") as file:
        file.write("\n# changed\n")
    calls, _ = run_demo(scratch)
    assert calls[0].endswith("-e .[demo]")
    stamps = sorted(p.name for p in (scratch / ".venv").glob(".installed-*"))
    assert [s.rsplit("-", 1)[0] for s in stamps] == [".installed-demo", ".installed-test"]


# What a working checkout accumulates and an sdist must not ship.
LEFT_BEHIND = [
    ".hypothesis/examples/0a1b/2c3d",
    ".venv/bin/python",
    ".nox/tests/bin/python",
    ".pytest_cache/v/cache/lastfailed",
    ".mypy_cache/3.11/trio_pool.json",
    ".ruff_cache/0.1/123",
    "trio_pool/__pycache__/_pool.cpython-311.pyc",
    "tests/__pycache__/conftest.cpython-311.pyc",
    "docs/_build/html/index.html",
    "benchmarks/results/20261201-http.json",
    "dist/trio_pool-0.0.0.tar.gz",
    ".coverage",
]


def test_sdist_ships_the_project_not_caches(tmp_path: Path) -> None:
    """An sdist built from a used checkout holds the sources, docs and tests, and none of
    the caches, virtual environments or results lying around. pyproject.toml's excludes
    do this alone (the copy has no .gitignore, as an unpacked sdist need not)."""
    project = tmp_path / "project"
    shutil.copytree(
        ROOT,
        project,
        ignore=shutil.ignore_patterns(
            ".git",
            ".gitignore",
            ".venv",
            ".nox",
            ".hypothesis",
            "*_cache",
            "__pycache__",
            "_build",
            "results",
            "dist",
            ".coverage",
        ),
    )
    for name in LEFT_BEHIND:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(b"x")
    out = tmp_path / "dist"
    built = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, hatchling.build as b; print(b.build_sdist(sys.argv[1]))",
            str(out),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()[-1]
    with tarfile.open(out / built) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {
        "pyproject.toml",
        "README.md",
        "trio_pool/__init__.py",
        "trio_pool/py.typed",
        "tests/test_packaging.py",
        "docs/index.rst",
    } <= names
    shipped = sorted(name for name in names for junk in LEFT_BEHIND if name == junk)
    assert shipped == [], shipped
    caches = sorted(
        name
        for name in names
        if {".hypothesis", ".venv", ".nox", "__pycache__", "_build"} & set(name.split("/"))
        or name.split("/")[0].endswith("_cache")
    )
    assert caches == []


@pytest.mark.parametrize("ci", ["", "true"])
def test_missing_peer_skips_locally_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    """A test whose real peer (nginx, tinyproxy, microsocks) is not installed is skipped
    on a developer's machine and fails under ``CI``, where ``./run tests`` installs them."""
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(nginx, "find_nginx", lambda: None)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="nginx is not installed"):
        nginx.require_nginx()
    with pytest.raises(outcome, match="no-such-proxy is not installed"):
        proxies.find_binary("no-such-proxy")


def session_extras() -> dict[str, set[str]]:
    """The extras of ``.[...]`` each nox session installs, by session."""
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    constants = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    installed: dict[str, set[str]] = {}
    for function in tree.body:
        if not isinstance(function, ast.FunctionDef):
            continue
        names: set[str] = set()
        for node in ast.walk(function):
            if isinstance(node, ast.Name) and node.id in constants:
                node = constants[node.id]
            for text in ast.walk(node):
                if isinstance(text, ast.Constant) and isinstance(text.value, str):
                    for match in re.finditer(r"^\.\[([\w,]+)\]$", text.value):
                        names |= set(match.group(1).split(","))
        installed[function.name] = names
    return installed


def imported_extras() -> set[str]:
    """The extras whose packages trio_pool's modules import."""
    declared = extras()
    source = "\n".join(path.read_text() for path in (ROOT / "trio_pool").rglob("*.py"))
    imported = set(re.findall(r"^\s*(?:import|from) (\w+)", source, re.MULTILINE))
    return {
        extra
        for extra in ("httpx", "anyio", "prometheus", "socks", "http2", "demo")
        for name in declared[extra]
        if name.replace("-", "_") in imported or (name == "prometheus_client" and name in imported)
    }


def test_each_nox_session_installs_what_it_imports() -> None:
    """``nox -s typecheck`` and ``nox -s docs`` import every module of trio_pool, so they
    install every extra those modules import (typecheck once lacked socks); the test and
    soak sessions the test extra, bench the bench extra, which has h2 for bench_http2."""
    sessions = session_extras()
    needed = imported_extras()
    assert needed == {"httpx", "anyio", "prometheus", "socks", "http2", "demo"}
    assert needed <= sessions["typecheck"]
    assert needed <= sessions["docs"]
    assert sessions["tests"] == sessions["soak"] == {"test"}
    assert sessions["bench"] == {"bench"}
    assert {"h2", "httpx", "aiohttp", "matplotlib", "trustme"} <= extras()["bench"]
    # The test extra covers what trio_pool imports, and so does a typecheck install.
    assert set().union(*(extras()[extra] for extra in needed)) <= extras()["test"]


def test_version_is_one_and_has_its_changelog_section() -> None:
    """pyproject.toml and ``trio_pool.__version__`` agree, docs/history.rst has a section
    for that version, and towncrier is configured to write there from newsfragments/."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        pyproject = tomllib.load(file)
    version = pyproject["project"]["version"]
    assert version == trio_pool.__version__ == "0.2.0"
    history = (ROOT / "docs" / "history.rst").read_text()
    assert re.search(rf"^trio_pool {re.escape(version)} \(\d{{4}}-\d\d-\d\d\)\n-+\n", history, re.M)
    towncrier = pyproject["tool"]["towncrier"]
    assert (towncrier["filename"], towncrier["directory"]) == ("docs/history.rst", "newsfragments")
    assert ".. towncrier release notes start" in history
    assert (ROOT / "newsfragments" / "README.rst").exists()
    assert re.search(r"^   history$", (ROOT / "docs" / "index.rst").read_text(), re.M)
    assert "towncrier" not in {name for name in extras()["test"]}  # a docs tool, not a test one


def test_description_names_http2() -> None:
    with (ROOT / "pyproject.toml").open("rb") as file:
        description = tomllib.load(file)["project"]["description"]
    assert "HTTP/2" in description
    assert "HTTP/2" in (ROOT / "docs" / "index.rst").read_text().split(".. code-block")[0]
