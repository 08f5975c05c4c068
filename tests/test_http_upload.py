"""Streamed request bodies (issue 15): ``content`` an async iterable in HTTPClient, and
httpx's request streams through PoolTransport, sent as they are produced.

Servers are h11 servers on 127.0.0.1 that record each body (and say when its first
piece arrived), plus fault servers: one that answers an upload early and closes, one
that stops reading, one that closes a kept-alive connection on the next request.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import h11
import httpx
import pytest
import trio

import trio_pool
from trio_pool import ConnectionPool
from trio_pool.http import (
    HTTPClient,
    LocalProtocolError,
    ReadError,
    RemoteProtocolError,
    Timeout,
    WriteError,
    WriteTimeout,
)
from trio_pool.httpx import PoolTransport

from .checks import assert_settled
from .proxies import open_microsocks, open_tinyproxy
from .servers import HOST, start_server
from .test_http import answer_first_only, send_response, start_h11
from .test_http_lifecycle import answer_413_early
from .test_proxy_faults import fake_http_proxy
from .test_proxy_faults import reset as proxy_reset

MiB = 1024 * 1024


class BodyServer:
    """An h11 server that reads every request body, recording its size, its framing
    and the pieces; ``first_piece`` is set when a body's first byte arrived."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.port = 0
        self.connections = 0
        self.bodies: list[bytes] = []
        self.sizes: list[int] = []
        self.heads: list[h11.Request] = []
        self.first_piece = trio.Event()
        self.broken = 0

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        try:
            while True:
                body: list[bytes] = []
                size = 0
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(1 << 16)
                        if not data and conn.their_state is h11.SEND_BODY:
                            self.broken += 1
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        self.heads.append(event)
                    elif isinstance(event, h11.Data):
                        self.first_piece.set()
                        size += len(event.data)
                        if self.keep:
                            body.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                self.bodies.append(b"".join(body))
                self.sizes.append(size)
                await send_response(stream, conn, b"%d" % size)
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            self.broken += 1
        finally:
            await stream.aclose()


async def start_body_server(nursery: trio.Nursery, keep: bool = True) -> BodyServer:
    server = BodyServer(keep)
    server.port = await start_server(nursery, server.handle)
    return server


@pytest.fixture
async def server(nursery: trio.Nursery) -> BodyServer:
    """A loopback body server that keeps its connections alive, for the test."""
    return await start_body_server(nursery)


async def pieces(*chunks: object) -> AsyncIterator[object]:
    for chunk in chunks:
        await trio.lowlevel.checkpoint()
        yield chunk


class Pieces:
    """An async iterable that is not a generator (httpx wraps what it is given in a
    generator of its own, which the transport closes, but cannot close this one): a
    generator left unfinished there would warn when collected."""

    def __init__(self, *chunks: bytes, count: int = 1) -> None:
        self.chunks = list(chunks) * count
        self.produced = 0

    def __aiter__(self) -> Pieces:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.produced == len(self.chunks):
            raise StopAsyncIteration
        self.produced += 1
        return self.chunks[self.produced - 1]


def framing(head: h11.Request) -> tuple[bytes | None, bytes | None]:
    headers = dict(head.headers)
    return headers.get(b"content-length"), headers.get(b"transfer-encoding")


# -- sent as produced, chunked or by Content-Length ------------------------------------------


async def test_streamed_body_is_sent_as_it_is_produced(
    server: BodyServer, client: HTTPClient, pool: ConnectionPool
) -> None:
    async def wait_for_the_server() -> AsyncIterator[bytes]:
        yield b"first "
        # A client that buffered the body would never send this piece's predecessor.
        with trio.fail_after(10):
            await server.first_piece.wait()
        yield bytearray(b"second ")
        yield memoryview(b"third")

    r = await client.request("POST", server.url(), content=wait_for_the_server())
    assert r.content == b"18"
    assert server.bodies == [b"first second third"]
    assert framing(server.heads[0]) == (None, b"chunked")
    server.first_piece = trio.Event()
    async with client.stream("PUT", server.url(), content=wait_for_the_server()) as r:
        assert await r.aread() == b"18"
    server.first_piece = trio.Event()
    async with httpx.AsyncClient(transport=PoolTransport(pool)) as hc:
        hr = await hc.post(server.url(), content=wait_for_the_server())
        assert hr.content == b"18"
    assert server.bodies[1:] == [b"first second third"] * 2
    assert framing(server.heads[2]) == (None, b"chunked")
    assert server.connections == 1  # a complete streamed exchange keeps its connection
    assert_settled(pool)


async def test_content_length_is_honoured_exactly(
    server: BodyServer, client: HTTPClient, pool: ConnectionPool
) -> None:
    r = await client.request(
        "POST",
        server.url(),
        headers={"Content-Length": "10"},
        content=pieces(b"01234", b"56789"),
    )
    assert r.content == b"10"
    assert framing(server.heads[0]) == (b"10", None)
    async with httpx.AsyncClient(transport=PoolTransport(pool)) as hc:
        hr = await hc.post(
            server.url(), headers={"Content-Length": "3"}, content=pieces(b"a", b"bc")
        )
        assert hr.content == b"3"
    assert server.bodies == [b"0123456789", b"abc"]
    assert server.connections == 1
    assert_settled(pool)


@pytest.mark.parametrize(
    ("chunks", "message"),
    [((b"0123", b"456789xx"), "more bytes"), ((b"0123",), "fewer bytes")],
)
async def test_content_length_mismatch_is_an_error_and_never_a_desync(
    server: BodyServer,
    chunks: tuple[bytes, ...],
    message: str,
    client: HTTPClient,
    pool: ConnectionPool,
) -> None:
    assert (await client.request("GET", server.url())).content == b"0"
    with pytest.raises(LocalProtocolError, match=message):
        await client.request(
            "POST", server.url(), headers={"Content-Length": "10"}, content=pieces(*chunks)
        )
    stats = pool.statistics()
    assert (stats.connections_closed, stats.idle_connections) == (1, 0)  # discarded
    async with httpx.AsyncClient(transport=PoolTransport(pool)) as hc:
        with pytest.raises(httpx.LocalProtocolError, match=message):
            await hc.post(server.url(), headers={"Content-Length": "10"}, content=Pieces(*chunks))
        # The next request is on a new connection and reads its own answer.
        assert (await hc.get(server.url())).content == b"0"
    assert server.sizes == [0, 0]  # neither bad body was taken as complete
    assert server.connections == 3
    assert_settled(pool)


async def test_a_piece_that_is_not_bytes_is_a_type_error_naming_content(
    server: BodyServer, client: HTTPClient, pool: ConnectionPool
) -> None:
    with pytest.raises(TypeError, match="content must yield bytes"):
        await client.request("POST", server.url(), content=pieces(b"ok", "text"))
    stats = pool.statistics()
    assert (stats.connections_closed, stats.idle_connections) == (1, 0)

    async def fails() -> AsyncIterator[bytes]:
        yield b"ok"
        raise trio.BrokenResourceError("the producer's own error")

    # The iterable's own errors pass through as they are (never read as a failed send).
    with pytest.raises(trio.BrokenResourceError, match="producer's own"):
        await client.request("POST", server.url(), content=fails())
    assert pool.statistics().connections_closed == 2
    assert server.sizes == []
    assert_settled(pool)


async def test_content_that_is_neither_is_refused_before_any_io(
    client: HTTPClient, pool: ConnectionPool
) -> None:
    with pytest.raises(TypeError, match="async iterable of bytes"):
        await client.request("POST", "http://127.0.0.1:1/", content=[b"a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Content-Length and Transfer-Encoding"):
        await client.request(
            "POST",
            "http://127.0.0.1:1/",
            headers={"content-length": "1", "transfer-encoding": "chunked"},
            content=pieces(b"a"),
        )
    assert pool.statistics().connections_created == 0


# -- never retried -------------------------------------------------------------------------------


async def test_a_streamed_body_is_never_retried(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    server = await start_h11(nursery, answer_first_only)
    produced: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        for piece in (b"a", b"b"):
            produced.append(piece)
            yield piece

    assert (await client.request("GET", server.url())).content == b"hi"
    # Reused, dead: bytes are sent again on a new connection, a stream is not.
    with pytest.raises(RemoteProtocolError, match="without sending a response") as info:
        await client.request("PUT", server.url(), content=body())
    assert info.value.connection_reused is True
    assert produced == [b"a", b"b"]
    assert server.connections == 1
    assert (await client.request("PUT", server.url(), content=b"ab")).content == b"hi"
    assert_settled(pool)


# -- timeouts and early answers --------------------------------------------------------------------


async def test_the_write_limit_is_per_piece_not_for_the_whole_body(
    server: BodyServer, client: HTTPClient, pool: ConnectionPool
) -> None:
    async def slow() -> AsyncIterator[bytes]:
        for piece in (b"a", b"b", b"c"):
            await trio.sleep(0.5)  # 1.5 s in all: more than the write limit
            yield piece

    limits = Timeout(10, write=1.0)
    r = await client.request("POST", server.url(), content=slow(), timeout=limits)
    assert r.content == b"3"
    assert_settled(pool)


async def test_a_write_that_stalls_times_out(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    async def never_reads(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    port = await start_server(nursery, never_reads)
    big = b"x" * MiB

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(256):  # far more than the socket buffers hold
            yield big

    with pytest.raises(WriteTimeout, match="write timeout"):
        await client.request(
            "POST", f"http://{HOST}:{port}/", content=endless(), timeout=Timeout(10, write=0.3)
        )
    assert pool.statistics().connections_closed == 1
    assert_settled(pool)


async def test_early_413_to_a_streamed_upload_is_returned(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    port = await start_server(nursery, answer_413_early)
    url = f"http://{HOST}:{port}/upload"
    big = b"x" * MiB

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield big

    r = await client.request("POST", url, content=upload(), timeout=10)
    assert (r.status, r.content) == (413, b"too large")
    async with client.stream("PUT", url, content=upload(), timeout=10) as r:
        assert r.status == 413
        assert await r.aread() == b"too large"
    async with httpx.AsyncClient(transport=PoolTransport(pool)) as hc:
        hr = await hc.post(url, content=Pieces(big, count=64), timeout=10)
        assert (hr.status_code, hr.content) == (413, b"too large")
    stats = pool.statistics()
    assert (stats.idle_connections, stats.connections_closed) == (0, 3)
    assert_settled(pool)


# -- memory ---------------------------------------------------------------------------------------


async def test_a_64_mib_upload_is_not_buffered(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    server = await start_body_server(nursery, keep=False)
    piece = b"x" * (256 * 1024)
    count = 64 * MiB // len(piece)

    async def generated() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield piece

    transport = PoolTransport(pool)
    tracemalloc.start()
    try:
        r = await client.request("POST", server.url(), content=generated(), timeout=30)
        async with httpx.AsyncClient(transport=transport, timeout=30) as hc:
            length = {"Content-Length": str(64 * MiB)}
            hr = await hc.post(server.url(), headers=length, content=generated())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.content == hr.content == b"%d" % (64 * MiB)
    assert server.sizes == [64 * MiB, 64 * MiB]
    # Client and server together: a few pieces in flight, nowhere near 64 MiB.
    assert peak < 8 * MiB, peak
    assert_settled(pool)


# -- through a proxy -----------------------------------------------------------------------------


@pytest.mark.proxy
async def test_streamed_upload_through_socks(server: BodyServer, tmp_path: Path) -> None:
    async with open_microsocks(tmp_path) as socks, trio_pool.open_pool() as pool:
        client = HTTPClient(pool, proxy=socks.url)
        r = await client.request("POST", server.url(), content=pieces(b"via ", b"socks"))
        assert r.content == b"9"
        assert server.bodies == [b"via socks"]
        assert_settled(pool)


async def test_cancelled_upload_closes_its_iterator_and_leaks_nothing(
    server: BodyServer, client: HTTPClient, pool: ConnectionPool
) -> None:
    closed = trio.Event()
    started = trio.Event()

    async def forever() -> AsyncIterator[bytes]:
        try:
            yield b"start"
            started.set()
            await trio.sleep_forever()
            yield b"never"  # pragma: no cover
        finally:
            closed.set()

    with trio.move_on_after(10) as scope:
        async with trio.open_nursery() as inner:
            inner.start_soon(partial(client.request, "POST", server.url(), content=forever()))
            await started.wait()
            inner.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert closed.is_set()
    stats = pool.statistics()
    assert (stats.connections_closed, stats.idle_connections) == (1, 0)
    assert_settled(pool)


@pytest.mark.proxy
async def test_streamed_upload_forwarded_through_tinyproxy(
    server: BodyServer, tmp_path: Path
) -> None:
    async with (
        open_tinyproxy(tmp_path, connect_ports=[server.port]) as tinyproxy,
        trio_pool.open_pool() as pool,
    ):
        client = HTTPClient(pool, proxy=tinyproxy.url)
        length = {"Content-Length": "11"}
        r = await client.request(
            "PUT", server.url(), headers=length, content=pieces(b"via ", b"forward")
        )
        assert r.content == b"11"
        assert server.bodies == [b"via forward"]
        assert_settled(pool)


async def test_proxy_reset_mid_upload_is_a_network_error_and_closes_the_iterator(
    nursery: trio.Nursery,
) -> None:
    async def read_then_reset(stream: trio.SocketStream, head: bytes) -> None:
        received = len(head)
        while received < MiB:  # the request head and the first pieces, then a reset
            data = await stream.receive_some(65536)
            if not data:
                return
            received += len(data)
        await proxy_reset(stream, head)

    proxy, heads = await fake_http_proxy(nursery, read_then_reset)
    closed = trio.Event()
    big = b"x" * 65536

    async def upload() -> AsyncIterator[bytes]:
        try:
            for _ in range(1024):  # 64 MiB: far more than the proxy takes
                yield big
        finally:
            closed.set()

    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, proxy=proxy)
        with pytest.raises((WriteError, ReadError)) as info:
            await client.request("POST", "http://origin.test/upload", content=upload(), timeout=10)
        assert info.value.connection_reused is False  # and a streamed body is never retried
        assert heads[0].startswith(b"POST http://origin.test/upload HTTP/1.1\r\n")
        assert len(heads) == 1
        assert closed.is_set()
        stats = pool.statistics()
        assert (stats.connections_created, stats.connections_closed) == (1, 1)
        assert_settled(pool)


async def test_transport_refuses_a_sync_only_request_stream(pool: ConnectionPool) -> None:
    # httpx.AsyncClient refuses these itself; a caller of the transport may not.
    request = httpx.Request("POST", "http://127.0.0.1:9/", content=iter([b"a"]))
    with pytest.raises(TypeError, match="async request stream"):
        await PoolTransport(pool).handle_async_request(request)
    assert pool.statistics().connections_created == 0
