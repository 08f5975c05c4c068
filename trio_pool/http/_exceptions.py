"""The errors of :mod:`trio_pool.http`, all under :class:`HTTPError`.

:class:`HTTPError` is a :class:`~trio_pool.PoolError`, so ``except trio_pool.PoolError``
catches everything a request can raise on its own account: the pool's errors
(:class:`~trio_pool.ConnectError`, :class:`~trio_pool.ConnectTimeout`,
:class:`~trio_pool.PoolExhausted`, :class:`~trio_pool.PoolClosed`) pass through
unchanged, and these cover what happens on the connection afterwards. Every one
chains its cause (``raise ... from exc``).
"""

from __future__ import annotations

from .._exceptions import PoolError, PoolExhausted

__all__ = [
    "HTTPError",
    "LocalProtocolError",
    "NetworkError",
    "PoolTimeout",
    "ReadError",
    "ReadTimeout",
    "RemoteProtocolError",
    "RequestTimeout",
    "StreamClosed",
    "StreamConsumed",
    "StreamError",
    "WriteError",
    "WriteTimeout",
]


class HTTPError(PoolError):
    """Base class of the errors raised by :mod:`trio_pool.http` itself.

    Attributes:
        connection_reused: For a connection lost before any byte of the response came,
            whether that connection came from the pool (``True``: a retry was not
            allowed or already spent) or was opened for this request (``False``: the
            server reset a new connection, say while restarting). ``None`` otherwise.
    """

    connection_reused: bool | None = None


class RemoteProtocolError(HTTPError):
    """The server broke HTTP/1.1: a malformed response, or one cut short.

    The :class:`h11.RemoteProtocolError` (or the end of file) is chained as the cause.
    """


class LocalProtocolError(HTTPError):
    """The request broke HTTP while it was being sent: a streamed body that came out
    longer or shorter than its ``Content-Length``. What was sent is never a complete
    request: over HTTP/1.1 the connection is discarded (what was sent cannot be framed
    any more); over HTTP/2 the excess is not sent, nor END_STREAM, and the stream is
    reset (``RST_STREAM(CANCEL)``), the connection carrying on. The request is not
    retried (httpx: ``httpx.LocalProtocolError``).

    Over HTTP/1.1 the :class:`h11.LocalProtocolError` is chained as the cause.
    """


class NetworkError(HTTPError, OSError):
    """The connection failed while the request was sent or the response read."""


class WriteError(NetworkError):
    """Sending the request failed (the peer closed or reset the connection)."""


class ReadError(NetworkError):
    """Reading the response failed (the peer reset the connection)."""


class RequestTimeout(HTTPError, TimeoutError):
    """A limit of the request's ``timeout`` ran out. The subclass says in which phase,
    and the message names the limit. (A connect that takes too long raises the pool's
    :class:`~trio_pool.ConnectTimeout`.)"""


class PoolTimeout(RequestTimeout, PoolExhausted):
    """No connection became free within the pool limit (the pool was full). Also a
    :class:`~trio_pool.PoolExhausted`, which it wraps."""


class WriteTimeout(RequestTimeout):
    """Sending the request took longer than the write limit."""


class ReadTimeout(RequestTimeout):
    """A read of the response (its head, or a piece of its body) took longer than the
    read limit."""


class StreamError(HTTPError, RuntimeError):
    """A streamed response body cannot be read (any more). The subclass says why.

    A :class:`RuntimeError` too: a misuse of the response, not a network failure.
    """


class StreamClosed(StreamError):
    """The body was abandoned before its end: a read timed out or failed, the
    ``stream()`` block exited, or :meth:`Response.aclose` was called. The connection is
    gone, and so is the rest of the body (httpx: ``httpx.StreamClosed``)."""


class ResponseNotRead(StreamError):
    """:attr:`Response.content` of a streamed body that was not read: call ``await
    response.aread()`` first (httpx: ``httpx.ResponseNotRead``)."""


class StreamConsumed(StreamError):
    """The body was already read by an :meth:`Response.aiter_bytes` iterator and not
    kept: only that iterator can go on (httpx: ``httpx.StreamConsumed``). Use
    :meth:`Response.aread` to keep the body."""
