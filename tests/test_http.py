"""trio_pool.http against a real nginx and against h11 test servers that misbehave."""

from __future__ import annotations

import gc
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import h11
import httpx
import pytest
import trio
import trio.lowlevel
import trustme

import trio_pool
from trio_pool import ConnectionPool
from trio_pool.http import (
    HTTPClient,
    HTTPError,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    RequestTimeout,
)
from trio_pool.http._http11 import HTTP11Connection
from trio_pool.httpx import PoolTransport

from .checks import assert_settled
from .h2servers import H2Server, ServerStream, answer_ok
from .nginx import BIG_SIZE, TEXT, Nginx, open_nginx
from .servers import HOST, open_fds, reset, start_server

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture
async def nginx(tmp_path: Path) -> AsyncIterator[Nginx]:
    async with open_nginx(tmp_path) as server:
        yield server


# -- h11 test servers ---------------------------------------------------------------------

Responder = Callable[[trio.SocketStream, h11.Connection, h11.Request, int], Awaitable[bool]]


class H11Server:
    """A loopback HTTP/1.1 server built on h11; ``respond`` answers each request and
    returns whether to keep the connection open. Counts connections and requests."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.connections = 0
        self.requests: list[h11.Request] = []
        self.port = 0

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        index = 0
        try:
            while True:
                request = await read_request(stream, conn)
                if request is None:
                    return
                self.requests.append(request)
                if not await self.respond(stream, conn, request, index):
                    return
                index += 1
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()


async def read_request(stream: trio.SocketStream, conn: h11.Connection) -> h11.Request | None:
    """Read one whole request (body discarded); ``None`` if the client closed."""
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some())
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def send_response(
    stream: trio.SocketStream,
    conn: h11.Connection,
    body: bytes = b"hi",
    headers: list[tuple[bytes, bytes]] | None = None,
    version: bytes = b"1.1",
) -> None:
    if headers is None:
        headers = [(b"content-length", b"%d" % len(body))]
    data = conn.send(h11.Response(status_code=200, headers=headers, http_version=version))
    assert data is not None
    if body:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def start_h11(nursery: trio.Nursery, respond: Responder) -> H11Server:
    server = H11Server(respond)
    server.port = await start_server(nursery, server.handle)
    return server


async def ok(stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int) -> bool:
    await send_response(stream, conn)
    return True


# -- nginx ----------------------------------------------------------------------------------


@pytest.mark.nginx
async def test_nginx_basics_and_reuse(
    nginx: Nginx, client: HTTPClient, pool: ConnectionPool
) -> None:
    r = await client.request("GET", nginx.url("/"))
    assert (r.status, r.content, r.http_version, r.keep_alive) == (200, b"ok", "1.1", True)
    r = await client.request("GET", nginx.url("/text"))
    assert r.content == TEXT
    assert r.header("Content-Type") == b"text/plain"
    r = await client.request("GET", nginx.url("/big"))
    assert r.content == bytes(range(256)) * (BIG_SIZE // 256)
    r = await client.request("HEAD", nginx.url("/big"))
    assert r.content == b""
    assert r.header("content-length") == b"%d" % BIG_SIZE
    r = await client.request("POST", nginx.url("/"), content=b"x" * 1000)
    assert r.status == 200
    r = await client.request("GET", nginx.url("/missing"))
    assert r.status == 404
    stats = pool.statistics()
    assert stats.connections_created == 1
    assert stats.pool_hits == 5
    assert stats.idle_connections == 1


@pytest.mark.nginx
async def test_nginx_connection_close_is_discarded(
    nginx: Nginx, client: HTTPClient, pool: ConnectionPool
) -> None:
    r = await client.request("GET", nginx.url("/close"))
    assert r.content == b"bye"
    assert r.header("connection") == b"close"
    assert not r.keep_alive
    stats = pool.statistics()
    assert (stats.connections_created, stats.connections_closed) == (1, 1)
    assert stats.idle_connections == 0


@pytest.mark.nginx
async def test_nginx_keepalive_requests_limit(
    nginx: Nginx, client: HTTPClient, pool: ConnectionPool
) -> None:
    # keepalive_requests 7: the 7th response on a connection says Connection: close.
    responses = [await client.request("GET", nginx.url("/")) for _ in range(15)]
    assert [r.keep_alive for r in responses[:7]] == [True] * 6 + [False]
    stats = pool.statistics()
    assert stats.connections_created == 3
    assert stats.connections_closed == 2


@pytest.mark.nginx
async def test_nginx_users_with_pauses_beyond_keepalive(nginx: Nginx) -> None:
    """8 users x 30 requests, with pauses longer than nginx's keepalive_timeout of 1 s:
    every request succeeds, connections are reused, and far fewer are opened."""
    rng = random.Random(5)
    errors: list[BaseException] = []
    done = 0
    paths = ["/", "/text", "/big", "/", "/text"]
    fds_before = open_fds()

    async def user(client: HTTPClient, pauses: set[int]) -> None:
        nonlocal done
        for i in range(30):
            if i in pauses:
                await trio.sleep(rng.uniform(1.1, 1.3))
            else:
                await trio.sleep(rng.uniform(0, 0.01))
            try:
                if i % 2:
                    async with client.stream("GET", nginx.url(rng.choice(paths))) as r:
                        await r.aread()
                else:
                    r = await client.request("GET", nginx.url(rng.choice(paths)))
                assert r.status == 200
                done += 1
            except Exception as exc:  # collected: the assertion below shows them all
                errors.append(exc)

    async with trio_pool.open_pool(max_size=8) as pool:
        client = HTTPClient(pool)
        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(user, client, {10 + n % 3, 21})
        assert errors == []
        assert done == 240
        stats = pool.statistics()
        assert stats.pool_hits > 0
        assert stats.connections_created <= 240 // 3
        assert_settled(pool)
    assert open_fds() <= fds_before


@pytest.mark.nginx
async def test_nginx_reload_closes_idle_connections_without_errors(
    nginx: Nginx, client: HTTPClient, pool: ConnectionPool
) -> None:
    for _ in range(3):
        assert (await client.request("GET", nginx.url("/"))).content == b"ok"
    nginx.write_config(keepalive_requests=100)
    await nginx.reload()  # old workers close their idle keep-alive connections
    for _ in range(10):
        assert (await client.request("GET", nginx.url("/text"))).content == TEXT
    assert pool.statistics().connections_created >= 2
    assert_settled(pool)


@pytest.mark.nginx
async def test_nginx_stream_partial_read_discards(
    nginx: Nginx, client: HTTPClient, pool: ConnectionPool
) -> None:
    async with client.stream("GET", nginx.url("/big")) as r:
        assert r.status == 200
        with pytest.raises(RuntimeError, match="aread"):
            r.content  # noqa: B018
        first = await r.aiter_bytes().__anext__()
        assert first
        assert not r.is_complete
    stats = pool.statistics()
    assert (stats.connections_closed, stats.idle_connections) == (1, 0)
    # Read to the end: released and reused.
    async with client.stream("GET", nginx.url("/big")) as r:
        total = 0
        async for chunk in r.aiter_bytes():
            total += len(chunk)
        assert total == BIG_SIZE
        assert r.is_complete
    async with client.stream("GET", nginx.url("/text")) as r:
        assert await r.aread() == TEXT
    stats = pool.statistics()
    assert (stats.connections_created, stats.connections_closed) == (2, 1)
    assert stats.idle_connections == 1
    assert_settled(pool)


# -- safe retry ----------------------------------------------------------------------------


async def answer_first_only(
    stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
) -> bool:
    """Answer the first request of a connection; on the next, close without a word:
    the server's idle timeout racing the client's next request."""
    if i == 0:
        await send_response(stream, conn)
        return True
    return False


async def test_retry_idempotent_on_new_connection(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    server = await start_h11(nursery, answer_first_only)
    assert (await client.request("GET", server.url())).content == b"hi"
    r = await client.request("GET", server.url())  # reused, dies, retried once
    assert r.content == b"hi"
    assert server.connections == 2
    assert len(server.requests) == 3
    r = await client.request("PUT", server.url(), content=b"x")
    assert r.status == 200
    assert server.connections == 3
    stats = pool.statistics()
    assert stats.pool_hits == 2
    assert_settled(pool)


async def test_no_retry_for_post(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    server = await start_h11(nursery, answer_first_only)
    await client.request("GET", server.url())
    with pytest.raises(RemoteProtocolError, match="without sending a response") as info:
        await client.request("POST", server.url(), content=b"data")
    assert info.value.connection_reused is True
    assert server.connections == 1
    assert [r.method for r in server.requests] == [b"GET", b"POST"]
    assert_settled(pool)
    assert pool.statistics().idle_connections == 0


async def test_reset_before_reply_retries_get_and_fails_post(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    async def reset_second(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        if i == 0:
            await send_response(stream, conn)
            return True
        reset(stream)  # RST: the client's read fails with ECONNRESET
        return False

    server = await start_h11(nursery, reset_second)
    await client.request("GET", server.url())
    assert (await client.request("GET", server.url())).content == b"hi"
    assert server.connections == 2
    with pytest.raises(ReadError) as info:
        await client.request("POST", server.url())
    assert isinstance(info.value.__cause__, trio.BrokenResourceError)
    assert isinstance(info.value, OSError)
    assert server.connections == 2
    assert_settled(pool)


async def test_no_retry_on_fresh_connection(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    async def never(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        return False

    server = await start_h11(nursery, never)
    with pytest.raises(RemoteProtocolError) as info:
        await client.request("GET", server.url())
    assert info.value.connection_reused is False
    assert server.connections == 1
    assert_settled(pool)


async def test_no_retry_when_disabled(nursery: trio.Nursery) -> None:
    server = await start_h11(nursery, answer_first_only)
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, retry=False)
        await client.request("GET", server.url())
        with pytest.raises(RemoteProtocolError):
            await client.request("GET", server.url())
        assert server.connections == 1


async def test_server_closing_idle_right_after_reply(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    """The server says keep-alive but closes each connection right after replying:
    every GET still succeeds (stale connections are caught at hand-out or retried)."""

    async def reply_then_close(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        await send_response(stream, conn)
        return False

    server = await start_h11(nursery, reply_then_close)
    for _ in range(20):
        assert (await client.request("GET", server.url())).content == b"hi"
        await trio.sleep(0.001)
    assert server.connections == 20
    assert_settled(pool)


# -- keep-alive decisions --------------------------------------------------------------------


async def test_connection_close_response_not_pooled(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    async def close(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        await send_response(
            stream, conn, headers=[(b"content-length", b"2"), (b"connection", b"close")]
        )
        return False

    server = await start_h11(nursery, close)
    for _ in range(3):
        r = await client.request("GET", server.url())
        assert (r.content, r.keep_alive) == (b"hi", False)
        assert pool.statistics().idle_connections == 0
    stats = pool.statistics()
    assert (stats.connections_created, stats.connections_closed, stats.pool_hits) == (3, 3, 0)


async def test_http10_response_not_pooled(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    async def http10(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        # No Content-Length: an HTTP/1.0 body runs to the end of the connection.
        await stream.send_all(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nold body")
        return False

    server = await start_h11(nursery, http10)
    r = await client.request("GET", server.url())
    assert (r.content, r.http_version, r.keep_alive) == (b"old body", "1.0", False)
    stats = pool.statistics()
    assert (stats.connections_created, stats.connections_closed) == (1, 1)


async def test_chunked_body(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    async def chunked(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        data = conn.send(
            h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")])
        )
        assert data is not None
        await stream.send_all(data)
        for piece in (b"one,", b"two,", b"three"):
            await stream.send_all(conn.send(h11.Data(data=piece)) or b"")
            await trio.lowlevel.checkpoint()
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        return True

    server = await start_h11(nursery, chunked)
    assert (await client.request("GET", server.url())).content == b"one,two,three"
    async with client.stream("GET", server.url()) as r:
        assert b"".join([c async for c in r.aiter_bytes()]) == b"one,two,three"
    stats = pool.statistics()
    assert (stats.connections_created, stats.pool_hits, stats.idle_connections) == (1, 1, 1)


async def test_request_body_and_headers_reach_server(nursery: trio.Nursery) -> None:
    bodies: list[bytes] = []

    async def echo_body(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        bodies.append(dict(req.headers).get(b"x-test", b""))
        await send_response(stream, conn, body=req.method + b" " + req.target)
        return True

    server = await start_h11(nursery, echo_body)
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, headers={"X-Test": "default"})
        r = await client.request("PATCH", server.url("/a/b?c=d"), content=b"payload")
        assert r.content == b"PATCH /a/b?c=d"
        await client.request("GET", server.url(), headers=[("X-Test", "mine")])
        assert bodies == [b"default", b"mine"]
        req = server.requests[0]
        headers = dict(req.headers)
        assert headers[b"host"] == b"%s:%d" % (HOST.encode(), server.port)
        assert headers[b"content-length"] == b"7"


async def record_request_lines(lines: list[bytes], stream: trio.SocketStream) -> None:
    """Record each request's first line as sent; answer ``204`` (keep-alive, no body).

    Requests here have no body, so a request ends at its blank line."""
    buffer = b""
    with trio.move_on_after(10):
        while True:
            while b"\r\n\r\n" not in buffer:
                data = await stream.receive_some()
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            lines.append(head.split(b"\r\n", 1)[0])
            await stream.send_all(b"HTTP/1.1 204 No Content\r\n\r\n")


@pytest.mark.parametrize("method", ["get", "Get", "delete", "patch"])
async def test_method_is_sent_upper_case(nursery: trio.Nursery, method: str) -> None:
    """``request("get", ...)`` sends ``GET`` (as httpx does), on HTTP/1.1 and HTTP/2."""
    lines: list[bytes] = []
    port = await start_server(nursery, partial(record_request_lines, lines))
    h2_methods: list[bytes] = []

    async def record_method(stream: ServerStream) -> None:
        h2_methods.append(bytes(dict(stream.headers)[b":method"]))
        await answer_ok(stream)

    h2_port = await H2Server(routes={"/": record_method}).start(nursery)
    async with trio_pool.open_pool() as pool:
        response = await HTTPClient(pool).request(method, f"http://{HOST}:{port}/m")
        assert response.status == 204
        async with httpx.AsyncClient(transport=PoolTransport(pool)) as client:
            assert (await client.request(method, f"http://{HOST}:{port}/x")).status_code == 204
        h2 = HTTPClient(pool, http2="prior-knowledge")
        assert (await h2.request(method, f"http://{HOST}:{h2_port}/")).status == 200
    expected = method.upper().encode()
    assert lines == [expected + b" /m HTTP/1.1", expected + b" /x HTTP/1.1"]
    assert h2_methods == [expected]


# -- failures --------------------------------------------------------------------------------


async def test_junk_response_is_remote_protocol_error(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    async def junk(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        return False

    server = await start_h11(nursery, junk)
    with pytest.raises(RemoteProtocolError) as info:
        await client.request("GET", server.url())
    assert isinstance(info.value.__cause__, h11.RemoteProtocolError)
    assert isinstance(info.value, trio_pool.PoolError)
    assert_settled(pool)
    assert pool.statistics().idle_connections == 0


async def test_truncated_body_is_discarded(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    async def short(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        return False

    server = await start_h11(nursery, short)
    with pytest.raises(RemoteProtocolError):
        await client.request("GET", server.url())
    with pytest.raises(RemoteProtocolError):
        async with client.stream("GET", server.url()) as r:
            await r.aread()
    assert server.connections == 2  # a response byte came: never retried
    assert_settled(pool)
    assert pool.statistics().idle_connections == 0


async def test_timeout_is_read_timeout(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    async def stall(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    server = await start_h11(nursery, stall)
    with pytest.raises(ReadTimeout) as info:
        await client.request("GET", server.url(), timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, RequestTimeout)
    with pytest.raises(ReadTimeout):
        async with HTTPClient(pool, timeout=0.2).stream("GET", server.url()):
            pass  # pragma: no cover
    assert_settled(pool)
    assert pool.statistics().idle_connections == 0


async def test_stream_read_timeout_applies_per_read(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    async def head_then_stall(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    server = await start_h11(nursery, head_then_stall)
    async with client.stream("GET", server.url(), timeout=0.2) as r:
        chunks = r.aiter_bytes()
        assert await chunks.__anext__() == b"abc"
        with pytest.raises(ReadTimeout):
            await chunks.__anext__()
    assert_settled(pool)


async def test_timeout_covers_acquire(nursery: trio.Nursery) -> None:
    server = await start_h11(nursery, ok)
    async with trio_pool.open_pool(max_size=1) as pool:
        client = HTTPClient(pool)
        async with client.stream("GET", server.url()):
            with pytest.raises(PoolTimeout):
                await client.request("GET", server.url(), timeout=0.2)
        assert (await client.request("GET", server.url(), timeout=5)).content == b"hi"
        assert_settled(pool)


async def test_cancel_mid_response_discards_and_leaks_nothing(nursery: trio.Nursery) -> None:
    started = trio.Event()

    async def half(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        started.set()
        # Wait for the client to hang up, so the server's socket closes too.
        while await stream.receive_some():
            pass  # pragma: no cover
        return False

    server = await start_h11(nursery, half)
    fds_before = open_fds()
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool)
        for use_stream in (False, True):
            started = trio.Event()
            with trio.CancelScope() as scope:

                async def cancel_when_started(
                    scope: trio.CancelScope = scope, started: trio.Event = started
                ) -> None:
                    await started.wait()
                    scope.cancel()

                nursery.start_soon(cancel_when_started)
                if use_stream:
                    async with client.stream("GET", server.url()) as r:
                        await r.aread()
                else:
                    await client.request("GET", server.url())
            assert scope.cancelled_caught
            assert_settled(pool)
        stats = pool.statistics()
        assert (stats.connections_created, stats.connections_closed) == (2, 2)
        # No socket keeps h11 state after it was discarded (its protocol slot).
        gc.collect()
        assert not [
            o
            for o in gc.get_objects()
            if type(o) is HTTP11Connection and o._pool is pool and o._conn._protocol is o
        ]
    await trio.testing.wait_all_tasks_blocked()
    assert open_fds() <= fds_before


async def test_connect_refused_is_pool_error(client: HTTPClient) -> None:
    from .servers import refused_port

    with pytest.raises(trio_pool.ConnectError):
        await client.request("GET", f"http://{HOST}:{refused_port()}/")


# -- https -------------------------------------------------------------------------------------


async def test_https_reuses_tls_connections(nursery: trio.Nursery) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert(HOST)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    server = H11Server(ok)

    async def handle_tls(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, server_ctx, server_side=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            return
        await server.handle(tls)  # type: ignore[arg-type]

    port = await start_server(nursery, handle_tls)
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, ssl_context=client_ctx)
        for _ in range(3):
            r = await client.request("GET", f"https://{HOST}:{port}/secure")
            assert r.content == b"hi"
        stats = pool.statistics()
        assert (stats.connections_created, stats.pool_hits, stats.tls_handshakes) == (1, 2, 1)
        assert server.requests[0].target == b"/secure"
        # An untrusted certificate fails the connect.
        with pytest.raises(trio_pool.ConnectError):
            await HTTPClient(pool).request("GET", f"https://{HOST}:{port}/")


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "match"),
    [
        ("GET", "ftp://127.0.0.1/", "http:// or https://"),
        ("GET", "127.0.0.1:80/", "http:// or https://"),
        ("GET", "http:///path", "no host"),
        ("GET", "http://127.0.0.1:99999/", "invalid port"),
        ("GET", "http://user:pw@127.0.0.1/", "credentials"),
        ("GET", "http://127.0.0.1/a b", "spaces"),
        ("GE T", "http://127.0.0.1/", "method"),
        ("", "http://127.0.0.1/", "method"),
        ("CONNECT", "http://127.0.0.1/", "CONNECT"),
    ],
)
async def test_bad_input_is_value_error(
    method: str, url: str, match: str, client: HTTPClient, pool: ConnectionPool
) -> None:
    with pytest.raises(ValueError, match=match):
        await client.request(method, url)
    with pytest.raises(ValueError, match=match):
        client.stream(method, url)
    assert pool.statistics().pool_misses == 0


async def test_bad_arguments() -> None:
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool)
        url = "http://127.0.0.1:1/"
        with pytest.raises(ValueError, match="invalid request"):
            await client.request("GET", url, headers={"bad header": "x"})
        with pytest.raises(ValueError, match="timeout"):
            await client.request("GET", url, timeout=-1)
        with pytest.raises(TypeError, match="content"):
            await client.request("POST", url, content="text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="url"):
            await client.request("GET", b"http://x/")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="headers"):
            await client.request("GET", url, headers=[("a", "b", "c")])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="pool"):
            HTTPClient(object())  # type: ignore[arg-type]
        assert pool.statistics().pool_misses == 0
    assert issubclass(HTTPError, trio_pool.PoolError)


async def test_response_helpers(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    server = await start_h11(nursery, ok)
    r = await client.request("GET", server.url())
    assert repr(r).startswith("<Response [200")
    assert r.header("x-missing") is None
    assert r.header(b"Content-Length") == b"2"
    assert r.is_complete
    assert [c async for c in r.aiter_bytes()] == [b"hi"]
    assert await r.aread() == b"hi"
    await r.aclose()
    async with client.stream("GET", server.url()) as r:
        chunks = r.aiter_bytes()
        assert await chunks.__anext__() == b"hi"
        with pytest.raises(RuntimeError, match="aiter_bytes"):
            await r.aread()
        with pytest.raises(StopAsyncIteration):
            await chunks.__anext__()
    stream = client.stream("GET", server.url())
    async with stream as r:
        await r.aread()
        with pytest.raises(RuntimeError, match="entered already"):
            await stream.__aenter__()
    assert pool.statistics().connections_created == 1


async def test_many_clients_share_a_pool(nursery: trio.Nursery, pool: ConnectionPool) -> None:
    server = await start_h11(nursery, ok)
    first, second = HTTPClient(pool), HTTPClient(pool)
    for _ in range(3):
        await first.request("GET", server.url())
        await second.request("GET", server.url())
    assert server.connections == 1
    assert len(server.requests) == 6
