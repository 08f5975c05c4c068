"""The errors only HTTP/2 raises, under the :mod:`trio_pool.http` hierarchy.

Everything else an HTTP/2 connection raises is one of the shared errors of
:mod:`trio_pool.http._exceptions`: :class:`~trio_pool.http.ReadError` and
:class:`~trio_pool.http.WriteError` when the socket fails,
:class:`~trio_pool.http.RemoteProtocolError` when the peer breaks HTTP/2, and
:class:`~trio_pool.ConnectTimeout` when the peer never sends its SETTINGS.
This module does not import h2.
"""

from __future__ import annotations

from .._exceptions import ConnectError
from ._exceptions import HTTPError, RemoteProtocolError

__all__ = ["ConnectionUnavailable", "GoAwayOnOpen", "RequestNotProcessed", "StreamReset"]


class RequestNotProcessed(HTTPError):
    """The server did not process this request: retry it on another connection.

    Raised for a stream above the ``last_stream_id`` of a GOAWAY, a stream the server
    refused with ``RST_STREAM(REFUSED_STREAM)``, and a request that had reserved a
    stream on a connection which stopped taking new streams before it was sent. The
    server guarantees it acted on none of these (RFC 9113, section 8.7), so a retry is
    safe whatever the method.
    """

    retry_safe: bool = True


class GoAwayOnOpen(RequestNotProcessed, ConnectError):
    """The server sent GOAWAY as the HTTP/2 connection opened, with its SETTINGS.

    The connection never took a stream, so nothing was sent: a connect error (the pool
    hands it to whoever waited for that connection) that is safe to retry on another
    connection, as :class:`RequestNotProcessed` is.
    """


class StreamReset(RemoteProtocolError):
    """The server reset this stream (``RST_STREAM``); the connection carries on.

    Attributes:
        error_code: The HTTP/2 error code the server sent, e.g. ``2``
            (``INTERNAL_ERROR``) or ``8`` (``CANCEL``).
    """

    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(message)
        self.error_code: int = error_code


class ConnectionUnavailable(HTTPError):
    """A stream was asked of an HTTP/2 connection that cannot give one now.

    The connection is closed or going away (then nothing was sent, and
    :class:`RequestNotProcessed` is raised instead where a request was involved), or
    every stream the peer allows is in use. The pool checks
    :attr:`~trio_pool.http._http2.H2Connection.is_available` before it asks.
    """
