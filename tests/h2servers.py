"""Real HTTP/2 peers for the tests, all on 127.0.0.1: hypercorn (TLS with ALPN, and h2c
by prior knowledge), nginx with ``http2`` on TLS, and :class:`H2Server`, a raw h2
server whose misbehaviour each test picks (GOAWAY, RST_STREAM, stream limits, flow
control stalls, garbage, silence).
"""

from __future__ import annotations

import re
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio
import trustme
from h2.errors import ErrorCodes

from trio_pool.http._http2 import H2Connection

from .nginx import Nginx, find_nginx, free_port, open_nginx
from .servers import HOST, start_server

# -- clients ----------------------------------------------------------------------------


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context trusting ``ca`` that offers ALPN ``h2`` only."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def connect_h2(
    port: int, nursery: trio.Nursery, ca: trustme.CA | None = None, **options: Any
) -> H2Connection:
    """Open TCP (and TLS with ALPN ``h2`` when ``ca`` is given) to 127.0.0.1:``port``,
    then an :class:`H2Connection` whose task runs in ``nursery``."""
    tcp = await trio.open_tcp_stream(HOST, port)
    stream: trio.abc.Stream = tcp
    if ca is not None:
        tls = trio.SSLStream(tcp, client_context(ca), server_hostname=HOST)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        assert tls.selected_alpn_protocol() == "h2"
        stream = tls
    return await H2Connection.open(stream, nursery, **options)


# -- hypercorn --------------------------------------------------------------------------


class App:
    """A tiny ASGI app that counts what the server side sees.

    Routes: ``/size/N`` (N bytes), ``/slow/N`` (N bytes in 4 pieces with short sleeps),
    ``/hold`` (answers nothing until the client goes away), ``/echo`` (the request
    body back), anything else ``ok``.
    """

    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests = 0
        self.disconnects = 0
        self.http_versions: set[str] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.requests += 1
        self.http_versions.add(scope["http_version"])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._serve(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _serve(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope["path"]
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if path == "/hold":
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
            return
        if path.startswith("/size/"):
            payload = bytes(int(path[6:]))
        elif path.startswith("/slow/"):
            payload = b"s" * int(path[6:])
        elif path == "/echo":
            payload = body
        else:
            payload = b"ok"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(payload)).encode())],
            }
        )
        if path.startswith("/slow/"):
            quarter = max(1, len(payload) // 4)
            for start in range(0, len(payload), quarter):
                await trio.sleep(0.005)
                await send(
                    {
                        "type": "http.response.body",
                        "body": payload[start : start + quarter],
                        "more_body": True,
                    }
                )
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.body", "body": payload})


def write_cert(cert: trustme.LeafCert, directory: Path) -> tuple[Path, Path]:
    """Write the chain and the key as PEM files; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    chain = directory / "chain.pem"
    key = directory / "key.pem"
    chain.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    return chain, key


async def start_hypercorn(
    nursery: trio.Nursery,
    app: App,
    *,
    cert_files: tuple[Path, Path] | None = None,
    max_concurrent_streams: int = 100,
) -> tuple[int, trio.Event]:
    """Serve ``app`` with hypercorn on trio in ``nursery`` on a free port: TLS with ALPN
    when ``cert_files`` are given, else plain (HTTP/1.1 and h2c by prior knowledge).

    Returns the port and an event that shuts the server down when set.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"{HOST}:0"]
    config.accesslog = None
    config.errorlog = None
    config.loglevel = "CRITICAL"
    config.graceful_timeout = 0.5
    config.h2_max_concurrent_streams = max_concurrent_streams
    if cert_files is not None:
        config.certfile = str(cert_files[0])
        config.keyfile = str(cert_files[1])
    shutdown = trio.Event()
    binds: list[str] = await nursery.start(
        partial(serve, app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
    )
    return int(binds[0].rsplit(":", 1)[1]), shutdown


# -- nginx ------------------------------------------------------------------------------


def nginx_version() -> tuple[int, ...]:
    """The installed nginx's version, e.g. ``(1, 22, 1)``."""
    binary = find_nginx() or "nginx"
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(part) for part in match.groups()) if match else (0, 0, 0)


def nginx_h2_listen(port: int) -> str:
    """The listen directive(s) for HTTP/2 over TLS: ``http2 on;`` since nginx 1.25.1,
    the ``http2`` parameter of ``listen`` before."""
    if nginx_version() >= (1, 25, 1):
        return f"listen {HOST}:{port} ssl; http2 on;"
    return f"listen {HOST}:{port} ssl http2;"


@asynccontextmanager
async def open_nginx_h2(
    tmp_path: Path,
    cert: trustme.LeafCert,
    *,
    max_concurrent_streams: int = 128,
    keepalive_requests: int = 100_000,
) -> AsyncIterator[tuple[Nginx, int]]:
    """nginx (:func:`tests.nginx.open_nginx`) plus a server block with HTTP/2 on TLS.

    It serves ``/files/<name>`` from ``www/files`` (``small`` 2 B, ``mid`` 100 kB,
    ``big`` 4 MB; see :data:`NGINX_FILES`). After ``keepalive_requests`` streams
    nginx sends GOAWAY. Yields the nginx and the TLS port.
    """
    chain, key = write_cert(cert, tmp_path / "certs")
    port = free_port()
    files = tmp_path / "nginx" / "www" / "files"
    files.mkdir(parents=True, exist_ok=True)
    for name, size in NGINX_FILES.items():
        (files / name).write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    server = f"""
    server {{
        {nginx_h2_listen(port)}
        ssl_certificate {chain};
        ssl_certificate_key {key};
        http2_max_concurrent_streams {max_concurrent_streams};
        root {files.parent};
        location /files/ {{ }}
        location = / {{ return 200 "ok"; }}
    }}
"""
    async with open_nginx(
        tmp_path,
        extra_servers=server,
        keepalive_requests=keepalive_requests,
        keepalive_timeout="60s",
    ) as nginx:
        yield nginx, port


NGINX_FILES = {"small": 2, "mid": 100_000, "big": 4_000_000}


# -- a raw h2 server for faults ---------------------------------------------------------


class ServerStream:
    """One request on :class:`H2Server`, for a route to answer."""

    def __init__(self, conn: ServerConnection, stream_id: int, path: str) -> None:
        self.conn = conn
        self.id = stream_id
        self.path = path
        self.body = bytearray()  # the request body (kept unless the server's keep_bodies is off)
        self.size = 0  # request body bytes received
        self.ended = trio.Event()  # the request body is complete
        self.reset = trio.Event()  # the client reset the stream
        self.window = trio.Event()
        self.sent = 0  # body bytes sent
        self.headers: list[tuple[bytes, bytes]] = []  # as decoded (HPACK tuple types kept)

    async def respond(self, body: bytes = b"", status: int = 200) -> None:
        """Send the head, then ``body`` as flow control allows, then END_STREAM."""
        h2c = self.conn.h2
        h2c.send_headers(self.id, [(b":status", str(status).encode())], end_stream=not body)
        if not body:
            self.conn._close_stream(self)  # closed the moment END_STREAM is queued
        await self.conn.flush()
        view = memoryview(body)
        while self.sent < len(body):
            if self.reset.is_set():
                return
            window = min(h2c.local_flow_control_window(self.id), h2c.max_outbound_frame_size)
            if window <= 0:
                self.window = trio.Event()
                await self.window.wait()
                continue
            size = min(window, len(body) - self.sent)
            end = self.sent + size == len(body)
            h2c.send_data(self.id, bytes(view[self.sent : self.sent + size]), end_stream=end)
            self.sent += size
            if end:
                self.conn._close_stream(self)
            await self.conn.flush()

    async def reset_stream(self, code: ErrorCodes = ErrorCodes.INTERNAL_ERROR) -> None:
        self.conn.h2.reset_stream(self.id, code)
        await self.conn.flush()


Route = Callable[[ServerStream], Awaitable[None]]


async def answer_ok(stream: ServerStream) -> None:
    await stream.respond(b"ok")


class ServerConnection:
    """The server side of one connection: an h2 state machine, one reader, a write lock."""

    def __init__(self, server: H2Server, tcp: trio.SocketStream) -> None:
        self.server = server
        self.tcp = tcp
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.lock = trio.Lock()
        self.streams: dict[int, ServerStream] = {}
        self.settings_acked = trio.Event()
        # A peer that vanished without a FIN: it still reads, and sends nothing (not
        # even the PING ACKs h2 queues by itself).
        self.frozen = False

    async def flush(self) -> None:
        async with self.lock:
            data = self.h2.data_to_send()
            if data and not self.frozen:
                try:
                    await self.tcp.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    async def update_settings(self, settings: dict[int, int]) -> None:
        """Send new SETTINGS; return once the client acknowledged them."""
        self.settings_acked = trio.Event()
        self.h2.update_settings(settings)
        await self.flush()
        await self.settings_acked.wait()

    async def goaway(self, last_stream_id: int, code: ErrorCodes = ErrorCodes.NO_ERROR) -> None:
        self.h2.close_connection(error_code=code, last_stream_id=last_stream_id)
        # Keep serving the streams at or below last_stream_id (h2 calls itself closed).
        self.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
        await self.flush()

    def _close_stream(self, stream: ServerStream) -> None:
        if self.streams.pop(stream.id, None) is not None:
            self.server.open -= 1

    async def run(self, nursery: trio.Nursery) -> None:
        server = self.server
        if server.silent:  # read (so we notice the client leaving), never answer
            while await self.tcp.receive_some(65536):
                pass
            return
        local = {}
        if server.max_concurrent_streams is not None:
            local[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = server.max_concurrent_streams
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=local)
        self.h2.initiate_connection()
        await self.flush()
        while True:
            try:
                data = await self.tcp.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                await self.flush()
                return
            for event in events:
                self._dispatch(event, nursery)
            await self.flush()

    def _dispatch(self, event: h2.events.Event, nursery: trio.Nursery) -> None:
        server = self.server
        if isinstance(event, h2.events.RequestReceived):
            headers = dict(event.headers or ())
            path = bytes(headers[b":path"]).decode()
            stream = ServerStream(self, event.stream_id or 0, path)
            stream.headers = list(event.headers or ())
            self.streams[stream.id] = stream
            server.requests += 1
            server.open += 1
            if self.settings_acked.is_set() and server.limit_after_ack is not None:
                server.max_open_after_ack = max(server.max_open_after_ack, server.open)
            server.max_open = max(server.max_open, server.open)
            server.paths.append(path)
            if event.stream_ended is not None:
                stream.ended.set()
            nursery.start_soon(self._serve, stream)
        elif isinstance(event, h2.events.DataReceived):
            server.received += len(event.data or b"")
            found = self.streams.get(event.stream_id or 0)
            if found is not None and event.data:
                found.size += len(event.data)
                if server.keep_bodies:
                    found.body += event.data
                if server.window_updates:
                    self.h2.acknowledge_received_data(event.flow_controlled_length or 0, found.id)
        elif isinstance(event, h2.events.StreamEnded):
            found = self.streams.get(event.stream_id or 0)
            if found is not None:
                found.ended.set()
        elif isinstance(event, h2.events.StreamReset):
            server.resets.append(int(event.error_code or 0))
            found = self.streams.get(event.stream_id or 0)
            if found is not None:
                found.reset.set()
                found.window.set()
                self._close_stream(found)
        elif isinstance(event, h2.events.WindowUpdated):
            for stream in list(self.streams.values()):
                stream.window.set()
        elif isinstance(event, h2.events.SettingsAcknowledged):
            self.settings_acked.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            server.goaways.append(int(event.error_code or 0))

    async def _serve(self, stream: ServerStream) -> None:
        try:
            route = self.server.routes.get(stream.path, self.server.default_route)
            await route(stream)
        finally:
            self._close_stream(stream)


class H2Server:
    """A raw h2 server whose behaviour a test sets; it counts what it sees.

    Attributes:
        routes: Path to an async function answering a :class:`ServerStream`.
        open: Streams open right now (server side); ``max_open`` the most at once.
        max_open_after_ack: The most open at once among requests that arrived after the
            client acknowledged a later SETTINGS (see :meth:`ServerConnection.update_settings`).
        resets: Error codes of the RST_STREAMs received. ``goaways`` those of GOAWAYs.
        silent: Accept and never send a byte (not even SETTINGS).
        window_updates: Hand flow-control credit back for request bodies.
        keep_bodies: Keep each request body in :attr:`ServerStream.body` (off: only
            counted in :attr:`ServerStream.size`, for memory tests).
    """

    def __init__(
        self,
        *,
        max_concurrent_streams: int | None = None,
        silent: bool = False,
        window_updates: bool = True,
        keep_bodies: bool = True,
        routes: dict[str, Route] | None = None,
    ) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self.silent = silent
        self.window_updates = window_updates
        self.keep_bodies = keep_bodies
        self.routes: dict[str, Route] = routes or {}
        self.default_route: Route = answer_ok
        self.open = 0
        self.max_open = 0
        self.limit_after_ack: int | None = None
        self.max_open_after_ack = 0
        self.requests = 0
        self.received = 0
        self.paths: list[str] = []
        self.resets: list[int] = []
        self.goaways: list[int] = []
        self.connections: list[ServerConnection] = []

    async def handle(self, tcp: trio.SocketStream) -> None:
        conn = ServerConnection(self, tcp)
        self.connections.append(conn)
        try:
            async with trio.open_nursery() as nursery:
                await conn.run(nursery)
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(tcp)

    async def start(self, nursery: trio.Nursery) -> int:
        """Serve on a free 127.0.0.1 port in ``nursery``; return the port."""
        return await start_server(nursery, self.handle)


async def garbage_after_settings(tcp: trio.SocketStream) -> None:
    """Answer the preface with valid SETTINGS, then send bytes that are no frame."""
    h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    h2c.initiate_connection()
    try:
        await tcp.receive_some(65536)
        await tcp.send_all(h2c.data_to_send())
        await trio.sleep(0.05)
        # A frame header claiming a 16 MB frame of an unknown type on stream 0, then junk.
        await tcp.send_all(b"\xff\xff\xff\x00\x00\x00\x00\x00\x00" + b"\x00garbage" * 8)
        with trio.move_on_after(5):
            while await tcp.receive_some(65536):
                pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(tcp)
