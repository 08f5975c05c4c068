"""HTTP/1.1 on pooled connections: :class:`HTTPClient`.

h11 does all the parsing and framing, synchronously; this module only moves bytes
between h11 and the pooled connection, and decides whether the connection goes back
to the pool. Each pooled socket keeps one :class:`h11.Connection` for its whole life:
after a complete exchange h11's ``start_next_cycle()`` readies it for the next request,
whoever borrows the socket next.
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Final, TypeAlias

import h11
import trio

from .._connection import PooledConnection
from .._exceptions import PoolExhausted
from .._pool import ConnectionPool
from .._proxy import Proxy, as_proxy
from .._proxy_env import environment_proxy
from .._redact import shape_of
from .._route import Route
from .._trace import Trace
from ._body import chunk_bytes, close_iterator
from ._exceptions import (
    HTTPError,
    LocalProtocolError,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    RequestTimeout,
    StreamClosed,
    WriteError,
    WriteTimeout,
)
from ._h2_client import H2Exchange, request_h2
from ._models import Response, Target, check_method, h11_request, parse_url
from ._timeouts import DEFAULT_TIMEOUT, USE_CLIENT_DEFAULT, Timeout, UseClientDefault, to_timeout

__all__ = [
    "IDEMPOTENT_METHODS",
    "Exchange",
    "HTTPClient",
    "StreamContext",
    "open_exchange",
    "route_target",
]

#: Methods retried once on a new connection when a reused one turned out dead.
IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})
_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})
_RECEIVE_SIZE: Final = 65536
#: The most one write sends under a write limit (which restarts for each write).
_WRITE_PIECE: Final = 65536
_CACHE_SIZE: Final = 1024
_NEED_DATA: Final = h11.NEED_DATA
_IDLE: Final = h11.IDLE
_DONE: Final = h11.DONE
_END: Final = h11.EndOfMessage()
_VERSIONS: Final = {b"1.1": "1.1", b"1.0": "1.0"}

HeaderTypes: TypeAlias = (
    Mapping[str, str] | Mapping[bytes, bytes] | Sequence[tuple[str | bytes, str | bytes]]
)
#: What ``content`` may be: a buffer (sent as its bytes, framed by their count, and
#: replayable), or an async iterable of bytes (streamed, chunked unless a
#: ``Content-Length`` is given, never replayed).
ContentTypes: TypeAlias = bytes | bytearray | memoryview | AsyncIterable[bytes]
#: A prepared body: the bytes, or the async iterable to stream.
Body: TypeAlias = bytes | AsyncIterable[object]
#: The variables ``trust_env`` reads (plus ``REQUEST_METHOD``, for the httpoxy guard).
_PROXY_VARIABLES: Final = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})


def _to_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeError:
            pass  # raised below: the codec's error would quote the value
        raise ValueError(f"{what} must be latin-1 text (not shown: it may be a secret)")
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def _header_list(headers: object) -> list[tuple[bytes, bytes]]:
    """``headers`` as ``(lowercased name, value)`` byte pairs.

    Raises:
        TypeError: Not a mapping or a sequence of pairs of str or bytes.
    """
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        items = list(headers.items())
    elif isinstance(headers, Sequence) and not isinstance(headers, (str, bytes)):
        items = list(headers)
    else:
        raise TypeError(f"headers must be a mapping or a list of pairs, not {type(headers)}")
    result = []
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(f"headers must be (name, value) pairs, not {shape_of(item)}")
        result.append(
            (_to_bytes(item[0], "header name").lower(), _to_bytes(item[1], "header value"))
        )
    return result


def body_bytes(content: object) -> bytes:
    """``content`` as the bytes that go on the wire.

    A buffer is framed by its byte count, never by its item count (a ``memoryview``
    cast to ``"I"`` has a quarter as many items as bytes: a ``Content-Length`` from
    ``len()`` would let the rest of the body be read as another request). Views of any
    format or layout are copied in C order, and a ``bytearray`` is copied too, so a
    change made while the request waits for a connection cannot change what is sent.

    Raises:
        TypeError: ``content`` is not bytes, bytearray or memoryview.
        ValueError: A released memoryview.
    """
    if type(content) is bytes:
        return content
    if isinstance(content, (bytes, bytearray, memoryview)):
        try:
            return bytes(content)
        except ValueError as exc:
            raise ValueError(f"content cannot be read: {exc}") from None
    raise TypeError(
        "content must be bytes, bytearray, memoryview or an async iterable of bytes,"
        f" not {type(content).__name__}"
    )


def body_stream(content: object) -> AsyncIterable[object] | None:
    """``content`` if it is a body to stream (an async iterable that is not a buffer),
    else ``None`` (then :func:`body_bytes` applies)."""
    if isinstance(content, (bytes, bytearray, memoryview)):
        return None
    if hasattr(type(content), "__aiter__"):
        return content  # type: ignore[return-value]
    return None


def check_framing(event: h11.Request, body: bytes | None) -> None:
    """Refuse a request whose framing headers cannot describe ``body``.

    h11 has already checked the syntax of the headers (one ``Content-Length`` value,
    ``Transfer-Encoding`` only ``chunked``); this checks them against the body, before
    any connection is borrowed. ``body`` is ``None`` for a streamed body, whose length
    is known only once sent (h11 then holds it to its ``Content-Length``).

    Raises:
        ValueError: ``Content-Length`` differs from the body's byte count, both
            ``Content-Length`` and ``Transfer-Encoding`` are given (a message a
            server and a proxy could frame differently), or a body has neither.
    """
    length: bytes | None = None
    chunked = False
    for name, value in event.headers:
        if name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            chunked = True
    if length is not None:
        if chunked:
            raise ValueError(
                "headers must not have both Content-Length and Transfer-Encoding"
                " (servers could frame the body differently)"
            )
        if body is not None and int(length) != len(body):
            raise ValueError(
                f"headers say Content-Length: {length.decode()}, but the body is {len(body)} bytes"
            )
    elif (body is None or body) and not chunked:
        raise ValueError("a body needs a Content-Length or Transfer-Encoding: chunked header")


def routed_target(
    target: Target, path: bytes, fields: list[tuple[bytes, bytes]], names: set[bytes]
) -> bytes:
    """The request target for ``path`` on ``target``'s route, adding what the route
    needs to ``fields`` (``names``: the lowercased names already there).

    To an ``http://`` proxy (``forward``): the absolute form, with the proxy's
    ``Proxy-Authorization`` and headers unless the request has its own. Otherwise
    ``path`` as it is: tunnels and Unix sockets carry origin-form requests.
    """
    if not target.forward:
        return path
    assert target.proxy is not None
    fields.extend(h for h in target.proxy.request_headers if h[0].lower() not in names)
    return b"http://" + target.host_header + path


def proxy_environment() -> dict[str, str] | None:
    """The proxy variables of :data:`os.environ` now (``None`` if none is set), checked.

    Read once, when a client is made, as httpx does.

    Raises:
        ValueError: A proxy variable holds an unusable URL (the message names it).
    """
    environ = {
        name: value
        for name, value in os.environ.items()
        if name.lower() in _PROXY_VARIABLES or name == "REQUEST_METHOD"
    }
    if not any(name.lower() != "no_proxy" and name != "REQUEST_METHOD" for name in environ):
        return None
    check = {name: value for name, value in environ.items() if name.lower() != "no_proxy"}
    for scheme in ("http", "https"):
        environment_proxy(scheme, "", None, check)
    return environ


def check_uds(uds: object) -> str | None:
    """``uds`` checked: ``None`` or a non-empty str path.

    Raises:
        TypeError: Not a str (a :class:`os.PathLike` is refused too: pass ``str(path)``).
        ValueError: Empty, or with a NUL byte.
    """
    if uds is None:
        return None
    if not isinstance(uds, str):
        raise TypeError(
            f"uds must be a str path or None, not {type(uds).__name__}"
            + (" (pass str(path))" if isinstance(uds, os.PathLike) else "")
        )
    if not uds or "\x00" in uds[1:]:
        raise ValueError(f"uds must be a non-empty path without NUL bytes, got {uds!r}")
    return uds


def _read_timeout(target: Target, limit: float, what: str) -> ReadTimeout:
    return ReadTimeout(
        f"no data from {target.host}:{target.port} within {limit} s (read timeout, {what})"
    )


class _ConnectionLost(Exception):
    """The connection failed before any byte of the response came: safe to retry an
    idempotent request (the server may have closed it while idle)."""

    def __init__(self, error: HTTPError) -> None:
        super().__init__(error)
        self.error = error


class Exchange:
    """One request and response on one borrowed connection, until the body ends.

    The response body is read from here; at its end the connection is released if
    h11 can start a next cycle on it, and discarded otherwise (or on any failure).

    ``done`` is True once the exchange gave its connection back (exactly once);
    ``complete`` only when the whole body arrived. A read after the exchange was
    abandoned (``done`` but not ``complete``) raises :class:`StreamClosed`, naming why.
    """

    __slots__ = (
        "_client",
        "_conn",
        "_h11",
        "closed_because",
        "complete",
        "done",
        "read_timeout",
        "response",
        "target",
    )

    def __init__(
        self,
        client: HTTPClient,
        conn: PooledConnection,
        protocol: h11.Connection,
        response: h11.Response,
        target: Target,
    ) -> None:
        self._client = client
        self._conn = conn
        self._h11 = protocol
        self.response: h11.Response = response
        self.target: Target = target
        self.read_timeout: float | None = None
        self.done: bool = False
        self.complete: bool = False
        self.closed_because: str = ""

    def make_response(self, content: bytes | None) -> Response:
        event = self.response
        version = _VERSIONS.get(event.http_version) or event.http_version.decode("ascii")
        return Response(
            event.status_code,
            event.reason,
            event.headers,
            version,
            content,
            None if content is not None else self,
        )

    def closed_error(self) -> StreamClosed:
        return StreamClosed(
            f"the response body from {self._where()} was not read to its end and is"
            f" gone: {self.closed_because}"
        )

    async def _next_data(self) -> bytes | None:
        """The next non-empty piece of the body, or ``None`` at its end (the connection
        is then released or discarded). Any error abandons the exchange.

        Raises:
            StreamClosed: The exchange was abandoned before the body's end.
        """
        if self.done:
            await trio.lowlevel.checkpoint()
            if self.complete:
                return None
            raise self.closed_error()
        h = self._h11
        try:
            while True:
                event = h.next_event()
                kind = type(event)
                if kind is h11.Data:
                    data: bytes = event.data  # type: ignore[union-attr]
                    if data:
                        return data
                elif kind is h11.EndOfMessage:
                    break
                elif event is _NEED_DATA:
                    await self._receive()
                else:  # pragma: no cover - h11 sends nothing else inside a body
                    raise RemoteProtocolError(f"unexpected {kind.__name__} in a response body")
        except h11.RemoteProtocolError as exc:
            self.abandon(f"the server broke the protocol ({exc})")
            raise RemoteProtocolError(f"{self._where()}: {exc}") from exc
        except StreamClosed:
            raise
        except RequestTimeout as exc:
            self.abandon(f"a read timed out ({exc})")
            raise
        except HTTPError as exc:
            self.abandon(f"a read failed ({exc})")
            raise
        except BaseException as exc:
            self.abandon(f"a read was interrupted ({type(exc).__name__})")
            raise
        self._finish()
        return None

    async def read_all(self) -> bytes:
        """Read the rest of the body, then release or discard the connection."""
        chunks: list[bytes] = []
        while (data := await self._next_data()) is not None:
            chunks.append(data)
        if len(chunks) == 1 and type(chunks[0]) is bytes:
            return chunks[0]
        return b"".join(chunks)

    async def read_chunk(self) -> bytes:
        """The next piece of the body, or ``b""`` at its end (the connection is then
        released or discarded).

        Raises:
            StreamClosed: The exchange was abandoned before the body's end.
        """
        data = await self._next_data()
        return b"" if data is None else bytes(data)

    async def _receive(self) -> None:
        conn = self._conn
        limit = self.read_timeout
        try:
            if limit is None:
                data = await conn.receive_some(_RECEIVE_SIZE)
            else:
                with trio.CancelScope() as scope:
                    # Set inside, as _Timer does: a read that need not wait never fails.
                    scope.deadline = trio.current_time() + limit
                    data = await conn.receive_some(_RECEIVE_SIZE)
                if scope.cancelled_caught:
                    raise _read_timeout(self.target, limit, "reading the body")
        except trio.BrokenResourceError as exc:
            raise ReadError(f"{self._where()}: reading the response failed: {exc}") from exc
        except trio.ClosedResourceError as exc:
            if self.done:  # another task abandoned the exchange during this read
                raise self.closed_error() from exc
            raise  # pragma: no cover - the connection is only closed by abandoning
        if self.done:  # abandoned by another task while the bytes came in
            raise self.closed_error()
        self._h11.receive_data(data)  # type: ignore[arg-type]  # bytearray works too

    def _where(self) -> str:
        return f"{self.target.host}:{self.target.port}"

    def _finish(self) -> None:
        self.done = self.complete = True
        h = self._h11
        if h.our_state is _DONE and h.their_state is _DONE and not h.trailing_data[0]:
            h.start_next_cycle()
            self._client._pool.release(self._conn)
        else:
            self._client._forget(self._conn)
            self._client._pool.discard(self._conn)

    @property
    def connection(self) -> PooledConnection:
        """The borrowed connection the exchange runs on."""
        return self._conn

    def detach(self) -> tuple[PooledConnection, bytes]:
        """Take the connection out of HTTP for good (after ``101 Switching Protocols``
        or a 2xx to ``CONNECT``): it stays borrowed, never released to the pool; the
        caller closes it (``aclose()`` discards it). Returns it with the bytes the
        server sent after the head, already read."""
        self.done = self.complete = True  # the HTTP body is empty
        self.closed_because = "the connection was taken over (protocol switched)"
        self._client._forget(self._conn)
        return self._conn, bytes(self._h11.trailing_data[0])

    def abandon(self, because: str = "it was abandoned") -> None:
        """Give up on the exchange: the connection is discarded (no-op once done).

        Args:
            because: Why, for the :class:`StreamClosed` of later reads.
        """
        if not self.done:
            self.done = True
            self.closed_because = because
            self._client._forget(self._conn)
            self._client._pool.discard(self._conn)


def _require_h2() -> None:
    """Import h2 (the ``http2`` extra), or say how to install it: when the client is
    built, not on its first connection."""
    try:
        import h2  # noqa: F401
    except ImportError as exc:  # pragma: no cover - tested in a fresh interpreter
        raise ImportError(
            "http2=True and http2='prior-knowledge' need the h2 package:"
            " pip install 'trio-pool[http2]'"
        ) from exc


class HTTPClient:
    """An HTTP/1.1 client on a :class:`~trio_pool.ConnectionPool`.

    Connections are borrowed per request and returned when the response is complete
    and both sides allow keep-alive; otherwise (``Connection: close``, HTTP/1.0, a body
    cut short, any error or cancellation) they are discarded. When a *reused*
    connection fails before any byte of the response arrives (the server closed it
    while it sat idle), an idempotent request is retried once on a new connection.

    The client holds no resources of its own: the pool does. Many clients may share
    one pool.

    Args:
        pool: The pool to borrow connections from.
        headers: Headers sent with every request (a request's own headers of the same
            name replace them). A ``Host`` header here replaces the automatic one.
        timeout: Default ``timeout`` of :meth:`request` and :meth:`stream`: a
            :class:`Timeout`, or a number of seconds for each phase (waiting for a
            connection from the pool, connecting, writing, each read), as httpx has
            it. The default is 5 seconds, httpx's; ``None`` sets no limits of its own
            (the pool's ``acquire_timeout`` and ``connection_timeout`` still apply).
        verify_cert: For https: check the server's certificate and host name.
        ssl_context: For https: the :class:`ssl.SSLContext` to use.
        retry: Retry idempotent requests once when a reused connection was dead
            (requests whose body is streamed are never retried).
        proxy: Send every request through this proxy: a URL ``str``
            (``http://[user:pass@]host:port``, ``socks5://`` or ``socks5h://``), a
            :class:`~trio_pool.Proxy`, or an ``httpx.URL`` / ``httpx.Proxy``.
            ``http://`` URLs go to an HTTP proxy in absolute form on connections
            pooled per proxy; ``https://`` URLs through a ``CONNECT`` tunnel with TLS to
            the origin inside it, pooled per (proxy, origin); through SOCKS5 both are
            tunnelled. ``Proxy-Authorization`` comes from the proxy URL's credentials.
        uds: Connect to this Unix socket path instead of the URL's host and port (the
            URL still gives the ``Host`` header, and TLS for ``https://``), pooled per
            path.
        trust_env: Take the proxy from ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``
            and ``NO_PROXY`` as httpx does, read when the client is made. Off by
            default; ignored when ``proxy`` or ``uds`` is given.
        http2: ``True`` (httpx's flag): https connections offer ALPN ``h2`` and
            ``http/1.1`` and the server's choice decides; requests to one origin then
            share HTTP/2 connections, a stream each, up to the server's
            ``SETTINGS_MAX_CONCURRENT_STREAMS`` (another connection opens when all
            are full, within ``max_size``). ``"prior-knowledge"``: plain ``http://``
            URLs speak HTTP/2 at once too (h2c, no upgrade), https as with ``True``.
            Needs the ``h2`` extra (``trio-pool[http2]``; without it the constructor
            raises :exc:`ImportError`). Not through proxies (those requests stay
            HTTP/1.1). A streamed request body is streamed over HTTP/2 too, as DATA
            frames as it is produced, within flow control, and touched only once a
            connection is chosen (and its protocol known).

    Raises:
        TypeError: ``pool`` is not a :class:`~trio_pool.ConnectionPool`, or an argument
            has the wrong type.
        ValueError: ``timeout`` is negative or NaN; an unparsable or unsupported proxy
            URL (in ``proxy``, or in a proxy variable with ``trust_env``); an empty
            ``uds``; ``proxy`` and ``uds`` both given; an ``httpx.Proxy`` with an
            ``ssl_context`` (that is for https:// proxies, which are not supported).
        ImportError: ``http2`` is set and the ``h2`` package is not installed.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        headers: HeaderTypes | None = None,
        timeout: float | Timeout | None = DEFAULT_TIMEOUT,
        verify_cert: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        retry: bool = True,
        proxy: str | Proxy | object | None = None,
        uds: str | None = None,
        trust_env: bool = False,
        http2: bool | str = False,
    ) -> None:
        if http2 not in (False, True, "prior-knowledge") or type(http2) not in (bool, str):
            raise ValueError(f"http2 must be False, True or 'prior-knowledge', got {http2!r}")
        if not isinstance(pool, ConnectionPool):
            raise TypeError(f"pool must be a trio_pool.ConnectionPool, not {type(pool).__name__}")
        if http2:
            _require_h2()
        if not isinstance(verify_cert, bool):
            raise TypeError(f"verify_cert must be a bool, not {type(verify_cert).__name__}")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, not {type(ssl_context)}")
        if not isinstance(trust_env, bool):
            raise TypeError(f"trust_env must be a bool, not {type(trust_env).__name__}")
        self._proxy = as_proxy(proxy, "proxy")
        self._uds = check_uds(uds)
        if self._proxy is not None and self._uds is not None:
            raise ValueError("proxy and uds exclude each other: a connection takes one route")
        self._environ = (
            proxy_environment() if trust_env and self._proxy is None and self._uds is None else None
        )
        self._pool = pool
        self._http2 = http2
        self._headers = _header_list(headers)
        self._timeout = to_timeout(timeout)
        self._verify_cert = verify_cert
        self._ssl_context = ssl_context
        self._retry = bool(retry)
        # One h11 state machine per pooled socket, kept while the socket lives.
        self._protocols: dict[PooledConnection, h11.Connection] = {}
        self._prune_at = 256
        self._targets: dict[str, Target] = {}
        self._prepared: dict[tuple[str, str], tuple[Target, h11.Request, bool, Body]] = {}
        self._routes: dict[tuple[object, ...], Route] = {}

    @property
    def pool(self) -> ConnectionPool:
        """The pool this client borrows from."""
        return self._pool

    # -- public API ---------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: HeaderTypes | None = None,
        content: ContentTypes = b"",
        timeout: float | Timeout | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> Response:
        """Send a request and read the whole response.

        Args:
            method: The method, e.g. ``"GET"``.
            url: An ``http://`` or ``https://`` URL.
            headers: Extra headers, as a mapping or ``(name, value)`` pairs. ``Host``
                and ``Content-Length`` are added unless given.
            content: The request body: bytes, or any bytearray or memoryview (of any
                format or layout), sent as its bytes and framed by their count. It is
                copied when the request is made (bytes are not). Or an async iterable
                of bytes, streamed as it produces them: chunked, unless the headers
                give a ``Content-Length`` (then it must produce exactly that many
                bytes, else :class:`LocalProtocolError`). The write limit applies to
                each wait to send; the time the iterable takes to produce a piece is
                not limited. The iterable is first asked for a piece once a connection
                is chosen. A streamed request is never retried (over HTTP/2, unless
                the server refused it before a piece was asked for).
            timeout: The limits of each phase, as for the client (a :class:`Timeout`,
                a number of seconds for every phase, or ``None`` for none); defaults to
                the client's. A limit is per phase, and for writes and reads per wait,
                as httpx's: a server that keeps sending, or keeps taking an upload, is
                never cut off; the wait for the response head counts from when the
                request is sent. ``0`` means no waiting, as ``acquire(timeout=0)`` (see
                :class:`Timeout`).

        Returns:
            The complete :class:`Response`; its connection is already back in the pool
            (or closed).

        Raises:
            ValueError: A bad method, URL, header, body framing or timeout (before any
                I/O).
            TypeError: An argument of the wrong type (before any I/O); a piece of a
                streamed ``content`` that is not bytes (when met: the connection is
                discarded).
            LocalProtocolError: A streamed ``content`` produced more or fewer bytes
                than its ``Content-Length`` (over HTTP/1.1 the connection is
                discarded; over HTTP/2 the stream is reset).
            trio_pool.ProxyError: The proxy refused the tunnel (``status`` says how)
                or failed (a :class:`~trio_pool.ConnectError`).
            PoolTimeout: No connection became free within the pool limit (it is a
                :class:`~trio_pool.PoolExhausted` too; the pool counts it in
                ``acquire_timeouts``).
            trio_pool.ConnectTimeout: Connecting took longer than the connect limit.
            WriteTimeout: A wait to send (over HTTP/2 also for flow-control window)
                took longer than the write limit (over HTTP/2 the stream is reset,
                the connection carries on).
            ReadTimeout: A read took longer than the read limit.
            WriteError: The connection failed while sending.
            ReadError: The connection failed while reading.
            RemoteProtocolError: The server sent something that is not HTTP/1.1, or
                closed the connection before the response was complete.
            trio_pool.ConnectError: Connecting failed (``PoolClosed`` from the pool
                passes through too).
        """
        target, event, idempotent, body = self._prepare(method, url, headers, content)
        limits = self._timeout if timeout is USE_CLIENT_DEFAULT else to_timeout(timeout)
        exchange = await self._open(target, event, body, idempotent, limits)
        if type(exchange) is H2Exchange:
            # A small HTTP/2 body often arrives with its head: no further checkpoint.
            data = exchange.read_complete_nowait()
            if data is None:
                data = await exchange.read_all()
        else:
            data = await exchange.read_all()
        return exchange.make_response(data)

    def stream(
        self,
        method: str,
        url: str,
        *,
        headers: HeaderTypes | None = None,
        content: ContentTypes = b"",
        timeout: float | Timeout | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> StreamContext:
        """Send a request and stream the response body: ``async with`` the result.

        .. code-block:: python

            async with client.stream("GET", url) as response:
                async for chunk in response.aiter_bytes():
                    ...

        Leaving the block with the body read to its end releases the connection; with
        the body unread or half read, or by an exception, discards it.

        Args:
            method: As for :meth:`request`.
            url: As for :meth:`request`.
            headers: As for :meth:`request`.
            content: As for :meth:`request`.
            timeout: As for :meth:`request`; the read limit applies to each read of
                the body too.

        Raises:
            ValueError: Bad arguments, right away.
            TypeError: Arguments of the wrong type, right away.

        The errors of :meth:`request` are raised on entering the block and from reads.
        """
        target, event, idempotent, body = self._prepare(method, url, headers, content)
        limits = self._timeout if timeout is USE_CLIENT_DEFAULT else to_timeout(timeout)
        return StreamContext(self, target, event, body, idempotent, limits)

    # -- internals ------------------------------------------------------------------

    def _route(self, target: Target) -> Target:
        """Set how ``target`` is reached: the client's Unix socket or proxy, or the
        environment's proxy for it (``trust_env``)."""
        if self._uds is not None:
            target.uds = self._uds
            return target
        proxy = self._proxy
        if proxy is None and self._environ is not None:
            scheme = "https" if target.tls else "http"
            proxy = environment_proxy(scheme, target.host, target.port, self._environ)
        if proxy is not None:
            target.proxy = proxy
            target.forward = not target.tls and not proxy.is_socks
        return target

    def _prepare(
        self, method: str, url: str, headers: object, content: object
    ) -> tuple[Target, h11.Request, bool, Body]:
        """Check the arguments and build the h11 request (cached for the plain case).

        Everything about the request is checked here, before any I/O: the URL, the
        method, the headers, and the framing of the body (see :func:`check_framing`).
        This is the one place a request is prepared, whatever carries it: its route
        (see :meth:`_route`) decides the request target (absolute form to an
        ``http://`` proxy) and adds the proxy's headers.
        """
        plain = headers is None and type(content) is bytes and not content
        if plain:
            prepared = self._prepared.get((method, url))
            if prepared is not None:
                return prepared
        target = self._targets.get(url) if isinstance(url, str) else None
        if target is None:
            target = self._route(parse_url(url))
            if len(self._targets) >= _CACHE_SIZE:
                self._targets.clear()
            self._targets[url] = target
        method_bytes = check_method(method)
        stream = body_stream(content)
        body: Body = body_bytes(content) if stream is None else stream
        extra = _header_list(headers)
        names = {name for name, _ in extra}
        defaults = [h for h in self._headers if h[0] not in names]
        fields: list[tuple[bytes, bytes]] = []
        if b"host" not in names and not any(name == b"host" for name, _ in defaults):
            fields.append((b"host", target.host_header))
        fields.extend(defaults)
        fields.extend(extra)
        names.update(name for name, _ in defaults)
        request_target = routed_target(target, target.target, fields, names)
        if b"content-length" not in names and b"transfer-encoding" not in names:
            if stream is not None:
                fields.append((b"transfer-encoding", b"chunked"))
            elif body or method_bytes in _BODY_METHODS:
                fields.append((b"content-length", b"%d" % len(body)))  # type: ignore[arg-type]
        event = h11_request(method_bytes, request_target, fields)
        check_framing(event, None if stream is not None else body)  # type: ignore[arg-type]
        prepared = (target, event, method_bytes in IDEMPOTENT_METHODS, body)
        if plain:
            if len(self._prepared) >= _CACHE_SIZE:
                self._prepared.clear()
            self._prepared[(method, url)] = prepared
        return prepared

    def _forget(self, conn: PooledConnection) -> None:
        self._protocols.pop(conn, None)

    def _protocol(self, conn: PooledConnection) -> h11.Connection:
        protocol = self._protocols.get(conn)
        if protocol is None or protocol.our_state is not _IDLE or protocol.their_state is not _IDLE:
            protocol = h11.Connection(h11.CLIENT)
            protocols = self._protocols
            if len(protocols) >= self._prune_at:
                # Sockets the pool closed while idle: forget them, amortized O(1).
                for dead in [c for c in protocols if c.is_closed]:
                    del protocols[dead]
                self._prune_at = max(256, 2 * len(protocols))
            protocols[conn] = protocol
        return protocol

    def _route_for(self, target: Target, http2: str | None = None) -> Route:
        """The pool route of ``target``'s connections: under the HTTP/1.1 clients' keys
        (raw borrowers' connections are never shared with HTTP clients), or with
        ``http2`` a key that may multiplex (``"h2"``, ``"h2c"``; never proxied). Made
        (and checked) once per distinct target."""
        where: tuple[object, ...] = (http2, target.host, target.port, target.tls, target.sni)
        where += (target.proxy, target.uds, target.forward)
        route = self._routes.get(where)
        if route is not None:
            return route
        proxy = None if http2 is not None else target.proxy
        if target.forward and http2 is None:
            assert proxy is not None
            route = Route(proxy.host, proxy.port, proxy=proxy, forward=True, http=True)
        elif target.tls:
            route = Route(
                target.host,
                target.port,
                True,
                target.sni or target.host,
                self._verify_cert,
                self._ssl_context,
                proxy,
                target.uds,
                http2=http2,
                http=http2 is None,
            )
        else:  # (h2c: the client's TLS settings are for its https requests)
            route = Route(
                target.host,
                target.port,
                proxy=proxy,
                uds=target.uds,
                http2=http2,
                http=http2 is None,
            )
        if len(self._routes) >= _CACHE_SIZE:
            self._routes.clear()
        self._routes[where] = route
        return route

    async def _acquire(self, target: Target, new: bool, limits: Timeout) -> PooledConnection:
        """Borrow a connection for ``target`` from the pool's HTTP keys, directly or
        through the proxy or Unix socket (the pool opens the tunnel)."""
        pool = self._pool
        try:
            conn = await pool.acquire_on(
                pool.lookup(self._route_for(target)), limits.pool, limits.connect, new=new
            )
        except PoolExhausted as exc:
            raise PoolTimeout(f"{exc} (pool timeout)") from exc
        assert type(conn) is PooledConnection  # an HTTP/1.1 key never multiplexes
        return conn

    async def _open(
        self,
        target: Target,
        event: h11.Request,
        content: Body,
        idempotent: bool,
        limits: Timeout,
        *,
        first: PooledConnection | None = None,
        trace: Trace | None = None,
    ) -> Exchange | H2Exchange:
        """Borrow a connection, send the request, read the response head.

        Each phase has its own limit (see :class:`Timeout`). Retries once on a new
        connection when a reused one dies before answering, the method is idempotent
        and the body is bytes (a streamed body cannot be sent again). Any failure or
        cancellation discards the connection.
        """
        if (
            self._http2
            and first is None
            and target.proxy is None
            and (target.tls or self._http2 == "prior-knowledge")
        ):
            return await request_h2(self, target, event, content, idempotent, limits, trace)
        pool = self._pool
        retried = False
        replayable = type(content) is bytes
        while True:
            if first is not None:
                conn, first = first, None
            else:
                conn = await self._acquire(target, retried, limits)
            try:
                protocol = self._protocol(conn)
                if not replayable:
                    timer = _Timer(limits.write, limits.read)
                    with timer.scope:
                        response = await self._send_stream(
                            conn,
                            protocol,
                            target,
                            event,
                            content,  # type: ignore[arg-type]
                            timer,
                            trace,
                        )
                    if timer.scope.cancelled_caught:
                        raise timer.error(target)
                    exchange = Exchange(self, conn, protocol, response, target)
                    exchange.read_timeout = limits.read
                    return exchange
                try:
                    data = protocol.send(event) or b""
                    if content:
                        data += protocol.send(h11.Data(data=content)) or b""  # type: ignore[arg-type]
                    data += protocol.send(_END) or b""
                except h11.LocalProtocolError as exc:  # pragma: no cover - checked before
                    raise ValueError(f"cannot send this request: {exc}") from exc
                if limits.write is None and limits.read is None:
                    response = await self._send(conn, protocol, target, data, None, trace)
                else:
                    # One cancel scope for the write and the head, its deadline moved
                    # per phase: a scope per read would cost more than the rest.
                    timer = _Timer(limits.write, limits.read)
                    with timer.scope:
                        response = await self._send(conn, protocol, target, data, timer, trace)
                    if timer.scope.cancelled_caught:
                        raise timer.error(target)
            except _ConnectionLost as lost:
                self._forget(conn)
                pool.discard(conn)
                if idempotent and replayable and conn.reused and not retried and self._retry:
                    retried = True
                    continue
                lost.error.connection_reused = conn.reused
                raise lost.error from lost.__cause__
            except BaseException:
                self._forget(conn)
                pool.discard(conn)
                raise
            exchange = Exchange(self, conn, protocol, response, target)
            exchange.read_timeout = limits.read
            return exchange

    @classmethod
    async def _send(
        cls,
        conn: PooledConnection,
        protocol: h11.Connection,
        target: Target,
        data: bytes,
        timer: _Timer | None,
        trace: Trace | None = None,
    ) -> h11.Response:
        """Send the request and read the response head.

        With a write limit, a request larger than :data:`_WRITE_PIECE` goes out in
        writes of that size, the limit restarting for each: it limits each wait for
        the server to take more, as on HTTP/2, not the whole of a large body. With a
        ``trace``, the head and the body (sent in one write) report httpcore's
        ``http11.send_request_headers.*`` then ``.send_request_body.*``.
        """
        try:
            if trace is not None:
                await trace("http11.send_request_headers.started", {})
            if timer is None:
                await conn.send_all(data)
            elif len(data) <= _WRITE_PIECE or timer.write is None:
                timer.writing()
                await conn.send_all(data)
            else:
                await _write(conn, data, timer)
            if trace is not None:
                await trace("http11.send_request_headers.complete", {})
                await trace("http11.send_request_body.started", {})
                await trace("http11.send_request_body.complete", {})
        except trio.BrokenResourceError as exc:
            error = WriteError(f"{target.host}:{target.port}: sending failed: {exc}")
            # The server may have answered before it stopped reading (a 413 to an
            # upload, say) and closed: its answer is waiting to be read. h11 has taken
            # the whole request already, so it reads a response as usual; the socket is
            # dead, so this never waits on the network for long (and fails at once for
            # TLS, whose stream is broken after a failed send).
            try:
                return await cls._receive_head(conn, protocol, target, timer)
            except (_ConnectionLost, HTTPError):
                raise _ConnectionLost(error) from exc
        return await cls._receive_head(conn, protocol, target, timer, trace)

    @classmethod
    async def _send_stream(
        cls,
        conn: PooledConnection,
        protocol: h11.Connection,
        target: Target,
        event: h11.Request,
        body: AsyncIterable[object],
        timer: _Timer,
        trace: Trace | None = None,
    ) -> h11.Response:
        """Send the head, then each piece of ``body`` as it is produced (h11 frames
        them, chunked or held to the ``Content-Length``), then read the response head.

        The write limit runs per write (see :func:`_write`); the iterable's own time
        is not limited. An iterator left before its end (a failure, an early answer)
        is closed.
        """
        where = f"{target.host}:{target.port}"
        sending = False
        iterator: AsyncIterator[object] | None = None
        try:
            if trace is not None:
                await trace("http11.send_request_headers.started", {})
            data = protocol.send(event) or b""
            sending = True
            await _write(conn, data, timer)
            sending = False
            if trace is not None:
                await trace("http11.send_request_headers.complete", {})
                await trace("http11.send_request_body.started", {})
            iterator = aiter(body)
            while True:
                timer.producing()
                try:
                    piece = await anext(iterator)
                except StopAsyncIteration:
                    iterator = None
                    break
                data = chunk_bytes(piece)
                if not data:
                    continue
                try:
                    data = protocol.send(h11.Data(data=data)) or b""
                except h11.LocalProtocolError as exc:
                    raise LocalProtocolError(
                        f"{where}: content produced more bytes than its Content-Length ({exc})"
                    ) from exc
                sending = True
                await _write(conn, data, timer)
                sending = False
            try:
                data = protocol.send(_END) or b""
            except h11.LocalProtocolError as exc:
                raise LocalProtocolError(
                    f"{where}: content produced fewer bytes than its Content-Length ({exc})"
                ) from exc
            if data:
                sending = True
                await _write(conn, data, timer)
                sending = False
            if trace is not None:
                await trace("http11.send_request_body.complete", {})
        except trio.BrokenResourceError as exc:
            if not sending:  # raised by the iterable itself: its own error
                raise
            error = WriteError(f"{where}: sending failed: {exc}")
            # As in _send: the server may have answered before it stopped reading.
            try:
                return await cls._receive_head(conn, protocol, target, timer)
            except (_ConnectionLost, HTTPError):
                raise _ConnectionLost(error) from exc
        finally:
            if iterator is not None:
                await close_iterator(iterator)
        return await cls._receive_head(conn, protocol, target, timer, trace)

    @staticmethod
    async def _receive_head(
        conn: PooledConnection,
        protocol: h11.Connection,
        target: Target,
        timer: _Timer | None,
        trace: Trace | None = None,
    ) -> h11.Response:
        if trace is not None:
            await trace("http11.receive_response_headers.started", {})
        got_bytes = False
        try:
            while True:
                event = protocol.next_event()
                if event is _NEED_DATA:
                    if timer is not None:
                        timer.reading()
                    try:
                        data = await conn.receive_some(_RECEIVE_SIZE)
                    except trio.BrokenResourceError as exc:
                        error = ReadError(
                            f"{target.host}:{target.port}: reading the response failed: {exc}"
                        )
                        if got_bytes:
                            raise error from exc
                        raise _ConnectionLost(error) from exc
                    if not data and not got_bytes:
                        raise _ConnectionLost(
                            RemoteProtocolError(
                                f"{target.host}:{target.port} closed the connection"
                                " without sending a response"
                            )
                        )
                    got_bytes = True
                    protocol.receive_data(data)  # type: ignore[arg-type]  # bytearray works too
                    continue
                kind = type(event)
                if kind is h11.Response:
                    if trace is not None:
                        await _trace_head(trace, event)  # type: ignore[arg-type]
                    return event  # type: ignore[return-value]
                if event.status_code == 101:  # type: ignore[union-attr]
                    # Switching protocols: the head is all; the stream is the caller's.
                    if trace is not None:
                        await _trace_head(trace, event)  # type: ignore[arg-type]
                    return event  # type: ignore[return-value]
                if kind is not h11.InformationalResponse:  # pragma: no cover - h11 forbids
                    raise RemoteProtocolError(f"unexpected {kind.__name__} before the response")
        except h11.RemoteProtocolError as exc:
            raise RemoteProtocolError(f"{target.host}:{target.port}: {exc}") from exc


# -- the internal interface of trio_pool's adapters (PoolTransport) -------------------


def route_target(client: HTTPClient, target: Target) -> Target:
    """Set how ``target`` is reached by ``client``'s requests: its Unix socket or
    proxy, or the environment's proxy (``trust_env``). Internal: for
    :class:`trio_pool.httpx.PoolTransport`, which builds its own targets."""
    return client._route(target)


async def open_exchange(
    client: HTTPClient,
    target: Target,
    event: h11.Request,
    content: Body,
    idempotent: bool,
    limits: Timeout,
    trace: Trace | None = None,
) -> Exchange | H2Exchange:
    """Send a prepared request on ``client``'s pool and read the response head (see
    ``HTTPClient._open``: per-phase limits, one retry on a dead reused connection).
    Internal: for :class:`trio_pool.httpx.PoolTransport`."""
    return await client._open(target, event, content, idempotent, limits, trace=trace)


async def _trace_head(trace: Trace, event: h11.Response) -> None:
    """``http11.receive_response_headers.complete``, with httpcore's return value."""
    value = (event.http_version, event.status_code, event.reason, list(event.headers))
    await trace("http11.receive_response_headers.complete", {"return_value": value})


async def _write(conn: PooledConnection, data: bytes, timer: _Timer) -> None:
    """Send ``data`` in writes of at most :data:`_WRITE_PIECE` bytes, the write limit
    restarting for each: it limits each wait for the server to take more (as on
    HTTP/2, where it limits each wait for window), never a steady upload as a whole."""
    if len(data) <= _WRITE_PIECE or timer.write is None:
        timer.writing_piece()
        await conn.send_all(data)
        return
    view = memoryview(data)
    for start in range(0, len(data), _WRITE_PIECE):
        timer.writing_piece()
        await conn.send_all(view[start : start + _WRITE_PIECE])


class _Timer:
    """The write and read limits of sending a request and reading its head, in one
    cancel scope whose deadline moves with the phase.

    Moving a deadline costs about as much as the rest of a small request's client
    work, so the scope starts with the write deadline, and the read deadline replaces
    it only where the two differ by more than a millisecond (the common single
    ``timeout`` and a quick write: the read may then end up to 1 ms early).
    """

    __slots__ = ("read", "reading_now", "scope", "write")

    def __init__(self, write: float | None, read: float | None) -> None:
        self.write = write
        self.read = read
        self.reading_now = False
        # A zero write limit is set after entering (in writing()): a scope entered past
        # its deadline would fail a write that need not wait.
        first = math.inf if not write else trio.current_time() + write
        self.scope: trio.CancelScope = trio.CancelScope(deadline=first)

    def writing(self) -> None:
        if self.write == 0:
            self.scope.deadline = trio.current_time()

    def writing_piece(self) -> None:
        """One write of a streamed body: the write limit starts again."""
        write = self.write
        self.scope.deadline = math.inf if write is None else trio.current_time() + write

    def producing(self) -> None:
        """The streamed body's iterable is producing the next piece: no limit."""
        self.scope.deadline = math.inf

    def reading(self) -> None:
        self.reading_now = True
        read = self.read
        deadline = math.inf if read is None else trio.current_time() + read
        if abs(deadline - self.scope.deadline) > 0.001 or (deadline == math.inf) != (
            self.scope.deadline == math.inf
        ):
            self.scope.deadline = deadline

    def error(self, target: Target) -> RequestTimeout:
        if self.reading_now:
            assert self.read is not None
            return _read_timeout(target, self.read, "waiting for the response head")
        return WriteTimeout(
            f"sending the request to {target.host}:{target.port} took longer than"
            f" {self.write} s (write timeout)"
        )


class StreamContext:
    """What :meth:`HTTPClient.stream` returns: ``async with`` it to get the
    :class:`Response` with its body still to read."""

    __slots__ = ("_client", "_content", "_event", "_exchange", "_idempotent", "_limits", "_target")

    def __init__(
        self,
        client: HTTPClient,
        target: Target,
        event: h11.Request,
        content: Body,
        idempotent: bool,
        limits: Timeout,
    ) -> None:
        self._client = client
        self._target = target
        self._event = event
        self._content = content
        self._idempotent = idempotent
        self._limits = limits
        self._exchange: Exchange | H2Exchange | None = None

    async def __aenter__(self) -> Response:
        if self._exchange is not None:
            raise RuntimeError("this stream() context was entered already")
        exchange = await self._client._open(
            self._target, self._event, self._content, self._idempotent, self._limits
        )
        self._exchange = exchange
        return exchange.make_response(None)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._exchange is not None:
            self._exchange.abandon(
                "the stream() block exited before the body's end (read it inside the block)"
                if exc_type is None
                else f"the stream() block exited by {exc_type.__name__}"
            )
