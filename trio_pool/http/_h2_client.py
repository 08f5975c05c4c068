"""HTTP/2 requests through the pool: a stream of a shared connection per request.

The request is prepared once, as for HTTP/1.1 (``HTTPClient._prepare`` builds the h11
request; its method, target and headers are what HTTP/2 sends), and the response is
the same :class:`~trio_pool.http.Response`. The protocol itself is
:mod:`trio_pool.http._http2` (imported only when HTTP/2 is used: the ``h2`` extra).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

import h11
import trio

from .._connection import PooledConnection
from .._exceptions import PoolExhausted
from .._shared import Multiplexer
from .._trace import Trace
from ._exceptions import (
    HTTPError,
    LocalProtocolError,
    ReadTimeout,
    RequestTimeout,
    StreamClosed,
)
from ._models import Response, Target
from ._timeouts import Timeout

if TYPE_CHECKING:
    from ._client import Body, Exchange, HTTPClient
    from ._http2 import H2RequestStream, H2Response, H2StreamSlot

__all__ = ["H2Exchange", "open_multiplexed", "request_h2"]

#: Attempts of a request the server did not process (GOAWAY, REFUSED_STREAM).
_ATTEMPTS: Final = 3

#: ``http2`` values of HTTPClient and PoolTransport, and the pool key's mode for each.
MODES: Final = {True: "h2", "prior-knowledge": "h2c"}


async def open_multiplexed(
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream], nursery: trio.Nursery
) -> Multiplexer:
    """The pool's opener for keys that offer HTTP/2: start it on a new connection."""
    from ._http2 import H2Connection

    return await H2Connection.open(stream, nursery)


class H2Exchange:
    """One request on one HTTP/2 stream, until its body ends: the HTTP/1.1
    :class:`~trio_pool.http._client.Exchange`'s interface, for :class:`Response`."""

    __slots__ = ("_h2", "closed_because", "complete", "done", "read_timeout", "target")

    def __init__(self, h2: H2Response, target: Target, read_timeout: float | None) -> None:
        self._h2 = h2
        self.target: Target = target
        self.read_timeout = read_timeout
        self.done = False
        self.complete = False
        self.closed_because = ""

    @property
    def response(self) -> h11.Response:
        """The head as an h11 event (what the httpx transport reads), built on demand:
        :class:`Response` is made from the HTTP/2 head directly, without h11's
        re-validation of every header."""
        return h11.Response(
            status_code=self._h2.status, headers=self._h2.headers, http_version=b"2", reason=b""
        )

    def make_response(self, content: bytes | None) -> Response:
        return Response(
            self._h2.status,
            b"",
            self._h2.headers,
            "2",
            content,
            None if content is not None else self,
        )

    def closed_error(self) -> StreamClosed:
        return StreamClosed(
            f"the response body from {self.target.host}:{self.target.port} was not read"
            f" to its end and is gone: {self.closed_because}"
        )

    async def read_chunk(self) -> bytes:
        """The next piece of the body, or ``b""`` at its end (its stream is then done)."""
        if self.done:
            await trio.lowlevel.checkpoint()
            if self.complete:
                return b""
            raise self.closed_error()
        limit = self.read_timeout
        try:
            if limit is None:
                data = await self._h2.receive_data()
            else:
                data = b""
                with trio.CancelScope() as scope:
                    scope.deadline = trio.current_time() + limit
                    data = await self._h2.receive_data()
                if scope.cancelled_caught:
                    raise ReadTimeout(
                        f"no data from {self.target.host}:{self.target.port} within"
                        f" {limit} s (read timeout, reading the body)"
                    )
        except ReadTimeout as exc:
            self.abandon(f"a read timed out ({exc})")
            raise
        except HTTPError as exc:
            self.abandon(f"a read failed ({exc})")
            raise
        except BaseException as exc:
            self.abandon(f"a read was interrupted ({type(exc).__name__})")
            raise
        if not data:
            self.done = self.complete = True
        return data

    def read_complete_nowait(self) -> bytes | None:
        """The whole body if it has all arrived (the stream is then done), else
        ``None`` with nothing taken. Synchronous: for :meth:`HTTPClient.request`, which
        has had its checkpoints by the time the response head is here."""
        if self.done or not self._h2._complete_nowait():
            return None
        self.done = self.complete = True
        return b"".join(self._h2._take_buffered())

    async def read_all(self) -> bytes:
        chunks: list[bytes] = []
        if not self.done:
            # What already arrived is taken in one go, with one checkpoint if that is
            # the whole body; else read on, with the read limit on each wait.
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException as exc:
                self.abandon(f"a read was interrupted ({type(exc).__name__})")
                raise
            chunks = self._h2._take_buffered()
            if self._h2._ended_cleanly():
                self.done = self.complete = True
                await trio.lowlevel.cancel_shielded_checkpoint()
                return b"".join(chunks)
        while chunk := await self.read_chunk():
            chunks.append(chunk)
        return b"".join(chunks)

    def abandon(self, because: str = "it was abandoned") -> None:
        """Reset the stream (``RST_STREAM(CANCEL)``); the connection carries on."""
        if not self.done:
            self.done = True
            self.closed_because = because
            self._h2.abandon()


async def request_h2(
    client: HTTPClient,
    target: Target,
    event: h11.Request,
    content: Body,
    idempotent: bool,
    limits: Timeout,
    trace: Trace | None = None,
) -> Exchange | H2Exchange:
    """Send a request on a stream of a shared HTTP/2 connection of its key.

    The body is touched only once a connection is chosen: when the server chose
    HTTP/1.1 (ALPN), the connection is used as HTTP/1.1, the body untouched. A request
    the server did not process (``GOAWAY`` above its stream, or ``REFUSED_STREAM``) is
    sent again on another stream, any method, at most twice, unless its streamed body
    was started (it cannot be produced again).
    """
    from ._h2_exceptions import RequestNotProcessed

    pool = client._pool
    mode = MODES[client._http2]
    state = pool.lookup(client._route_for(target, mode), open_multiplexed)
    fields = [(name, value) for name, value in event.headers if name != b"transfer-encoding"]
    authority = next((value for name, value in fields if name == b"host"), target.host_header)
    scheme = b"https" if target.tls else b"http"
    body = _Upload(content, f"{target.host}:{target.port}")
    for attempt in range(_ATTEMPTS):
        try:
            lease = await pool.acquire_on(state, limits.pool, limits.connect)
        except PoolExhausted as exc:
            from ._exceptions import PoolTimeout

            raise PoolTimeout(f"{exc} (pool timeout)") from exc
        except RequestNotProcessed:  # GOAWAY as the connection opened: nothing was sent
            if attempt + 1 < _ATTEMPTS:
                continue
            raise
        if isinstance(lease, PooledConnection):  # ALPN: the server speaks HTTP/1.1
            return await client._open(
                target, event, content, idempotent, limits, first=lease, trace=trace
            )
        slot: H2StreamSlot = lease  # type: ignore[assignment]
        try:
            request = await slot.connection.start_request(
                event.method,
                event.target,
                authority,
                scheme,
                fields,
                end_stream=body.empty,
                slot=slot,
            )
            await body.send(request, limits.write)
            response = await request.receive_response(timeout=limits.read)
        except RequestNotProcessed:
            if attempt + 1 < _ATTEMPTS and body.replayable:
                continue
            raise
        except (RequestTimeout, LocalProtocolError) as exc:
            # The stream was reset; the connection carries on.
            raise type(exc)(f"{body.where}: {exc}") from exc
        return H2Exchange(response, target, limits.read)
    raise AssertionError("unreachable")  # pragma: no cover


class _Upload:
    """The body of one HTTP/2 request: bytes (sent again on a retry), or an async
    iterable sent once, piece by piece as it is produced (the connection holds both
    to the request's ``Content-Length``)."""

    __slots__ = ("content", "started", "where")

    def __init__(self, content: Body, where: str) -> None:
        self.content = content
        self.where = where
        self.started = False

    @property
    def empty(self) -> bool:
        """No body at all: END_STREAM goes with the HEADERS."""
        return type(self.content) is bytes and not self.content

    @property
    def replayable(self) -> bool:
        """Whether the body can be sent again: bytes, or an iterable never started."""
        return type(self.content) is bytes or not self.started

    async def send(self, request: H2RequestStream, limit: float | None) -> None:
        """Send the body on ``request``, each wait for window or writer limited to
        ``limit``; stop when the server answers early.

        Raises:
            LocalProtocolError: A streamed body longer or shorter than its
                ``Content-Length``: the excess is never sent, nor END_STREAM, and the
                stream is reset (the connection carries on).
        """
        content = self.content
        if type(content) is bytes:
            if content:
                await request.send_data(content, end_stream=True, timeout=limit)
            return
        from ._body import chunk_bytes, close_iterator

        assert not isinstance(content, bytes)
        self.started = True
        pieces: AsyncIterator[object] = aiter(content)
        iterator: AsyncIterator[object] | None = pieces
        try:
            while True:
                try:
                    piece = await anext(pieces)
                except StopAsyncIteration:
                    iterator = None
                    break
                data = chunk_bytes(piece)
                if data and not await request.send_data(data, timeout=limit):
                    return  # answered early
            await request.send_data(b"", end_stream=True, timeout=limit)
        except BaseException:
            request.reset()
            raise
        finally:
            if iterator is not None:
                await close_iterator(iterator)
