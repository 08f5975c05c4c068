"""Request framing (issue 12): what goes on the wire is exactly what the caller asked for.

A body's ``Content-Length`` is its byte count whatever buffer it came in; framing that
cannot be right is refused with ``ValueError`` before any connection is borrowed; the URL
and the ``Host`` header say what the connection says. Checked through
:class:`~trio_pool.http.HTTPClient` and httpx's :class:`~trio_pool.httpx.PoolTransport`
against a loopback server that records every request it parses.
"""

from __future__ import annotations

import array
import ssl
from collections.abc import AsyncIterator, Iterator
from functools import partial

import h11
import httpx
import pytest
import trio
import trio.testing
import trustme

import trio_pool
from trio_pool import ConnectionPool
from trio_pool.http import HTTPClient
from trio_pool.httpx import PoolTransport

from .checks import assert_settled
from .resolvers import LoopbackResolver
from .servers import HOST, start_server

pytestmark = pytest.mark.filterwarnings("error")


class RecordingServer:
    """Parses every byte it receives as HTTP/1.1 requests and answers each ``200 ok``.

    ``requests`` holds ``(request, body)`` per parsed request; ``junk`` counts
    connections on which the bytes stopped being valid HTTP.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[h11.Request, bytes]] = []
        self.connections = 0
        self.junk = 0
        self.port = 0

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        try:
            for _ in range(10_000):
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some())
                elif isinstance(event, h11.Request):
                    request, body = event, b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert request is not None
                    self.requests.append((request, body))
                    data = conn.send(
                        h11.Response(status_code=200, headers=[(b"content-length", b"2")])
                    )
                    data = (data or b"") + (conn.send(h11.Data(data=b"ok")) or b"")
                    data += conn.send(h11.EndOfMessage()) or b""
                    await stream.send_all(data)
                    conn.start_next_cycle()
                else:
                    return
        except h11.RemoteProtocolError:
            self.junk += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


@pytest.fixture
async def server(nursery: trio.Nursery) -> RecordingServer:
    recorder = RecordingServer()
    recorder.port = await start_server(nursery, recorder.handle)
    return recorder


def smuggling_body() -> bytes:
    """80 bytes whose last 60 are a complete GET: a ``Content-Length`` of 20 (the item
    count of the body as ``memoryview(...).cast("I")``) makes them a second request."""
    smuggled = b"GET /smuggled HTTP/1.1\r\nhost: evil\r\nx-pad: " + b"p" * 13 + b"\r\n\r\n"
    assert len(smuggled) == 60
    return b"a" * 20 + smuggled


def body_forms(payload: bytes) -> Iterator[tuple[str, object]]:
    """Every buffer form of ``payload`` that ``content`` accepts."""
    view = memoryview(payload)
    yield "bytes", payload
    yield "bytearray", bytearray(payload)
    yield "memoryview", view
    yield "memoryview cast I", view.cast("I")
    yield "memoryview cast H 2-D", view.cast("H", (4, len(payload) // 8))
    yield "memoryview of bytearray", memoryview(bytearray(payload))
    yield "memoryview of array('d')", memoryview(array.array("d", payload))
    yield "bytes subclass", type("Bytes", (bytes,), {})(payload)
    yield "slice of a larger view", memoryview(b"<" * 8 + payload + b">" * 8)[8:-8].cast("Q")
    yield "bytearray cast to a 2-D view", memoryview(bytearray(payload)).cast("B", (8, 10))


FORMS = [name for name, _ in body_forms(smuggling_body())]


def form(name: str, payload: bytes) -> object:
    return dict(body_forms(payload))[name]


# -- defect 1: framing by byte count ---------------------------------------------------------


@pytest.mark.parametrize("name", FORMS)
async def test_body_is_framed_by_byte_count(
    server: RecordingServer, name: str, client: HTTPClient, pool: ConnectionPool
) -> None:
    payload = smuggling_body()
    r = await client.request("POST", server.url(), content=form(name, payload))  # type: ignore[arg-type]
    assert r.status == 200
    # One more request on the same connection: still in sync.
    assert (await client.request("GET", server.url("/after"))).content == b"ok"
    assert server.junk == 0
    assert [req.target for req, _ in server.requests] == [b"/", b"/after"]
    request, body = server.requests[0]
    assert dict(request.headers)[b"content-length"] == b"80"
    assert body == payload
    assert pool.statistics().connections_created == 1
    assert_settled(pool)


async def test_non_contiguous_view_sends_its_elements(
    server: RecordingServer, client: HTTPClient
) -> None:
    base = bytes(range(80))
    await client.request("PUT", server.url(), content=memoryview(base)[::2])
    request, body = server.requests[0]
    assert body == base[::2]
    assert dict(request.headers)[b"content-length"] == b"40"


@pytest.mark.parametrize("name", FORMS)
async def test_chunked_body_is_framed_by_byte_count(
    server: RecordingServer, name: str, client: HTTPClient
) -> None:
    payload = smuggling_body()
    await client.request(
        "POST",
        server.url(),
        headers={"Transfer-Encoding": "chunked"},
        content=form(name, payload),  # type: ignore[arg-type]
    )
    await client.request("GET", server.url("/after"))
    assert server.junk == 0
    assert [req.target for req, _ in server.requests] == [b"/", b"/after"]
    assert server.requests[0][1] == payload


async def test_body_is_copied_when_the_request_is_made(nursery: trio.Nursery) -> None:
    """A bytearray changed while the request waits for a connection cannot change what
    (or how much) is sent."""
    recorder = RecordingServer()
    recorder.port = await start_server(nursery, recorder.handle)
    # max_total: a raw borrower's connection is of another key than the client's.
    async with trio_pool.open_pool(max_size=1, max_total=1) as pool:
        client = HTTPClient(pool)
        body = bytearray(b"12345")
        held = await pool.acquire(HOST, recorder.port)
        async with trio.open_nursery() as inner:
            inner.start_soon(lambda: client.request("POST", recorder.url(), content=body))
            await trio.testing.wait_all_tasks_blocked()
            body.extend(b"6789" * 10)
            pool.release(held)
        assert recorder.requests[0][1] == b"12345"


async def test_released_view_is_value_error(pool: ConnectionPool) -> None:
    view = memoryview(b"abc")
    view.release()
    with pytest.raises(ValueError, match="content"):
        await HTTPClient(pool).request("POST", "http://127.0.0.1:9/", content=view)
    assert pool.statistics().connections_created == 0


@pytest.mark.parametrize(
    ("method", "expected"), [("POST", [b"0"]), ("PUT", [b"0"]), ("GET", []), ("DELETE", [])]
)
async def test_empty_views_frame_as_empty(
    server: RecordingServer, method: str, expected: list[bytes], client: HTTPClient
) -> None:
    await client.request(method, server.url(), content=memoryview(b"").cast("I"))
    request, body = server.requests[0]
    assert [v for n, v in request.headers if n == b"content-length"] == expected
    assert body == b""


@pytest.mark.parametrize("content", ["text", 5, array.array("b", b"ab"), [b"a"]])
async def test_other_body_types_are_type_errors(
    content: object, client: HTTPClient, pool: ConnectionPool
) -> None:
    with pytest.raises(TypeError, match="content"):
        await client.request("POST", "http://127.0.0.1:9/", content=content)  # type: ignore[arg-type]
    assert pool.statistics().connections_created == 0


async def view_chunks(payload: bytes) -> AsyncIterator[bytes]:
    """A streamed request body of memoryviews that are not byte-formatted."""
    view = memoryview(payload)
    yield view[:40].cast("I")  # type: ignore[misc]
    yield view[40:].cast("H")  # type: ignore[misc]


async def test_httpx_body_is_framed_by_byte_count(server: RecordingServer) -> None:
    payload = smuggling_body()
    async with (
        trio_pool.open_pool() as pool,
        httpx.AsyncClient(transport=PoolTransport(pool)) as client,
    ):
        r = await client.post(server.url(), content=payload)
        assert r.status_code == 200
        # A streamed body without a length goes out chunked, framed by bytes.
        r = await client.post(server.url("/stream"), content=view_chunks(payload))
        assert r.status_code == 200
        await client.get(server.url("/after"))
        assert server.junk == 0
        assert [req.target for req, _ in server.requests] == [b"/", b"/stream", b"/after"]
        assert [body for _, body in server.requests] == [payload, payload, b""]
        assert dict(server.requests[0][0].headers)[b"content-length"] == b"80"
        assert pool.statistics().connections_created == 1


# -- defect 7: the Host header names the host connected to -------------------------------------


@pytest.fixture
async def resolver() -> LoopbackResolver:
    custom = LoopbackResolver()
    trio.socket.set_custom_hostname_resolver(custom)
    return custom


IDNA_HOST = "faß.de"
IDNA_ASCII = "xn--fa-hia.de"  # IDNA 2008; Python's IDNA 2003 codec says "fass.de"


async def test_idna_host_header_matches_the_connection(
    server: RecordingServer, resolver: LoopbackResolver, client: HTTPClient, pool: ConnectionPool
) -> None:
    await client.request("GET", f"http://{IDNA_HOST}:{server.port}/")
    assert resolver.names == [IDNA_ASCII.encode()]
    host = dict(server.requests[0][0].headers)[b"host"]
    assert host == f"{IDNA_ASCII}:{server.port}".encode()
    # Upper case maps to lower case (UTS 46), as trio does when connecting.
    await client.request("GET", f"http://FAß.DE:{server.port}/")
    assert dict(server.requests[1][0].headers)[b"host"] == host
    assert pool.statistics().connections_created == 1


async def test_invalid_idna_host_is_value_error(client: HTTPClient, pool: ConnectionPool) -> None:
    with pytest.raises(ValueError, match="IDNA"):
        await client.request("GET", "http://a\u200db.de/")  # a zero-width joiner
    assert pool.statistics().connections_created == 0


async def test_idna_host_over_tls_uses_the_same_name_for_sni(
    nursery: trio.Nursery, resolver: LoopbackResolver
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(IDNA_ASCII).configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    recorder = RecordingServer()
    listeners = await nursery.start(
        partial(trio.serve_ssl_over_tcp, recorder.handle, 0, server_context, host=HOST)
    )
    port = listeners[0].transport_listener.socket.getsockname()[1]
    url = f"https://{IDNA_HOST}:{port}/"
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, ssl_context=client_context)
        assert (await client.request("GET", url)).content == b"ok"
        transport = PoolTransport(pool, ssl_context=client_context)
        async with httpx.AsyncClient(transport=transport) as httpx_client:
            assert (await httpx_client.get(url)).content == b"ok"
        hosts = [dict(req.headers)[b"host"] for req, _ in recorder.requests]
        assert hosts == [f"{IDNA_ASCII}:{port}".encode()] * 2
        stats = pool.statistics()
        assert (stats.connections_created, stats.pool_hits) == (1, 1)


async def test_client_default_host_header_replaces_the_automatic_one(
    server: RecordingServer,
) -> None:
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, headers={"Host": "virtual.example"})
        await client.request("GET", server.url())
        await client.request("GET", server.url(), headers={"host": "mine.example"})
        await client.request("POST", server.url(), content=b"x")
        hosts = [[v for n, v in req.headers if n == b"host"] for req, _ in server.requests]
        assert hosts == [[b"virtual.example"], [b"mine.example"], [b"virtual.example"]]


# -- defect 8: CR, LF and TAB in a URL ---------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/a\r\nX-Injected: 1",
        "http://127.0.0.1:{port}/a\nb",
        "http://127.0.0.1:{port}/a\tb",
        "http://127.0.0.1:{port}/?q=\r\n",
        "http://127.0.0.1:{port}/#\t",
        "http://127.0.\t0.1:{port}/",
        "http://127.0.0.1:{port}\n/",
        "ht\ttp://127.0.0.1:{port}/",
        "\nhttp://127.0.0.1:{port}/",
        " http://127.0.0.1:{port}/",
        "http://127.0.0.1:{port}/\x00",
        "http://127.0.0.1:{port}/\x7f",
    ],
)
async def test_control_characters_in_url_are_value_errors(
    server: RecordingServer, url: str, client: HTTPClient, pool: ConnectionPool
) -> None:
    with pytest.raises(ValueError, match="control characters"):
        await client.request("GET", url.format(port=server.port))
    with pytest.raises(ValueError, match="control characters"):
        client.stream("GET", url.format(port=server.port))
    assert pool.statistics().connections_created == 0
    assert server.requests == []


# -- defect 9: every check before any I/O ------------------------------------------------------

BAD_REQUESTS = {
    "Content-Length larger than the body": ({"Content-Length": "5"}, b"abc"),
    "Content-Length smaller than the body": ({"Content-Length": "2"}, b"abc"),
    "Content-Length on a view's item count": ({"Content-Length": "20"}, smuggling_body()),
    "Content-Length with Transfer-Encoding": (
        {"Content-Length": "3", "Transfer-Encoding": "chunked"},
        b"abc",
    ),
    "Transfer-Encoding gzip": ({"Transfer-Encoding": "gzip"}, b"abc"),
    "Transfer-Encoding twice": ([("Transfer-Encoding", "chunked")] * 2, b"abc"),
    "conflicting Content-Lengths": ([("Content-Length", "3"), ("Content-Length", "4")], b"abc"),
    "Content-Length not a number": ({"Content-Length": "+3"}, b"abc"),
    "a header value with CR LF": ({"X-A": "1\r\nX-B: 2"}, b""),
    "a header name with a space": ({"X A": "1"}, b""),
    "an empty header name": ({"": "1"}, b""),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
async def test_bad_request_fails_before_borrowing_a_connection(
    server: RecordingServer, case: str, client: HTTPClient, pool: ConnectionPool
) -> None:
    headers, body = BAD_REQUESTS[case]
    await client.request("GET", server.url())
    before = pool.statistics()
    assert before.idle_connections == 1
    with pytest.raises(ValueError):
        await client.request("POST", server.url(), headers=headers, content=body)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        client.stream("POST", server.url(), headers=headers, content=body)  # type: ignore[arg-type]
    after = pool.statistics()
    assert after.idle_connections == 1
    assert after.connections_closed == 0
    assert after.pool_hits == before.pool_hits
    await client.request("GET", server.url())
    assert pool.statistics().pool_hits == before.pool_hits + 1
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    "case",
    [
        "Content-Length larger than the body",
        "Content-Length smaller than the body",
        "Content-Length with Transfer-Encoding",
    ],
)
async def test_httpx_bad_framing_fails_before_borrowing_a_connection(
    server: RecordingServer, case: str
) -> None:
    headers, body = BAD_REQUESTS[case]
    async with (
        trio_pool.open_pool() as pool,
        httpx.AsyncClient(transport=PoolTransport(pool)) as client,
    ):
        await client.get(server.url())
        with pytest.raises(httpx.LocalProtocolError):
            await client.post(server.url(), headers=headers, content=body)  # type: ignore[arg-type]
        stats = pool.statistics()
        assert (stats.idle_connections, stats.connections_closed) == (1, 0)
        await client.get(server.url())
        assert pool.statistics().pool_hits == 1
        assert len(server.requests) == 2
