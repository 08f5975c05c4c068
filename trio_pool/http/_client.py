"""HTTP on pooled connections: :class:`HTTPClient`.

The client checks and prepares a request (once, whatever carries it), picks a
protocol connection for it (:func:`~trio_pool.http._connect.connect`: HTTP/1.1 or a
stream of HTTP/2, after ALPN), and speaks to it only through
:class:`~trio_pool.http._interfaces.HTTPConnectionInterface`; the protocols live in
:mod:`trio_pool.http._http11` and :mod:`trio_pool.http._h2_client`.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Final, TypeAlias

import h11

from .._pool import ConnectionPool
from .._proxy import Proxy, as_proxy
from .._proxy_env import environment_proxy
from .._redact import shape_of
from .._route import SocketOption, check_socket
from .._trace import Trace
from ._body import Body
from ._connect import connect
from ._h2_client import MODES
from ._interfaces import BodyReader, Unprocessed
from ._models import Response, Target, check_method, h11_request, parse_url
from ._timeouts import DEFAULT_TIMEOUT, USE_CLIENT_DEFAULT, Timeout, UseClientDefault, to_timeout

__all__ = ["IDEMPOTENT_METHODS", "HTTPClient", "StreamContext", "open_exchange", "route_target"]

#: Methods retried once on a new connection when a reused one turned out dead.
IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})
_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})
_CACHE_SIZE: Final = 1024
_VERSIONS: Final = {b"1.1": "1.1", b"1.0": "1.0"}

HeaderTypes: TypeAlias = (
    Mapping[str, str] | Mapping[bytes, bytes] | Sequence[tuple[str | bytes, str | bytes]]
)
#: What ``content`` may be: a buffer (sent as its bytes, framed by their count, and
#: replayable), or an async iterable of bytes (streamed, chunked unless a
#: ``Content-Length`` is given, never replayed).
ContentTypes: TypeAlias = bytes | bytearray | memoryview | AsyncIterable[bytes]
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
        local_address: The source IP address of its connections (httpx's
            ``local_address``); not with ``uds``.
        socket_options: ``(level, option, value)`` tuples set on each new socket right
            after it connected (httpcore's ``socket_options``). Connections with other
            socket settings are pooled apart.

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
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
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
        self._socket = check_socket(local_address, socket_options, self._uds)
        if self._proxy is not None and self._uds is not None:
            raise ValueError("proxy and uds exclude each other: a connection takes one route")
        self._environ = (
            proxy_environment() if trust_env and self._proxy is None and self._uds is None else None
        )
        self._pool = pool
        self._http2 = http2
        self._h2_mode: str | None = MODES[http2] if http2 else None
        self._headers = _header_list(headers)
        self._timeout = to_timeout(timeout)
        self._verify_cert = verify_cert
        self._ssl_context = ssl_context
        self._retry = bool(retry)
        self._targets: dict[str, Target] = {}
        self._prepared: dict[tuple[str, str], tuple[Target, h11.Request, bool, Body]] = {}

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
        # A small HTTP/2 body often arrives with its head: no further checkpoint.
        data = exchange.read_complete_nowait()
        if data is None:
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

    async def _open(
        self,
        target: Target,
        event: h11.Request,
        content: Body,
        idempotent: bool,
        limits: Timeout,
        *,
        trace: Trace | None = None,
    ) -> BodyReader:
        """Choose a connection (the protocol after ALPN), send the request, read the
        response head.

        Each phase has its own limit (see :class:`Timeout`). A request the server did
        not process is sent again as its protocol allows (see
        :class:`~trio_pool.http._interfaces.Unprocessed`): over HTTP/1.1 once, on a new
        connection, when a reused one died before answering, the method is idempotent
        and the body is bytes (and ``retry`` is on); over HTTP/2 up to twice, any
        method, unless a streamed body was started.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                connection = await connect(
                    self._pool,
                    target,
                    self._h2_mode,
                    self._verify_cert,
                    self._ssl_context,
                    attempt > 1,
                    limits,
                    self._socket,
                )
                return await connection.handle_request(
                    target, event, content, idempotent, limits, trace
                )
            except Unprocessed as exc:
                if attempt >= exc.attempts or (exc.optional and not self._retry):
                    raise exc.error from exc.__cause__


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
        self._exchange: BodyReader | None = None

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
) -> BodyReader:
    """Send a prepared request on ``client``'s pool and read the response head (see
    ``HTTPClient._open``: per-phase limits, the protocol chosen after ALPN, retries of
    requests the server did not process). Internal: for
    :class:`trio_pool.httpx.PoolTransport`."""
    return await client._open(target, event, content, idempotent, limits, trace=trace)
