"""The protocol connection for a request, chosen after ALPN, as httpcore's
``connection.py`` chooses ``AsyncHTTP11Connection`` or ``AsyncHTTP2Connection``.

A key that offers HTTP/2 lends a stream of a shared connection
(:class:`~trio_pool.http._h2_client.HTTP2Stream`), or the socket itself when the
server chose HTTP/1.1; every other key lends a socket, spoken to by its
:class:`~trio_pool.http._http11.HTTP11Connection`. Either way the client gets an
:class:`~trio_pool.http._interfaces.HTTPConnectionInterface`, and the request body is
not touched before.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from .._connection import PooledConnection
from ._h2_client import ATTEMPTS, HTTP2Stream, open_multiplexed
from ._h2_exceptions import RequestNotProcessed
from ._http11 import HTTP11Connection
from ._interfaces import HTTPConnectionInterface, Unprocessed
from ._pool_access import SocketSettings, acquire_http, lease_stream

if TYPE_CHECKING:
    from .._pool import ConnectionPool
    from ._models import Target
    from ._timeouts import Timeout

__all__ = ["connect"]


async def connect(
    pool: ConnectionPool,
    target: Target,
    h2_mode: str | None,
    verify_cert: bool,
    ssl_context: ssl.SSLContext | None,
    new: bool,
    limits: Timeout,
    socket: SocketSettings = (None, None),
) -> HTTPConnectionInterface:
    """A connection for one request to ``target``.

    Args:
        pool: The pool to borrow from.
        target: Where the request goes (its route set).
        h2_mode: ``"h2"`` (ALPN offers h2, https only), ``"h2c"`` (prior knowledge,
            http too), or ``None``: HTTP/1.1. Never through a proxy.
        verify_cert: For https: check the certificate.
        ssl_context: For https: the context to use.
        new: HTTP/1.1 only: a freshly opened socket (a retry).
        limits: The pool and connect limits.
        socket: The client's ``local_address`` and ``socket_options`` (checked).

    Raises:
        Unprocessed: GOAWAY as an HTTP/2 connection opened: nothing was sent.
    """
    if h2_mode is not None and target.proxy is None and (target.tls or h2_mode == "h2c"):
        try:
            lease = await lease_stream(
                pool, target, verify_cert, ssl_context, h2_mode, open_multiplexed, limits, socket
            )
        except RequestNotProcessed as exc:
            raise Unprocessed(exc, ATTEMPTS, optional=False) from exc.__cause__
        if isinstance(lease, PooledConnection):  # ALPN: the server speaks HTTP/1.1
            return HTTP11Connection.of(pool, lease)
        return HTTP2Stream(lease)
    conn = await acquire_http(pool, target, verify_cert, ssl_context, new, limits, socket)
    return HTTP11Connection.of(pool, conn)
