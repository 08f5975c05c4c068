"""HTTP/2 requests through the pool: :class:`HTTP2Stream`, a request on a stream of a
shared connection (its body: :class:`~trio_pool.http._h2_body.H2Body`).

The sibling of :mod:`trio_pool.http._http11` behind the same interface
(:mod:`trio_pool.http._interfaces`). The request is prepared once, as for HTTP/1.1
(``HTTPClient._prepare`` builds the h11 request; its method, target and headers are
what HTTP/2 sends), and the response is the same :class:`~trio_pool.http.Response`.
The protocol itself is :mod:`trio_pool.http._http2` (imported only when HTTP/2 is
used: the ``h2`` extra).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

import h11
import trio

from .._shared import Multiplexer, MultiplexOptions
from .._trace import connect_trace
from ._body import chunk_bytes, close_iterator
from ._exceptions import LocalProtocolError, RequestTimeout
from ._h2_exceptions import RequestNotProcessed
from ._interfaces import Unprocessed

if TYPE_CHECKING:
    from .._trace import Trace
    from ._body import Body
    from ._h2_body import H2Body
    from ._h2_liveness import Pinger
    from ._http2 import H2Connection, H2RequestStream, H2Response, H2StreamSlot
    from ._models import Target
    from ._timeouts import Timeout

__all__ = ["ATTEMPTS", "MODES", "HTTP2Stream", "open_h2", "open_multiplexed"]

#: Attempts of a request the server did not process (GOAWAY, REFUSED_STREAM).
ATTEMPTS: Final = 3

#: ``http2`` values of HTTPClient and PoolTransport, and the pool key's mode for each.
MODES: Final = {True: "h2", "prior-knowledge": "h2c"}


async def open_multiplexed(
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
    nursery: trio.Nursery,
    options: MultiplexOptions,
) -> Multiplexer:
    """The pool's opener for keys that offer HTTP/2: start it on a new connection,
    with a :class:`~trio_pool.http._h2_liveness.Pinger` if ``h2_ping_interval``.

    A connect traced for its request (:data:`~trio_pool._trace.connect_trace`) reports
    the opening (our preface and SETTINGS, the wait for the server's) as httpcore's
    ``http2.send_connection_init.*``.
    """
    from ._h2_liveness import Pinger

    pinger = None
    if options.ping_interval is not None:
        pinger = Pinger(
            options.ping_interval, options.ping_timeout, key=options.key, events=options.events
        )
    trace = connect_trace.get()
    if trace is None:
        return await open_h2(stream, nursery, pinger)
    await trace("http2.send_connection_init.started", {})
    try:
        conn = await open_h2(stream, nursery, pinger)
    except Exception as exc:
        await trace("http2.send_connection_init.failed", {"exception": exc})
        raise
    await trace("http2.send_connection_init.complete", {})
    return conn


async def open_h2(
    stream: trio.abc.Stream, nursery: trio.Nursery, pinger: Pinger | None
) -> H2Connection:
    """:meth:`H2Connection.open <trio_pool.http._http2.H2Connection.open>` with its
    defaults, and ``pinger`` keeping it alive (it starts with the connection's task)."""
    from ._h2_task import start
    from ._http2 import _DEFAULT_SETTINGS_TIMEOUT, H2Connection

    conn = H2Connection(stream)
    conn._pinger = pinger
    await start(conn, nursery, _DEFAULT_SETTINGS_TIMEOUT)
    return conn


class HTTP2Stream:
    """One request on a stream reserved on a shared HTTP/2 connection."""

    __slots__ = ("_slot",)

    def __init__(self, slot: H2StreamSlot) -> None:
        self._slot = slot

    async def handle_request(
        self,
        target: Target,
        event: h11.Request,
        body: Body,
        idempotent: bool,
        limits: Timeout,
        trace: Trace | None,
    ) -> H2Body:
        """Send the request on the stream, receive the response head (see
        :class:`~trio_pool.http._interfaces.HTTPConnectionInterface`). Any failure or
        cancellation resets the stream; the connection carries on.

        Raises:
            Unprocessed: ``GOAWAY`` above the stream or ``REFUSED_STREAM``: any
                method may be sent again, unless its streamed body was started.
        """
        slot = self._slot
        fields = [(name, value) for name, value in event.headers if name != b"transfer-encoding"]
        authority = next((value for name, value in fields if name == b"host"), target.host_header)
        upload = _Upload(body, f"{target.host}:{target.port}")
        try:
            request = await slot.connection.start_request(
                event.method,
                event.target,
                authority,
                b"https" if target.tls else b"http",
                fields,
                end_stream=upload.empty,
                slot=slot,
            )
            if trace is None:
                await upload.send(request, limits.write)
                response = await request.receive_response(timeout=limits.read)
            else:
                response = await _traced_exchange(trace, request, upload, limits)
        except RequestNotProcessed as exc:
            attempts = ATTEMPTS if upload.replayable else 1
            raise Unprocessed(exc, attempts, optional=False) from exc.__cause__
        except (RequestTimeout, LocalProtocolError) as exc:
            # The stream was reset; the connection carries on.
            raise type(exc)(f"{upload.where}: {exc}") from exc
        from ._h2_body import H2Body

        return H2Body(
            response._conn, response._stream, response.status, response.headers, target, limits
        )


async def _traced_exchange(
    trace: Trace, request: H2RequestStream, upload: _Upload, limits: Timeout
) -> H2Response:
    """The body and the wait for the head, reporting httpcore's events (``stream_id``
    in each ``.started``): ``http2.send_request_headers.*`` (the HEADERS are queued
    by then), ``.send_request_body.*``, ``.receive_response_headers.*`` (its
    ``return_value`` the status and headers), and ``.response_closed.*`` if any of
    them fails, the stream then being reset."""
    info: dict[str, Any] = {"stream_id": request.stream_id}
    name = "http2.send_request_headers"
    try:
        await trace(name + ".started", info)
        await trace(name + ".complete", {})
        name = "http2.send_request_body"
        await trace(name + ".started", info)
        await upload.send(request, limits.write)
        await trace(name + ".complete", {})
        name = "http2.receive_response_headers"
        await trace(name + ".started", info)
        response = await request.receive_response(timeout=limits.read)
        value = (response.status, response.headers)
        await trace(name + ".complete", {"return_value": value})
    except BaseException as exc:
        with trio.CancelScope(shield=True):
            if isinstance(exc, Exception):
                await trace(name + ".failed", {"exception": exc})
            await trace("http2.response_closed.started", info)
            await trace("http2.response_closed.complete", {})
        raise
    return response


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
