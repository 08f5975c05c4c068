"""Every call the HTTP layer makes into the pool, in one place.

The HTTP client borrows sockets for HTTP/1.1 (:func:`acquire_http`), streams of shared
HTTP/2 connections (:func:`lease_stream`, which lends a socket instead when ALPN chose
HTTP/1.1), and gives sockets back (:func:`release`, :func:`discard`). Nothing else in
:mod:`trio_pool.http` touches the pool's internals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._exceptions import PoolExhausted
from .._route import Route, SocketOption
from ._exceptions import PoolTimeout

if TYPE_CHECKING:
    import ssl

    from .._connection import PooledConnection
    from .._pool import ConnectionPool
    from .._shared import OpenMultiplexer
    from ._http2 import H2StreamSlot
    from ._models import Target
    from ._timeouts import Timeout

__all__ = ["SocketSettings", "acquire_http", "discard", "lease_stream", "release"]

#: A client's ``local_address`` and ``socket_options``, checked (see ``check_socket``).
SocketSettings = tuple["str | None", "tuple[SocketOption, ...] | None"]


#: Routes made so far, per distinct target and settings: a route is checked once when
#: made (see :class:`~trio_pool._route.Route`), not per request.
_routes: dict[tuple[object, ...], Route] = {}
_ROUTES_SIZE = 1024


def route_for(
    target: Target,
    verify_cert: bool,
    ssl_context: ssl.SSLContext | None,
    http2: str | None = None,
    socket: SocketSettings = (None, None),
) -> Route:
    """The pool route of ``target``'s connections: under the HTTP clients' keys (raw
    borrowers' connections are never shared with HTTP clients), or with ``http2`` a
    key that may multiplex (``"h2"``, ``"h2c"``; never proxied). Made once per
    distinct target and settings."""
    where: tuple[object, ...] = (http2, target.host, target.port, target.tls, target.sni)
    where += (target.proxy,)
    where += (target.uds, target.forward, verify_cert, ssl_context, socket)
    route = _routes.get(where)
    if route is not None:
        return route
    proxy = None if http2 is not None else target.proxy
    if target.forward and http2 is None:
        assert proxy is not None
        route = Route(
            proxy.host,
            proxy.port,
            proxy=proxy,
            forward=True,
            http=True,
            local_address=socket[0],
            socket_options=socket[1],
        )
    elif target.tls:
        route = Route(
            target.host,
            target.port,
            True,
            target.sni or target.host,
            verify_cert,
            ssl_context,
            proxy,
            target.uds,
            http2=http2,
            http=http2 is None,
            local_address=socket[0],
            socket_options=socket[1],
        )
    else:  # (h2c: the client's TLS settings are for its https requests)
        route = Route(
            target.host,
            target.port,
            proxy=proxy,
            uds=target.uds,
            http2=http2,
            http=http2 is None,
            local_address=socket[0],
            socket_options=socket[1],
        )
    if len(_routes) >= _ROUTES_SIZE:
        _routes.clear()
    _routes[where] = route
    return route


async def acquire_http(
    pool: ConnectionPool,
    target: Target,
    verify_cert: bool,
    ssl_context: ssl.SSLContext | None,
    new: bool,
    limits: Timeout,
    socket: SocketSettings = (None, None),
) -> PooledConnection:
    """Borrow a connection for ``target`` from the pool's HTTP keys, directly or
    through the proxy or Unix socket (the pool opens the tunnel); ``new``: a freshly
    opened one.

    Raises:
        PoolTimeout: No connection within the pool limit.
    """
    key = pool.lookup(route_for(target, verify_cert, ssl_context, socket=socket))
    try:
        conn = await pool.acquire_on(key, limits.pool, limits.connect, new=new)
    except PoolExhausted as exc:
        raise PoolTimeout(f"{exc} (pool timeout)") from exc
    return conn  # type: ignore[return-value]  # an HTTP/1.1 key never multiplexes


async def lease_stream(
    pool: ConnectionPool,
    target: Target,
    verify_cert: bool,
    ssl_context: ssl.SSLContext | None,
    mode: str,
    opener: OpenMultiplexer,
    limits: Timeout,
    socket: SocketSettings = (None, None),
) -> PooledConnection | H2StreamSlot:
    """A stream of a shared HTTP/2 connection for ``target`` (``mode``: ``"h2"`` or
    ``"h2c"``; ``opener`` starts HTTP/2 on a new socket), or the socket itself when
    the server chose HTTP/1.1 (ALPN).

    Raises:
        PoolTimeout: No stream within the pool limit.
        RequestNotProcessed: GOAWAY as the connection opened (nothing was sent).
    """
    key = pool.lookup(route_for(target, verify_cert, ssl_context, mode, socket), opener)
    try:
        lease = await pool.acquire_on(key, limits.pool, limits.connect)
    except PoolExhausted as exc:
        raise PoolTimeout(f"{exc} (pool timeout)") from exc
    return lease  # type: ignore[return-value]


def release(pool: ConnectionPool, conn: PooledConnection) -> None:
    """Give a socket back to the pool after a complete exchange."""
    pool.release(conn)


def discard(pool: ConnectionPool, conn: PooledConnection) -> None:
    """Close a socket for good."""
    pool.discard(conn)
