"""httpx on a trio_pool: :class:`PoolTransport`.

.. code-block:: python

    import httpx
    import trio_pool
    from trio_pool.httpx import PoolTransport

    async with trio_pool.open_pool() as pool:
        async with httpx.AsyncClient(transport=PoolTransport(pool)) as client:
            response = await client.get("http://127.0.0.1:8080/")

Needs the ``httpx`` extra (``pip install 'trio-pool[httpx]'``); ``import trio_pool``
alone never imports httpx. Requests go through :mod:`trio_pool.http` (h11), with its
keep-alive decisions and its safe retry of idempotent requests; response bodies are
streamed; errors become httpx's exception types.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Final

try:
    import httpx
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError("trio_pool.httpx needs httpx: pip install 'trio-pool[httpx]'") from _exc

import h11
import trio

from ._exceptions import (
    ConnectError,
    ConnectTimeout,
    PoolClosed,
    PoolError,
    PoolExhausted,
    ProxyError,
)
from ._pool import ConnectionPool
from ._proxy import Proxy
from .http._client import (
    IDEMPOTENT_METHODS,
    Body,
    Exchange,
    HTTPClient,
    body_bytes,
    body_stream,
    check_framing,
    routed_target,
)
from .http._exceptions import (
    LocalProtocolError,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    StreamClosed,
    StreamConsumed,
    WriteError,
    WriteTimeout,
)
from .http._h2_client import H2Exchange
from .http._h2_exceptions import RequestNotProcessed
from .http._models import Target, authority
from .http._timeouts import NO_LIMIT, Timeout

__all__ = ["PoolTransport"]

_DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}

# Most specific first: ConnectTimeout is a ConnectError, PoolTimeout a RequestTimeout.
_ERRORS: Final[tuple[tuple[type[BaseException], type[httpx.TransportError]], ...]] = (
    (PoolTimeout, httpx.PoolTimeout),
    (PoolExhausted, httpx.PoolTimeout),
    (ConnectTimeout, httpx.ConnectTimeout),
    (ProxyError, httpx.ProxyError),
    (ConnectError, httpx.ConnectError),
    (LocalProtocolError, httpx.LocalProtocolError),
    (WriteTimeout, httpx.WriteTimeout),
    (ReadTimeout, httpx.ReadTimeout),
    (WriteError, httpx.WriteError),
    (ReadError, httpx.ReadError),
    (RemoteProtocolError, httpx.RemoteProtocolError),
    # Refused (REFUSED_STREAM, GOAWAY) on every try: httpcore's type for it.
    (RequestNotProcessed, httpx.RemoteProtocolError),
    (PoolClosed, httpx.TransportError),
    (PoolError, httpx.TransportError),
)


def _to_httpx(exc: Exception, request: httpx.Request) -> Exception:
    """The httpx exception for one of ours (``exc`` itself if none fits)."""
    if isinstance(exc, StreamClosed):
        return httpx.StreamClosed()
    if isinstance(exc, StreamConsumed):  # pragma: no cover - httpx's Response reads once
        return httpx.StreamConsumed()
    for ours, theirs in _ERRORS:
        if isinstance(exc, ours):
            return theirs(str(exc), request=request)
    return exc


class PoolTransport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` that sends requests over a trio_pool.

    Args:
        pool: The pool to borrow connections from; the transport never closes it.
        verify_cert: For https: check the server's certificate and host name.
        ssl_context: For https: the :class:`ssl.SSLContext` to use.
        retry: Retry idempotent requests once when a reused connection was dead
            (never a request whose body is streamed).
        proxy: Send requests through this proxy, as httpx's ``proxy=`` has it: a URL
            ``str``, an ``httpx.URL``, an ``httpx.Proxy`` (its ``auth`` and
            ``headers`` are used) or a :class:`trio_pool.Proxy`; ``http://``,
            ``socks5://`` or ``socks5h://``. See :class:`trio_pool.http.HTTPClient`.
            Give it here, not to ``httpx.AsyncClient(proxy=...)``: httpx would send
            the proxied requests through a transport of its own.
        uds: Connect to this Unix socket path instead of the URL's host and port, as
            httpx's ``uds=`` (pooled per path; the URL still gives ``Host`` and TLS).
        trust_env: Take the proxy from ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``
            and ``NO_PROXY`` (read when the transport is made). Off by default:
            ``httpx.AsyncClient(transport=...)`` never applies the environment's
            proxies to a transport it was given, whatever its own ``trust_env``, so
            a transport that read them unasked would change what such clients do.
            Ignored when ``proxy`` or ``uds`` is given.
        http2: httpx's flag, same meaning: ``True`` offers ALPN ``h2`` on https and
            multiplexes requests over shared HTTP/2 connections when the server
            agrees (responses say ``http_version`` ``b"HTTP/2"``);
            ``"prior-knowledge"`` also speaks h2c to ``http://`` URLs. See
            :class:`trio_pool.http.HTTPClient`.

    A refused tunnel raises ``httpx.ProxyError``; a request to an ``http://`` proxy
    that the proxy refuses (407, say) is its response, as with httpx. Request bodies
    that httpx streams (``content=`` an async iterator) are streamed, not buffered,
    over HTTP/1.1 and HTTP/2 alike: chunked (HTTP/1.1) unless ``Content-Length`` is
    set, and then held to it (``httpx.LocalProtocolError``). A request the server
    refused (``REFUSED_STREAM``, GOAWAY) on every try is an
    ``httpx.RemoteProtocolError``, as with httpcore.

    httpx's four timeouts apply separately, as in httpx's own transport: ``pool`` to
    the wait for a connection from the pool (``httpx.PoolTimeout``), ``connect`` to
    TCP connect plus TLS handshake (``httpx.ConnectTimeout``), ``write`` to each wait
    while sending the request, over HTTP/2 for flow-control window too
    (``httpx.WriteTimeout``), ``read`` to each read of the response head (counted
    from when the request is sent) and body (``httpx.ReadTimeout``); each error names
    the limit that fired. A ``None`` pool or connect limit leaves the pool's
    ``acquire_timeout`` or ``connection_timeout`` in force (httpx: no limit). See
    :class:`trio_pool.http.Timeout`.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        verify_cert: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        retry: bool = True,
        proxy: str | httpx.URL | httpx.Proxy | Proxy | None = None,
        uds: str | None = None,
        trust_env: bool = False,
        http2: bool | str = False,
    ) -> None:
        self._client = HTTPClient(
            pool,
            verify_cert=verify_cert,
            ssl_context=ssl_context,
            retry=retry,
            proxy=proxy,
            uds=uds,
            trust_env=trust_env,
            http2=http2,
        )
        self._targets: dict[tuple[bytes, str, int | None], Target] = {}

    @property
    def pool(self) -> ConnectionPool:
        """The pool requests borrow from."""
        return self._client.pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return the response with its body still streaming."""
        url = request.url
        scheme = url.raw_scheme
        # The ASCII (IDNA 2008) form, as httpx puts in the Host header: url.host is the
        # Unicode form, which ssl would encode for SNI with IDNA 2003.
        host = url.raw_host.decode("ascii")
        key = (scheme, host, url.port)
        route = self._targets.get(key)
        if route is None:
            if scheme not in _DEFAULT_PORTS:
                raise httpx.UnsupportedProtocol(
                    f"PoolTransport supports http and https URLs, not {url.scheme!r}",
                    request=request,
                )
            if not host:
                raise httpx.UnsupportedProtocol("the URL has no host", request=request)
            port = url.port or _DEFAULT_PORTS[scheme]
            tls = scheme == b"https"
            route = self._client._route(Target(host, port, tls, b"", authority(host, port, tls)))
            if len(self._targets) >= 1024:
                self._targets.clear()
            self._targets[key] = route
        method = request.method.encode("ascii")
        target = Target(
            route.host,
            route.port,
            route.tls,
            url.raw_path,
            b"",
            proxy=route.proxy,
            uds=route.uds,
            forward=route.forward,
        )
        fields = request.headers.raw
        request_target = url.raw_path
        if route.forward:
            # To an http:// proxy: the whole URL, and the proxy's own headers.
            names = {name.lower() for name, _ in fields}
            request_target = routed_target(route, request_target, fields, names)
        try:
            event = h11.Request(method=method, target=request_target, headers=fields)
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        body: Body
        try:
            body = body_bytes(request.content)
            length: bytes | None = body
        except httpx.RequestNotRead:
            # A streamed body: sent as httpx's stream produces it, never buffered.
            stream = body_stream(request.stream)
            if stream is None:
                raise TypeError(
                    "PoolTransport needs an async request stream (httpx.AsyncByteStream),"
                    f" not {type(request.stream).__name__}"
                ) from None
            body = stream
            length = None
        try:
            check_framing(event, length)
        except ValueError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc

        limits = _limits(request)
        idempotent = method in IDEMPOTENT_METHODS
        try:
            exchange = await self._client._open(target, event, body, idempotent, limits)
        except ValueError as exc:  # pragma: no cover - checked before any I/O
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        except PoolError as exc:
            raise _to_httpx(exc, request) from exc
        head = exchange.response
        return httpx.Response(
            status_code=head.status_code,
            headers=head.headers.raw_items(),
            stream=_ResponseStream(exchange, request),
            extensions={"http_version": b"HTTP/" + head.http_version, "reason_phrase": head.reason},
        )

    async def aclose(self) -> None:
        """Nothing to close: the pool belongs to whoever opened it."""
        await trio.lowlevel.checkpoint()


def _limits(request: httpx.Request) -> Timeout:
    """httpx's timeout extension (``connect``, ``read``, ``write``, ``pool``) as our
    :class:`~trio_pool.http.Timeout`: each limit applies to its own phase."""
    timeouts = request.extensions.get("timeout")
    if not timeouts:
        return NO_LIMIT
    try:
        return Timeout(
            None,
            connect=timeouts.get("connect"),
            read=timeouts.get("read"),
            write=timeouts.get("write"),
            pool=timeouts.get("pool"),
        )
    except (TypeError, ValueError) as exc:
        raise httpx.LocalProtocolError(f"bad timeout extension: {exc}", request=request) from exc


class _ResponseStream(httpx.AsyncByteStream):
    """The response body, read from the connection as httpx asks for it."""

    def __init__(self, exchange: Exchange | H2Exchange, request: httpx.Request) -> None:
        self._exchange = exchange
        self._request = request

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._exchange.read_chunk()
        except PoolError as exc:
            raise _to_httpx(exc, self._request) from exc
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """A body not read to its end costs the connection (it is discarded)."""
        self._exchange.abandon("the response was closed before the body's end")
        await trio.lowlevel.checkpoint()
