"""Request bodies over HTTP/2 (issue 20, items 3, 4, 5, 6, 10, 11): streamed as DATA
frames as they are produced, within flow control; held to their ``Content-Length``;
the write limit on every wait for window or writer; an early answer returned; the
body never touched before a connection is chosen.

Servers: raw h2 fault servers (:class:`tests.h2servers.H2Server`) on 127.0.0.1, a
server that grants a huge window and then stops reading, and a TLS server whose ALPN
picks ``http/1.1``.
"""

from __future__ import annotations

import ssl
import tracemalloc
from collections.abc import AsyncIterator, Callable

import h2.config
import h2.connection
import h2.settings
import httpx
import pytest
import trio
import trustme
from h2.errors import ErrorCodes

import trio_pool
from trio_pool import ConnectionPool
from trio_pool.http import (
    HTTPClient,
    LocalProtocolError,
    ReadTimeout,
    Timeout,
    WriteTimeout,
)
from trio_pool.httpx import PoolTransport

from .checks import assert_settled
from .h2servers import H2Server, ServerStream, connect_h2
from .servers import HOST, refused_port, start_server
from .test_http import send_response, start_h11
from .test_http_upload import BodyServer, Pieces

MiB = 1024 * 1024
KiB = 1024


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - state of a server
            await trio.sleep(0.005)
    assert condition(), what


async def request_over(stream: ServerStream) -> None:
    """Wait until the request body ended or the stream was reset (bounded)."""
    await wait_until(lambda: stream.ended.is_set() or stream.reset.is_set(), "request over")


class Recorder:
    """Routes of an :class:`H2Server` that keep the streams they served."""

    def __init__(self) -> None:
        self.streams: list[ServerStream] = []

    async def count(self, stream: ServerStream) -> None:
        """Answer with the size of the request body, once it ended."""
        self.streams.append(stream)
        await request_over(stream)
        if not stream.reset.is_set():
            await stream.respond(b"%d" % stream.size)


@pytest.fixture
async def counting(nursery: trio.Nursery) -> tuple[H2Server, Recorder, str]:
    """An h2c server whose ``/count`` answers with the body's size; its base URL."""
    recorder = Recorder()
    server = H2Server(routes={"/count": recorder.count})
    port = await server.start(nursery)
    return server, recorder, f"http://{HOST}:{port}"


async def pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await trio.lowlevel.checkpoint()
        yield chunk


# -- item 3: Content-Length held over HTTP/2 -------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "sent"),
    [((b"hello", b"world!"), 5), ((b"hello",), 5)],
    ids=["longer", "shorter"],
)
async def test_streamed_body_not_matching_content_length_resets_only_its_stream(
    counting: tuple[H2Server, Recorder, str], chunks: tuple[bytes, ...], sent: int
) -> None:
    """A body longer or shorter than its Content-Length never goes out as a complete
    request (an h2-to-h1 proxy would forward it mis-framed): the stream is reset, the
    excess never sent, END_STREAM never sent, and the connection carries on."""
    server, recorder, base = counting
    length = {"Content-Length": "10"}
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, http2="prior-knowledge")
        with trio.fail_after(10), pytest.raises(LocalProtocolError, match="Content-Length"):
            await client.request("POST", f"{base}/count", headers=length, content=pieces(*chunks))
        async with httpx.AsyncClient(transport=PoolTransport(pool, http2="prior-knowledge")) as hc:
            with trio.fail_after(10), pytest.raises(httpx.LocalProtocolError):
                await hc.post(f"{base}/count", headers=length, content=Pieces(*chunks))
            response = await hc.post(f"{base}/count", headers=length, content=Pieces(b"x" * 10))
            assert (response.status_code, response.text) == (200, "10")
        await wait_until(lambda: len(server.resets) == 2, "both streams reset")
        assert server.resets == [ErrorCodes.CANCEL] * 2
        assert [(s.ended.is_set(), s.size) for s in recorder.streams[:2]] == [(False, sent)] * 2
        assert len(server.connections) == 1  # only the streams were reset
        assert (await client.request("GET", f"{base}/")).content == b"ok"
        assert_settled(pool)


@pytest.mark.parametrize("body", [b"hello", b"hello world"], ids=["shorter", "longer"])
async def test_the_connection_holds_every_body_to_its_content_length(
    counting: tuple[H2Server, Recorder, str], nursery: trio.Nursery, body: bytes
) -> None:
    """The HTTP/2 connection itself counts every body, bytes ones too: whoever calls
    it, a mis-framed request never goes out."""
    server, recorder, base = counting
    conn = await connect_h2(int(base.rsplit(":", 1)[1]), nursery)
    with pytest.raises(LocalProtocolError, match="Content-Length"):
        await conn.request("POST", "/count", HOST, "http", [("content-length", "10")], body)
    await wait_until(lambda: server.resets == [ErrorCodes.CANCEL], "the stream reset")
    assert [(s.ended.is_set(), s.size) for s in recorder.streams] == [(False, 0)]
    with pytest.raises(ValueError, match="no body"):
        await conn.request("POST", "/count", HOST, "http", [("content-length", "10")])
    response = await conn.request("POST", "/count", HOST, "http", [("content-length", "2")], b"ok")
    assert (response.status, await response.read_all()) == (200, b"2")
    await conn.aclose()


# -- item 6: streamed as produced, touched only once a connection is chosen ------------


async def test_a_32_mib_upload_is_streamed_not_gathered(nursery: trio.Nursery) -> None:
    recorder = Recorder()
    server = H2Server(keep_bodies=False, routes={"/count": recorder.count})
    port = await server.start(nursery)
    piece = b"x" * (256 * KiB)
    count = 32 * MiB // len(piece)

    async def generated() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield piece

    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, http2="prior-knowledge", timeout=30)
        tracemalloc.start()
        try:
            r = await client.request("POST", f"http://{HOST}:{port}/count", content=generated())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert (r.http_version, r.content) == ("2", b"%d" % (32 * MiB))
        # Client and server together: a few pieces and frames in flight.
        assert peak < 8 * MiB, peak
        assert_settled(pool)


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_failed_connect_leaves_a_one_shot_body_untouched(scheme: str) -> None:
    port = refused_port()
    url = f"{scheme}://{HOST}:{port}/"
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, http2="prior-knowledge")
        body = Pieces(b"a", b"b", b"c", b"d", b"e")
        with pytest.raises(trio_pool.ConnectError):
            await client.request("POST", url, content=body)
        assert body.produced == 0
        async with httpx.AsyncClient(transport=PoolTransport(pool, http2=True)) as hc:
            with pytest.raises(httpx.ConnectError):
                await hc.post(url, content=body)
        assert body.produced == 0
        assert_settled(pool)


async def test_a_failing_or_bad_piece_resets_the_stream_and_closes_the_iterator(
    counting: tuple[H2Server, Recorder, str],
) -> None:
    server, recorder, base = counting
    closed: list[str] = []

    async def failing(last: object) -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await trio.sleep(0.05)
            if isinstance(last, Exception):
                raise last
            yield last  # type: ignore[misc]  # a str, on purpose
            yield b"never"
        finally:
            closed.append("closed")

    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, http2="prior-knowledge")
        with pytest.raises(KeyError, match="mine"):
            await client.request("POST", f"{base}/count", content=failing(KeyError("mine")))
        with pytest.raises(TypeError, match="content"):
            await client.request("POST", f"{base}/count", content=failing("text"))
        assert closed == ["closed", "closed"]
        await wait_until(lambda: len(server.resets) == 2, "both streams reset")
        assert server.resets == [ErrorCodes.CANCEL] * 2
        assert [(s.ended.is_set(), s.size) for s in recorder.streams] == [(False, 5)] * 2
        assert (await client.request("GET", f"{base}/")).content == b"ok"
        assert len(server.connections) == 1
        assert_settled(pool)


async def test_alpn_http11_streams_the_body_as_http11(
    nursery: trio.Nursery, ca: trustme.CA, client_ctx: ssl.SSLContext
) -> None:
    """The server picks http/1.1 by ALPN: the body is streamed over HTTP/1.1, so an
    iterator that waits for the server to read its first piece goes on."""
    server = BodyServer()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_ctx)
    server_ctx.set_alpn_protocols(["http/1.1"])

    async def handle(tcp: trio.SocketStream) -> None:
        await server.handle(trio.SSLStream(tcp, server_ctx, server_side=True))  # type: ignore[arg-type]

    port = await start_server(nursery, handle)

    async def waits_for_the_server() -> AsyncIterator[bytes]:
        yield b"first"
        await server.first_piece.wait()
        yield b"second"

    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, http2=True, ssl_context=client_ctx)
        with trio.fail_after(10):
            r = await client.request(
                "POST", f"https://{HOST}:{port}/", content=waits_for_the_server()
            )
        assert (r.http_version, r.content) == ("1.1", b"11")
        assert server.bodies == [b"firstsecond"]
        assert_settled(pool)


# -- item 4: the write limit over HTTP/2 ------------------------------------------------


async def never_answer(stream: ServerStream) -> None:
    await trio.sleep_forever()


@pytest.mark.parametrize("streamed", [False, True], ids=["bytes", "streamed"])
async def test_no_window_is_a_write_timeout_and_resets_only_the_stream(
    nursery: trio.Nursery, streamed: bool
) -> None:
    server = H2Server(window_updates=False, routes={"/upload": never_answer})
    port = await server.start(nursery)
    body = bytes(MiB)
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, http2="prior-knowledge")
        content = pieces(body[: MiB // 2], body[MiB // 2 :]) if streamed else body
        with trio.fail_after(10), pytest.raises(WriteTimeout, match="write timeout"):
            await client.request(
                "POST",
                f"http://{HOST}:{port}/upload",
                content=content,
                timeout=Timeout(None, write=0.3),
            )
        await wait_until(lambda: server.resets == [ErrorCodes.CANCEL], "the stream reset")
        assert server.received == 65535  # one window, then the wait that timed out
        assert (await client.request("GET", f"http://{HOST}:{port}/")).content == b"ok"
        assert len(server.connections) == 1
        assert_settled(pool)


async def big_window_then_deaf(tcp: trio.SocketStream) -> None:
    """Open HTTP/2 with the largest windows, then never read again."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.local_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1}
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(2**31 - 1 - 65535)
    try:
        conn.receive_data(await tcp.receive_some(65536))
        await tcp.send_all(conn.data_to_send())
        await trio.sleep_forever()
    finally:
        await trio.aclose_forcefully(tcp)


async def test_a_server_that_stops_reading_is_a_write_timeout(nursery: trio.Nursery) -> None:
    port = await start_server(nursery, big_window_then_deaf)
    piece = bytes(MiB)

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(512):  # far more than the socket buffers hold
            yield piece

    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, http2="prior-knowledge")
        with trio.fail_after(20), pytest.raises(WriteTimeout, match="write timeout"):
            await client.request(
                "POST",
                f"http://{HOST}:{port}/",
                content=endless(),
                timeout=Timeout(None, write=0.5),
            )
        assert pool.statistics().http2_streams == 0


# -- item 5: an early answer during an upload --------------------------------------------


async def answer_413_at_once(stream: ServerStream) -> None:
    await stream.respond(b"too large", status=413)


async def answer_413_head_then_body(stream: ServerStream) -> None:
    """A 413 head at once, its body (and END_STREAM) a moment later."""
    stream.conn.h2.send_headers(stream.id, [(b":status", b"413")])
    await stream.conn.flush()
    await trio.sleep(0.1)
    stream.conn.h2.send_data(stream.id, b"too large", end_stream=True)
    stream.conn._close_stream(stream)
    await stream.conn.flush()


@pytest.mark.parametrize("route", [answer_413_at_once, answer_413_head_then_body])
async def test_an_early_answer_to_an_upload_is_returned(
    nursery: trio.Nursery, route: Callable[[ServerStream], object]
) -> None:
    """The server answers after the head of a 1 MB POST and opens no window (RFC 9113
    8.1): the answer is returned, sending stops with RST_STREAM(NO_ERROR)."""
    server = H2Server(window_updates=False, routes={"/upload": route})  # type: ignore[dict-item]
    port = await server.start(nursery)
    url = f"http://{HOST}:{port}/upload"
    body = bytes(MiB)
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, http2="prior-knowledge", timeout=Timeout(None))
        with trio.fail_after(10):
            r = await client.request("POST", url, content=body)
            assert (r.status, r.content) == (413, b"too large")
            r = await client.request("POST", url, content=pieces(body, body))
            assert (r.status, r.content) == (413, b"too large")
            async with httpx.AsyncClient(
                transport=PoolTransport(pool, http2="prior-knowledge"), timeout=None
            ) as hc:
                hr = await hc.post(url, content=Pieces(body, count=2))
                assert (hr.status_code, hr.content) == (413, b"too large")
        await wait_until(lambda: len(server.resets) == 3, "three streams stopped")
        assert server.resets == [ErrorCodes.NO_ERROR] * 3
        assert len(server.connections) == 1
        assert pool.statistics().http2_streams == 0
        assert_settled(pool)


# -- item 10: one timeout rule, per wait ---------------------------------------------------


async def open_window_every_tenth(stream: ServerStream) -> None:
    """Hand the body's credit back every 0.1 s: a steady, slow upload."""
    acked = 0
    for _ in range(1000):
        if stream.ended.is_set() or stream.reset.is_set():
            break
        await trio.sleep(0.1)
        if stream.size > acked:
            stream.conn.h2.acknowledge_received_data(stream.size - acked, stream.id)
            acked = stream.size
            await stream.conn.flush()
    if not stream.reset.is_set():
        await stream.respond(b"%d" % stream.size)


async def test_a_steady_upload_is_never_cut_off(nursery: trio.Nursery) -> None:
    """Each wait for window is short, the whole upload (about 1.5 s) longer than the
    read and write limits together: no limit fires, on HTTPClient or PoolTransport."""
    server = H2Server(window_updates=False, routes={"/slow": open_window_every_tenth})
    port = await server.start(nursery)
    url = f"http://{HOST}:{port}/slow"
    body = bytes(15 * 65535)
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, http2="prior-knowledge", timeout=0.6)
        r = await client.request("POST", url, content=body)
        assert r.content == b"%d" % len(body)
        transport = PoolTransport(pool, http2="prior-knowledge")
        async with httpx.AsyncClient(transport=transport, timeout=0.6) as hc:
            hr = await hc.post(url, content=Pieces(body[: len(body) // 2], body[len(body) // 2 :]))
            assert hr.content == b"%d" % len(body)
        assert_settled(pool)


async def read_slowly(stream: trio.SocketStream) -> None:
    """An HTTP/1.1 server that reads at most 1 MiB every 0.05 s, then answers with the
    body's size: a slow, steady reader."""
    import h11

    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    size = 0
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                await trio.sleep(0.05)
                conn.receive_data(await stream.receive_some(MiB))
            elif isinstance(event, h11.Data):
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                await send_response(stream, conn, b"%d" % size)
                return
            elif isinstance(event, h11.ConnectionClosed):
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass


async def test_a_large_bytes_body_to_a_steady_reader_is_never_cut_off_over_http11(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    """HTTP/1.1 keeps the same rule: the write limit is per wait for the socket to take
    the next piece, not for the whole body (24 MiB at 20 MiB/s: over a second)."""
    port = await start_server(nursery, read_slowly)
    body = bytes(24 * MiB)
    with trio.fail_after(30):
        r = await client.request(
            "POST", f"http://{HOST}:{port}/", content=body, timeout=Timeout(10, write=0.6)
        )
    assert r.content == b"%d" % len(body)
    assert_settled(pool)


@pytest.fixture(params=["HTTP/1.1", "HTTP/2"])
async def late_head_url(request: pytest.FixtureRequest, nursery: trio.Nursery) -> tuple[str, str]:
    """A server that answers 1 s after the request arrived: its URL and ``http2``."""
    if request.param == "HTTP/2":

        async def late(stream: ServerStream) -> None:
            await trio.sleep(1.0)
            await stream.respond(b"late")

        port = await H2Server(routes={"/": late}).start(nursery)
        return f"http://{HOST}:{port}/", "prior-knowledge"

    async def late_h11(stream: trio.SocketStream, conn: object, req: object, i: int) -> bool:
        await trio.sleep(1.0)
        await send_response(stream, conn, b"late")  # type: ignore[arg-type]
        return True

    server = await start_h11(nursery, late_h11)
    return f"http://{HOST}:{server.port}/", "off"


async def test_the_read_limit_is_per_wait_for_the_head(late_head_url: tuple[str, str]) -> None:
    """The head wait counts from when the request is sent, with the read limit alone
    (not read + write), the same on HTTP/1.1 and HTTP/2."""
    url, mode = late_head_url
    http2: bool | str = mode if mode != "off" else False
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, http2=http2)
        with trio.fail_after(10), pytest.raises(ReadTimeout, match="response head"):
            await client.request("GET", url, timeout=Timeout(5, read=0.3))
        async with httpx.AsyncClient(transport=PoolTransport(pool, http2=http2)) as hc:
            with trio.fail_after(10), pytest.raises(httpx.ReadTimeout):
                await hc.get(url, timeout=httpx.Timeout(5, read=0.3))


# -- item 11: refused on every try ---------------------------------------------------------


async def test_refused_on_every_try_is_a_remote_protocol_error_in_httpx(
    nursery: trio.Nursery,
) -> None:
    async def refuse(stream: ServerStream) -> None:
        await stream.reset_stream(ErrorCodes.REFUSED_STREAM)

    server = H2Server(routes={"/refused": refuse})
    port = await server.start(nursery)
    async with (
        trio_pool.open_pool() as pool,
        httpx.AsyncClient(transport=PoolTransport(pool, http2="prior-knowledge")) as hc,
    ):
        with trio.fail_after(10), pytest.raises(httpx.RemoteProtocolError, match="REFUSED"):
            await hc.get(f"http://{HOST}:{port}/refused")
        assert server.requests == 3
