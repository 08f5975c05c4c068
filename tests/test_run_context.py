"""A pool belongs to the trio.run (and thread) that opened it, and needs trio: used from
another run, another thread or asyncio, it says so instead of working by accident or
failing deep inside trio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest
import trio

import trio_pool
from trio_pool.http import HTTPClient

from .servers import HOST, echo, start_server

Use = Callable[[trio_pool.ConnectionPool, int], Awaitable[object]]


@pytest.fixture
async def warm_pool(echo_port: int) -> AsyncIterator[trio_pool.ConnectionPool]:
    """A pool with one idle connection to the echo server: a hit for the next acquire."""
    async with trio_pool.open_pool() as pool:
        async with pool.connection(HOST, echo_port):
            pass
        assert pool.statistics().idle_connections == 1
        yield pool


async def _context(pool: trio_pool.ConnectionPool, port: int) -> None:
    async with pool.connection(HOST, port):
        pass  # pragma: no cover - must not be entered


async def _acquire(pool: trio_pool.ConnectionPool, port: int) -> None:
    await pool.acquire(HOST, port)


async def _new_key(pool: trio_pool.ConnectionPool, port: int) -> None:
    async with pool.connection(HOST, port, tls=True):
        pass  # pragma: no cover - must not be entered


async def _http(pool: trio_pool.ConnectionPool, port: int) -> None:
    await HTTPClient(pool).request("GET", f"http://{HOST}:{port}/")


USES = [_context, _acquire, _new_key, _http]


def _outcome(run: Callable[[], object]) -> BaseException | None:
    try:
        run()
    except BaseException as exc:
        return exc
    return None  # pragma: no cover - the test fails on it


def _unwrap(exc: BaseException | None) -> BaseException | None:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def assert_untouched(pool: trio_pool.ConnectionPool) -> None:
    stats = pool.statistics()
    assert (stats.idle_connections, stats.active_connections) == (1, 0)
    assert (stats.pool_hits, stats.connections_created) == (0, 1)


@pytest.mark.parametrize("use", USES)
async def test_another_trio_run_is_refused(
    warm_pool: trio_pool.ConnectionPool, echo_port: int, use: Use
) -> None:
    error = await trio.to_thread.run_sync(_outcome, lambda: trio.run(use, warm_pool, echo_port))
    error = _unwrap(error)
    assert isinstance(error, RuntimeError), repr(error)
    assert "belongs to the trio.run" in str(error)
    assert_untouched(warm_pool)


@pytest.mark.parametrize("use", USES)
async def test_asyncio_is_refused(
    warm_pool: trio_pool.ConnectionPool, echo_port: int, use: Use
) -> None:
    async def under_asyncio() -> None:
        await use(warm_pool, echo_port)

    error = await trio.to_thread.run_sync(_outcome, lambda: asyncio.run(under_asyncio()))
    assert isinstance(error, RuntimeError), repr(error)
    assert "needs trio" in str(error)
    assert "must be called from async context" not in str(error)
    assert_untouched(warm_pool)


async def test_anyio_asyncio_backend_is_refused(
    warm_pool: trio_pool.ConnectionPool, echo_port: int
) -> None:
    from trio_pool.anyio import connection

    async def under_anyio() -> None:
        async with connection(warm_pool, HOST, echo_port):
            pass  # pragma: no cover - must not be entered

    error = await trio.to_thread.run_sync(
        _outcome, lambda: anyio.run(under_anyio, backend="asyncio")
    )
    assert isinstance(error, RuntimeError), repr(error)
    assert "needs trio" in str(error)
    assert_untouched(warm_pool)


def test_a_pool_from_an_ended_run_is_refused_in_the_same_thread() -> None:
    """Sequential runs in one thread: the pool's block ended with its run; a later
    run (or asyncio) is told the pool is not its own, not PoolClosed or a trio error."""

    async def first_run() -> tuple[trio_pool.ConnectionPool, int]:
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, echo)
            async with trio_pool.open_pool() as pool, pool.connection(HOST, port):
                pass
            nursery.cancel_scope.cancel()
        return pool, port

    pool, port = trio.run(first_run)
    for use in USES:
        error = _unwrap(_outcome(lambda: trio.run(use, pool, port)))  # noqa: B023
        assert isinstance(error, RuntimeError), repr(error)
        assert "belongs to the trio.run" in str(error)
        error = _outcome(lambda: asyncio.run(use(pool, port)))  # type: ignore[arg-type]  # noqa: B023
        assert isinstance(error, RuntimeError), repr(error)
        assert "needs trio" in str(error)
