"""Pooling through real proxies (issue 15): tinyproxy (CONNECT, forwarding) and microsocks.

Every proxy and origin listens on 127.0.0.1. No test names a host that needs DNS: the
``socks5h`` test sends ``localhost``, which microsocks resolves from ``/etc/hosts``; the
``socks5`` one names ``origin.test``, which our own custom resolver maps to 127.0.0.1
(the proxy only ever sees the address).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme

import trio_pool
from trio_pool import ConnectError, ConnectionPool, Proxy, ProxyError

from .checks import assert_settled, roundtrip
from .proxies import RunningProxy, open_microsocks, open_tinyproxy, read_head
from .servers import HOST, close_after_reply, open_fds, refused_port, start_server
from .test_tls import server_context, start_tls_server

pytestmark = pytest.mark.proxy


@pytest.fixture
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    return server_context(ca.issue_cert("127.0.0.1", "localhost"), "1.3")


class _Resolver(trio.abc.HostnameResolver):
    """Maps ``*.test`` names to 127.0.0.1; any other name is an error (no DNS)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):  # type: ignore[no-untyped-def]
        name = host.decode() if isinstance(host, bytes) else host
        self.names.append(name)
        if not name.endswith(".test"):
            raise OSError(f"test resolver: no DNS for {name!r}")
        return [(trio.socket.AF_INET, trio.socket.SOCK_STREAM, 6, "", (HOST, int(port)))]

    async def getnameinfo(self, sockaddr, flags):  # type: ignore[no-untyped-def]
        raise NotImplementedError


@pytest.fixture
async def resolver() -> AsyncIterator[_Resolver]:
    resolver = _Resolver()
    previous = trio.socket.set_custom_hostname_resolver(resolver)
    try:
        yield resolver
    finally:
        trio.socket.set_custom_hostname_resolver(previous)


@pytest.fixture
async def microsocks(tmp_path: Path) -> AsyncIterator[RunningProxy]:
    """A microsocks SOCKS5 proxy without login, running for the test."""
    async with open_microsocks(tmp_path) as proxy:
        yield proxy


# -- HTTP CONNECT through tinyproxy ------------------------------------------------------


async def test_plain_tunnel_is_pooled_per_proxy_and_origin(echo_port: int, tmp_path: Path) -> None:
    fds = open_fds()
    async with (
        open_tinyproxy(tmp_path, connect_ports=[echo_port]) as first,
        open_tinyproxy(tmp_path, connect_ports=[echo_port]) as second,
        trio_pool.open_pool() as pool,
    ):
        proxy = first.proxy()
        conn = await pool.acquire(HOST, echo_port, proxy=proxy)
        stream = conn.stream
        await roundtrip(conn)
        pool.release(conn)
        again = await pool.acquire(HOST, echo_port, proxy=Proxy(first.url))  # an equal Proxy
        assert again.reused
        assert again.stream is stream
        await roundtrip(again, b"through the tunnel")
        # Direct, or through the other proxy: other keys, other connections.
        direct = await pool.acquire(HOST, echo_port)
        other = await pool.acquire(HOST, echo_port, proxy=second.proxy())
        assert not direct.reused
        assert not other.reused
        assert len({id(c.stream) for c in (again, direct, other)}) == 3
        for conn in (direct, other):
            await roundtrip(conn)
        for conn in (again, direct, other):
            pool.release(conn)
        stats = pool.statistics()
        assert (stats.connections_created, stats.pool_hits, stats.pool_misses) == (3, 1, 3)
        assert stats.idle_connections == 3
        assert_settled(pool)
        assert len(pool._state.keys) == 3
        assert f"CONNECT {HOST}:{echo_port} HTTP/1.1" in first.log()  # it did tunnel
    assert open_fds() == fds


async def test_tls_through_tinyproxy_resumes_its_session(
    nursery: trio.Nursery,
    tmp_path: Path,
    pool: ConnectionPool,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
) -> None:
    server, port = await start_tls_server(nursery, server_ctx)
    async with open_tinyproxy(tmp_path, connect_ports=[port]) as tinyproxy:
        proxy = tinyproxy.proxy()
        first = await pool.acquire_tls(
            HOST, port, sni="localhost", ssl_context=client_ctx, proxy=proxy
        )
        assert isinstance(first.stream, trio.SSLStream)
        assert isinstance(first.stream.transport_stream, trio.SocketStream)
        # The socket goes to the proxy; TLS (and its certificate check) to the origin.
        assert first.stream.transport_stream.socket.getpeername()[1] == tinyproxy.port
        assert not first.session_reused
        await roundtrip(first)  # brings the TLS 1.3 tickets
        second = await pool.acquire_tls(
            HOST, port, sni="localhost", ssl_context=client_ctx, proxy=proxy
        )
        assert second.session_reused
        await roundtrip(second)
        pool.release(first)
        pool.release(second)
        third = await pool.acquire_tls(
            HOST, port, sni="localhost", ssl_context=client_ctx, proxy=proxy
        )
        assert third.reused
        await roundtrip(third)  # the health probe passed the tickets without harm
        pool.release(third)
        stats = pool.statistics()
        assert (stats.tls_handshakes, stats.tls_resumptions) == (2, 1)
        assert (stats.connections_created, stats.pool_hits) == (2, 1)
        # A direct connection is another key: its own full handshake.
        direct = await pool.acquire_tls(HOST, port, sni="localhost", ssl_context=client_ctx)
        assert not direct.session_reused
        pool.release(direct)
        assert_settled(pool)
    assert server.server_names == ["localhost"] * 3


async def test_origin_closing_while_idle_behind_the_proxy_is_not_reused(
    nursery: trio.Nursery, tmp_path: Path, pool: ConnectionPool
) -> None:
    port = await start_server(nursery, close_after_reply)
    async with open_tinyproxy(tmp_path, connect_ports=[port]) as tinyproxy:
        proxy = tinyproxy.proxy()
        for _ in range(3):
            conn = await pool.acquire(HOST, port, proxy=proxy)
            assert not conn.reused
            await roundtrip(conn)
            pool.release(conn)
            assert isinstance(conn.stream, trio.SocketStream)
            if not conn.is_closed:  # the proxy passes the origin's FIN on
                await trio.lowlevel.wait_readable(conn.stream.socket)
        stats = pool.statistics()
        assert (stats.pool_hits, stats.pool_misses) == (0, 3)
        assert stats.connections_closed >= 2
        assert_settled(pool)


async def test_tinyproxy_basic_auth(echo_port: int, tmp_path: Path) -> None:
    fds = open_fds()
    async with (
        open_tinyproxy(tmp_path, connect_ports=[echo_port], auth=("alice", "s3cret")) as tinyproxy,
        trio_pool.open_pool() as pool,
    ):
        without = Proxy(f"http://{HOST}:{tinyproxy.port}")
        with pytest.raises(ProxyError) as info:
            await pool.acquire(HOST, echo_port, proxy=without)
        assert info.value.status == 407
        assert info.value.proxy == without.url
        assert "challenge: Basic" in str(info.value)
        wrong = Proxy(f"http://alice:nope@{HOST}:{tinyproxy.port}")
        with pytest.raises(ProxyError) as info:
            await pool.acquire(HOST, echo_port, proxy=wrong)
        assert info.value.status in (401, 407)  # tinyproxy says 401
        assert "credentials were rejected" in str(info.value)
        conn = await pool.acquire(HOST, echo_port, proxy=tinyproxy.proxy())
        await roundtrip(conn)
        pool.release(conn)
        stats = pool.statistics()
        assert (stats.connect_failures, stats.connections_created) == (2, 1)
        assert_settled(pool)
    assert open_fds() == fds


async def test_tinyproxy_refuses_a_port_it_does_not_allow(
    echo_port: int, tmp_path: Path, pool: ConnectionPool
) -> None:
    async with open_tinyproxy(
        tmp_path, connect_ports=[echo_port + 1 if echo_port < 65535 else 1]
    ) as tinyproxy:
        with pytest.raises(ProxyError) as info:
            await pool.acquire(HOST, echo_port, proxy=tinyproxy.proxy())
        assert info.value.status == 403
        assert isinstance(info.value, ConnectError)
        assert_settled(pool)


async def test_unreachable_proxy_is_a_connect_error_naming_it(pool: ConnectionPool) -> None:
    proxy = Proxy(f"http://{HOST}:{refused_port()}")
    with pytest.raises(ConnectError, match=f"cannot connect to the proxy {proxy.url}") as info:
        await pool.acquire(HOST, 443, tls=True, proxy=proxy)
    assert not isinstance(info.value, ProxyError)
    assert_settled(pool)


# -- forwarding (plain http through an HTTP proxy) ---------------------------------------------


async def http_origin(stream: trio.SocketStream) -> None:
    """Answer every request head with ``200`` and its request line as the body."""
    try:
        while head := await read_head(stream):
            line = head.split(b"\r\n", 1)[0]
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(line), line)
            )
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def forward_get(conn: trio_pool.PooledConnection, url: str, proxy: Proxy) -> bytes:
    """An absolute-form GET as the HTTP layer will send it; the body of the response."""
    authority = url.split("/")[2].encode()
    headers = b"".join(b"%s: %s\r\n" % pair for pair in proxy.request_headers)
    await conn.send_all(
        b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (url.encode(), authority, headers)
    )
    data = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in data:
            chunk = await conn.receive_some()
            assert chunk, data
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head
        match = re.search(rb"(?im)^content-length: *(\d+)", head)
        assert match is not None, head
        while len(body) < int(match[1]):
            chunk = await conn.receive_some()
            assert chunk, body
            body += chunk
    return body


async def test_forwarding_through_tinyproxy(
    nursery: trio.Nursery, tmp_path: Path, pool: ConnectionPool
) -> None:
    """tinyproxy relays absolute-form requests, then closes (it keeps no client
    connection alive): the pool sees that and never hands the dead connection out."""
    one = await start_server(nursery, http_origin)
    two = await start_server(nursery, http_origin)
    async with open_tinyproxy(tmp_path, connect_ports=[one], auth=("bob", "pw")) as tinyproxy:
        proxy = tinyproxy.proxy()
        for port, path in ((one, "/first"), (two, "/second")):
            conn = await pool.acquire(proxy.host, proxy.port, proxy=proxy, forward=True)
            assert not conn.reused
            assert isinstance(conn.stream, trio.SocketStream)
            assert conn.stream.socket.getpeername()[1] == tinyproxy.port
            # tinyproxy passes it on in origin form, to the origin the URL names
            body = await forward_get(conn, f"http://{HOST}:{port}{path}", proxy)
            assert body.startswith(b"GET " + path.encode() + b" HTTP/1.")
            await trio.lowlevel.wait_readable(conn.stream.socket)  # tinyproxy's FIN
            pool.release(conn)
        stats = pool.statistics()
        assert (stats.connections_created, stats.pool_hits) == (2, 0)
        assert_settled(pool)


async def keep_alive_forward_proxy(stream: trio.SocketStream, targets: list[bytes]) -> None:
    """A forwarding proxy that keeps connections alive and answers by itself: the body
    is the request target it got (absolute form, as a real proxy would see it)."""
    try:
        while head := await read_head(stream):
            target = head.split(b" ")[1]
            targets.append(target)
            assert b"\r\nProxy-Authorization: Basic " in head
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(target), target)
            )
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_forwarding_is_pooled_per_proxy_across_origins(
    nursery: trio.Nursery, pool: ConnectionPool
) -> None:
    targets: list[bytes] = []
    port = await start_server(nursery, partial(keep_alive_forward_proxy, targets=targets))
    other_port = await start_server(nursery, partial(keep_alive_forward_proxy, targets=targets))
    proxy = Proxy(f"http://bob:pw@{HOST}:{port}")
    stream = None
    for origin in ("http://a.test/1", "http://b.test:8080/2", "http://a.test/3"):
        conn = await pool.acquire(HOST, port, proxy=proxy, forward=True)
        assert conn.reused == (stream is not None)
        assert stream in (None, conn.stream)
        stream = conn.stream
        assert await forward_get(conn, origin, proxy) == origin.encode()
        pool.release(conn)
    # Another proxy, or the same address without forward: never that connection.
    other = Proxy(f"http://bob:pw@{HOST}:{other_port}")
    elsewhere = await pool.acquire(HOST, other_port, proxy=other, forward=True)
    direct = await pool.acquire(HOST, port)
    assert not elsewhere.reused
    assert not direct.reused
    pool.release(elsewhere)
    pool.release(direct)
    stats = pool.statistics()
    assert (stats.connections_created, stats.pool_hits) == (3, 2)
    assert_settled(pool)
    assert targets == [b"http://a.test/1", b"http://b.test:8080/2", b"http://a.test/3"]


# -- SOCKS5 through microsocks --------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
async def test_socks_tunnel_is_pooled(echo_port: int, tmp_path: Path, scheme: str) -> None:
    fds = open_fds()
    async with open_microsocks(tmp_path) as microsocks, trio_pool.open_pool() as pool:
        proxy = microsocks.proxy(scheme)
        conn = await pool.acquire(HOST, echo_port, proxy=proxy)
        await roundtrip(conn)
        pool.release(conn)
        again = await pool.acquire(HOST, echo_port, proxy=proxy)
        assert again.reused
        await roundtrip(again)
        direct = await pool.acquire(HOST, echo_port)
        assert not direct.reused
        pool.release(again)
        pool.release(direct)
        stats = pool.statistics()
        assert (stats.connections_created, stats.pool_hits) == (2, 1)
        assert_settled(pool)
    assert open_fds() == fds


async def test_socks5h_lets_the_proxy_resolve_localhost(
    echo_port: int, microsocks: RunningProxy, pool: ConnectionPool, resolver: _Resolver
) -> None:
    conn = await pool.acquire("localhost", echo_port, proxy=microsocks.proxy("socks5h"))
    await roundtrip(conn)
    pool.release(conn)
    assert resolver.names == []  # we never resolved it: microsocks did (/etc/hosts)
    assert_settled(pool)


async def test_socks5_resolves_names_here(
    echo_port: int, microsocks: RunningProxy, pool: ConnectionPool, resolver: _Resolver
) -> None:
    conn = await pool.acquire("origin.test", echo_port, proxy=microsocks.proxy("socks5"))
    await roundtrip(conn)
    pool.release(conn)
    assert resolver.names == ["origin.test"]
    with pytest.raises(ConnectError, match=r"cannot resolve 'nowhere\.invalid'"):
        await pool.acquire("nowhere.invalid", echo_port, proxy=microsocks.proxy("socks5"))
    assert_settled(pool)


async def test_tls_through_microsocks_resumes_its_session(
    nursery: trio.Nursery,
    microsocks: RunningProxy,
    pool: ConnectionPool,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
) -> None:
    server, port = await start_tls_server(nursery, server_ctx)
    proxy = microsocks.proxy()
    first = await pool.acquire_tls(HOST, port, sni="localhost", ssl_context=client_ctx, proxy=proxy)
    await roundtrip(first)
    second = await pool.acquire_tls(
        HOST, port, sni="localhost", ssl_context=client_ctx, proxy=proxy
    )
    assert second.session_reused
    await roundtrip(second)
    pool.release(first)
    pool.release(second)
    stats = pool.statistics()
    assert (stats.tls_handshakes, stats.tls_resumptions) == (2, 1)
    assert_settled(pool)
    assert server.server_names == ["localhost"] * 2


async def test_microsocks_login(echo_port: int, tmp_path: Path) -> None:
    fds = open_fds()
    async with (
        open_microsocks(tmp_path, auth=("carol", "pw1")) as microsocks,
        trio_pool.open_pool() as pool,
    ):
        with pytest.raises(ProxyError, match="none of our login methods") as info:
            await pool.acquire(HOST, echo_port, proxy=Proxy(f"socks5://{HOST}:{microsocks.port}"))
        assert info.value.status is None
        with pytest.raises(ProxyError, match="rejected the user name and password"):
            await pool.acquire(
                HOST, echo_port, proxy=Proxy(f"socks5://carol:wrong@{HOST}:{microsocks.port}")
            )
        conn = await pool.acquire(HOST, echo_port, proxy=microsocks.proxy())
        await roundtrip(conn)
        pool.release(conn)
        assert pool.statistics().connect_failures == 2
        assert_settled(pool)
    assert open_fds() == fds


async def test_microsocks_reports_a_refused_origin(
    microsocks: RunningProxy, pool: ConnectionPool
) -> None:
    with pytest.raises(ProxyError, match="refused CONNECT: connection refused"):
        await pool.acquire(HOST, refused_port(), proxy=microsocks.proxy())
    assert_settled(pool)


async def test_prewarm_through_a_proxy(echo_port: int, microsocks: RunningProxy) -> None:
    async with trio_pool.open_pool(max_size=4) as pool:
        proxy = microsocks.proxy()
        assert await pool.prewarm(HOST, echo_port, count=3, proxy=proxy) == 3
        assert await pool.prewarm(HOST, echo_port, count=3) == 3  # direct: a key of its own
        async with pool.connection(HOST, echo_port, proxy=proxy) as conn:
            assert conn.reused
            assert isinstance(conn.stream, trio.SocketStream)
            assert conn.stream.socket.getpeername()[1] == microsocks.port
            await roundtrip(conn)
        stats = pool.statistics()
        assert (stats.connections_created, stats.idle_connections) == (6, 6)
        assert_settled(pool)
