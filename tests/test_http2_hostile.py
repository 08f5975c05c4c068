"""HTTP/2 against hostile and broken servers (raw frames, tests/h2raw.py): memory stays
bounded whatever the peer floods, malformed responses fail their own stream only, and
connection errors reach the peer as a GOAWAY with the right code."""

from __future__ import annotations

import socket
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import Frame, GoAwayFrame, PingFrame, RstStreamFrame, WindowUpdateFrame

import trio_pool
from trio_pool.http import HTTPClient, RemoteProtocolError
from trio_pool.http._http2 import H2Connection, H2Response

from .h2raw import RawPeer, Script, start_raw_server
from .servers import HOST

OK = [(b":status", b"200")]
FrameMaker = Callable[[RawPeer, int], Frame]


@asynccontextmanager
async def raw_h2(
    script: Script, *, small_buffers: bool = False, **options: object
) -> AsyncIterator[tuple[H2Connection, list[RawPeer]]]:
    """A raw server running ``script``, and an h2c :class:`H2Connection` to it.

    ``small_buffers`` shrinks the kernel's socket buffers on both ends, so a server that
    stops reading stalls the client's writes after a few kilobytes, not megabytes.
    """
    async with trio.open_nursery() as nursery:

        async def shrunk(peer: RawPeer) -> None:
            if small_buffers:
                peer.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await script(peer)

        port, peers = await start_raw_server(nursery, shrunk)
        tcp = await trio.open_tcp_stream(HOST, port)
        if small_buffers:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        conn = await H2Connection.open(tcp, nursery, **options)  # type: ignore[arg-type]
        try:
            yield conn, peers
        finally:
            await conn.aclose()
            nursery.cancel_scope.cancel()


@contextmanager
def traced() -> Iterator[Callable[[], tuple[int, int]]]:
    """Trace allocations; yields a function giving the bytes allocated now and at the
    peak so far (both since the start)."""
    tracemalloc.start()
    try:
        yield tracemalloc.get_traced_memory
    finally:
        tracemalloc.stop()


async def get(conn: H2Connection, path: str = "/", method: str = "GET") -> H2Response:
    return await conn.request(method, path, HOST, "http")


# -- item 2: bounded memory -------------------------------------------------------------


async def test_ping_flood_from_a_server_that_does_not_read_is_a_connection_error() -> None:
    """A server that floods PINGs and never reads our answers: the queued PING ACKs stay
    bounded, and the connection fails with ENHANCE_YOUR_CALM instead of growing."""
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    burst = ping * 4096  # 68 KiB
    sent = 0

    async def flood(peer: RawPeer) -> None:
        nonlocal sent
        await peer.handshake()
        await peer.request_stream()
        while sent < 8 * 1024 * 1024:  # 8 MiB of PINGs, never reading a byte
            try:
                await peer.tcp.send_all(burst)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            sent += len(burst)
        await peer.close()

    async with raw_h2(flood, small_buffers=True) as (conn, _):
        with traced() as peak:
            with trio.fail_after(30), pytest.raises(RemoteProtocolError, match="ENHANCE_YOUR_CALM"):
                await get(conn)
            assert peak()[1] < 2 * 1024 * 1024
    assert sent < 8 * 1024 * 1024  # the client gave up before the flood ended


async def test_tiny_data_frames_cost_one_window_of_bytes() -> None:
    """A window's worth of 1-byte DATA frames to a stream nobody reads holds about one
    window of bytes, not one object per frame."""
    window = 65535
    # Stream 1, 1-byte DATA frames: the whole window, then a PING to know it all arrived.
    frames = b"\x00\x00\x01\x00\x00\x00\x00\x00\x01x" * window
    done = trio.Event()

    async def trickle(peer: RawPeer) -> None:
        await peer.handshake()
        stream_id = await peer.request_stream()
        assert stream_id == 1
        await peer.send(peer.headers(1, OK), frames, PingFrame(0, opaque_data=b"done...."))
        while (frame := await peer.read_frame()) is not None:
            if isinstance(frame, PingFrame) and "ACK" in frame.flags:
                done.set()
                await peer.send(peer.data(1, b"", end_stream=True))

    async with raw_h2(trickle, stream_window=window) as (conn, _):
        with traced() as memory:
            response = await get(conn)
            with trio.fail_after(30):
                await done.wait()
            held, peak = memory()
            assert held < 4 * window  # one window of bytes (and a bytearray's slack)
            # h2's events for one read (64 KiB of 10-byte frames) come and go.
            assert peak < 4 * 1024 * 1024
        body = await response.read_all()
    assert body == b"x" * window


async def test_huge_header_table_size_from_the_server_is_capped() -> None:
    """SETTINGS_HEADER_TABLE_SIZE = 2**32 - 1: our HPACK encoder's table stays at 4096
    bytes, however many distinct headers we send."""

    async def answer_all(peer: RawPeer) -> None:
        await peer.handshake({SettingCodes.HEADER_TABLE_SIZE: 2**32 - 1})
        while True:
            frame = await peer.read_frame()
            if frame is None:
                return
            if frame.__class__.__name__ == "HeadersFrame":
                await peer.send(peer.headers(frame.stream_id, OK, end_stream=True))

    async with raw_h2(answer_all) as (conn, _):
        await get(conn)  # the SETTINGS are in force
        with traced() as memory:
            for n in range(300):
                value = f"{n:04d}".encode() * 1000  # 4000 bytes, a new value each time
                response = await conn.request("GET", "/", HOST, "http", [(b"x-unique", value)])
                await response.read_all()
            assert memory()[1] < 400 * 1024


# -- item 7: bodies shorter (or longer) than their content-length -----------------------


def answering(*frames: FrameMaker) -> Script:
    """A script answering the first request with ``frames`` (each built from the peer
    and the stream id), then holding the connection open."""

    async def script(peer: RawPeer) -> None:
        await peer.handshake()
        stream_id = await peer.request_stream()
        await peer.send(*(make(peer, stream_id) for make in frames))
        while await peer.read_frame() is not None:
            pass

    return script


def head(*headers: tuple[bytes, bytes], end: bool = False) -> FrameMaker:
    return lambda peer, sid: peer.headers(sid, list(headers), end_stream=end)


def data(payload: bytes, end: bool = False) -> FrameMaker:
    return lambda peer, sid: peer.data(sid, payload, end_stream=end)


CL = b"content-length"


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([head(*OK, (CL, b"1000"), end=True)], id="no-body"),
        pytest.param([head(*OK, (CL, b"10")), data(b"hello", end=True)], id="short-data"),
        pytest.param(
            [head(*OK, (CL, b"10")), data(b"hello"), head((b"x-t", b"1"), end=True)],
            id="short-then-trailers",
        ),
        pytest.param([head(*OK, (CL, b"3")), data(b"hello", end=True)], id="long"),
    ],
)
async def test_body_not_matching_content_length_is_a_protocol_error(
    frames: list[FrameMaker],
) -> None:
    async with raw_h2(answering(*frames)) as (conn, _):
        with trio.fail_after(10), pytest.raises(RemoteProtocolError, match="content-length"):
            await (await get(conn)).read_all()


@pytest.mark.parametrize(("method", "status"), [("HEAD", b"200"), ("GET", b"204"), ("GET", b"304")])
async def test_content_length_without_a_body_where_none_is_due(method: str, status: bytes) -> None:
    frames = [head((b":status", status), (CL, b"1000"), end=True)]
    async with raw_h2(answering(*frames)) as (conn, _):
        with trio.fail_after(10):
            response = await get(conn, method=method)
            assert await response.read_all() == b""


# -- item 8: GOAWAY with the server's SETTINGS --------------------------------------------


async def test_goaway_in_the_same_read_as_settings_is_retried(nursery: trio.Nursery) -> None:
    async def script(peer: RawPeer) -> None:
        if len(peers) == 1:  # the first connection: SETTINGS and GOAWAY(0) in one write
            await peer.handshake({}, GoAwayFrame(0, last_stream_id=0))
        else:
            await peer.handshake()
            stream_id = await peer.request_stream()
            await peer.send(
                peer.headers(stream_id, OK), peer.data(stream_id, b"ok", end_stream=True)
            )
        while await peer.read_frame() is not None:
            pass

    port, peers = await start_raw_server(nursery, script)
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, http2="prior-knowledge")
        with trio.fail_after(10):
            response = await client.request("GET", f"http://{HOST}:{port}/")
        assert (response.status, response.content) == (200, b"ok")
    assert len(peers) == 2


# -- item 9: a malformed response is a stream error -------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param([*OK, (b"X-Upper", b"1")], id="uppercase-name"),
        pytest.param([*OK, (b"connection", b"close")], id="connection-header"),
        pytest.param([*OK, (b"x-space", b" padded ")], id="value-whitespace"),
        pytest.param([(b"x-first", b"1"), *OK], id="pseudo-after-regular"),
        pytest.param([*OK, (b":path", b"/")], id="request-pseudo-header"),
        pytest.param([(b"x-none", b"1")], id="no-status"),
    ],
)
async def test_malformed_response_fails_only_its_stream(
    bad: list[tuple[bytes, bytes]],
) -> None:
    resets: list[int] = []

    async def script(peer: RawPeer) -> None:
        await peer.handshake()
        streams = dict([await peer.read_request(), await peer.read_request()])
        by_path = {path: sid for sid, path in streams.items()}
        await peer.send(peer.headers(by_path["/bad"], bad))
        await peer.send(
            peer.headers(by_path["/good"], OK),
            peer.data(by_path["/good"], b"fine", end_stream=True),
        )
        while (frame := await peer.read_frame()) is not None:
            if isinstance(frame, RstStreamFrame) and frame.stream_id == by_path["/bad"]:
                resets.append(int(frame.error_code))

    async with raw_h2(script) as (conn, _):
        outcome: dict[str, object] = {}

        async def fetch(path: str) -> None:
            try:
                outcome[path] = await (await get(conn, path)).read_all()
            except RemoteProtocolError as exc:
                outcome[path] = exc

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch, "/bad")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(fetch, "/good")
        assert outcome["/good"] == b"fine"
        assert isinstance(outcome["/bad"], RemoteProtocolError)
        assert not conn.is_closed
        with trio.fail_after(10):
            while not resets:  # noqa: ASYNC110 - the server's reader
                await trio.sleep(0.01)
    assert resets == [ErrorCodes.PROTOCOL_ERROR]


# -- item 14: connection errors send their GOAWAY ---------------------------------------


def frame_bytes(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + stream_id.to_bytes(4, "big")
        + payload
    )


ConnectionFault = Callable[[RawPeer, int], Awaitable[None]]


async def ping_on_a_stream(peer: RawPeer, stream_id: int) -> None:
    await peer.send(frame_bytes(0x6, 0, 1, b"12345678"))  # PING must be on stream 0


async def window_overflow(peer: RawPeer, stream_id: int) -> None:
    await peer.send(WindowUpdateFrame(0, window_increment=2**31 - 1))  # 65535 + 2**31 - 1


async def reset_idle_stream(peer: RawPeer, stream_id: int) -> None:
    await peer.send(peer.reset(stream_id + 2, ErrorCodes.CANCEL))


async def reset_even_stream(peer: RawPeer, stream_id: int) -> None:
    await peer.send(peer.reset(2, ErrorCodes.CANCEL))


async def data_after_end_stream(peer: RawPeer, stream_id: int) -> None:
    await peer.send(peer.headers(stream_id, OK, end_stream=True))
    await trio.sleep(0.05)  # the client has the response and its stream is closed
    await peer.send(peer.data(stream_id, b"test", end_stream=True))


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (ping_on_a_stream, ErrorCodes.PROTOCOL_ERROR),
        (window_overflow, ErrorCodes.FLOW_CONTROL_ERROR),
        (reset_idle_stream, ErrorCodes.PROTOCOL_ERROR),
        (reset_even_stream, ErrorCodes.PROTOCOL_ERROR),
        (data_after_end_stream, ErrorCodes.STREAM_CLOSED),
    ],
)
async def test_connection_error_sends_goaway_with_its_code(
    fault: ConnectionFault, code: ErrorCodes
) -> None:
    """As h2spec's client cases check: the connection is kept open after the request (as
    a pool keeps it), so only a GOAWAY with the right code passes, not a bare close."""
    received: list[int | None] = []

    async def script(peer: RawPeer) -> None:
        await peer.handshake()
        stream_id = await peer.request_stream()
        await fault(peer, stream_id)
        with trio.move_on_after(5):
            received.append(await peer.goaway_code())

    async with raw_h2(script) as (conn, _):
        with trio.move_on_after(10):
            try:
                await (await get(conn)).read_all()
            except RemoteProtocolError:
                pass
            while not received:  # noqa: ASYNC110 - the server's reader
                await trio.sleep(0.01)
        assert conn.is_closed
    assert received == [code]


async def test_data_on_a_stream_we_reset_is_not_a_connection_error() -> None:
    """DATA still in flight on a stream we reset is ignored: the connection carries on."""
    reset = trio.Event()

    async def script(peer: RawPeer) -> None:
        await peer.handshake()
        first = await peer.request_stream()
        await peer.send(peer.headers(first, OK), peer.data(first, b"x"))
        await peer.read_until(RstStreamFrame)
        await peer.send(peer.data(first, b"late", end_stream=True))
        reset.set()
        second = await peer.request_stream()
        await peer.send(peer.headers(second, OK), peer.data(second, b"ok", end_stream=True))
        while await peer.read_frame() is not None:
            pass

    async with raw_h2(script) as (conn, _):
        with trio.fail_after(10):
            response = await get(conn)
            response.abandon()
            await reset.wait()
            await trio.sleep(0.05)
            assert await (await get(conn)).read_all() == b"ok"
        assert not conn.is_closed
