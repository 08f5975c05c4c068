"""The HTTP/2 protocol layer (:mod:`trio_pool.http._http2`) against real peers:
hypercorn (TLS + ALPN, and h2c), nginx with ``http2`` on TLS, and raw h2 fault servers.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import h2.settings
import pytest
import trio
import trio.testing
import trustme
from h2.errors import ErrorCodes
from hpack import NeverIndexedHeaderTuple

from trio_pool import ConnectTimeout
from trio_pool.http import HTTPError, NetworkError, ReadError, RemoteProtocolError, WriteError
from trio_pool.http._h2_exceptions import ConnectionUnavailable, RequestNotProcessed, StreamReset
from trio_pool.http._http2 import H2Connection, H2Response

from .h2servers import (
    NGINX_FILES,
    App,
    H2Server,
    ServerStream,
    connect_h2,
    garbage_after_settings,
    open_nginx_h2,
    start_hypercorn,
    write_cert,
)
from .servers import HOST, open_fds, reset, start_server

MAX_STREAMS = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert(HOST)


async def get(conn: H2Connection, path: str, *, scheme: str = "https") -> tuple[int, bytes]:
    response = await conn.request("GET", path, f"{HOST}", scheme)
    return response.status, await response.read_all()


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` every 10 ms, for at most ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - state of a server or of the kernel
            await trio.sleep(0.01)
    assert condition(), what


# -- real peers -------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [True, False], ids=["tls-alpn", "h2c"])
async def test_hypercorn_requests(
    tls: bool, ca: trustme.CA, cert: trustme.LeafCert, tmp_path: Path, nursery: trio.Nursery
) -> None:
    app = App()
    files = write_cert(cert, tmp_path) if tls else None
    port, shutdown = await start_hypercorn(nursery, app, cert_files=files)
    conn = await connect_h2(port, nursery, ca if tls else None)
    scheme = "https" if tls else "http"
    assert await get(conn, "/", scheme=scheme) == (200, b"ok")
    status, body = await get(conn, "/size/300000", scheme=scheme)
    assert (status, len(body)) == (200, 300_000)
    upload = random.Random(1).randbytes(500_000)  # more than any initial window
    response = await conn.request("POST", "/echo", HOST, scheme, [("X-Test", "1")], upload)
    assert response.http_version == "2"
    assert response.header("content-length") == b"500000"
    assert await response.read_all() == upload
    assert app.http_versions == {"2"}
    assert conn.statistics().streams_started == 3
    assert conn.is_idle
    await conn.aclose()
    assert conn.is_closed
    shutdown.set()


async def test_hypercorn_concurrent_streams_never_exceed_limit(nursery: trio.Nursery) -> None:
    app = App()
    port, shutdown = await start_hypercorn(nursery, app, max_concurrent_streams=5)
    conn = await connect_h2(port, nursery)
    assert conn.max_concurrent_streams == 5
    seen: list[int] = []
    conn.on_capacity_change = lambda: seen.append(conn.open_streams)
    bodies: list[int] = []

    async def one() -> None:
        status, body = await get(conn, "/slow/4000", scheme="http")
        assert status == 200
        bodies.append(len(body))

    async with trio.open_nursery() as inner:
        for _ in range(30):
            inner.start_soon(one)
    assert bodies == [4000] * 30
    assert app.max_in_flight == 5  # shared one connection up to the limit, never over
    assert max(seen) <= 5
    assert conn.open_streams == 0
    await conn.aclose()
    shutdown.set()


async def test_nginx_http2_tls(tmp_path: Path, ca: trustme.CA, cert: trustme.LeafCert) -> None:
    async with open_nginx_h2(tmp_path, cert, max_concurrent_streams=4) as (nginx, port):
        async with trio.open_nursery() as nursery:
            conn = await connect_h2(port, nursery, ca)
            assert conn.max_concurrent_streams == 4
            most = 0
            results: dict[str, int] = {}

            def watch() -> None:
                nonlocal most
                most = max(most, conn.open_streams)

            conn.on_capacity_change = watch

            async def fetch(name: str, index: int) -> None:
                status, body = await get(conn, f"/files/{name}")
                assert status == 200
                assert body[:4] == b"\x00\x01\x02\x03" or name == "small"
                results[f"{name}{index}"] = len(body)

            # 30 streams at a limit of 4: nginx refuses streams over its limit
            # (REFUSED_STREAM), so none failing proves we kept to it.
            async with trio.open_nursery() as inner:
                for index in range(10):
                    for name in NGINX_FILES:
                        inner.start_soon(fetch, name, index)
            assert results == {
                f"{name}{index}": size for index in range(10) for name, size in NGINX_FILES.items()
            }
            assert most <= 4
            assert conn.is_idle
            await conn.aclose()
        assert "[alert]" not in nginx.stderr()


async def test_large_download_does_not_starve_others(
    tmp_path: Path, ca: trustme.CA, cert: trustme.LeafCert
) -> None:
    async with open_nginx_h2(tmp_path, cert) as (_nginx, port), trio.open_nursery() as nursery:
        conn = await connect_h2(port, nursery, ca, stream_window=65535)
        big = await conn.request("GET", "/files/big", HOST)
        first = await big.receive_data()  # the big one is under way, and never read on
        small_done = 0
        with trio.fail_after(20):
            for _ in range(20):
                assert await get(conn, "/files/mid") == (200, _nginx_file("mid"))
                small_done += 1
        assert small_done == 20
        rest = await big.read_all()
        assert len(first) + len(rest) == NGINX_FILES["big"]
        await conn.aclose()


def _nginx_file(name: str) -> bytes:
    size = NGINX_FILES[name]
    return bytes(range(256)) * (size // 256) + b"x" * (size % 256)


# -- stream limits ----------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
async def test_peer_stream_limit_is_honoured(limit: int, nursery: trio.Nursery) -> None:
    async def slow(stream: ServerStream) -> None:
        await trio.sleep(0.01)
        await stream.respond(b"done")

    server = H2Server(max_concurrent_streams=limit, routes={"/slow": slow})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    assert conn.max_concurrent_streams == limit
    assert conn.available_streams == limit
    async with trio.open_nursery() as inner:
        for _ in range(12):
            inner.start_soon(get, conn, "/slow")
    assert server.requests == 12
    assert server.max_open == limit  # reached, never exceeded
    assert len(server.connections) == 1
    assert conn.open_streams == 0
    assert conn.available_streams == limit
    await conn.aclose()


async def test_peer_lowers_limit_mid_connection(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def hold(stream: ServerStream) -> None:
        await release.wait()
        await stream.respond(b"held")

    server = H2Server(max_concurrent_streams=5, routes={"/hold": hold})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    changes = 0

    def changed() -> None:
        nonlocal changes
        changes += 1

    conn.on_capacity_change = changed
    results: list[int] = []

    async def one(path: str) -> None:
        status, _ = await get(conn, path)
        results.append(status)

    async with trio.open_nursery() as inner:
        for _ in range(5):
            inner.start_soon(one, "/hold")
        await wait_until(lambda: server.open == 5, "five streams open")
        before = changes
        await server.connections[0].update_settings({MAX_STREAMS: 2})
        server.limit_after_ack = 2
        assert conn.max_concurrent_streams == 2
        assert changes > before  # the pool hears of it
        assert conn.available_streams == 0
        assert not conn.is_available
        with pytest.raises(ConnectionUnavailable):
            conn.reserve_stream_nowait()
        for _ in range(10):
            inner.start_soon(one, "/ok")
        await trio.sleep(0.05)
        assert server.requests == 5  # the new ones wait: 5 open is over the new limit
        release.set()
    assert results == [200] * 15
    assert server.max_open_after_ack <= 2
    assert conn.open_streams == 0
    await conn.aclose()


async def test_slot_reserved_before_limit_lowered_waits(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def hold(stream: ServerStream) -> None:
        await release.wait()
        await stream.respond(b"held")

    server = H2Server(max_concurrent_streams=3, routes={"/hold": hold})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    async with trio.open_nursery() as inner:
        for _ in range(2):
            inner.start_soon(get, conn, "/hold")
        await wait_until(lambda: server.open == 2, "two streams open")
        slot = conn.reserve_stream_nowait()
        assert conn.available_streams == 0
        await server.connections[0].update_settings({MAX_STREAMS: 1})
        server.limit_after_ack = 1

        async def with_slot() -> None:
            response = await conn.request("GET", "/", HOST, slot=slot)
            assert await response.read_all() == b"ok"

        inner.start_soon(with_slot)
        await trio.sleep(0.05)
        assert server.requests == 2  # the slot's request waits below the new limit
        release.set()
    assert server.requests == 3
    assert server.max_open_after_ack <= 1
    assert not slot.held
    assert conn.is_idle
    await conn.aclose()


# -- GOAWAY and RST_STREAM ----------------------------------------------------------------


async def test_goaway_mid_flight(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def hold(stream: ServerStream) -> None:
        await release.wait()
        await stream.respond(bytes(200_000))  # more than a window: WINDOW_UPDATEs after GOAWAY

    server = H2Server(routes={"/hold": hold})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery, stream_window=65535)
    outcomes: dict[int, object] = {}

    async def one(index: int) -> None:
        try:
            response = await conn.request("GET", "/hold", HOST)
            outcomes[index] = len(await response.read_all())
        except RequestNotProcessed as exc:
            outcomes[index] = exc

    async with trio.open_nursery() as inner:
        for index in range(4):
            inner.start_soon(one, index)
            await wait_until(lambda i=index: server.open == i + 1, "stream open")  # type: ignore[misc]
        await server.connections[0].goaway(last_stream_id=3)  # streams 1 and 3 go on
        await wait_until(lambda: conn.is_going_away, "GOAWAY seen")
        assert not conn.is_available
        assert conn.open_streams == 2
        with pytest.raises(ConnectionUnavailable):
            conn.reserve_stream_nowait()
        with pytest.raises(ConnectionUnavailable):
            await conn.request("GET", "/", HOST)
        release.set()
    assert outcomes[0] == outcomes[1] == 200_000
    assert isinstance(outcomes[2], RequestNotProcessed)
    assert isinstance(outcomes[3], RequestNotProcessed)
    assert outcomes[2].retry_safe
    await wait_until(lambda: conn.is_closed, "closed once the last stream ended")
    assert conn.open_streams == 0


async def test_reservation_on_connection_that_went_away(nursery: trio.Nursery) -> None:
    server = H2Server()
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    slot = conn.reserve_stream_nowait()
    assert conn.open_streams == 1
    assert not conn.is_idle
    await server.connections[0].goaway(last_stream_id=0)
    await wait_until(lambda: conn.is_going_away, "GOAWAY seen")
    with pytest.raises(RequestNotProcessed):
        await conn.request("GET", "/", HOST, slot=slot)
    assert server.requests == 0
    assert not slot.held
    await wait_until(lambda: conn.is_closed, "closed when idle after GOAWAY")


async def test_rst_stream_fails_only_that_stream(nursery: trio.Nursery) -> None:
    async def reset(stream: ServerStream) -> None:
        await stream.reset_stream(ErrorCodes.INTERNAL_ERROR)

    async def refuse(stream: ServerStream) -> None:
        await stream.reset_stream(ErrorCodes.REFUSED_STREAM)

    async def big(stream: ServerStream) -> None:
        await stream.respond(bytes(300_000))

    server = H2Server(routes={"/reset": reset, "/refuse": refuse, "/big": big})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    results: list[object] = []

    async def one(path: str) -> None:
        try:
            results.append(await get(conn, path))
        except (StreamReset, RequestNotProcessed) as exc:
            results.append(exc)

    async with trio.open_nursery() as inner:
        for path in ("/big", "/reset", "/big", "/refuse", "/big"):
            inner.start_soon(one, path)
    assert sum(r == (200, bytes(300_000)) for r in results) == 3
    resets = [r for r in results if isinstance(r, StreamReset)]
    assert [r.error_code for r in resets] == [ErrorCodes.INTERNAL_ERROR]
    assert sum(isinstance(r, RequestNotProcessed) for r in results) == 1
    assert conn.is_available
    assert conn.open_streams == 0
    assert await get(conn, "/") == (200, b"ok")
    await conn.aclose()


# -- flow control ----------------------------------------------------------------------


async def test_closed_streams_credit_goes_back_in_batches(nursery: trio.Nursery) -> None:
    """The connection window is one stream window wider than the open streams can use,
    and the unread bytes of closed streams go back a stream window at a time: far more
    than the connection window flows through abandoned streams without a stall."""
    size = 60_000

    async def big(stream: ServerStream) -> None:
        await stream.respond(bytes(size))

    server = H2Server(routes={"/big": big})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery, max_concurrent_streams=2, stream_window=65535)
    peer = server.connections[0].h2
    await wait_until(
        lambda: peer.outbound_flow_control_window == 3 * 65535, "(2 + 1) stream windows"
    )
    for _ in range(20):  # 1.2 MB unread, six times the connection window
        with trio.fail_after(10):
            response = await conn.request("GET", "/big", HOST)
            stream = response._stream
            await wait_until(lambda: stream.remote_ended, "the body here")  # noqa: B023
            response.abandon()
    assert await get(conn, "/") == (200, b"ok")
    await conn.aclose()


async def test_unread_stream_stops_server_after_one_window(nursery: trio.Nursery) -> None:
    size = 1_000_000
    streams: list[ServerStream] = []

    async def big(stream: ServerStream) -> None:
        streams.append(stream)
        await stream.respond(bytes(size))

    server = H2Server(routes={"/big": big})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery, stream_window=65535)
    unread = await conn.request("GET", "/big", HOST)
    await wait_until(lambda: streams[0].sent == 65535, "one window sent")
    # Meanwhile another stream downloads more than the unread one's window, many times.
    for _ in range(3):
        assert await get(conn, "/big") == (200, bytes(size))
    assert streams[0].sent == 65535  # the server had to stop: no credit without reads
    assert len(unread._stream.buffer) > 0  # buffered: one window at most
    assert len(unread._stream.buffer) == 65535
    assert await unread.read_all() == bytes(size)
    assert streams[0].sent == size
    await conn.aclose()


async def test_upload_stall_then_cancel(nursery: trio.Nursery) -> None:
    async def never_answer(stream: ServerStream) -> None:
        await trio.sleep_forever()

    server = H2Server(window_updates=False, routes={"/upload": never_answer})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    async with trio.open_nursery() as inner:
        inner.start_soon(partial(conn.request, "POST", "/upload", HOST, body=bytes(200_000)))
        await wait_until(lambda: server.received == 65535, "the initial window sent")
        await trio.sleep(0.1)
        assert server.received == 65535  # exactly the window, then we wait for WINDOW_UPDATE
        assert conn.open_streams == 1
        inner.cancel_scope.cancel()
    await wait_until(lambda: ErrorCodes.CANCEL in server.resets, "RST_STREAM(CANCEL) seen")
    assert conn.open_streams == 0
    assert await get(conn, "/") == (200, b"ok")  # the connection carries on
    await conn.aclose()


# -- broken peers ----------------------------------------------------------------------


async def test_garbage_frames_fail_streams_with_protocol_error(nursery: trio.Nursery) -> None:
    port = await start_server(nursery, garbage_after_settings)
    conn = await connect_h2(port, nursery)
    with trio.fail_after(10), pytest.raises(RemoteProtocolError, match="broke HTTP/2"):
        await get(conn, "/")
    assert conn.is_closed
    assert not conn.is_available
    with trio.fail_after(5):
        await conn._finished.wait()  # the reader task ended


async def test_peer_closing_fails_open_streams(nursery: trio.Nursery) -> None:
    async def die(stream: ServerStream) -> None:
        await stream.conn.tcp.aclose()

    server = H2Server(routes={"/die": die})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    with trio.fail_after(10), pytest.raises(ReadError):
        await get(conn, "/die")
    assert conn.is_closed
    with trio.fail_after(5):
        await conn._finished.wait()
    with pytest.raises(ConnectionUnavailable):
        conn.reserve_stream_nowait()


async def test_silent_peer_open_times_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = H2Server(silent=True)
    port = await server.start(nursery)
    fds = open_fds()
    start = trio.current_time()
    with pytest.raises(ConnectTimeout, match="SETTINGS"):
        await connect_h2(port, nursery, settings_timeout=5.0)
    assert trio.current_time() - start == pytest.approx(5.0)
    # Our socket is closed: the server's end closes too, once it sees EOF.
    await wait_until(lambda: open_fds() <= fds, "no socket left open")


async def test_bad_arguments_before_io(nursery: trio.Nursery) -> None:
    server = H2Server()
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    with pytest.raises(TypeError, match="method"):
        await conn.request(1, "/", HOST)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="body"):
        await conn.request("GET", "/", HOST, body="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scheme"):
        await conn.request("GET", "/", HOST, "ftp")
    with pytest.raises(TypeError, match="headers"):
        await conn.request("GET", "/", HOST, headers="x: y")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pseudo"):
        await conn.request("GET", "/", HOST, headers=[(":path", "/x")])
    with pytest.raises(ValueError, match="CR, LF"):
        await conn.request("GET", "/", HOST, headers=[("x-a", "1\r\nx-b: 2")])
    with pytest.raises(ValueError, match="token"):
        await conn.request("GET", "/", HOST, headers=[("bad name", "1")])
    with pytest.raises(ValueError, match="method"):
        await conn.request("GE T", "/", HOST)
    with pytest.raises(ValueError, match="spaces"):
        await conn.request("GET", "/a b", HOST)
    slot = conn.reserve_stream_nowait()
    with pytest.raises(ValueError, match="target"):
        await conn.request("GET", "", HOST, slot=slot)
    assert not slot.held  # released on the bad argument
    assert server.requests == 0
    assert conn.is_idle
    with pytest.raises(ValueError, match="max_concurrent_streams"):
        H2Connection(conn._stream, max_concurrent_streams=0)
    with pytest.raises(ValueError, match="stream_window"):
        H2Connection(conn._stream, stream_window=10)
    with pytest.raises(ValueError, match="settings_timeout"):
        await H2Connection.open(conn._stream, nursery, settings_timeout=0)
    await conn.aclose()


def test_h2_not_imported_by_trio_pool_http() -> None:
    code = "import sys, trio_pool.http; assert 'h2' not in sys.modules, 'h2 imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- cancellation storms -----------------------------------------------------------------


async def _storm(
    conn: H2Connection, paths: list[str], count: int, seed: int, refused: list[int] | None = None
) -> int:
    """``count`` concurrent requests on ``conn``, about half cancelled at a random point
    (waiting for a stream, for the head, or half way through the body), a tenth closed
    after the first piece of the body. ``paths[0]`` is only asked for by requests that
    will be cancelled (it may never answer). Returns how many completed. With
    ``refused``, REFUSED_STREAM (:class:`RequestNotProcessed`) is recorded there instead
    of failing the storm."""
    rng = random.Random(seed)
    completed = 0

    async def one(path: str, deadline: float | None, partial: bool) -> None:
        nonlocal completed
        with trio.CancelScope() as scope:
            if deadline is not None:
                scope.deadline = trio.current_time() + deadline
            try:
                response: H2Response = await conn.request("GET", path, HOST)
            except RequestNotProcessed:
                if refused is None:
                    raise
                refused.append(1)
                return
            if partial:
                await response.receive_data()
                await response.aclose()
                return
            await response.read_all()
            completed += 1

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                roll = rng.random()
                deadline = rng.uniform(0, 0.05) if roll < 0.5 else None
                path = rng.choice(paths if deadline is not None else paths[1:])
                nursery.start_soon(one, path, deadline, 0.5 <= roll < 0.6)
    return completed


async def test_cancellation_storm_hypercorn(nursery: trio.Nursery) -> None:
    app = App()
    port, shutdown = await start_hypercorn(nursery, app, max_concurrent_streams=50)
    fds = open_fds()
    async with trio.open_nursery() as conn_nursery:
        conn = await connect_h2(port, conn_nursery)
        completed = await _storm(conn, ["/hold", "/slow/20000", "/size/100000", "/"], 400, 7)
        assert conn.open_streams == 0
        assert not conn._streams
        assert conn.is_available
        assert 0 < completed < 400
        await wait_until(lambda: app.in_flight == 0, "hypercorn saw every stream end")
        assert app.disconnects > 0  # hypercorn saw our RST_STREAMs
        # (hypercorn's h2 would have failed the connection had we gone over its 50
        # streams; its app tasks may outlive a reset stream, so they are not counted.)
        assert await get(conn, "/", scheme="http") == (200, b"ok")
        await conn.aclose()
        assert conn._finished.is_set()  # the reader task ended with the connection
    # hypercorn's end of the connection closes once it has seen ours go.
    await wait_until(lambda: open_fds() <= fds, "no socket left open")
    shutdown.set()


async def test_cancellation_storm_nginx(
    tmp_path: Path, ca: trustme.CA, cert: trustme.LeafCert
) -> None:
    async with open_nginx_h2(tmp_path, cert, max_concurrent_streams=64) as (_nginx, port):
        fds = open_fds()
        async with trio.open_nursery() as nursery:
            conn = await connect_h2(port, nursery, ca)
            # nginx counts a reset stream against its limit until it has finalized the
            # request, a little after our RST_STREAM arrived, and refuses new streams over
            # the limit meanwhile (REFUSED_STREAM): safe to retry, which HTTPClient does.
            refused: list[int] = []
            paths = ["/files/big", "/files/mid", "/files/small"]
            completed = await _storm(conn, paths, 300, 11, refused)
            assert conn.open_streams == 0
            assert not conn._streams
            assert 0 < completed < 300
            assert len(refused) < 300 - completed
            assert await get(conn, "/files/small") == (200, _nginx_file("small"))
            await conn.aclose()
        assert open_fds() <= fds


async def test_read_cancelled_before_it_waits_resets_the_stream(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def head_then_hold(stream: ServerStream) -> None:
        stream.conn.h2.send_headers(stream.id, [(b":status", b"200")])
        await stream.conn.flush()
        await release.wait()

    server = H2Server(routes={"/hold": head_then_hold})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    response = await conn.request("GET", "/hold", HOST)
    assert conn.open_streams == 1
    with trio.CancelScope() as scope:
        scope.cancel()
        await response.receive_data()  # cancelled at its first checkpoint
    assert conn.open_streams == 0
    await wait_until(lambda: ErrorCodes.CANCEL in server.resets, "RST_STREAM(CANCEL) seen")
    release.set()
    await conn.aclose()


async def test_nginx_goaway_after_keepalive_requests(
    tmp_path: Path, ca: trustme.CA, cert: trustme.LeafCert
) -> None:
    # nginx sends GOAWAY once a connection has served keepalive_requests streams: those
    # it took complete, the ones above its last_stream_id come back "not processed".
    async with (
        open_nginx_h2(tmp_path, cert, keepalive_requests=5) as (_nginx, port),
        trio.open_nursery() as nursery,
    ):
        conn = await connect_h2(port, nursery, ca)
        done: list[bytes] = []
        retry: list[HTTPError] = []

        async def one() -> None:
            try:
                done.append((await get(conn, "/files/mid"))[1])
            except (RequestNotProcessed, ConnectionUnavailable) as exc:
                retry.append(exc)

        async with trio.open_nursery() as inner:
            for _ in range(12):
                inner.start_soon(one)
        assert done == [_nginx_file("mid")] * 5
        assert len(retry) == 7
        assert conn.is_going_away
        await wait_until(lambda: conn.is_closed, "closed after the last stream")
        assert conn.open_streams == 0


async def test_empty_and_padded_data_frames_are_not_the_end(nursery: trio.Nursery) -> None:
    async def padded(stream: ServerStream) -> None:
        h2c = stream.conn.h2
        h2c.send_headers(stream.id, [(b":status", b"200")])
        h2c.send_data(stream.id, b"", pad_length=20)  # 21 bytes of window, no data
        h2c.send_data(stream.id, b"abc", pad_length=3)
        h2c.send_data(stream.id, b"def", end_stream=True)
        await stream.conn.flush()

    server = H2Server(routes={"/padded": padded})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    for _ in range(3):
        assert await get(conn, "/padded") == (200, b"abcdef")
    assert conn.open_streams == 0
    await conn.aclose()


async def test_read_all_takes_what_arrived_then_waits_for_the_rest(
    nursery: trio.Nursery,
) -> None:
    # read_all takes the buffered DATA frames in one go, then waits for more; cancelled
    # before it reads, it resets the stream and the connection carries on.
    gate = [trio.Event()]

    async def split(stream: ServerStream) -> None:
        h2c = stream.conn.h2
        h2c.send_headers(stream.id, [(b":status", b"200")])
        h2c.send_data(stream.id, b"ab")
        h2c.send_data(stream.id, b"cd")
        await stream.conn.flush()
        await gate[0].wait()
        h2c.send_data(stream.id, b"ef", end_stream=True)
        stream.conn._close_stream(stream)
        await stream.conn.flush()

    server = H2Server(routes={"/split": split})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    response = await conn.request("GET", "/split", HOST, "http")
    await trio.testing.wait_all_tasks_blocked()  # "ab" and "cd" are here

    async def release_later() -> None:
        await trio.sleep(0.05)
        gate[0].set()

    nursery.start_soon(release_later)
    assert await response.read_all() == b"abcdef"
    assert response.done
    assert conn.open_streams == 0
    gate[0] = trio.Event()  # the second response stays open after "abcd"
    response = await conn.request("GET", "/split", HOST, "http")
    await trio.testing.wait_all_tasks_blocked()
    with trio.CancelScope() as scope:
        scope.cancel()
        await response.read_all()
    assert conn.open_streams == 0
    await wait_until(lambda: ErrorCodes.CANCEL in server.resets, "RST_STREAM(CANCEL) seen")
    assert await get(conn, "/ok") == (200, b"ok")  # the default route
    await conn.aclose()


async def test_request_headers_normalized_and_credentials_never_indexed(
    nursery: trio.Nursery,
) -> None:
    # h2's outbound normalization is off: _request_headers strips values, lowercases
    # names and keeps credentials out of HPACK's dynamic table itself.
    seen: list[list[tuple[bytes, bytes]]] = []

    async def record(stream: ServerStream) -> None:
        seen.append(stream.headers)
        await stream.respond(b"ok")

    server = H2Server(routes={"/h": record})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    headers = [
        ("Authorization", " Bearer secret "),
        ("Proxy-Authorization", "Basic xyz"),
        ("X-Padded", "\t value \t"),
        ("Connection", "keep-alive"),
        ("TE", "gzip"),
    ]
    for _ in range(2):  # the second time HPACK could index what the first one added
        response = await conn.request("GET", "/h", HOST, "http", headers)
        assert await response.read_all() == b"ok"
    for block in seen:
        fields = {name: (value, type(pair)) for pair in block for name, value in [pair]}
        assert fields[b"authorization"] == (b"Bearer secret", NeverIndexedHeaderTuple)
        assert fields[b"proxy-authorization"] == (b"Basic xyz", NeverIndexedHeaderTuple)
        assert fields[b"x-padded"][0] == b"value"
        assert fields[b"x-padded"][1] is not NeverIndexedHeaderTuple
        assert b"connection" not in fields
        assert b"te" not in fields
    await conn.aclose()


async def test_open_in_a_closed_nursery_closes_the_stream(nursery: trio.Nursery) -> None:
    server = H2Server()
    port = await server.start(nursery)
    async with trio.open_nursery() as finished:
        pass
    tcp = await trio.open_tcp_stream(HOST, port)
    with trio.fail_after(5), pytest.raises(RuntimeError, match=r"[Nn]ursery"):
        await H2Connection.open(tcp, finished)
    with pytest.raises(trio.ClosedResourceError):
        await tcp.send_all(b"x")  # the connection owned the stream, and closed it


async def test_hypercorn_sees_a_reset_for_every_cancelled_stream(
    ca: trustme.CA, cert: trustme.LeafCert, tmp_path: Path, nursery: trio.Nursery
) -> None:
    app = App()
    port, shutdown = await start_hypercorn(nursery, app, cert_files=write_cert(cert, tmp_path))
    conn = await connect_h2(port, nursery, ca)
    async with trio.open_nursery() as inner:
        for _ in range(20):
            inner.start_soon(conn.request, "GET", "/hold", HOST)
        await wait_until(lambda: app.in_flight == 20, "20 requests in the app")
        assert conn.open_streams == 20
        inner.cancel_scope.cancel()
    assert conn.open_streams == 0
    await wait_until(lambda: app.disconnects == 20, "hypercorn saw 20 resets")
    assert await get(conn, "/") == (200, b"ok")  # the connection carries on
    await conn.aclose()
    shutdown.set()


async def test_goaway_with_error_then_close(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def hold(stream: ServerStream) -> None:
        await release.wait()

    server = H2Server(routes={"/hold": hold})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    errors: list[BaseException] = []
    seen: list[tuple[int, bool, bool]] = []
    conn.on_capacity_change = lambda: seen.append(
        (conn.open_streams, conn.is_going_away, conn.is_closed)
    )

    async def one() -> None:
        try:
            await conn.request("GET", "/hold", HOST)
        except (ReadError, RequestNotProcessed) as exc:
            errors.append(exc)

    async with trio.open_nursery() as inner:
        for index in range(3):
            inner.start_soon(one)
            await wait_until(lambda i=index: server.open == i + 1, "stream open")  # type: ignore[misc]
        server_conn = server.connections[0]
        await server_conn.goaway(last_stream_id=1, code=ErrorCodes.INTERNAL_ERROR)
        await wait_until(lambda: conn.is_going_away, "GOAWAY seen")
        await server_conn.tcp.aclose()
    assert sorted(type(exc).__name__ for exc in errors) == [
        "ReadError",
        "RequestNotProcessed",
        "RequestNotProcessed",
    ]
    assert conn.is_closed
    assert (1, True, False) in seen  # the pool heard of the GOAWAY with one stream left
    assert seen[-1] == (0, True, True)  # and of the end
    stats = conn.statistics()
    assert (stats.open_streams, stats.streams_started, stats.goaway, stats.closed) == (
        0,
        3,
        True,
        True,
    )
    release.set()


async def test_connection_reset_while_uploading(nursery: trio.Nursery) -> None:
    async def reset_connection(stream: ServerStream) -> None:
        await wait_until(lambda: len(stream.body) > 0, "some of the body arrived")
        reset(stream.conn.tcp)

    server = H2Server(routes={"/reset": reset_connection})
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    with trio.fail_after(10), pytest.raises(NetworkError) as caught:
        await conn.request("POST", "/reset", HOST, body=bytes(5_000_000))
    assert isinstance(caught.value, ReadError | WriteError)
    assert conn.is_closed
    with trio.fail_after(5):
        await conn._finished.wait()


async def test_h2_forgets_closed_streams_amortized(nursery: trio.Nursery) -> None:
    """The O(1) open-stream count still lets h2 forget closed streams: after 600
    requests, 20 at a time, h2 holds a bounded number of stream objects, and its own
    scan agrees with our count."""
    server = H2Server()
    port = await server.start(nursery)
    conn = await connect_h2(port, nursery)
    for _ in range(30):
        async with trio.open_nursery() as inner:
            for _ in range(20):
                inner.start_soon(get, conn, "/")
        assert len(conn._h2.streams) <= 2 * 20 + 64
    assert server.requests == 600
    assert conn._h2._open_streams(1) == len(conn._streams) == 0
    await conn.aclose()
