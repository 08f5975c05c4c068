"""Developer sessions: ``nox -s tests lint typecheck bench soak docs demo changelog``."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck"]

TEST_DEPS = [".[test]"]
# Every extra that trio_pool's own modules import (lazily): type checking and the API
# docs import them all, so both sessions install them all.
ALL_EXTRAS = ".[httpx,anyio,prometheus,socks,http2,demo]"
DOCS_DEPS = ".[httpx,anyio,prometheus,socks,http2,demo,docs]"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (nginx tests need nginx on PATH or in /usr/sbin)."""
    session.install("-e", *TEST_DEPS, "pytest-cov")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "trio_pool", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "trio_pool")


@nox.session
def typecheck(session: nox.Session) -> None:
    # Not editable: pyright --verifytypes cannot see a package behind an editable install.
    session.install(ALL_EXTRAS, "mypy", "pyright")
    session.run("mypy")
    session.run("pyright", "--verifytypes", "trio_pool", "--ignoreexternal")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: ratios against baselines measured in the same run (JSON and PNG charts in
    benchmarks/results)."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """The long fault-injection soak (issue 7)."""
    session.install("-e", *TEST_DEPS)
    session.run("pytest", "-m", "slow", "--run-slow", "tests/", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    session.install("-e", DOCS_DEPS)
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def demo(session: nox.Session) -> None:
    session.install("-e", ".[demo]")
    session.run("python", "-m", "trio_pool", "demo", *session.posargs)


@nox.session
def changelog(session: nox.Session) -> None:
    """The next release's notes from newsfragments/, as a draft (``-- --version X.Y.Z``;
    ``towncrier build --version X.Y.Z`` writes them into docs/history.rst at a release)."""
    session.install("towncrier>=23.10")
    session.run("towncrier", "build", "--draft", *(session.posargs or ["--version", "next"]))
