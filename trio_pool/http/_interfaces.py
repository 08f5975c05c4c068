"""The one interface HTTP/1.1 and HTTP/2 share, as httpcore's ``interfaces.py``.

A protocol connection (:class:`HTTPConnectionInterface`: ``_http11.HTTP11Connection``
on a borrowed socket, ``_h2_client.HTTP2Stream`` on a stream of a shared HTTP/2
connection) sends a request head, streams its body and receives the response head;
the result is a :class:`BodyReader`, which :class:`~trio_pool.http.Response` wraps.

The end-of-body bookkeeping (``done``, ``complete``, ``closed_because``, the error
that abandons the body) lives once, in :class:`BodyReader`; each protocol fills in
two hooks: the next piece of the body, and what to do once it finished, cleanly or
not (HTTP/1.1: start the next cycle and release, or discard; HTTP/2: hand the
flow-control credit back, or reset the stream).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

from ._exceptions import HTTPError, ReadTimeout, RequestTimeout, StreamClosed

if TYPE_CHECKING:
    import h11

    from .._connection import PooledConnection
    from .._trace import Trace
    from ._body import Body
    from ._models import Response, Target
    from ._timeouts import Timeout

__all__ = ["BodyReader", "HTTPConnectionInterface", "Unprocessed", "read_timeout_error"]


def read_timeout_error(target: Target, limit: float, what: str) -> ReadTimeout:
    """The :class:`ReadTimeout` of a read that waited ``limit`` seconds for ``what``."""
    return ReadTimeout(
        f"no data from {target.host}:{target.port} within {limit} s (read timeout, {what})"
    )


class Unprocessed(Exception):
    """The server did not process the request (a reused HTTP/1.1 connection died
    before any byte of the answer; HTTP/2 ``GOAWAY`` or ``REFUSED_STREAM``): the client
    may send it again on another connection.

    Attributes:
        error: What to raise when it is not sent again.
        attempts: How many attempts in all the protocol allows for it (1: none more).
        optional: Whether the client's ``retry`` flag may turn the retry off.
    """

    def __init__(self, error: HTTPError, attempts: int, *, optional: bool) -> None:
        super().__init__(error)
        self.error = error
        self.attempts = attempts
        self.optional = optional


class BodyReader:
    """A response head and its body still to read, on either protocol.

    ``done`` is True once the body gave its connection or stream back (exactly
    once); ``complete`` only when the whole body arrived. A read after the body was
    abandoned (``done`` but not ``complete``) raises :class:`StreamClosed`, naming
    why. Any error or cancellation of a read abandons the body.

    Subclasses fill in :meth:`_next_piece` and :meth:`_finished`, and
    :meth:`make_response` (the head as a :class:`Response`) and :attr:`response`
    (the head as an h11 event, for the httpx transport).

    Attributes:
        target: Where the request went (for messages).
        read_timeout: The limit of each read of the body (``None``: none).
        trace_prefix: ``"http11."`` or ``"http2."``: the trace events' prefix.
    """

    __slots__ = ("closed_because", "complete", "done", "read_timeout", "target")

    trace_prefix = ""

    def __init__(self, target: Target, read_timeout: float | None) -> None:
        self.target: Target = target
        self.read_timeout: float | None = read_timeout
        self.done: bool = False
        self.complete: bool = False
        self.closed_because: str = ""

    # -- per protocol ---------------------------------------------------------------

    @property
    def response(self) -> h11.Response:  # pragma: no cover - abstract
        """The head as an h11 event."""
        raise NotImplementedError

    @property
    def connection(self) -> PooledConnection | None:
        """The borrowed socket the body comes on, when it is the request's alone
        (HTTP/1.1); ``None`` for a stream of a shared connection."""
        return None

    @property
    def shared_stream(self) -> trio.abc.Stream | None:
        """The stream of the shared connection the body comes on (HTTP/2), for its
        addresses and TLS details only; ``None`` where :attr:`connection` is the
        request's alone."""
        return None

    def make_response(self, content: bytes | None) -> Response:  # pragma: no cover
        """The :class:`Response`: with ``content``, or reading its body from here."""
        raise NotImplementedError

    async def _next_piece(self) -> bytes:  # pragma: no cover - abstract
        """The next non-empty piece of the body, or ``b""`` at its end."""
        raise NotImplementedError

    def _finished(self, clean: bool) -> None:  # pragma: no cover - abstract
        """Give the connection or stream back: after the whole body (``clean``), or
        abandoned before its end."""
        raise NotImplementedError

    def detach(self) -> tuple[PooledConnection, bytes]:
        """Take the socket out of HTTP for good (after ``101`` or a 2xx to
        ``CONNECT``), with the bytes already read after the head: only where
        :attr:`connection` is not ``None``."""
        raise RuntimeError("only a body on a connection of its own can be detached")

    @property
    def trace_info(self) -> dict[str, object]:
        """What the body's trace events carry besides httpcore's usual keys (HTTP/2:
        ``stream_id``)."""
        return {}

    def read_complete_nowait(self) -> bytes | None:
        """The whole body if it already arrived (it is then ``complete``), else
        ``None`` with nothing taken. Synchronous."""
        return None

    # -- shared ---------------------------------------------------------------------

    def closed_error(self) -> StreamClosed:
        """The error of a read after the body was abandoned."""
        return StreamClosed(
            f"the response body from {self.target.host}:{self.target.port} was not read"
            f" to its end and is gone: {self.closed_because}"
        )

    def _failed(self, exc: BaseException) -> None:
        """Abandon the body because a read raised ``exc`` (no-op once done)."""
        if isinstance(exc, StreamClosed):
            return
        if isinstance(exc, RequestTimeout):
            self.abandon(f"a read timed out ({exc})")
        elif isinstance(exc, HTTPError):
            self.abandon(f"a read failed ({exc})")
        else:
            self.abandon(f"a read was interrupted ({type(exc).__name__})")

    def _ended(self) -> None:
        """The whole body arrived: give the connection or stream back."""
        self.done = self.complete = True
        self._finished(True)

    async def read_chunk(self) -> bytes:
        """The next piece of the body, or ``b""`` at its end (the connection or
        stream is then given back).

        Raises:
            StreamClosed: The body was abandoned before its end.
        """
        if self.done:
            await trio.lowlevel.checkpoint()
            if self.complete:
                return b""
            raise self.closed_error()
        try:
            data = await self._next_piece()
        except BaseException as exc:
            self._failed(exc)
            raise
        if not data:
            self._ended()
        return data

    async def read_all(self) -> bytes:
        """Read the rest of the body and return it."""
        chunks: list[bytes] = []
        while data := await self.read_chunk():
            chunks.append(data)
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    def abandon(self, because: str = "it was abandoned") -> None:
        """Give up the rest of the body (no-op once done): HTTP/1.1 discards the
        connection, HTTP/2 resets the stream.

        Args:
            because: Why, for the :class:`StreamClosed` of later reads.
        """
        if not self.done:
            self.done = True
            self.closed_because = because
            self._finished(False)


class HTTPConnectionInterface(Protocol):
    """A connection chosen for one request, speaking one HTTP version (as httpcore's
    ``AsyncConnectionInterface.handle_async_request``)."""

    async def handle_request(
        self,
        target: Target,
        event: h11.Request,
        body: Body,
        idempotent: bool,
        limits: Timeout,
        trace: Trace | None,
    ) -> BodyReader:
        """Send the request head, stream the body, receive the response head.

        Returns:
            The body reader (its head read, its body still to read).

        Raises:
            Unprocessed: The server did not process the request: it may be sent again.
        """
        ...
