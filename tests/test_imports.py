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


def test_http2_without_h2_fails_when_the_client_is_built() -> None:
    """Without the ``http2`` extra, ``http2=True`` or ``"prior-knowledge"`` is refused
    by the constructor (of the client and of the transport), naming the extra, not
    after a connect and a handshake; ``http2=False`` still works."""
    out = run_python(
        """
        import sys
        sys.modules["h2"] = None  # h2 not installed
        import trio
        import trio_pool
        from trio_pool.http import HTTPClient
        from trio_pool.httpx import PoolTransport

        async def main():
            async with trio_pool.open_pool() as pool:
                for make in (HTTPClient, PoolTransport):
                    for flag in (True, "prior-knowledge"):
                        try:
                            make(pool, http2=flag)
                        except ImportError as exc:
                            print(type(exc).__name__, "|", exc, "|", exc.__cause__ is not None)
                        else:
                            print("built")
                    make(pool, http2=False)
                    make(pool)

        trio.run(main)
        print("h2" in sys.modules and sys.modules["h2"] is not None)
        """
    )
    lines = out.splitlines()
    assert len(lines) == 5, out
    for line in lines[:4]:
        kind, message, chained = line.split(" | ")
        assert kind == "ImportError"
        assert "pip install 'trio-pool[http2]'" in message
        assert chained == "True"
    assert lines[4] == "False"


def test_anyio_module_without_anyio_names_the_extra() -> None:
    out = run_python(
        """
        import sys
        sys.modules["anyio"] = None  # anyio not installed
        import trio_pool
        for attempt in (lambda: trio_pool.anyio, lambda: __import__("trio_pool.anyio")):
            try:
                attempt()
            except ImportError as exc:
                print(type(exc).__name__, "|", exc)
        """
    )
    lines = out.splitlines()
    assert len(lines) == 2, out
    for line in lines:
        kind, message = line.split(" | ")
        assert kind == "ImportError"
        assert "pip install 'trio-pool[anyio]'" in message
