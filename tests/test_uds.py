"""Unix domain sockets (issue 15): pooled per path, health-checked like TCP.

The servers are trio servers on sockets in ``tmp_path``; ``host`` and ``port`` still
name the peer (the key, and TLS's server name) but nothing resolves or dials them.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

import trio_pool
from trio_pool import ConnectError, ConnectionPool

from .checks import assert_balanced, assert_settled, roundtrip
from .servers import Handler, close_after_reply, echo, open_fds, reply_then_junk
from .test_tls import TLSServer, server_context
from .test_tls import echo as tls_echo


async def start_unix_server(nursery: trio.Nursery, path: Path, handler: Handler) -> str:
    """Serve ``handler`` on a Unix socket at ``path``; return the path as a str."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen()
    await nursery.start(trio.serve_listeners, handler, [trio.SocketListener(sock)])
    return str(path)


async def test_pooled_per_path(nursery: trio.Nursery, tmp_path: Path) -> None:
    a = await start_unix_server(nursery, tmp_path / "a.sock", echo)
    b = await start_unix_server(nursery, tmp_path / "b.sock", echo)
    fds = open_fds()
    async with trio_pool.open_pool() as pool:
        conn = await pool.acquire("localhost", 80, uds=a)
        assert isinstance(conn.stream, trio.SocketStream)
        assert conn.stream.socket.family == socket.AF_UNIX
        await roundtrip(conn)
        pool.release(conn)
        again = await pool.acquire("localhost", 80, uds=a)
        assert again.reused
        assert again.stream is conn.stream
        other = await pool.acquire("localhost", 80, uds=b)
        assert not other.reused
        await roundtrip(other, b"to b")
        pool.release(again)
        pool.release(other)
        stats = pool.statistics()
        assert (stats.connections_created, stats.pool_hits, stats.pool_misses) == (2, 1, 2)
        assert pool.statistics("localhost", 80).idle_connections == 2
        assert_settled(pool)
    assert open_fds() == fds


@pytest.mark.parametrize("handler", [close_after_reply, reply_then_junk])
async def test_health_checked_like_tcp(
    nursery: trio.Nursery, tmp_path: Path, handler: Handler, pool: ConnectionPool
) -> None:
    """A peer that closes (or talks) while the connection is idle: never handed out."""
    path = await start_unix_server(nursery, tmp_path / "s.sock", handler)
    for _ in range(3):
        conn = await pool.acquire("localhost", 80, uds=path)
        assert not conn.reused
        await roundtrip(conn)
        assert isinstance(conn.stream, trio.SocketStream)
        await trio.lowlevel.wait_readable(conn.stream.socket)  # FIN or junk arrived
        pool.release(conn)
    stats = pool.statistics()
    assert (stats.pool_hits, stats.pool_misses) == (0, 3)
    assert stats.connections_closed == 3
    assert_settled(pool)


async def test_missing_socket_is_a_connect_error_naming_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "nobody-home.sock")
    fds = open_fds()
    async with trio_pool.open_pool() as pool:
        with pytest.raises(ConnectError, match="Unix socket") as info:
            await pool.acquire("localhost", 80, uds=path)
        assert path in str(info.value)
        assert isinstance(info.value.__cause__, FileNotFoundError)
        stats = pool.statistics()
        assert stats.connect_failures == 1
        assert_settled(stats)
    assert open_fds() == fds


async def test_prewarm_and_connection_context(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = await start_unix_server(nursery, tmp_path / "s.sock", echo)
    async with trio_pool.open_pool(max_size=3) as pool:
        assert await pool.prewarm("localhost", 80, count=2, uds=path) == 2
        async with pool.connection("localhost", 80, uds=path) as conn:
            assert conn.reused
            await roundtrip(conn)
        assert pool.statistics().idle_connections == 2
        assert_balanced(pool)


async def test_tls_over_a_unix_socket_resumes(nursery: trio.Nursery, tmp_path: Path) -> None:
    ca = trustme.CA()
    server = TLSServer(server_context(ca.issue_cert("api.test"), "1.3"), tls_echo)
    path = await start_unix_server(nursery, tmp_path / "tls.sock", server.serve)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with trio_pool.open_pool() as pool:
        first = await pool.acquire_tls("api.test", 443, ssl_context=client_ctx, uds=path)
        await roundtrip(first)
        second = await pool.acquire_tls("api.test", 443, ssl_context=client_ctx, uds=path)
        assert second.session_reused
        pool.release(first)
        pool.release(second)
        assert pool.statistics().tls_resumptions == 1
        assert_settled(pool)
    assert server.server_names == ["api.test", "api.test"]


async def test_a_forgotten_key_keeps_its_route(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """``connection()`` entered after its key was dropped looks it up again, socket path
    included (the route is part of the cached arguments)."""
    path = await start_unix_server(nursery, tmp_path / "s.sock", echo)
    async with trio_pool.open_pool(max_idle_time=10.0, health_check_interval=5.0) as pool:
        pool.release(await pool.acquire("localhost", 80, uds=path))
        context = pool.connection("localhost", 80, uds=path)
        await trio.sleep(30.0)
        assert pool._state.keys == {}
        async with context as conn:
            assert conn._key.key.uds == path
            await roundtrip(conn)
        assert pool.statistics().connections_created == 2
        assert_balanced(pool)
