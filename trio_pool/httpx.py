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

from ._exceptions import ConnectError, ConnectTimeout, PoolClosed, PoolError, PoolExhausted
from ._pool import ConnectionPool
from .http._client import IDEMPOTENT_METHODS, Exchange, HTTPClient, body_bytes, check_framing
from .http._exceptions import (
    PoolTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    StreamClosed,
    StreamConsumed,
    WriteError,
    WriteTimeout,
)
from .http._models import Target
from .http._timeouts import NO_LIMIT, Timeout

__all__ = ["PoolTransport"]

_DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}

# Most specific first: ConnectTimeout is a ConnectError, PoolTimeout a RequestTimeout.
_ERRORS: Final[tuple[tuple[type[BaseException], type[httpx.TransportError]], ...]] = (
    (PoolTimeout, httpx.PoolTimeout),
    (PoolExhausted, httpx.PoolTimeout),
    (ConnectTimeout, httpx.ConnectTimeout),
    (ConnectError, httpx.ConnectError),
    (WriteTimeout, httpx.WriteTimeout),
    (ReadTimeout, httpx.ReadTimeout),
    (WriteError, httpx.WriteError),
    (ReadError, httpx.ReadError),
    (RemoteProtocolError, httpx.RemoteProtocolError),
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
        retry: Retry idempotent requests once when a reused connection was dead.

    httpx's four timeouts apply separately, as in httpx's own transport: ``pool`` to
    the wait for a connection from the pool (``httpx.PoolTimeout``), ``connect`` to
    TCP connect plus TLS handshake (``httpx.ConnectTimeout``), ``write`` to sending
    the request (``httpx.WriteTimeout``), ``read`` to each read of the response head
    and body (``httpx.ReadTimeout``); each error names the limit that fired. A
    ``None`` pool or connect limit leaves the pool's ``acquire_timeout`` or
    ``connection_timeout`` in force (httpx: no limit).
    """

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        verify_cert: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        retry: bool = True,
    ) -> None:
        self._client = HTTPClient(
            pool,
            verify_cert=verify_cert,
            ssl_context=ssl_context,
            retry=retry,
        )
        self._targets: dict[tuple[bytes, str, int | None], tuple[str, int, bool]] = {}

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
        where = self._targets.get(key)
        if where is None:
            if scheme not in _DEFAULT_PORTS:
                raise httpx.UnsupportedProtocol(
                    f"PoolTransport supports http and https URLs, not {url.scheme!r}",
                    request=request,
                )
            if not host:
                raise httpx.UnsupportedProtocol("the URL has no host", request=request)
            where = (host, url.port or _DEFAULT_PORTS[scheme], scheme == b"https")
            if len(self._targets) >= 1024:
                self._targets.clear()
            self._targets[key] = where
        method = request.method.encode("ascii")
        target = Target(where[0], where[1], where[2], url.raw_path, b"")
        try:
            event = h11.Request(method=method, target=url.raw_path, headers=request.headers.raw)
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        try:
            content = request.content
        except httpx.RequestNotRead:
            content = await request.aread()
        content = body_bytes(content)
        try:
            check_framing(event, content)
        except ValueError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc

        limits = _limits(request)
        idempotent = method in IDEMPOTENT_METHODS
        try:
            exchange = await self._client._open(target, event, content, idempotent, limits)
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

    def __init__(self, exchange: Exchange, request: httpx.Request) -> None:
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
