"""trio_pool from anyio code: :mod:`trio_pool.anyio` and the pool under anyio's cancel scopes.

Every scenario is an ``async def _scenario()`` run twice: once by pytest-trio (trio_mode,
plain ``async def test_...``) and once by anyio's pytest plugin on the trio backend
(``@pytest.mark.anyio`` with the ``anyio_backend`` fixture below). With ``trio_mode`` on,
pytest-trio would also claim the anyio tests; ``tests/conftest.py`` takes its ``trio`` mark
off them (see ``pytest_collection_modifyitems_anyio``) and
``test_anyio_tests_run_under_anyios_runner`` checks that it did.

Scenarios start their own loopback servers (trio's, in a nursery) and use anyio's API
for everything a user of anyio would write: cancel scopes, task groups, stream methods.
"""

from __future__ import annotations

import random
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import trio
import trustme
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute

import trio_pool
from trio_pool.anyio import AnyioStream, connection

from .checks import assert_settled, settle_connects
from .servers import HOST, close_after_reply, echo, open_fds, reset, stall, start_server


@pytest.fixture
def anyio_backend() -> str:
    """anyio's plugin runs this module's ``@pytest.mark.anyio`` tests on trio only."""
    return "trio"


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1")


# -- helpers --------------------------------------------------------------------------

Handler = Callable[[trio.SocketStream], Awaitable[None]]


@asynccontextmanager
async def serving(
    handler: Handler, **overrides: Any
) -> AsyncIterator[tuple[trio_pool.ConnectionPool, int]]:
    """A loopback server running ``handler`` and a pool, both closed on exit."""
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, handler)
        async with trio_pool.open_pool(**overrides) as pool:
            yield pool, port
        nursery.cancel_scope.cancel()


async def reset_at_once(stream: trio.SocketStream) -> None:
    await trio.lowlevel.checkpoint()
    reset(stream)


# -- import ---------------------------------------------------------------------------


def test_import_trio_pool_does_not_import_anyio() -> None:
    code = "import sys, trio_pool; print('anyio' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.anyio
async def test_anyio_tests_run_under_anyios_runner() -> None:
    # pytest-trio names the test's task after the test; anyio runs it in its TestRunner.
    assert "TestRunner" in trio.lowlevel.current_task().name


async def test_trio_mode_tests_still_run_under_pytest_trio() -> None:
    assert "TestRunner" not in trio.lowlevel.current_task().name


# -- byte stream round trips ------------------------------------------------------------


async def _round_trip() -> None:
    async with serving(echo) as (pool, port):
        async with connection(pool, HOST, port) as stream:
            assert isinstance(stream, anyio.abc.ByteStream)
            await stream.send(b"ping")
            assert await stream.receive() == b"ping"
            await stream.send(b"x" * 100_000)
            received = bytearray()
            while len(received) < 100_000:
                received += await stream.receive(4096)
            assert received == b"x" * 100_000
            first = stream.connection
        assert pool.statistics().idle_connections == 1  # released on a clean exit
        async with connection(pool, HOST, port) as stream:
            assert stream.connection is first
            assert first.reused
            await stream.send(b"again")
            assert await stream.receive() == b"again"
        assert pool.statistics().pool_hits == 1
        assert_settled(pool)


async def test_round_trip() -> None:
    await _round_trip()


@pytest.mark.anyio
async def test_round_trip_anyio() -> None:
    await _round_trip()


async def _body_error_discards_and_aclose_discards() -> None:
    async with serving(echo) as (pool, port):
        stream = AnyioStream(await pool.acquire(HOST, port))
        pool.release(stream.connection)
        conn = stream.connection

        async def fail_inside() -> None:
            async with connection(pool, HOST, port) as inner:
                assert inner.connection is conn
                raise KeyError("boom")

        with pytest.raises(KeyError):
            await fail_inside()
        assert conn.is_closed
        async with connection(pool, HOST, port) as stream:
            await stream.aclose()  # discard; the context's exit then does nothing more
            assert stream.connection.is_closed
            await stream.aclose()  # idempotent
        stats = pool.statistics()
        assert stats.connections_closed == stats.connections_created == 2
        assert_settled(pool)


async def test_body_error_discards_and_aclose_discards() -> None:
    await _body_error_discards_and_aclose_discards()


@pytest.mark.anyio
async def test_body_error_discards_and_aclose_discards_anyio() -> None:
    await _body_error_discards_and_aclose_discards()


# -- end of stream ----------------------------------------------------------------------


async def _end_of_stream() -> None:
    async with serving(close_after_reply) as (pool, port):
        async with connection(pool, HOST, port) as stream:
            await stream.send(b"hi")
            assert await stream.receive() == b"hi"
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()
            with pytest.raises(anyio.EndOfStream):  # and again
                await stream.receive()
        stats = pool.statistics()
        assert stats.idle_connections == 0  # a connection that saw EOF is never pooled
        assert stats.connections_closed == 1
        assert_settled(pool)


async def test_end_of_stream() -> None:
    await _end_of_stream()


@pytest.mark.anyio
async def test_end_of_stream_anyio() -> None:
    await _end_of_stream()


async def _send_eof() -> None:
    async with serving(echo) as (pool, port):
        async with connection(pool, HOST, port) as stream:
            await stream.send(b"abc")
            await stream.send_eof()
            # The echo server saw our EOF: it sends back what it got, then closes.
            assert b"".join([chunk async for chunk in stream]) == b"abc"
            with pytest.raises(anyio.ClosedResourceError) as closed:
                await stream.send(b"more")
            assert isinstance(closed.value.__cause__, trio.ClosedResourceError)
        assert pool.statistics().idle_connections == 0
    async with serving(stall) as (pool, port):
        # The server neither reads nor closes: only the half-close keeps it from the pool.
        async with connection(pool, HOST, port) as stream:
            await stream.send_eof()
            conn = stream.connection
        assert conn.is_closed
        assert pool.statistics().idle_connections == 0
        assert_settled(pool)


async def test_send_eof() -> None:
    await _send_eof()


@pytest.mark.anyio
async def test_send_eof_anyio() -> None:
    await _send_eof()


# -- error mapping ----------------------------------------------------------------------


async def _error_mapping() -> None:
    async with serving(reset_at_once) as (pool, port):
        async with connection(pool, HOST, port) as stream:
            with pytest.raises(anyio.BrokenResourceError) as broken:
                await stream.receive()
            assert isinstance(broken.value.__cause__, trio.BrokenResourceError)
        assert_settled(pool)
        assert pool.statistics().idle_connections == 0

    async with serving(stall) as (pool, port):
        # Busy: two tasks receiving at once.
        async with connection(pool, HOST, port) as stream, anyio.create_task_group() as tg:
            tg.start_soon(stream.receive)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(anyio.BusyResourceError) as busy:
                await stream.receive()
            assert isinstance(busy.value.__cause__, trio.BusyResourceError)
            tg.cancel_scope.cancel()
        assert_settled(pool)

        # Closed underneath: trio's ClosedResourceError becomes anyio's.
        async with connection(pool, HOST, port) as stream:
            await stream.connection.stream.aclose()
            with pytest.raises(anyio.ClosedResourceError) as closed:
                await stream.send(b"x")
            assert isinstance(closed.value.__cause__, trio.ClosedResourceError)
        assert_settled(pool)

        # Released: the stream is closed, even once the pool lends the connection again.
        conn = await pool.acquire(HOST, port)
        stream = AnyioStream(conn)
        pool.release(conn)
        again = await pool.acquire(HOST, port)
        assert again is conn
        for operation in (stream.send(b"x"), stream.receive(), stream.send_eof()):
            with pytest.raises(anyio.ClosedResourceError):
                await operation
        await stream.aclose()  # not ours any more: must not discard the new loan
        assert not again.is_closed
        pool.release(again)
        with pytest.raises(anyio.ClosedResourceError):
            AnyioStream(again)  # idle in the pool, not borrowed
        assert_settled(pool)


async def test_error_mapping() -> None:
    await _error_mapping()


@pytest.mark.anyio
async def test_error_mapping_anyio() -> None:
    await _error_mapping()


async def test_bad_arguments_fail_before_any_io() -> None:
    async with trio_pool.open_pool() as pool:
        with pytest.raises(TypeError, match="pool"):
            connection(object(), HOST, 80)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="port"):
            connection(pool, HOST, 0)
        with pytest.raises(TypeError, match="host"):
            connection(pool, b"127.0.0.1", 80)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            connection(pool, HOST, 80, timeout=-1)
        with pytest.raises(TypeError, match="conn"):
            AnyioStream(object())  # type: ignore[arg-type]
        assert pool.statistics().connections_created == 0


# -- cancel scopes ----------------------------------------------------------------------


async def _cancel_scopes_around_a_waiting_acquire() -> None:
    async with serving(echo, max_size=1) as (pool, port):
        held = await pool.acquire(HOST, port)

        # An anyio CancelScope cancelled from outside while the task waits in line.
        scope = anyio.CancelScope()
        outcomes: list[bool] = []

        async def wait_in_line() -> None:
            with scope:
                await pool.acquire(HOST, port, timeout=None)
            outcomes.append(scope.cancelled_caught)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_in_line)
            await anyio.wait_all_tasks_blocked()
            assert pool.statistics().tasks_waiting == 1
            scope.cancel()
        assert outcomes == [True]
        assert pool.statistics().tasks_waiting == 0

        # fail_after around connection(): anyio's TimeoutError, not the pool's.
        async def enter_with_deadline() -> None:
            with anyio.fail_after(0.05):
                async with connection(pool, HOST, port, timeout=None):
                    pytest.fail("the only connection is held")  # pragma: no cover

        with pytest.raises(TimeoutError) as timed_out:
            await enter_with_deadline()
        assert not isinstance(timed_out.value, trio_pool.PoolExhausted)
        assert pool.statistics().tasks_waiting == 0

        # move_on_after around acquire.
        with anyio.move_on_after(0.05) as moved_on:
            await pool.acquire(HOST, port, timeout=None)
        assert moved_on.cancelled_caught
        assert pool.statistics().tasks_waiting == 0

        # No place in line leaked: the released connection goes straight to the next one.
        pool.release(held)
        with anyio.fail_after(5):
            async with connection(pool, HOST, port) as stream:
                assert stream.connection is held
        assert_settled(pool)
        assert pool.statistics().connections_created == 1


async def test_cancel_scopes_around_a_waiting_acquire() -> None:
    await _cancel_scopes_around_a_waiting_acquire()


@pytest.mark.anyio
async def test_cancel_scopes_around_a_waiting_acquire_anyio() -> None:
    await _cancel_scopes_around_a_waiting_acquire()


async def _many_tasks_under_move_on_after() -> None:
    fds_before = open_fds()
    rng = random.Random(8)
    max_size = 2
    async with serving(stall, max_size=max_size) as (pool, port):

        async def borrower(delay: float, use_context: bool) -> None:
            with anyio.move_on_after(delay):
                if use_context:
                    async with connection(pool, HOST, port, timeout=None) as stream:
                        await stream.send(b"req")
                        await stream.receive()  # the server never answers
                else:
                    conn = await pool.acquire(HOST, port, timeout=None)
                    try:
                        await AnyioStream(conn).receive()
                    finally:
                        pool.release(conn)

        async with anyio.create_task_group() as tg:
            for _ in range(80):
                tg.start_soon(borrower, rng.uniform(0, 0.05), rng.random() < 0.5)
        await settle_connects(pool)  # hand-off connects may outlive their cancelled tasks
        assert_settled(pool)

        # The pool still serves max_size connections at once, and no more.
        with anyio.fail_after(5):
            conns = [await pool.acquire(HOST, port) for _ in range(max_size)]
        with pytest.raises(trio_pool.PoolExhausted):
            await pool.acquire(HOST, port, timeout=0)
        for conn in conns:
            pool.release(conn)
        assert_settled(pool)
    assert open_fds() == fds_before


async def test_many_tasks_under_move_on_after() -> None:
    await _many_tasks_under_move_on_after()


@pytest.mark.anyio
async def test_many_tasks_under_move_on_after_anyio() -> None:
    await _many_tasks_under_move_on_after()


def test_pool_under_anyio_run() -> None:
    """Plain anyio code: ``anyio.run(backend="trio")``, an anyio listener, task groups."""

    async def serve_echo(client: anyio.abc.SocketStream) -> None:
        async with client:
            try:
                async for chunk in client:
                    await client.send(chunk)
            except anyio.BrokenResourceError:
                pass

    async def main() -> tuple[list[bytes], int, int]:
        listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
        port = listener.extra(SocketAttribute.local_port)
        replies: list[bytes] = []
        async with listener, anyio.create_task_group() as server_tg:
            server_tg.start_soon(listener.serve, serve_echo)
            async with trio_pool.open_pool(max_size=2) as pool:

                async def client(n: int) -> None:
                    with anyio.fail_after(5):
                        async with connection(pool, HOST, port) as stream:
                            await stream.send(b"%d" % n)
                            replies.append(await stream.receive())

                async with anyio.create_task_group() as tg:
                    for n in range(10):
                        tg.start_soon(client, n)
                stats = pool.statistics()
            server_tg.cancel_scope.cancel()
        return sorted(replies), stats.connections_created, stats.pool_hits

    replies, created, hits = anyio.run(main, backend="trio")
    assert replies == sorted(b"%d" % n for n in range(10))
    assert created <= 2
    assert created + hits == 10


# -- extra attributes -------------------------------------------------------------------


async def _socket_attributes() -> None:
    async with serving(echo) as (pool, port), connection(pool, HOST, port) as stream:
        tcp = stream.connection.stream
        assert isinstance(tcp, trio.SocketStream)
        trio_socket = tcp.socket
        local_host, local_port = trio_socket.getsockname()
        assert stream.extra(SocketAttribute.family) == socket.AF_INET
        assert stream.extra(SocketAttribute.local_address) == (local_host, local_port)
        assert stream.extra(SocketAttribute.local_port) == local_port
        assert stream.extra(SocketAttribute.remote_address) == (HOST, port)
        assert stream.extra(SocketAttribute.remote_port) == port
        raw = stream.extra(SocketAttribute.raw_socket)
        assert isinstance(raw, socket.socket)
        assert raw.fileno() == trio_socket.fileno()
        with pytest.raises(anyio.TypedAttributeLookupError):
            stream.extra(TLSAttribute.tls_version)
        assert stream.extra(TLSAttribute.tls_version, None) is None


async def test_socket_attributes() -> None:
    await _socket_attributes()


@pytest.mark.anyio
async def test_socket_attributes_anyio() -> None:
    await _socket_attributes()


async def _tls_attributes(ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(server_context)
    server_context.set_alpn_protocols(["http/1.1"])
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_context.set_alpn_protocols(["http/1.1"])

    async def tls_echo(tcp: trio.SocketStream) -> None:
        await echo(trio.SSLStream(tcp, server_context, server_side=True))  # type: ignore[arg-type]

    async with serving(tls_echo) as (pool, port):
        async with connection(pool, HOST, port, tls=True, ssl_context=client_context) as stream:
            await stream.send(b"secret")
            assert await stream.receive() == b"secret"
            assert stream.extra(TLSAttribute.tls_version) in {"TLSv1.2", "TLSv1.3"}
            _name, _version, bits = stream.extra(TLSAttribute.cipher)
            assert bits >= 128
            assert stream.extra(TLSAttribute.alpn_protocol) == "http/1.1"
            assert stream.extra(TLSAttribute.server_side) is False
            assert stream.extra(TLSAttribute.shared_ciphers) is None  # client side
            assert stream.extra(TLSAttribute.standard_compatible) is False
            peer = stream.extra(TLSAttribute.peer_certificate)
            assert peer is not None
            assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]
            der = ssl.PEM_cert_to_DER_cert(server_cert.cert_chain_pems[0].bytes().decode())
            assert stream.extra(TLSAttribute.peer_certificate_binary) == der
            ssl_object = stream.extra(TLSAttribute.ssl_object)
            assert isinstance(ssl_object, ssl.SSLObject)
            assert ssl_object.version() == stream.extra(TLSAttribute.tls_version)
            # The socket attributes come along, as with anyio's own TLSStream.
            assert stream.extra(SocketAttribute.remote_port) == port
            # anyio's TLSStream has no send_eof either; nothing happened, so it is pooled.
            with pytest.raises(NotImplementedError):
                await stream.send_eof()
        assert pool.statistics().idle_connections == 1
        assert_settled(pool)


async def test_tls_attributes(ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    await _tls_attributes(ca, server_cert)


@pytest.mark.anyio
async def test_tls_attributes_anyio(ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    await _tls_attributes(ca, server_cert)


async def test_connection_without_async_with_says_what_to_write(echo_port: int) -> None:
    async with trio_pool.open_pool() as pool:
        context = connection(pool, HOST, echo_port)
        with pytest.raises(TypeError, match=r"async with trio_pool\.anyio\.connection\("):
            await context  # type: ignore[misc]
        with pytest.raises(AttributeError, match=r"\) as stream:' and use stream\.send"):
            context.send  # type: ignore[attr-defined]  # noqa: B018
        assert pool.statistics().connections_created == 0
