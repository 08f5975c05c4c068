"""Every call the HTTP layer makes into the pool, in one place.

The HTTP client borrows sockets for HTTP/1.1 (:func:`acquire_http`), streams of shared
HTTP/2 connections (:func:`lease_stream`, which lends a socket instead when ALPN chose
HTTP/1.1), and gives sockets back (:func:`release`, :func:`discard`). Nothing else in
:mod:`trio_pool.http` touches the pool's internals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._exceptions import PoolExhausted
from ._exceptions import PoolTimeout

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable

    import trio

    from .._connection import PooledConnection
    from .._pool import ConnectionPool
    from .._shared import Multiplexer
    from ._http2 import H2StreamSlot
    from ._models import Target
    from ._timeouts import Timeout

__all__ = ["acquire_http", "discard", "lease_stream", "release"]


async def acquire_http(
    pool: ConnectionPool,
    target: Target,
    verify_cert: bool,
    ssl_context: ssl.SSLContext | None,
    new: bool,
    limits: Timeout,
) -> PooledConnection:
    """Borrow a connection for ``target`` from the pool's HTTP keys (raw borrowers'
    connections are never shared with HTTP clients), directly or through the proxy
    or Unix socket (the pool opens the tunnel); ``new``: a freshly opened one.

    Raises:
        PoolTimeout: No connection within the pool limit.
    """
    proxy = target.proxy
    if target.forward:
        assert proxy is not None
        state = pool._lookup_http(proxy.host, proxy.port, proxy=proxy, forward=True)
    elif target.tls:
        state = pool._lookup_http(
            target.host,
            target.port,
            True,
            target.sni or target.host,
            verify_cert,
            ssl_context,
            proxy,
            target.uds,
        )
    else:
        state = pool._lookup_http(target.host, target.port, proxy=proxy, uds=target.uds)
    try:
        return await pool._acquire(state, limits.pool, new, limits.connect)
    except PoolExhausted as exc:
        raise PoolTimeout(f"{exc} (pool timeout)") from exc


async def lease_stream(
    pool: ConnectionPool,
    target: Target,
    verify_cert: bool,
    ssl_context: ssl.SSLContext | None,
    mode: str,
    opener: Callable[
        [trio.SocketStream | trio.SSLStream[trio.SocketStream], trio.Nursery],
        Awaitable[Multiplexer],
    ],
    limits: Timeout,
) -> PooledConnection | H2StreamSlot:
    """A stream of a shared HTTP/2 connection for ``target`` (``mode``: ``"h2"`` or
    ``"h2c"``; ``opener`` starts HTTP/2 on a new socket), or the socket itself when
    the server chose HTTP/1.1 (ALPN).

    Raises:
        PoolTimeout: No stream within the pool limit.
        RequestNotProcessed: GOAWAY as the connection opened (nothing was sent).
    """
    state = pool._lookup_multiplexed(
        target.host,
        target.port,
        target.tls,
        (target.sni or target.host) if target.tls else None,
        verify_cert,
        ssl_context,
        target.uds,
        mode,
        opener,
    )
    try:
        lease = await pool._acquire_lease(state, limits.pool, limits.connect)
    except PoolExhausted as exc:
        raise PoolTimeout(f"{exc} (pool timeout)") from exc
    return lease  # type: ignore[return-value]


def release(pool: ConnectionPool, conn: PooledConnection) -> None:
    """Give a socket back to the pool after a complete exchange."""
    pool.release(conn)


def discard(pool: ConnectionPool, conn: PooledConnection) -> None:
    """Close a socket for good."""
    pool.discard(conn)
