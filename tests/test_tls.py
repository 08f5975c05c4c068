"""TLS pooling (issue 4): verification, key separation, session resumption, health.

Every test talks to a real trio TLS server on 127.0.0.1 with trustme certificates, for
TLS 1.2 and TLS 1.3 (the server context pins the version).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

import trio_pool
from trio_pool import ConnectError, ConnectionPool, ConnectTimeout, PooledConnection

from .checks import roundtrip
from .servers import HOST, open_fds, refused_port, start_server

TLSStream = trio.SSLStream[trio.SocketStream]
TLSHandler = Callable[["TLSServer", TLSStream], Awaitable[None]]

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# An application-data record whose MAC cannot check out: a TLS error on the client.
GARBAGE_RECORD = b"\x17\x03\x03\x00\x28" + bytes(range(40))


# -- certificates and contexts -----------------------------------------------------


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost", "alt.test")


@pytest.fixture(scope="module")
def untrusted_cert() -> trustme.LeafCert:
    """Right names, wrong issuer."""
    return trustme.CA().issue_cert("127.0.0.1", "localhost")


@pytest.fixture(params=sorted(VERSIONS))
def tls_version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def server_context(cert: trustme.LeafCert, version: str, *, tickets: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    context.minimum_version = context.maximum_version = VERSIONS[version]
    if not tickets:  # sessions live in the server's cache only (session IDs)
        context.options |= ssl.OP_NO_TICKET
    return context


# -- the TLS server ------------------------------------------------------------------


class TLSServer:
    """A trio TLS server that records what it saw.

    ``ends`` gets one entry per connection that finished its handler: ``"close_notify"``
    when the client closed cleanly, ``"ragged"`` when it vanished without one.
    """

    def __init__(
        self, context: ssl.SSLContext, handler: TLSHandler, *, eager_tickets: bool = False
    ) -> None:
        self.handler = handler
        self.eager_tickets = eager_tickets
        self.handshakes = 0
        self.failed_handshakes = 0
        self.server_names: list[str | None] = []
        self.ends: list[str] = []
        self.context = context

    @property
    def context(self) -> ssl.SSLContext:
        return self._context

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:
        context.sni_callback = self._sni
        self._context = context

    def _sni(self, obj: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.server_names.append(name)

    async def serve(self, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, self._context, server_side=True)
        try:
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError:
                self.failed_handshakes += 1
                return
            self.handshakes += 1
            if self.eager_tickets:
                await send_delayed_tickets(stream)
            await self.handler(self, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()  # sends our close_notify (https_compatible=False)


async def send_delayed_tickets(stream: TLSStream) -> None:
    """Send TLS 1.3 session tickets now, as OpenSSL servers (nginx...) do.

    A trio server holds them back until its first write (trio#819), so a client that
    has not read yet never sees them; most servers send them right after the handshake,
    which is what a pooled idle connection must cope with.
    """
    delayed = getattr(stream, "_delayed_outgoing", None)
    if delayed:
        stream._delayed_outgoing = None
        await stream.transport_stream.send_all(delayed)


async def echo(server: TLSServer, stream: TLSStream) -> None:
    """Echo until the client closes; record how it closed. ``b"garbage"`` gets a
    corrupt record back."""
    try:
        async for data in stream:
            if data == b"garbage":
                await stream.transport_stream.send_all(GARBAGE_RECORD)
            else:
                await stream.send_all(data)
    except trio.BrokenResourceError:
        server.ends.append("ragged")
        raise
    server.ends.append("close_notify")


async def reply_then_close_notify(server: TLSServer, stream: TLSStream) -> None:
    await stream.send_all(await stream.receive_some())
    # returning makes serve() send close_notify and close


async def reply_then_plain_close(server: TLSServer, stream: TLSStream) -> None:
    await stream.send_all(await stream.receive_some())
    await stream.transport_stream.aclose()  # no close_notify


async def reply_then_reset(server: TLSServer, stream: TLSStream) -> None:
    await stream.send_all(await stream.receive_some())
    sock = stream.transport_stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def reply_then_junk(server: TLSServer, stream: TLSStream) -> None:
    await stream.send_all(await stream.receive_some())
    await stream.send_all(b"JUNK")
    await echo(server, stream)


async def never_speaks(stream: trio.SocketStream) -> None:
    """Accept TCP and read the ClientHello, never answer; close when the client does."""
    try:
        async for _ in stream:
            pass
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


async def start_tls_server(
    nursery: trio.Nursery,
    context: ssl.SSLContext,
    handler: TLSHandler = echo,
    *,
    eager_tickets: bool = False,
) -> tuple[TLSServer, int]:
    server = TLSServer(context, handler, eager_tickets=eager_tickets)
    port = await start_server(nursery, server.serve)
    return server, port


@pytest.fixture
async def tls_server(
    nursery: trio.Nursery, server_cert: trustme.LeafCert, tls_version: str
) -> tuple[TLSServer, int]:
    """An echo TLS server of the parametrized version."""
    return await start_tls_server(nursery, server_context(server_cert, tls_version))


@pytest.fixture
async def eager_server(
    nursery: trio.Nursery, server_cert: trustme.LeafCert, tls_version: str
) -> tuple[TLSServer, int]:
    """An echo TLS server that sends TLS 1.3 tickets right after the handshake."""
    context = server_context(server_cert, tls_version)
    return await start_tls_server(nursery, context, eager_tickets=True)


# -- helpers -------------------------------------------------------------------------


def socket_readable(conn: PooledConnection) -> bool:
    assert isinstance(conn.stream, trio.SSLStream)
    readable, _, _ = select.select([conn.stream.transport_stream.socket], [], [], 0)
    return bool(readable)


def fill_send_buffer(conn: PooledConnection) -> None:
    """Write raw bytes under the TLS layer until the kernel refuses more."""
    assert isinstance(conn.stream, trio.SSLStream)
    raw = socket.socket(fileno=conn.stream.transport_stream.socket.fileno())
    try:
        while True:
            raw.send(b"x" * 65536, socket.MSG_DONTWAIT)
    except BlockingIOError:
        pass
    finally:
        raw.detach()


def check_invariant(stats: trio_pool.PoolStatistics) -> None:
    assert stats.connecting == 0
    assert (
        stats.connections_created - stats.connections_closed
        == stats.idle_connections + stats.active_connections
    )


# -- reuse and resumption --------------------------------------------------------------


async def test_session_resumes_after_its_key_was_forgotten(
    tls_server: tuple[TLSServer, int], client_ctx: ssl.SSLContext
) -> None:
    """A host used less often than max_idle_time: its key state is dropped between
    uses, its TLS session is not (the pool's session store keeps it)."""
    server, port = tls_server
    async with trio_pool.open_pool(max_idle_time=0.05, health_check_interval=0.05) as pool:
        assert server.handshakes == 0
        for use in range(3):
            conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
            assert conn.session_reused == (use > 0)
            await roundtrip(conn)  # TLS 1.3 tickets come with the first data
            pool.release(conn)
            with trio.fail_after(5.0):
                while pool._state.keys:  # noqa: ASYNC110 - closed idle, then the key forgotten
                    await trio.sleep(0.01)
        stats = pool.statistics()
        assert (stats.tls_handshakes, stats.tls_resumptions, stats.connections_created) == (3, 2, 3)
        assert len(pool._state.sessions) == 1


def test_session_store_is_a_bounded_lru() -> None:
    from trio_pool._state import SESSION_CAPACITY, PoolKey, SessionStore

    assert SESSION_CAPACITY == 1024
    store = SessionStore(capacity=2)
    keys = [PoolKey(HOST, port, True, HOST, True, None) for port in (1, 2, 3)]
    sessions = [object(), object(), object()]
    store.put(keys[0], sessions[0])  # type: ignore[arg-type]
    store.put(keys[1], sessions[1])  # type: ignore[arg-type]
    assert store.get(keys[0]) is sessions[0]  # now the most recently used
    store.put(keys[2], sessions[2])  # type: ignore[arg-type]
    assert len(store) == 2
    assert store.get(keys[1]) is None  # the least recently used went
    assert store.get(keys[0]) is sessions[0]
    assert store.discard(keys[0])
    assert not store.discard(keys[0])


async def test_reuse_hands_out_the_same_tls_stream(
    tls_server: tuple[TLSServer, int], client_ctx: ssl.SSLContext, tls_version: str
) -> None:
    server, port = tls_server
    async with trio_pool.open_pool() as pool:
        conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
        assert conn.is_tls
        assert isinstance(conn.stream, trio.SSLStream)
        assert conn.stream.version() == f"TLSv{tls_version}"
        assert not conn.reused
        await roundtrip(conn)
        stream = conn.stream
        pool.release(conn)

        again = await pool.acquire(HOST, port, tls=True, ssl_context=client_ctx)
        assert again.reused
        assert again.stream is stream
        await roundtrip(again, b"pong")
        pool.release(again)

        stats = pool.statistics()
        assert (stats.pool_hits, stats.pool_misses) == (1, 1)
        assert (stats.tls_handshakes, stats.tls_resumptions) == (1, 0)
        assert stats.connections_created == 1
    assert server.handshakes == 1


async def test_second_concurrent_connection_resumes(
    tls_server: tuple[TLSServer, int], client_ctx: ssl.SSLContext, pool: ConnectionPool
) -> None:
    _, port = tls_server
    first = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    assert not first.session_reused
    # TLS 1.3 tickets come after the handshake: the first reply brings them.
    await roundtrip(first)
    second = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    assert second.stream is not first.stream
    assert second.session_reused
    await roundtrip(second)
    third = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    assert third.session_reused
    for conn in (first, second, third):
        pool.release(conn)
    stats = pool.statistics(HOST, port)
    assert (stats.tls_handshakes, stats.tls_resumptions) == (3, 2)
    assert stats.pool_misses == 3


async def test_session_saved_from_tickets_read_by_the_health_check(
    eager_server: tuple[TLSServer, int],
    client_ctx: ssl.SSLContext,
    tls_version: str,
    pool: ConnectionPool,
) -> None:
    """A connection that never read anything still yields a resumable session: the
    check at release runs the waiting tickets through the SSL object."""
    _, port = eager_server
    conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    await trio.testing.wait_all_tasks_blocked()
    # TLS 1.3: the server's tickets wait in the socket; TLS 1.2 sent them in the handshake.
    assert socket_readable(conn) is (tls_version == "1.3")
    assert not conn.has_pending_data()
    pool.release(conn)
    assert pool.statistics().idle_connections == 1

    fresh = await pool.acquire_new(HOST, port, tls=True, ssl_context=client_ctx)
    assert fresh.session_reused
    again = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    assert again is conn
    assert again.reused
    await roundtrip(again)
    pool.release(again)
    pool.release(fresh)
    assert pool.statistics().tls_resumptions == 1


async def test_prewarmed_connection_with_tickets_pending_is_a_hit(
    eager_server: tuple[TLSServer, int], client_ctx: ssl.SSLContext, pool: ConnectionPool
) -> None:
    _, port = eager_server
    assert await pool.prewarm(HOST, port, count=1, tls=True, ssl_context=client_ctx) == 1
    await trio.testing.wait_all_tasks_blocked()  # tickets (1.3) have arrived
    conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    assert conn.reused
    await roundtrip(conn)
    pool.release(conn)
    stats = pool.statistics()
    assert (stats.pool_hits, stats.pool_misses, stats.connections_closed) == (1, 0, 0)


async def test_resumes_after_close_with_a_server_session_cache(
    nursery: trio.Nursery,
    server_cert: trustme.LeafCert,
    client_ctx: ssl.SSLContext,
    tls_version: str,
) -> None:
    """Servers without tickets keep sessions in a cache and forget those whose
    connection ended without close_notify: the pool's close must send one."""
    context = server_context(server_cert, tls_version, tickets=False)
    server, port = await start_tls_server(nursery, context)
    async with trio_pool.open_pool() as pool:
        conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
        await roundtrip(conn)
        pool.discard(conn)
        assert conn.is_closed
        await trio.testing.wait_all_tasks_blocked()
        assert server.ends == ["close_notify"]

        conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
        assert conn.session_reused
        await roundtrip(conn)
        pool.release(conn)
    await trio.testing.wait_all_tasks_blocked()
    # Closing the pool closes its idle connection cleanly too.
    assert server.ends == ["close_notify", "close_notify"]


# -- keys -----------------------------------------------------------------------------


async def test_different_sni_never_share(
    tls_server: tuple[TLSServer, int], client_ctx: ssl.SSLContext, pool: ConnectionPool
) -> None:
    server, port = tls_server
    by_name: dict[str, PooledConnection] = {}
    for name in ("localhost", "alt.test", "127.0.0.1"):
        conn = await pool.acquire_tls(HOST, port, sni=name, ssl_context=client_ctx)
        await roundtrip(conn)
        assert not conn.session_reused  # sessions never cross names either
        by_name[name] = conn
    assert len({id(c.stream) for c in by_name.values()}) == 3
    # Python sends no SNI for an IP address; the two names reached the server.
    assert server.server_names == ["localhost", "alt.test", None]
    for conn in by_name.values():
        pool.release(conn)

    for name in ("alt.test", "localhost"):
        conn = await pool.acquire_tls(HOST, port, sni=name, ssl_context=client_ctx)
        assert conn is by_name[name]
        pool.release(conn)
    # sni=None means the host name: the same key as sni="127.0.0.1".
    conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    assert conn is by_name["127.0.0.1"]
    pool.release(conn)
    stats = pool.statistics(HOST, port)
    assert (stats.pool_hits, stats.pool_misses, stats.tls_handshakes) == (3, 3, 3)


async def test_verify_cert_and_context_never_share(
    tls_server: tuple[TLSServer, int],
    ca: trustme.CA,
    client_ctx: ssl.SSLContext,
    pool: ConnectionPool,
) -> None:
    _, port = tls_server
    other_ctx = ssl.create_default_context()
    ca.configure_trust(other_ctx)
    unverified = await pool.acquire_tls(HOST, port, verify_cert=False)
    assert isinstance(unverified.stream, trio.SSLStream)
    assert unverified.stream.context.verify_mode == ssl.CERT_NONE
    await roundtrip(unverified)
    verified = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    assert isinstance(verified.stream, trio.SSLStream)
    assert verified.stream.context is client_ctx
    await roundtrip(verified)
    other = await pool.acquire_tls(HOST, port, ssl_context=other_ctx)
    assert isinstance(other.stream, trio.SSLStream)
    assert other.stream.context is other_ctx
    assert not other.session_reused  # a session belongs to its context
    for conn in (unverified, verified, other):
        pool.release(conn)

    assert await pool.acquire_tls(HOST, port, ssl_context=other_ctx) is other
    assert await pool.acquire_tls(HOST, port, verify_cert=False) is unverified
    assert await pool.acquire_tls(HOST, port, ssl_context=client_ctx) is verified
    stats = pool.statistics()
    assert (stats.pool_hits, stats.pool_misses, stats.active_connections) == (3, 3, 3)
    for conn in (unverified, verified, other):
        pool.release(conn)


async def test_plain_and_tls_to_one_port_never_mix(
    tls_server: tuple[TLSServer, int], client_ctx: ssl.SSLContext, pool: ConnectionPool
) -> None:
    _, port = tls_server
    plain = await pool.acquire(HOST, port)
    assert not plain.is_tls
    pool.release(plain)
    secure = await pool.acquire(HOST, port, tls=True, ssl_context=client_ctx)
    assert secure.is_tls
    assert not secure.reused
    await roundtrip(secure)
    pool.release(secure)
    again = await pool.acquire(HOST, port)
    assert again is plain
    assert not again.is_tls
    pool.discard(again)
    stats = pool.statistics(HOST, port)
    assert (stats.pool_hits, stats.pool_misses, stats.connections_created) == (1, 2, 2)


async def test_tls_arguments_are_checked_before_any_io(
    client_ctx: ssl.SSLContext, pool: ConnectionPool
) -> None:
    port = refused_port()
    with pytest.raises(ValueError, match="verify_cert"):
        await pool.acquire_tls(HOST, port, verify_cert=False, ssl_context=client_ctx)
    with pytest.raises(TypeError, match="ssl_context"):
        await pool.acquire_tls(HOST, port, ssl_context="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sni"):
        await pool.acquire_tls(HOST, port, sni="")
    with pytest.raises(TypeError, match="verify_cert"):
        await pool.acquire_tls(HOST, port, verify_cert=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tls"):
        await pool.acquire(HOST, port, tls=1)  # type: ignore[arg-type]
    # TLS arguments without tls=True are a mistake, not a plain connection.
    with pytest.raises(ValueError, match="tls=True"):
        await pool.acquire(HOST, port, verify_cert=False, ssl_context=client_ctx)
    assert pool.statistics().connect_failures == 0


# -- verification failures --------------------------------------------------------------


async def expect_ssl_failure(
    pool: trio_pool.ConnectionPool, port: int, **tls_args: object
) -> ssl.SSLError:
    with pytest.raises(ConnectError) as info:
        await pool.acquire_tls(HOST, port, **tls_args)  # type: ignore[arg-type]
    assert not isinstance(info.value, ConnectTimeout)
    assert isinstance(info.value.__cause__, ssl.SSLError)
    return info.value.__cause__


async def test_untrusted_certificate_is_rejected_and_frees_its_slot(
    tls_server: tuple[TLSServer, int],
) -> None:
    server, port = tls_server
    async with trio_pool.open_pool(max_size=1) as pool:
        baseline = open_fds()
        for _ in range(3):  # max_size=1: each failure gave its slot back
            cause = await expect_ssl_failure(pool, port)  # the default context
            assert isinstance(cause, ssl.SSLCertVerificationError)
            assert "certificate verify failed" in str(cause)
        await trio.testing.wait_all_tasks_blocked()
        assert open_fds() == baseline
        stats = pool.statistics()
        check_invariant(stats)
        assert (stats.connect_failures, stats.connections_created, stats.tls_handshakes) == (
            3,
            0,
            0,
        )
        assert stats.active_connections == stats.idle_connections == 0
        # verify_cert=False is its own key, with checks off: it connects.
        conn = await pool.acquire_tls(HOST, port, verify_cert=False)
        await roundtrip(conn)
        pool.release(conn)
    assert server.failed_handshakes == 3


async def test_wrong_hostname_is_rejected(
    tls_server: tuple[TLSServer, int], client_ctx: ssl.SSLContext
) -> None:
    server, port = tls_server
    async with trio_pool.open_pool(max_size=1) as pool:
        baseline = open_fds()
        for _ in range(2):
            cause = await expect_ssl_failure(pool, port, sni="wrong.test", ssl_context=client_ctx)
            assert isinstance(cause, ssl.SSLCertVerificationError)
            assert "wrong.test" in str(cause)
        await trio.testing.wait_all_tasks_blocked()
        assert open_fds() == baseline
        stats = pool.statistics()
        check_invariant(stats)
        assert (stats.connect_failures, stats.active_connections) == (2, 0)
    assert server.handshakes == 0


async def test_default_context_verifies_with_the_system_trust_store(
    tls_server: tuple[TLSServer, int],
    ca: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No ssl_context: ssl.create_default_context(), which reads SSL_CERT_FILE."""
    _, port = tls_server
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    async with trio_pool.open_pool() as pool:
        conn = await pool.acquire_tls(HOST, port)
        assert isinstance(conn.stream, trio.SSLStream)
        context = conn.stream.context
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname
        await roundtrip(conn)
        pool.release(conn)
        named = await pool.acquire_tls(HOST, port, sni="localhost")
        assert isinstance(named.stream, trio.SSLStream)
        assert named.stream.context is context  # one default context per pool
        pool.release(named)
        await expect_ssl_failure(pool, port, sni="wrong.test")
    assert "SSL_CERT_FILE" in os.environ


# -- timeouts and cancellation ---------------------------------------------------------------


async def test_connection_timeout_covers_the_handshake(nursery: trio.Nursery) -> None:
    port = await start_server(nursery, never_speaks)  # accepts TCP, never speaks TLS
    async with trio_pool.open_pool(connection_timeout=0.2, max_size=1) as pool:
        baseline = open_fds()
        for _ in range(2):
            with pytest.raises(ConnectTimeout):
                await pool.acquire_tls(HOST, port, verify_cert=False)
        await trio.testing.wait_all_tasks_blocked()
        assert open_fds() == baseline
        stats = pool.statistics()
        check_invariant(stats)
        assert (stats.connect_failures, stats.tls_handshakes, stats.active_connections) == (
            2,
            0,
            0,
        )


async def test_cancelled_handshake_leaks_nothing(nursery: trio.Nursery) -> None:
    port = await start_server(nursery, never_speaks)
    # Tied connects: the handshake is cancelled with its task. A hand-off handshake
    # outlives it (bounded by connection_timeout): tests/test_handoff.py.
    async with trio_pool.open_pool(max_size=1, max_connecting=None) as pool:
        baseline = open_fds()
        for _ in range(3):
            with trio.move_on_after(0.05) as scope:
                await pool.acquire_tls(HOST, port, verify_cert=False)
            assert scope.cancelled_caught
        await trio.testing.wait_all_tasks_blocked()
        assert open_fds() == baseline
        stats = pool.statistics()
        check_invariant(stats)
        assert (stats.connect_failures, stats.active_connections, stats.tasks_waiting) == (
            0,
            0,
            0,
        )


# -- saved sessions and TLS errors ------------------------------------------------------------


async def test_handshake_error_drops_the_saved_session(
    nursery: trio.Nursery,
    server_cert: trustme.LeafCert,
    untrusted_cert: trustme.LeafCert,
    client_ctx: ssl.SSLContext,
    tls_version: str,
    pool: ConnectionPool,
) -> None:
    good = server_context(server_cert, tls_version)
    server, port = await start_tls_server(nursery, good)
    first = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    await roundtrip(first)
    resumed = await pool.acquire_new(HOST, port, tls=True, ssl_context=client_ctx)
    assert resumed.session_reused  # a session is saved for the key

    server.context = server_context(untrusted_cert, tls_version)
    await expect_ssl_failure(pool, port, ssl_context=client_ctx)
    server.context = good
    fresh = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    assert not fresh.session_reused  # the failure dropped it
    await roundtrip(fresh)
    last = await pool.acquire_new(HOST, port, tls=True, ssl_context=client_ctx)
    assert last.session_reused
    for conn in (first, resumed, fresh, last):
        pool.release(conn)
    stats = pool.statistics()
    assert (stats.tls_handshakes, stats.tls_resumptions, stats.connect_failures) == (4, 2, 1)


async def test_tls_error_in_use_drops_the_saved_session(
    tls_server: tuple[TLSServer, int], client_ctx: ssl.SSLContext, pool: ConnectionPool
) -> None:
    _, port = tls_server
    conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    await roundtrip(conn)
    resumed = await pool.acquire_new(HOST, port, tls=True, ssl_context=client_ctx)
    assert resumed.session_reused
    pool.release(resumed)
    await conn.send_all(b"garbage")
    with pytest.raises(trio.BrokenResourceError) as info:
        await conn.receive_some()
    assert isinstance(info.value.__cause__, ssl.SSLError)
    pool.release(conn)  # broken: closed, not pooled
    assert conn.is_closed
    fresh = await pool.acquire_new(HOST, port, tls=True, ssl_context=client_ctx)
    assert not fresh.session_reused
    pool.release(fresh)


# -- health through TLS -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "handler", [reply_then_close_notify, reply_then_plain_close, reply_then_reset]
)
async def test_idle_connection_closed_by_the_server_is_never_handed_out(
    nursery: trio.Nursery,
    server_cert: trustme.LeafCert,
    client_ctx: ssl.SSLContext,
    tls_version: str,
    handler: TLSHandler,
    pool: ConnectionPool,
) -> None:
    _, port = await start_tls_server(nursery, server_context(server_cert, tls_version), handler)
    first = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    await roundtrip(first)
    pool.release(first)
    await trio.testing.wait_all_tasks_blocked()  # the server has closed its end
    second = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    assert second is not first
    assert not second.reused
    assert first.is_closed
    await roundtrip(second)
    pool.discard(second)  # the server closes this one too
    stats = pool.statistics()
    assert (stats.pool_hits, stats.pool_misses, stats.connections_closed) == (0, 2, 2)
    check_invariant(stats)


async def test_idle_connection_with_unread_data_is_never_reused(
    nursery: trio.Nursery,
    server_cert: trustme.LeafCert,
    client_ctx: ssl.SSLContext,
    tls_version: str,
    pool: ConnectionPool,
) -> None:
    context = server_context(server_cert, tls_version)
    _, port = await start_tls_server(nursery, context, reply_then_junk)
    conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    await roundtrip(conn)
    await trio.testing.wait_all_tasks_blocked()  # the junk has arrived
    pool.release(conn)
    assert conn.is_closed
    other = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    assert other is not conn
    pool.release(other)
    stats = pool.statistics()
    assert (stats.pool_hits, stats.connections_closed, stats.idle_connections) == (0, 1, 1)


async def test_pending_check_loses_no_byte(
    nursery: trio.Nursery,
    server_cert: trustme.LeafCert,
    client_ctx: ssl.SSLContext,
    tls_version: str,
    pool: ConnectionPool,
) -> None:
    """has_pending_data() on a borrowed connection must decrypt to see application
    data; what it decrypted is still the next thing receive_some returns."""
    context = server_context(server_cert, tls_version)
    _, port = await start_tls_server(nursery, context, reply_then_junk)
    conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    await roundtrip(conn)
    await trio.testing.wait_all_tasks_blocked()
    assert conn.has_pending_data()
    assert not conn.validate()
    assert conn.has_pending_data()  # asking again changes nothing
    assert await conn.receive_some(2) == b"JU"
    assert await conn.receive_some() == b"NK"
    assert not conn.has_pending_data()
    await roundtrip(conn)
    pool.release(conn)
    async with pool.connection(HOST, port, tls=True, ssl_context=client_ctx) as again:
        assert again is conn


async def test_bytes_buffered_inside_tls_count_as_pending(
    tls_server: tuple[TLSServer, int], client_ctx: ssl.SSLContext, pool: ConnectionPool
) -> None:
    _, port = tls_server
    conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    await conn.send_all(b"hello")
    assert await conn.receive_some(1) == b"h"
    await trio.testing.wait_all_tasks_blocked()
    assert not socket_readable(conn)  # the rest is decrypted, inside the SSL object
    assert conn.has_pending_data()
    pool.release(conn)
    assert conn.is_closed
    stats = pool.statistics()
    assert (stats.idle_connections, stats.connections_closed) == (0, 1)


async def test_maintenance_sweep_probes_tls(
    nursery: trio.Nursery,
    server_cert: trustme.LeafCert,
    client_ctx: ssl.SSLContext,
    tls_version: str,
) -> None:
    """The periodic health check closes idle TLS connections the server closed, and
    keeps those that only received session tickets."""
    context = server_context(server_cert, tls_version)
    _, closing_port = await start_tls_server(nursery, context, reply_then_close_notify)
    _, echo_port = await start_tls_server(nursery, context, echo)
    async with trio_pool.open_pool(health_check_interval=0.05) as pool:
        for port in (closing_port, echo_port):
            conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
            await conn.send_all(b"x")
            assert await conn.receive_some() == b"x"
            pool.release(conn)
        with trio.fail_after(5):
            while pool.statistics(HOST, closing_port).idle_connections:  # noqa: ASYNC110
                await trio.sleep(0.02)
        await trio.sleep(0.1)  # a few more passes
        assert pool.statistics(HOST, echo_port).idle_connections == 1
        assert pool.statistics(HOST, closing_port).connections_evicted == 1


# -- closing -----------------------------------------------------------------------------------


async def test_discard_sends_close_notify(
    tls_server: tuple[TLSServer, int], client_ctx: ssl.SSLContext, pool: ConnectionPool
) -> None:
    server, port = tls_server
    baseline = open_fds()
    conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    await roundtrip(conn)
    await conn.aclose()  # = discard
    assert conn.is_closed
    assert pool.statistics().connections_closed == 1
    await trio.testing.wait_all_tasks_blocked()
    assert server.ends == ["close_notify"]
    assert open_fds() == baseline


async def test_release_after_the_pool_is_gone_closes_abruptly(
    tls_server: tuple[TLSServer, int], client_ctx: ssl.SSLContext
) -> None:
    """The pool's nursery is closed: no close_notify task, but no leak or warning."""
    server, port = tls_server
    baseline = open_fds()
    async with trio_pool.open_pool() as pool:
        conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
        await roundtrip(conn)
    pool.release(conn)
    assert conn.is_closed
    await trio.testing.wait_all_tasks_blocked()
    assert server.ends == ["ragged"]
    assert open_fds() == baseline


async def test_close_notify_gives_up_on_a_peer_that_does_not_read(
    nursery: trio.Nursery, server_cert: trustme.LeafCert, client_ctx: ssl.SSLContext
) -> None:
    """The close runs in the pool's nursery under a short deadline: a full send buffer
    cannot hold the pool's exit."""

    async def read_nothing(server: TLSServer, stream: TLSStream) -> None:
        await trio.sleep_forever()

    context = server_context(server_cert, "1.3")
    _, port = await start_tls_server(nursery, context, read_nothing)
    with trio.fail_after(10):
        async with trio_pool.open_pool() as pool:
            conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
            assert isinstance(conn.stream, trio.SSLStream)
            sock = conn.stream.transport_stream.socket
            fill_send_buffer(conn)  # close_notify cannot be sent now
            pool.discard(conn)
            assert sock.fileno() != -1  # the close runs in the pool's nursery
    assert sock.fileno() == -1
