"""Shared fixtures. Servers live in tests/servers.py; fixtures of one area stay in its tests."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Iterator

import pytest
import trio
import trustme

import trio_pool
from trio_pool import ConnectionPool
from trio_pool.http import HTTPClient

from .servers import HOST, echo, stall, start_server, unroutable_listener


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A test certificate authority, one per test module."""
    return trustme.CA()


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    """A verifying client context that trusts the test CA."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    """A pool with the default settings, open for the test and closed after it."""
    async with trio_pool.open_pool() as opened:
        yield opened


@pytest.fixture
def client(pool: ConnectionPool) -> HTTPClient:
    """An HTTP client on the test's :func:`pool`."""
    return HTTPClient(pool)


@pytest.fixture
async def echo_port(nursery: trio.Nursery) -> int:
    """Port of a loopback echo server running for the test."""
    return await start_server(nursery, echo)


@pytest.fixture
async def stall_port(nursery: trio.Nursery) -> int:
    """Port of a loopback server running for the test that accepts, then never answers."""
    return await start_server(nursery, stall)


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A port where connects hang: a ``listen(0)`` socket never accepting, its tiny
    backlog filled with raw connects, so the kernel drops further SYNs."""
    listener, port = unroutable_listener()
    fillers = []
    try:
        for _ in range(2):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((HOST, port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False, help="also run the long soak tests"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="soak test: run with --run-slow (nox -s soak)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.hookimpl(specname="pytest_collection_modifyitems", trylast=True)
def pytest_collection_modifyitems_anyio(items: list[pytest.Item]) -> None:
    """Let ``@pytest.mark.anyio`` tests run under anyio's plugin, not pytest-trio.

    With ``trio_mode = true`` pytest-trio marks every ``async def`` test ``trio`` and then
    replaces the test function with its own ``trio.run`` runner, so anyio's plugin never
    sees a coroutine function and the test silently runs under pytest-trio. This runs
    after that automark and takes the ``trio`` mark off tests marked ``anyio``.
    """
    for item in items:
        if item.get_closest_marker("anyio") is not None:
            item.own_markers[:] = [m for m in item.own_markers if m.name != "trio"]
