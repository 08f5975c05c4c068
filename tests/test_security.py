"""Security properties (issue 7): what must never be shared, reused or trusted.

- A connection is never shared across TLS keys (plain vs TLS, SNI, verification, context).
- A connection with unread bytes is never reused (a response desync).
- A cancelled in-flight request never returns its connection to the pool.
- Certificate and host name verification are on by default.
- Bad input raises a clear ``ValueError`` / ``TypeError`` before any I/O.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
import trustme

import trio_pool
from trio_pool import ConnectionPool

from .checks import roundtrip
from .servers import HOST, echo, refused_port, start_server

TLSHandler = Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]]


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A verifying client context that trusts the test CA (a new object per test)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    """This file's pool: ``max_size=2``, open for the test and closed after it."""
    async with trio_pool.open_pool(max_size=2) as opened:
        yield opened


class TLSServer:
    """A loopback TLS server that counts its accepts and its completed handshakes."""

    def __init__(self, handler: TLSHandler) -> None:
        self.handler = handler
        self.accepted = 0
        self.handshakes = 0
        self.handshake_failures = 0

    async def serve(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.accepted += 1
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError:
            self.handshake_failures += 1
            return
        self.handshakes += 1
        try:
            await self.handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    async def start(self, nursery: trio.Nursery, context: ssl.SSLContext) -> int:
        listeners = await nursery.start(
            partial(trio.serve_ssl_over_tcp, self.serve, 0, context, host=HOST)
        )
        return int(listeners[0].transport_listener.socket.getsockname()[1])


async def tls_echo(stream: trio.SSLStream[trio.SocketStream]) -> None:
    async for data in stream:
        await stream.send_all(data)


@pytest.fixture
async def tls_echo_server(
    nursery: trio.Nursery, server_context: ssl.SSLContext
) -> tuple[TLSServer, int]:
    """A loopback TLS echo server for the test, and its port."""
    server = TLSServer(tls_echo)
    return server, await server.start(nursery, server_context)


async def tls_reply_then_junk(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """Echo one message, then send unrequested application data, then echo on."""
    data = await stream.receive_some()
    await stream.send_all(data)
    await stream.send_all(b"JUNK")
    await tls_echo(stream)


async def wait_readable(conn: trio_pool.PooledConnection) -> None:
    """Wait until the connection's socket has bytes (or EOF) waiting, without reading."""
    stream = conn.stream
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    assert isinstance(stream, trio.SocketStream)
    await trio.lowlevel.wait_readable(stream.socket)


# -- never shared across TLS keys ---------------------------------------------------


async def test_plain_and_tls_never_share(
    tls_echo_server: tuple[TLSServer, int], client_context: ssl.SSLContext
) -> None:
    _, port = tls_echo_server
    async with trio_pool.open_pool(max_size=4) as pool:
        async with pool.connection(HOST, port, tls=True, ssl_context=client_context) as conn:
            await roundtrip(conn)
            tls_conn = conn
        # Same host and port, plain TCP: must be a new connection, never the TLS one.
        async with pool.connection(HOST, port) as conn:
            assert conn is not tls_conn
            assert not conn.reused
            assert not conn.is_tls
            pool.discard(conn)  # it speaks plain text to a TLS server: no use pooling it
        async with pool.connection(HOST, port, tls=True, ssl_context=client_context) as conn:
            assert conn is tls_conn
            assert conn.reused


async def test_tls_keys_never_share(
    tls_echo_server: tuple[TLSServer, int],
    ca: trustme.CA,
    client_context: ssl.SSLContext,
    pool: ConnectionPool,
) -> None:
    server, port = tls_echo_server
    other_context = ssl.create_default_context()
    ca.configure_trust(other_context)
    variants: list[dict[str, Any]] = [
        {"ssl_context": client_context},
        {"ssl_context": other_context},  # equal settings, another object: another key
        {"ssl_context": client_context, "sni": "localhost"},
        {"verify_cert": False},
        {"verify_cert": False, "sni": "localhost"},
    ]
    first: list[trio_pool.PooledConnection] = []
    for kwargs in variants:
        conn = await pool.acquire_tls(HOST, port, **kwargs)
        assert not conn.reused, kwargs
        assert all(conn is not other for other in first), kwargs
        await roundtrip(conn)
        first.append(conn)
        pool.release(conn)
    assert pool.statistics().idle_connections == len(variants)
    # Every variant gets back exactly its own connection.
    for kwargs, expected in zip(variants, first, strict=True):
        conn = await pool.acquire_tls(HOST, port, **kwargs)
        assert conn is expected, kwargs
        assert conn.reused
        pool.release(conn)
    assert server.handshakes == len(variants)


async def test_unverified_connection_never_serves_a_verifying_acquire(
    tls_echo_server: tuple[TLSServer, int], pool: ConnectionPool
) -> None:
    """The pooled connection made with verify_cert=False must not satisfy a default
    (verifying) acquire: that acquire connects itself, and its verification fails."""
    _, port = tls_echo_server
    unverified = await pool.acquire_tls(HOST, port, verify_cert=False)
    await roundtrip(unverified)
    pool.release(unverified)
    with pytest.raises(trio_pool.ConnectError) as info:
        await pool.acquire_tls(HOST, port)
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    stats = pool.statistics()
    assert stats.idle_connections == 1
    assert stats.active_connections == 0
    assert unverified.state is trio_pool.ConnectionState.IDLE


# -- verification on by default -------------------------------------------------------


async def test_default_context_rejects_untrusted_certificate(
    tls_echo_server: tuple[TLSServer, int], pool: ConnectionPool
) -> None:
    server, port = tls_echo_server
    for acquire in (
        partial(pool.acquire_tls, HOST, port),
        partial(pool.acquire, HOST, port, tls=True),
    ):
        with pytest.raises(trio_pool.ConnectError) as info:
            await acquire()
        assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    stats = pool.statistics()
    assert stats.connections_created == 0
    assert stats.connecting == 0
    assert stats.connect_failures == 2
    assert server.handshakes == 0


async def test_hostname_is_checked(
    tls_echo_server: tuple[TLSServer, int], client_context: ssl.SSLContext, pool: ConnectionPool
) -> None:
    _, port = tls_echo_server
    with pytest.raises(trio_pool.ConnectError) as info:
        await pool.acquire_tls(HOST, port, ssl_context=client_context, sni="evil.example")
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert "evil.example" in str(info.value.__cause__)
    # The right name on the same port works: verification is what failed, nothing else.
    conn = await pool.acquire_tls(HOST, port, ssl_context=client_context, sni="localhost")
    await roundtrip(conn)
    pool.release(conn)


# -- unread bytes: never reused -------------------------------------------------------


async def reply_with_extra(stream: trio.SocketStream) -> None:
    """Answer every message with itself plus bytes nobody asked for, in one send."""
    try:
        async for data in stream:
            await stream.send_all(data + b"EXTRA")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_unread_response_bytes_never_reused(
    nursery: trio.Nursery, pool: ConnectionPool
) -> None:
    port = await start_server(nursery, reply_with_extra)
    conn = await pool.acquire(HOST, port)
    await conn.send_all(b"ping")
    await wait_readable(conn)
    assert await conn.receive_some(4) == b"ping"  # EXTRA stays unread
    assert conn.has_pending_data()
    pool.release(conn)
    assert conn.is_closed
    stats = pool.statistics()
    assert (stats.idle_connections, stats.connections_closed) == (0, 1)
    again = await pool.acquire(HOST, port)
    assert again is not conn
    assert not again.reused
    pool.discard(again)


async def test_junk_arriving_while_idle_never_reused(
    nursery: trio.Nursery, pool: ConnectionPool
) -> None:
    junk_sent = trio.Event()

    async def reply_then_junk_later(stream: trio.SocketStream) -> None:
        try:
            data = await stream.receive_some()
            await stream.send_all(data)
            await trio.sleep(0.01)
            await stream.send_all(b"JUNK")
            junk_sent.set()
            await trio.sleep_forever()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    port = await start_server(nursery, reply_then_junk_later)
    conn = await pool.acquire(HOST, port)
    await roundtrip(conn)
    pool.release(conn)
    await junk_sent.wait()
    with trio.fail_after(5):
        await wait_readable(conn)  # the junk is in our socket now
    assert conn.state is trio_pool.ConnectionState.IDLE
    again = await pool.acquire(HOST, port)
    assert again is not conn
    assert not again.reused
    assert conn.is_closed
    pool.discard(again)


async def test_tls_junk_arriving_while_idle_never_reused(
    nursery: trio.Nursery,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    pool: ConnectionPool,
) -> None:
    server = TLSServer(tls_reply_then_junk)
    port = await server.start(nursery, server_context)
    conn = await pool.acquire_tls(HOST, port, ssl_context=client_context)
    await roundtrip(conn)
    pool.release(conn)
    # The junk follows the reply at once; wait until the pool can see it.
    with trio.fail_after(5):
        # No event tells when the kernel has the bytes: poll (sync checks, 1 ms apart).
        idle = trio_pool.ConnectionState.IDLE
        while not conn.has_pending_data() and conn.state is idle:  # noqa: ASYNC110
            await trio.sleep(0.001)
    again = await pool.acquire_tls(HOST, port, ssl_context=client_context)
    assert again is not conn
    assert not again.reused
    assert conn.is_closed
    await roundtrip(again)  # the new connection is in sync
    pool.release(again)


async def test_partially_read_tls_response_never_reused(
    nursery: trio.Nursery,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    pool: ConnectionPool,
) -> None:
    async def tls_reply_with_extra(stream: trio.SSLStream[trio.SocketStream]) -> None:
        async for data in stream:
            await stream.send_all(data + b"EXTRA")

    server = TLSServer(tls_reply_with_extra)
    port = await server.start(nursery, server_context)
    conn = await pool.acquire_tls(HOST, port, ssl_context=client_context)
    await conn.send_all(b"ping")
    assert await conn.receive_some(4) == b"ping"  # EXTRA is decrypted but unread
    pool.release(conn)
    assert conn.is_closed
    assert pool.statistics().idle_connections == 0


# -- cancelled in flight: never back in the pool ----------------------------------------


async def test_cancelled_in_connection_body_is_discarded(
    stall_port: int, pool: ConnectionPool
) -> None:
    seen: list[trio_pool.PooledConnection] = []
    with trio.move_on_after(0.05) as scope:
        async with pool.connection(HOST, stall_port) as conn:
            seen.append(conn)
            await conn.send_all(b"request")
            await conn.receive_some()  # the server never answers
    assert scope.cancelled_caught
    (conn,) = seen
    assert conn.is_closed
    stats = pool.statistics()
    assert (stats.idle_connections, stats.active_connections) == (0, 0)
    assert stats.connections_closed == 1
    # The next user gets a fresh connection, never the one with a request in flight.
    async with pool.connection(HOST, stall_port) as again:
        assert again is not conn
        assert not again.reused


async def test_cancelled_receive_then_release_closes(stall_port: int, pool: ConnectionPool) -> None:
    """Even a caller that *releases* after a cancelled read cannot pool it."""
    conn = await pool.acquire(HOST, stall_port)
    await conn.send_all(b"request")
    with trio.move_on_after(0.05):
        await conn.receive_some()
    pool.release(conn)
    assert conn.is_closed
    assert pool.statistics().idle_connections == 0


async def test_cancelled_send_then_release_closes(stall_port: int, pool: ConnectionPool) -> None:
    conn = await pool.acquire(HOST, stall_port)
    with trio.move_on_after(0.05) as scope:
        while True:  # fill the socket buffers until send blocks, then get cancelled
            await conn.send_all(b"x" * 65536)
    assert scope.cancelled_caught
    pool.release(conn)
    assert conn.is_closed
    assert pool.statistics().idle_connections == 0


# -- bad input: clear errors before any I/O ---------------------------------------------


BAD_ACQUIRE: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"host": ""}, ValueError, "host"),
    ({"host": " 127.0.0.1"}, ValueError, "host"),
    ({"host": None}, TypeError, "host"),
    ({"host": b"127.0.0.1"}, TypeError, "host"),
    ({"host": 127}, TypeError, "host"),
    ({"port": 0}, ValueError, "port"),
    ({"port": -1}, ValueError, "port"),
    ({"port": 65536}, ValueError, "port"),
    ({"port": "80"}, TypeError, "port"),
    ({"port": 80.0}, TypeError, "port"),
    ({"port": True}, TypeError, "port"),
    ({"port": None}, TypeError, "port"),
    ({"timeout": -1}, ValueError, "timeout"),
    ({"timeout": -0.001}, ValueError, "timeout"),
    ({"timeout": float("nan")}, ValueError, "timeout"),
    ({"timeout": "1"}, TypeError, "timeout"),
    ({"tls": "yes"}, TypeError, "tls"),
    ({"verify_cert": 0}, TypeError, "verify_cert"),
    ({"tls": True, "sni": ""}, ValueError, "sni"),
    ({"tls": True, "ssl_context": "ctx"}, TypeError, "ssl_context"),
]


class CountingServer:
    def __init__(self) -> None:
        self.accepted = 0

    async def handler(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        await echo(stream)


@pytest.mark.parametrize(("override", "error", "field"), BAD_ACQUIRE)
async def test_bad_acquire_arguments_fail_before_io(
    nursery: trio.Nursery,
    pool: ConnectionPool,
    override: dict[str, Any],
    error: type[Exception],
    field: str,
) -> None:
    server = CountingServer()
    port = await start_server(nursery, server.handler)
    kwargs: dict[str, Any] = {"host": HOST, "port": port, **override}
    host, port_arg = kwargs.pop("host"), kwargs.pop("port")
    with pytest.raises(error, match=field):
        await pool.acquire(host, port_arg, **kwargs)
    with pytest.raises(error, match=field):
        await pool.acquire_new(host, port_arg, **kwargs)
    with pytest.raises(error, match=field):
        # Checked when the context is created, not when it is entered.
        pool.connection(host, port_arg, **kwargs)
    if "tls" not in kwargs:
        with pytest.raises(error, match=field):
            await pool.acquire_tls(host, port_arg, **kwargs)
    stats = pool.statistics()
    assert stats == trio_pool.PoolStatistics()
    await trio.testing.wait_all_tasks_blocked()
    assert server.accepted == 0


BAD_CONFIG: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"max_size": 0}, ValueError, "max_size"),
    ({"max_size": -1}, ValueError, "max_size"),
    ({"max_size": 2.0}, TypeError, "max_size"),
    ({"min_size": -1}, ValueError, "min_size"),
    ({"min_size": 5, "max_size": 2}, ValueError, "min_size"),
    ({"max_idle_time": 0}, ValueError, "max_idle_time"),
    ({"max_idle_time": -1.0}, ValueError, "max_idle_time"),
    ({"connection_timeout": -5}, ValueError, "connection_timeout"),
    ({"connection_timeout": float("nan")}, ValueError, "connection_timeout"),
    ({"connection_timeout": "5"}, TypeError, "connection_timeout"),
    ({"health_check_interval": 0}, ValueError, "health_check_interval"),
    ({"acquire_timeout": -1}, ValueError, "acquire_timeout"),
    ({"acquire_timeout": "30"}, TypeError, "acquire_timeout"),
    ({"max_lifetime": -1}, ValueError, "max_lifetime"),
    ({"max_total": 0}, ValueError, "max_total"),
    ({"leak_detection_threshold": -1}, ValueError, "leak_detection_threshold"),
    ({"no_such_field": 1}, TypeError, "no_such_field"),
]


@pytest.mark.parametrize(("override", "error", "field"), BAD_CONFIG)
async def test_bad_config_fails_before_opening(
    override: dict[str, Any], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        async with trio_pool.open_pool(**override):
            pytest.fail("the pool opened")  # pragma: no cover
    if "no_such_field" not in override:
        with pytest.raises(error, match=field):
            trio_pool.PoolConfig(**override)


async def test_bad_prewarm_count_fails_before_io(
    nursery: trio.Nursery, pool: ConnectionPool
) -> None:
    server = CountingServer()
    port = await start_server(nursery, server.handler)
    for count, error in ((-1, ValueError), (3, ValueError), ("1", TypeError)):
        with pytest.raises(error, match="count"):
            await pool.prewarm(HOST, port, count=count)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        await pool.prewarm(HOST, 0, count=1)
    await trio.testing.wait_all_tasks_blocked()
    assert pool.statistics().connections_created == 0
    assert server.accepted == 0


async def test_refused_connect_leaks_no_slot() -> None:
    port = refused_port()
    async with trio_pool.open_pool(max_size=1, acquire_timeout=0) as pool:
        for _ in range(3):  # max_size=1: a leaked slot would make the 2nd fail fast
            with pytest.raises(trio_pool.ConnectError):
                await pool.acquire(HOST, port)
        stats = pool.statistics()
        assert (stats.connecting, stats.active_connections, stats.connect_failures) == (0, 0, 3)


# -- the HTTP client: cancelled requests and https verification --------------------------


class TinyHTTP:
    """A keep-alive HTTP/1.1 server: ``/`` answers ``ok``; ``/slow`` never answers;
    ``/half`` sends the head and half the body, then stalls."""

    def __init__(self) -> None:
        self.connections = 0
        self.closed = 0
        self.all_closed = trio.Event()

    async def serve(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some()
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1]
                if path == b"/half":
                    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf-")
                if path in (b"/slow", b"/half"):
                    while await stream.receive_some():  # stall until the client goes
                        pass
                    return
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed += 1
            if self.closed == self.connections:
                self.all_closed.set()
            await trio.aclose_forcefully(stream)


@pytest.mark.parametrize("path", ["/slow", "/half"])
async def test_cancelled_http_request_never_returns_its_connection(
    nursery: trio.Nursery, path: str
) -> None:
    from trio_pool.http import HTTPClient

    server = TinyHTTP()
    port = await start_server(nursery, server.serve)
    base = f"http://{HOST}:{port}"
    async with trio_pool.open_pool(max_size=2) as pool:
        client = HTTPClient(pool)
        assert (await client.request("GET", base + "/")).content == b"ok"
        assert pool.statistics().idle_connections == 1
        with trio.move_on_after(0.05) as scope:
            await client.request("GET", base + path)  # reuses the idle connection
        assert scope.cancelled_caught
        stats = pool.statistics()
        assert (stats.idle_connections, stats.active_connections) == (0, 0)
        assert stats.connections_closed == 1
        # The next request gets a new connection, in sync with the server.
        assert (await client.request("GET", base + "/")).content == b"ok"
        assert pool.statistics().connections_created == 2
        assert pool.statistics().pool_hits == 1
        # Streaming: leaving the block cancelled, mid-body, discards the connection.
        with trio.move_on_after(0.05) as scope:
            async with client.stream("GET", base + "/half") as response:
                async for _ in response.aiter_bytes():
                    pass
        assert scope.cancelled_caught
        stats = pool.statistics()
        assert (stats.idle_connections, stats.active_connections) == (0, 0)
    with trio.fail_after(5):
        await server.all_closed.wait()  # the server saw every connection go


async def test_https_verifies_by_default(
    nursery: trio.Nursery,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    pool: ConnectionPool,
) -> None:
    from trio_pool.http import HTTPClient

    http = TinyHTTP()
    server = TLSServer(http.serve)
    port = await server.start(nursery, server_context)
    with pytest.raises(trio_pool.ConnectError) as info:
        await HTTPClient(pool).request("GET", f"https://127.0.0.1:{port}/")
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    # Naming the wrong host fails too, with a context that trusts the CA.
    trusting = HTTPClient(pool, ssl_context=client_context)
    with pytest.raises(trio_pool.ConnectError):
        await trusting.request("GET", f"https://wrong.localhost:{port}/")
    response = await trusting.request("GET", f"https://localhost:{port}/")
    assert response.content == b"ok"
    assert pool.statistics().connections_created == 1
