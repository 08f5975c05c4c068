"""How a response body ends (issue 12, defects 3 and 4).

Every way a streamed body can stop (read to its end, a read timeout, a read error, the
server closing early, leaving the ``stream()`` block, ``aclose()``, reading twice) gives
one clear answer: the body, or :class:`~trio_pool.http.StreamClosed` /
:class:`~trio_pool.http.StreamConsumed`; ``is_complete`` is True only when the whole body
arrived; the connection is given back exactly once. Also: a server that answers an
upload early (``413``) and closes has its answer read, not lost.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import h11
import httpx
import pytest
import trio
import trio.testing
import trustme

import trio_pool
from trio_pool import ConnectionPool
from trio_pool.http import (
    HTTPClient,
    HTTPError,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    Response,
    ResponseNotRead,
    StreamClosed,
    StreamConsumed,
    StreamError,
)
from trio_pool.httpx import PoolTransport

from .checks import assert_settled
from .servers import HOST, reset, start_server
from .test_http import read_request

pytestmark = pytest.mark.filterwarnings("error")

BODY = bytes(range(100))


class BodyServer:
    """Answers each request with a 100-byte body, the first 10 bytes at once, then the
    rest when ``go`` is set, or (``cut``) a reset or a close after the 10 bytes."""

    def __init__(self, cut: str | None = None) -> None:
        self.cut = cut
        self.go = trio.Event()
        self.port = 0
        self.connections = 0

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            for _ in range(100):
                if await read_request(stream, conn) is None:
                    return
                head = conn.send(
                    h11.Response(status_code=200, headers=[(b"content-length", b"100")])
                )
                await stream.send_all((head or b"") + (conn.send(h11.Data(data=BODY[:10])) or b""))
                if self.cut == "reset":
                    reset(stream)
                    return
                if self.cut == "close":
                    return
                await self.go.wait()
                data = conn.send(h11.Data(data=BODY[10:])) or b""
                await stream.send_all(data + (conn.send(h11.EndOfMessage()) or b""))
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()


async def start(nursery: trio.Nursery, cut: str | None = None) -> BodyServer:
    server = BodyServer(cut)
    server.port = await start_server(nursery, server.handle)
    return server


@pytest.fixture
async def server(nursery: trio.Nursery) -> BodyServer:
    """A loopback body server for the test."""
    return await start(nursery)


async def first_chunk(response: Response) -> bytes:
    return await response.aiter_bytes().__anext__()


async def assert_closed(response: Response) -> None:
    """Every way of reading an abandoned body raises StreamClosed."""
    assert not response.is_complete
    with pytest.raises(StreamClosed):
        await response.aread()
    with pytest.raises(StreamClosed):
        await response.aiter_bytes().__anext__()
    with pytest.raises(StreamClosed):
        async for _ in response.aiter_bytes():
            pass  # pragma: no cover
    assert not response.is_complete


# -- defect 3: a body cut short never reads as complete -------------------------------------


async def test_read_timeout_mid_body_then_reads_raise_stream_closed(
    server: BodyServer, client: HTTPClient, pool: ConnectionPool
) -> None:
    async with client.stream("GET", server.url(), timeout=0.2) as r:
        chunks = r.aiter_bytes()
        assert await chunks.__anext__() == BODY[:10]
        with pytest.raises(ReadTimeout):
            await chunks.__anext__()
        with pytest.raises(StreamClosed, match="timed out"):
            await chunks.__anext__()
        await assert_closed(r)
    await assert_closed(r)
    stats = pool.statistics()
    assert (stats.connections_closed, stats.idle_connections) == (1, 0)
    assert_settled(pool)


@pytest.mark.parametrize("cut", ["reset", "close"])
async def test_failed_read_mid_body_then_reads_raise_stream_closed(
    nursery: trio.Nursery, cut: str, client: HTTPClient, pool: ConnectionPool
) -> None:
    server = await start(nursery, cut)
    async with client.stream("GET", server.url()) as r:
        with pytest.raises((ReadError, RemoteProtocolError)):
            await r.aread()
        await assert_closed(r)
    async with client.stream("GET", server.url()) as r:
        chunks = r.aiter_bytes()
        assert await chunks.__anext__() == BODY[:10]
        with pytest.raises((ReadError, RemoteProtocolError)):
            await chunks.__anext__()
        await assert_closed(r)
    with pytest.raises((ReadError, RemoteProtocolError)):
        await client.request("GET", server.url())
    assert pool.statistics().connections_closed == 3
    assert_settled(pool)


async def test_leaving_the_block_early_then_reads_raise_stream_closed(
    server: BodyServer, client: HTTPClient, pool: ConnectionPool
) -> None:
    async with client.stream("GET", server.url()) as r:
        assert await first_chunk(r) == BODY[:10]
    with pytest.raises(StreamClosed, match="block"):
        await r.aread()
    await assert_closed(r)
    async with client.stream("GET", server.url()) as unread:
        pass
    await assert_closed(unread)
    assert pool.statistics().connections_closed == 2
    assert_settled(pool)


async def test_leaving_the_block_by_an_exception_then_reads_raise_stream_closed(
    server: BodyServer, client: HTTPClient, pool: ConnectionPool
) -> None:
    with pytest.raises(KeyError):
        async with client.stream("GET", server.url()) as r:
            raise KeyError("mine")
    await assert_closed(r)
    assert_settled(pool)


async def test_aclose_then_reads_raise_stream_closed(
    server: BodyServer, client: HTTPClient, pool: ConnectionPool
) -> None:
    async with client.stream("GET", server.url()) as r:
        chunks = r.aiter_bytes()
        assert await chunks.__anext__() == BODY[:10]
        await r.aclose()
        with pytest.raises(StreamClosed, match="aclose"):
            await chunks.__anext__()
        await assert_closed(r)
        await r.aclose()  # idempotent
    async with client.stream("GET", server.url()) as r:
        await r.aclose()
        await assert_closed(r)
    assert pool.statistics().connections_closed == 2
    assert_settled(pool)


async def test_aclose_from_another_task_during_a_read(
    server: BodyServer, client: HTTPClient, pool: ConnectionPool
) -> None:
    async with client.stream("GET", server.url()) as r:
        chunks = r.aiter_bytes()
        assert await chunks.__anext__() == BODY[:10]
        errors: list[BaseException] = []

        async def reader() -> None:
            try:
                await chunks.__anext__()
            except BaseException as exc:
                errors.append(exc)

        async with trio.open_nursery() as inner:
            inner.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await r.aclose()
        assert len(errors) == 1
        assert isinstance(errors[0], StreamClosed), errors
        await assert_closed(r)
    stats = pool.statistics()
    assert (stats.connections_closed, stats.active_connections) == (1, 0)
    assert_settled(pool)


async def test_cancelled_read_then_reads_raise_stream_closed(
    server: BodyServer, client: HTTPClient, pool: ConnectionPool
) -> None:
    async with client.stream("GET", server.url()) as r:
        with trio.move_on_after(0.05):
            await r.aread()
        await assert_closed(r)
    async with client.stream("GET", server.url()) as r:
        chunks = r.aiter_bytes()
        assert await chunks.__anext__() == BODY[:10]
        with trio.move_on_after(0.05):
            await chunks.__anext__()
        with pytest.raises(StreamClosed, match="Cancelled"):
            await chunks.__anext__()
        await assert_closed(r)
    assert_settled(pool)


async def test_whole_body_then_double_reads(
    server: BodyServer, client: HTTPClient, pool: ConnectionPool
) -> None:
    server.go.set()
    # aread, then aread again and aiter_bytes: the kept content, inside and after.
    async with client.stream("GET", server.url()) as r:
        assert await r.aread() == BODY
        assert r.is_complete
        assert await r.aread() == BODY
        assert [c async for c in r.aiter_bytes()] == [BODY]
    assert await r.aread() == BODY
    assert [c async for c in r.aiter_bytes()] == [BODY]
    assert r.content == BODY
    # aiter_bytes to the end, then reads: the body is gone (consumed), not closed.
    async with client.stream("GET", server.url()) as r:
        assert b"".join([c async for c in r.aiter_bytes()]) == BODY
        assert r.is_complete
        with pytest.raises(StreamConsumed):
            await r.aread()
        with pytest.raises(StreamConsumed):
            await r.aiter_bytes().__anext__()
    with pytest.raises(StreamConsumed):
        await r.aread()
    assert r.is_complete
    # Part read by aiter_bytes: another reader gets StreamConsumed, the first goes on.
    async with client.stream("GET", server.url()) as r:
        chunks = r.aiter_bytes()
        first = await chunks.__anext__()
        with pytest.raises(StreamConsumed):
            await r.aread()
        with pytest.raises(StreamConsumed):
            await r.aiter_bytes().__anext__()
        rest = b"".join([c async for c in chunks])
        assert first + rest == BODY
        assert r.is_complete
    stats = pool.statistics()
    assert (stats.connections_created, stats.pool_hits, stats.connections_closed) == (1, 2, 0)
    assert_settled(pool)


async def test_content_of_an_unread_stream_is_response_not_read(
    server: BodyServer, client: HTTPClient, pool: ConnectionPool
) -> None:
    server.go.set()
    async with client.stream("GET", server.url()) as r:
        with pytest.raises(ResponseNotRead, match=r"await response\.aread\(\)"):
            r.content  # noqa: B018
        assert await r.aread() == BODY
        assert r.content == BODY
    async with client.stream("GET", server.url()) as r:
        pass  # left unread: the body is gone with its connection
    with pytest.raises(ResponseNotRead):
        r.content  # noqa: B018
    assert_settled(pool)


async def test_stream_errors_are_in_the_hierarchy() -> None:
    assert issubclass(ResponseNotRead, StreamError)  # httpx: a StreamError too
    assert issubclass(StreamClosed, StreamError)
    assert issubclass(StreamConsumed, StreamError)
    assert issubclass(StreamError, HTTPError)
    assert issubclass(StreamError, trio_pool.PoolError)
    assert issubclass(StreamError, RuntimeError)  # what aread() raised before


# -- the same through httpx --------------------------------------------------------------------


async def test_httpx_stream_ends(server: BodyServer) -> None:
    async with (
        trio_pool.open_pool() as pool,
        httpx.AsyncClient(transport=PoolTransport(pool)) as client,
    ):
        async with client.stream("GET", server.url(), timeout=httpx.Timeout(5, read=0.2)) as r:
            chunks = r.aiter_raw()
            assert await chunks.__anext__() == BODY[:10]
            with pytest.raises(httpx.ReadTimeout):
                await chunks.__anext__()
        with pytest.raises(httpx.StreamConsumed):  # httpx's own rule: consumed first
            await r.aread()
        async with client.stream("GET", server.url()) as r:
            pass
        with pytest.raises(httpx.StreamClosed):
            await r.aread()
        server.go.set()
        async with client.stream("GET", server.url()) as r:
            assert await r.aread() == BODY
        assert r.content == BODY
        stats = pool.statistics()
        assert (stats.connections_closed, stats.idle_connections) == (2, 1)
        assert_settled(pool)


async def test_httpx_transport_stream_after_close(
    nursery: trio.Nursery, pool: ConnectionPool
) -> None:
    """The transport's own byte stream, used directly: closed means StreamClosed."""
    server = await start(nursery)
    transport = PoolTransport(pool)
    response = await transport.handle_async_request(httpx.Request("GET", server.url()))
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    assert await stream.__aiter__().__anext__() == BODY[:10]
    await stream.aclose()
    with pytest.raises(httpx.StreamClosed):
        await stream.__aiter__().__anext__()
    await stream.aclose()
    assert_settled(pool)


# -- defect 4: an early answer to an upload is read -------------------------------------------

UPLOAD = 16 * 1024 * 1024


async def answer_413_early(stream: trio.SocketStream) -> None:
    """Read the head of an upload, answer 413 and close without reading the body."""
    conn = h11.Connection(h11.SERVER)
    try:
        for _ in range(100):
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some())
            elif isinstance(event, h11.Request):
                break
        body = b"too large"
        data = conn.send(
            h11.Response(
                status_code=413,
                headers=[(b"content-length", b"%d" % len(body)), (b"connection", b"close")],
            )
        )
        data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
        await stream.send_all(data + (conn.send(h11.EndOfMessage()) or b""))
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass
    finally:
        await stream.aclose()  # with the upload unread, the kernel sends a reset


Send = Callable[[str], Awaitable[tuple[int, bytes]]]


async def test_early_413_to_a_large_upload_is_returned(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    port = await start_server(nursery, answer_413_early)
    url = f"http://{HOST}:{port}/upload"
    r = await client.request("POST", url, content=b"x" * UPLOAD, timeout=10)
    assert (r.status, r.content) == (413, b"too large")
    async with client.stream("PUT", url, content=b"x" * UPLOAD, timeout=10) as r:
        assert r.status == 413
        assert await r.aread() == b"too large"
    async with httpx.AsyncClient(transport=PoolTransport(pool)) as httpx_client:
        hr = await httpx_client.post(url, content=b"x" * UPLOAD, timeout=10)
        assert (hr.status_code, hr.content) == (413, b"too large")
    stats = pool.statistics()
    assert stats.idle_connections == 0
    assert stats.connections_closed == 3
    assert_settled(pool)


async def test_upload_to_a_server_that_resets_without_answering_is_write_error(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    async def reset_after_head(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        reset(stream)

    port = await start_server(nursery, reset_after_head)
    with pytest.raises((trio_pool.http.WriteError, trio_pool.http.ReadError)):
        await client.request("POST", f"http://{HOST}:{port}/", content=b"x" * UPLOAD)
    assert_settled(pool)


# -- raw borrowers and HTTP clients never share a connection ------------------------------


async def answer_raw_late(stream: trio.abc.Stream) -> None:
    """Answers ``GET /raw`` with half its body, and the other half only when the next
    request comes on the connection (a late tail: it arrives after any release or
    hand-out probe could see it), then answers that request. Others get ``ok``."""
    buffer = b""
    late = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            data = await stream.receive_some()
            if not data:
                return
            buffer += data
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        if late:
            await stream.send_all(late)
            late = b""
        if head.startswith(b"GET /raw "):
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
            late = b"world"
        else:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("client", ["HTTPClient", "PoolTransport"])
async def test_a_raw_borrowers_half_read_answer_never_reaches_an_http_client(
    nursery: trio.Nursery, ca: trustme.CA, client_ctx: ssl.SSLContext, tls: bool, client: str
) -> None:
    """A raw ``pool.connection()`` user who reads part of an answer and exits cleanly
    pools the connection (nothing is unread yet); the tail arriving later must not be
    read by an HTTP client as the head of its own response."""
    if tls:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(HOST).configure_cert(server_ctx)

        async def handler(stream: trio.SocketStream) -> None:
            await answer_raw_late(trio.SSLStream(stream, server_ctx, server_side=True))

        port = await start_server(nursery, handler)
    else:
        port = await start_server(nursery, answer_raw_late)
    scheme = "https" if tls else "http"
    async with trio_pool.open_pool() as pool:
        tls_args: dict[str, object] = {"tls": True, "ssl_context": client_ctx} if tls else {}
        async with pool.connection(HOST, port, **tls_args) as conn:  # type: ignore[arg-type]
            await conn.send_all(b"GET /raw HTTP/1.1\r\nhost: x\r\n\r\n")
            got = b""
            while not got.endswith(b"hello"):
                got += await conn.receive_some()
        assert pool.statistics().idle_connections == 1  # pooled: nothing unread yet
        url = f"{scheme}://{HOST}:{port}/"
        if client == "HTTPClient":
            response = await HTTPClient(pool, ssl_context=client_ctx).request("GET", url)
            assert (response.status, response.content) == (200, b"ok")
        else:
            transport = PoolTransport(pool, ssl_context=client_ctx)
            async with httpx.AsyncClient(transport=transport) as http:
                answer = await http.get(url)
            assert (answer.status_code, answer.content) == (200, b"ok")
        # And the other way: a raw borrower never gets the HTTP client's connection.
        async with pool.connection(HOST, port, **tls_args) as again:  # type: ignore[arg-type]
            assert again is conn
