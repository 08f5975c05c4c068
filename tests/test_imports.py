"""``import trio_pool`` is light, and its submodules are reachable as attributes.

Each check runs in a fresh interpreter: the test process has long imported everything.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import trio_pool

EXTRAS = ("h11", "httpx", "anyio", "prometheus_client", "trustme", "trio_pool.http")


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_trio_pool_imports_no_extra() -> None:
    out = run_python(
        f"""
        import sys
        import trio_pool
        print(sorted(m for m in {EXTRAS!r} if m in sys.modules))
        """
    )
    assert out.strip() == "[]"


def test_submodules_are_attributes_after_import_trio_pool() -> None:
    """The README's ``trio_pool.http.HTTPClient(pool)`` after a bare ``import trio_pool``."""
    out = run_python(
        """
        import sys
        import trio
        import trio_pool

        async def main():
            async with trio_pool.open_pool() as pool:
                client = trio_pool.http.HTTPClient(pool)
                print(type(client).__name__)

        trio.run(main)
        print("httpx" in sys.modules)  # trio_pool.http did not drag the httpx extra in
        print(trio_pool.httpx.PoolTransport.__name__)
        print(trio_pool.metrics.PrometheusCollector.__name__)
        print(trio_pool.anyio.__name__)
        print(sorted({"anyio", "http", "httpx", "metrics"} - set(dir(trio_pool))))
        """
    )
    assert out.split() == [
        "HTTPClient",
        "False",
        "PoolTransport",
        "PrometheusCollector",
        "trio_pool.anyio",
        "[]",
    ]


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match=r"trio_pool.*no attribute 'htp'"):
        trio_pool.htp  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(trio_pool, "_demo_that_does_not_exist")


def test_attribute_is_the_submodule() -> None:
    import trio_pool.http
    import trio_pool.metrics

    assert trio_pool.http is sys.modules["trio_pool.http"]
    assert trio_pool.metrics is sys.modules["trio_pool.metrics"]
    assert {"http", "httpx", "metrics", "anyio", "open_pool"} <= set(dir(trio_pool))
