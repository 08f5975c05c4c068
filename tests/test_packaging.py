"""What ``./run`` installs for each command, and the extras in pyproject.toml it relies on.

``./run`` is exercised in a scratch copy whose ``.venv/bin/python`` is a stand-in that only
records how it was called: nothing is installed and nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

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
    assert [extra for extra, names in declared.items() if "matplotlib" in names] == ["bench"]


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
