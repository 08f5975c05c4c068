"""PoolTransport as a complete httpx.AsyncHTTPTransport: each constructor argument and
request/response extension through httpx.AsyncClient, next to httpx's own transport on
the same real loopback server where the behaviour is httpx's convention."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization

import trio_pool
from trio_pool.httpx import PoolTransport, open_client

from .h2servers import App, start_hypercorn, write_cert
from .httpx_pair import Transport, ours, theirs
from .servers import HOST, refused_port, start_server

both = pytest.mark.parametrize("make", [ours, theirs], ids=["pool", "httpx"])


# -- a TLS-capable h11 server that says what it saw ---------------------------------------


@dataclass
class Seen:
    """What the server saw: per request, method, target, client certificate, SNI."""

    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0


async def start_seen(
    nursery: trio.Nursery, context: ssl.SSLContext | None = None, delay: float = 0.0
) -> Seen:
    """An HTTP/1.1 server answering ``200 Fine`` with a JSON body of what it saw."""
    seen = Seen()
    if context is not None:

        def sni(obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            seen.server_names.append(name)

        context.sni_callback = sni

    async def handle(raw: trio.SocketStream) -> None:
        seen.connections += 1
        seen.open_now += 1
        seen.most_open = max(seen.most_open, seen.open_now)
        try:
            await serve(raw)
        finally:
            seen.open_now -= 1

    async def serve(raw: trio.SocketStream) -> None:
        stream: trio.abc.Stream = raw
        peer: Any = None
        if context is not None:
            tls = trio.SSLStream(raw, context, server_side=True)
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError:
                return
            peer = tls.getpeercert()
            stream = tls
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                conn.receive_data(bytes(data))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                said = {
                    "method": request.method.decode(),
                    "target": request.target.decode(),
                    "peer": peer["subjectAltName"][0][1] if peer else None,
                }
                seen.requests.append(said)
                await trio.sleep(delay)
                body = json.dumps(said).encode()
                head = h11.Response(
                    status_code=200,
                    reason=b"Fine",
                    headers=[(b"content-length", b"%d" % len(body))],
                )
                data = b"".join(
                    conn.send(event) or b""
                    for event in (head, h11.Data(data=body), h11.EndOfMessage())
                )
                await stream.send_all(data)
                conn.start_next_cycle()
            elif not isinstance(event, h11.Data):
                return

    seen.port = await start_server(nursery, handle)
    return seen


@pytest.fixture
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server context for 127.0.0.1 and example.test, asking for a client certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "example.test").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


@pytest.fixture
async def plain(nursery: trio.Nursery) -> Seen:
    return await start_seen(nursery)


@pytest.fixture
async def tls(nursery: trio.Nursery, server_context: ssl.SSLContext) -> Seen:
    return await start_seen(nursery, server_context)


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def client_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("client.example")


# -- constructor arguments --------------------------------------------------------------


@both
async def test_verify_forms_as_httpx(
    make: Transport, tls: Seen, ca: trustme.CA, ca_file: str
) -> None:
    url = f"https://{HOST}:{tls.port}/"
    context = ssl.create_default_context()
    ca.configure_trust(context)
    for verify in (ca_file, context, False):
        with (
            pytest.warns(DeprecationWarning, match="verify")
            if make is theirs and isinstance(verify, str)
            else nullcontext()
        ):
            async with make(verify=verify) as client:
                assert (await client.get(url)).status_code == 200, verify
    async with make(verify=True) as client:  # the test CA is trusted nowhere
        with pytest.raises(httpx.ConnectError):
            await client.get(url)


@both
async def test_cert_forms_as_httpx(
    make: Transport, tls: Seen, ca_file: str, client_cert: trustme.LeafCert, tmp_path: Path
) -> None:
    url = f"https://{HOST}:{tls.port}/"
    combined = tmp_path / "both.pem"
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(combined))
    chain, key, locked = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "locked.pem"
    for blob in client_cert.cert_chain_pems:
        blob.write_to_path(str(chain), append=True)
    client_cert.private_key_pem.write_to_path(str(key))
    private = serialization.load_pem_private_key(client_cert.private_key_pem.bytes(), None)
    locked.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    forms: list[Any] = [str(combined), (str(chain), str(key)), (str(chain), str(locked), "s3cret")]
    for cert in forms:
        with pytest.warns(DeprecationWarning, match="cert") if make is theirs else nullcontext():
            async with make(verify=ssl.create_default_context(cafile=ca_file), cert=cert) as client:
                response = await client.get(url)
        assert response.json()["peer"] == "client.example"
    async with make(verify=ssl.create_default_context(cafile=ca_file)) as client:
        assert (await client.get(url)).json()["peer"] is None


def test_bad_arguments_raise_before_io(ca_file: str) -> None:
    pool: Any = object.__new__(trio_pool.ConnectionPool)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"verify": 3}, TypeError, "verify"),
        ({"verify": True, "verify_cert": False}, ValueError, "verify"),
        ({"cert": 5}, TypeError, "cert"),
        ({"cert": ("c.pem", "k.pem", "hunter2", "x")}, TypeError, "cert"),
        ({"http1": "yes"}, TypeError, "http1"),
        ({"http1": False, "http2": False}, ValueError, "http1"),
        ({"retries": True}, TypeError, "retries"),
        ({"retries": 1.5}, TypeError, "retries"),
        ({"retries": -1}, ValueError, "retries"),
        ({"limits": {"max_connections": 1}}, TypeError, "limits"),
        ({"local_address": "localhost"}, ValueError, "local_address"),
        ({"local_address": 127}, TypeError, "local_address"),
        ({"socket_options": 5}, TypeError, "socket_options"),
        ({"socket_options": [(1, 2)]}, TypeError, "socket option"),
    ]
    for kwargs, error, name in cases:
        with pytest.raises(error, match=name) as info:
            PoolTransport(pool, **kwargs)
        assert "hunter2" not in str(info.value)


async def test_limits_are_the_pools() -> None:
    async with trio_pool.open_pool() as pool:
        with pytest.raises(ValueError, match="max_total=5"):
            PoolTransport(pool, limits=httpx.Limits(max_connections=5))
        with pytest.raises(ValueError, match="max_keepalive_connections=3"):
            PoolTransport(
                pool, limits=httpx.Limits(max_connections=None, max_keepalive_connections=3)
            )
    async with trio_pool.open_pool(max_total=5, max_size=5, max_idle_time=2.0) as pool:
        PoolTransport(pool, limits=httpx.Limits(max_connections=5, keepalive_expiry=2.0))


@pytest.mark.parametrize("make", [open_client, theirs], ids=["pool", "httpx"])
async def test_limits_max_connections_as_httpx(make: Transport, nursery: trio.Nursery) -> None:
    seen = await start_seen(nursery, delay=0.05)
    url = f"http://{HOST}:{seen.port}/"
    async with make(limits=httpx.Limits(max_connections=2)) as client, trio.open_nursery() as inner:
        for _ in range(6):
            inner.start_soon(client.get, url)
    assert (len(seen.requests), seen.most_open) == (6, 2)


@both
async def test_trust_env_tls_variables(
    make: Transport, tls: Seen, ca_file: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"https://{HOST}:{tls.port}/"
    async with make(trust_env=True) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(url)
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    async with make(trust_env=True) as client:
        assert (await client.get(url)).status_code == 200


async def test_trust_env_sslkeylogfile(
    tls: Seen, ca_file: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    keylog = tmp_path / "keys.log"
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    monkeypatch.setenv("SSLKEYLOGFILE", str(keylog))
    async with ours(trust_env=True) as client:
        assert (await client.get(f"https://{HOST}:{tls.port}/")).status_code == 200
    assert b"CLIENT_" in keylog.read_bytes()  # TLS 1.3 secrets, Wireshark's format


@both
async def test_http2_only_is_prior_knowledge(make: Transport, nursery: trio.Nursery) -> None:
    pytest.importorskip("h2")
    port, shutdown = await start_hypercorn(nursery, App())
    try:
        async with make(http1=False, http2=True) as client:
            response = await client.get(f"http://{HOST}:{port}/")
        assert (response.status_code, response.http_version) == (200, "HTTP/2")
    finally:
        shutdown.set()


@both
async def test_retries_retry_connects(make: Transport) -> None:
    events: list[str] = []

    async def trace(name: str, info: dict[str, Any]) -> None:
        events.append(name)

    async with make(retries=2) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://{HOST}:{refused_port()}/", extensions={"trace": trace})
    assert events.count("connection.connect_tcp.started") == 3
    assert events.count("connection.connect_tcp.failed") == 3


# -- extensions ---------------------------------------------------------------------------


async def _trace_names(make: Transport, url: str, **kwargs: Any) -> list[list[str]]:
    """The trace events of two requests (a new connection, then reused), each as its
    name and the keys of its info (but ``http2.receive_remote_settings``, which
    PoolTransport does not report: its connection's own task reads the SETTINGS)."""
    names: list[list[str]] = []

    async def trace(name: str, info: dict[str, Any]) -> None:
        if not name.startswith("http2.receive_remote_settings"):
            names[-1].append(f"{name} {sorted(info)}")

    async with make(**kwargs) as client:
        for content in (None, b"data"):
            names.append([])
            response = await client.post(url, content=content, extensions={"trace": trace})
            assert response.status_code == 200
    return names


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_trace_events_as_httpx(scheme: str, plain: Seen, tls: Seen, ca_file: str) -> None:
    port = plain.port if scheme == "http" else tls.port
    url = f"{scheme}://{HOST}:{port}/"
    verify = ssl.create_default_context(cafile=ca_file)
    expected = await _trace_names(theirs, url, verify=verify)
    assert await _trace_names(ours, url, verify=verify) == expected
    assert expected[0][0].startswith("connection.connect_tcp.started")
    assert not any(name.startswith("connection.") for name in expected[1])  # reused
    assert expected[1][-1].startswith("http11.response_closed.complete")


async def test_trace_events_when_http2_falls_back(tls: Seen, ca_file: str) -> None:
    """http2=True to a server that answers ALPN with HTTP/1.1 only: httpcore's
    http11 events, from the connection the HTTP/2 path opened."""
    pytest.importorskip("h2")
    url = f"https://{HOST}:{tls.port}/"
    kwargs: dict[str, Any] = {"verify": ssl.create_default_context(cafile=ca_file)}
    expected = await _trace_names(theirs, url, http2=True, **kwargs)
    assert await _trace_names(ours, url, http2=True, **kwargs) == expected
    assert any(name.startswith("http11.send_request_headers") for name in expected[0])


@pytest.fixture
async def h2_port(nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path) -> AsyncIterator[int]:
    """hypercorn on TLS, ALPN ``h2`` (and ``http/1.1``), certificate for 127.0.0.1."""
    pytest.importorskip("h2")
    cert_files = write_cert(ca.issue_cert(HOST), tmp_path / "h2")
    port, shutdown = await start_hypercorn(nursery, App(), cert_files=cert_files)
    yield port
    shutdown.set()


async def test_http2_trace_events_as_httpx(h2_port: int, ca_file: str) -> None:
    url = f"https://{HOST}:{h2_port}/"
    kwargs: dict[str, Any] = {"verify": ssl.create_default_context(cafile=ca_file)}
    expected = await _trace_names(theirs, url, http2=True, **kwargs)
    assert await _trace_names(ours, url, http2=True, **kwargs) == expected
    assert "http2.send_connection_init.complete ['return_value']" in expected[0]
    assert "http2.send_request_headers.started ['request', 'stream_id']" in expected[1]
    reused = expected[1]
    assert not any(name.startswith(("connection.", "http2.send_connection")) for name in reused)
    assert expected[1][-1].startswith("http2.response_closed.complete")


async def _h2_trace_values(make: Transport, url: str, ca_file: str) -> list[tuple[str, Any]]:
    """The stream ids and the head's status and header names two requests report."""
    events: list[tuple[str, Any]] = []

    async def trace(name: str, info: dict[str, Any]) -> None:
        if "stream_id" in info:
            events.append((name, info["stream_id"]))
        if name == "http2.receive_response_headers.complete":
            status, headers = info["return_value"]
            events.append((name, (status, [n for n, _ in headers if n != b"date"])))

    async with make(http2=True, verify=ssl.create_default_context(cafile=ca_file)) as client:
        for _ in range(2):
            response = await client.get(url, extensions={"trace": trace})
            assert response.http_version == "HTTP/2"
    return events


async def test_http2_trace_info_as_httpx(h2_port: int, ca_file: str) -> None:
    """The values httpcore reports: stream ids, the head's status and headers."""
    url = f"https://{HOST}:{h2_port}/"
    expected = await _h2_trace_values(theirs, url, ca_file)
    assert await _h2_trace_values(ours, url, ca_file) == expected
    assert ("http2.response_closed.started", 3) in expected


async def _h2_failed_head(make: Transport, url: str, ca_file: str) -> list[str]:
    """The response-side events of a request whose head never comes (read timeout)."""
    events: list[str] = []

    async def trace(name: str, info: dict[str, Any]) -> None:
        if name.startswith(("http2.receive_response", "http2.response")):
            events.append(f"{name} {sorted(info)}")

    async with make(http2=True, verify=ssl.create_default_context(cafile=ca_file)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(url, extensions={"trace": trace}, timeout=httpx.Timeout(5, read=0.2))
    return events


async def test_http2_trace_of_a_failed_head_as_httpx(h2_port: int, ca_file: str) -> None:
    """A read timeout waiting for the head: ``.failed``, then ``response_closed``."""
    url = f"https://{HOST}:{h2_port}/hold"
    expected = await _h2_failed_head(theirs, url, ca_file)
    assert await _h2_failed_head(ours, url, ca_file) == expected
    assert expected[1] == "http2.receive_response_headers.failed ['exception']"


@both
async def test_target_extension_options_star(make: Transport, plain: Seen) -> None:
    async with make() as client:
        response = await client.request(
            "OPTIONS", f"http://{HOST}:{plain.port}/", extensions={"target": b"*"}
        )
    assert response.json()["target"] == "*"


@both
async def test_sni_hostname_extension(make: Transport, tls: Seen, ca_file: str) -> None:
    async with make(verify=ssl.create_default_context(cafile=ca_file)) as client:
        response = await client.get(
            f"https://{HOST}:{tls.port}/", extensions={"sni_hostname": "example.test"}
        )
    assert response.status_code == 200
    assert tls.server_names == ["example.test"]


@both
async def test_reason_phrase_and_http_version(make: Transport, plain: Seen) -> None:
    async with make() as client:
        response = await client.get(f"http://{HOST}:{plain.port}/")
    assert (response.reason_phrase, response.http_version) == ("Fine", "HTTP/1.1")
    assert response.extensions["reason_phrase"] == b"Fine"


@both
async def test_network_stream_extra_info(make: Transport, tls: Seen, ca_file: str) -> None:
    async with (
        make(verify=ssl.create_default_context(cafile=ca_file)) as client,
        client.stream("GET", f"https://{HOST}:{tls.port}/") as response,
    ):
        stream = response.extensions["network_stream"]
        assert stream.get_extra_info("server_addr") == (HOST, tls.port)
        client_addr = stream.get_extra_info("client_addr")
        assert client_addr[0] == HOST
        assert client_addr[1] != tls.port
        assert stream.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        assert stream.get_extra_info("is_readable") in (True, False)
        assert stream.get_extra_info("no such thing") is None
        await response.aread()


async def _h2_extra_info(make: Transport, url: str, ca_file: str) -> dict[str, Any]:
    """What ``get_extra_info`` says on an HTTP/2 response, in comparable form."""
    async with (
        make(http2=True, verify=ssl.create_default_context(cafile=ca_file)) as client,
        client.stream("GET", url) as response,
    ):
        assert response.http_version == "HTTP/2"
        stream = response.extensions["network_stream"]
        tls = stream.get_extra_info("ssl_object")
        client_addr = stream.get_extra_info("client_addr")
        said = {
            "server_addr": stream.get_extra_info("server_addr"),
            "client_host": client_addr[0],
            "tls": (tls.version(), tls.selected_alpn_protocol()),
            "is_readable": type(stream.get_extra_info("is_readable")),
            "other": stream.get_extra_info("no such thing"),
        }
        await response.aread()
    return said


async def test_http2_network_stream_extra_info(h2_port: int, ca_file: str) -> None:
    url = f"https://{HOST}:{h2_port}/"
    expected = await _h2_extra_info(theirs, url, ca_file)
    assert await _h2_extra_info(ours, url, ca_file) == expected
    assert expected["server_addr"] == (HOST, h2_port)
    assert expected["tls"][1] == "h2"


async def test_http2_network_stream_is_not_for_reading(h2_port: int, ca_file: str) -> None:
    """A shared connection's stream: reading, writing or closing it would break the
    other requests on it."""
    async with (
        ours(http2=True, verify=ssl.create_default_context(cafile=ca_file)) as client,
        client.stream("GET", f"https://{HOST}:{h2_port}/") as response,
    ):
        stream = response.extensions["network_stream"]
        for attempt in (stream.read(10), stream.write(b"x"), stream.aclose()):
            with pytest.raises(RuntimeError, match="shared HTTP/2"):
                await attempt
        assert await response.aread() == b"ok"


async def echo_websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app: a WebSocket that echoes text back, with the path."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": scope["path"] + ":" + message["text"]})


@pytest.fixture
async def ws_port(nursery: trio.Nursery) -> AsyncIterator[int]:
    port, shutdown = await start_hypercorn(nursery, echo_websocket)  # type: ignore[arg-type]
    yield port
    shutdown.set()


@both
async def test_websocket_over_httpx_ws(make: Transport, ws_port: int) -> None:
    httpx_ws = pytest.importorskip("httpx_ws")
    async with make() as client:
        for round in range(2):
            async with httpx_ws.aconnect_ws(f"http://{HOST}:{ws_port}/chat", client) as ws:
                await ws.send_text(f"hello {round}")
                assert await ws.receive_text() == f"/chat:hello {round}"
        response = await client.get(f"http://{HOST}:{ws_port}/")  # plain HTTP still works
        assert response.status_code in (400, 404, 426, 500)


async def test_upgraded_connection_leaves_the_pool(ws_port: int) -> None:
    httpx_ws = pytest.importorskip("httpx_ws")
    async with (
        trio_pool.open_pool() as pool,
        httpx.AsyncClient(transport=PoolTransport(pool)) as client,
    ):
        async with httpx_ws.aconnect_ws(f"http://{HOST}:{ws_port}/x", client) as ws:
            await ws.send_text("a")
            assert await ws.receive_text() == "/x:a"
            stats = pool.statistics()
            assert (stats.active_connections, stats.idle_connections) == (1, 0)
        stats = pool.statistics()
        assert (stats.active_connections, stats.idle_connections) == (0, 0)
        assert stats.connections_closed == 1


async def connect_then_echo(stream: trio.SocketStream) -> None:
    """A CONNECT peer: answers ``200`` (with the first tunnel bytes right behind the
    head), then echoes what comes through the tunnel."""
    conn = h11.Connection(h11.SERVER)
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(bytes(await stream.receive_some(65536)))
    assert isinstance(event, h11.Request)
    assert (event.method, event.target) == (b"CONNECT", b"example.test:443")
    head = conn.send(h11.Response(status_code=200, headers=[])) or b""
    await stream.send_all(head + b"early:")
    while data := await stream.receive_some(65536):
        await stream.send_all(data)


@both
async def test_connect_hands_the_stream_over(make: Transport, nursery: trio.Nursery) -> None:
    port = await start_server(nursery, connect_then_echo)
    async with (
        make() as client,
        client.stream(
            "CONNECT", f"http://{HOST}:{port}/", extensions={"target": b"example.test:443"}
        ) as response,
    ):
        assert response.status_code == 200
        stream = response.extensions["network_stream"]
        await stream.write(b"ping")
        got = b""
        while len(got) < len(b"early:ping"):
            got += await stream.read(100, timeout=5)
        assert got == b"early:ping"
        await stream.aclose()


# -- open_client ----------------------------------------------------------------------------


async def test_open_client_one_line(plain: Seen) -> None:
    async with open_client(base_url=f"http://{HOST}:{plain.port}", headers={"x-a": "1"}) as client:
        assert isinstance(client, httpx.AsyncClient)
        response = await client.get("/path")
        assert response.json()["target"] == "/path"
        response = await client.get("/again")
    assert plain.connections == 1  # pooled
    with pytest.raises(TypeError, match="transport"):
        async with open_client(transport=httpx.AsyncHTTPTransport()):
            pass  # pragma: no cover


async def test_open_client_on_a_pool_of_yours(plain: Seen) -> None:
    async with trio_pool.open_pool(max_size=4) as pool:
        async with open_client(pool=pool) as client:
            assert (await client.get(f"http://{HOST}:{plain.port}/")).status_code == 200
        assert pool.statistics().idle_connections == 1  # the pool outlives the client
        with pytest.raises(ValueError, match="max_total=3"):
            async with open_client(pool=pool, limits=httpx.Limits(max_connections=3)):
                pass  # pragma: no cover
