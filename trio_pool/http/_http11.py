"""HTTP/1.1 on a borrowed socket: :class:`HTTP11Connection`, a thin trio I/O loop
around h11's sans-IO state machine, and :class:`H11Body`, the response body.

h11 does all the parsing and framing, synchronously; this module only moves bytes
between h11 and the pooled connection, and decides whether the connection goes back
to the pool. Each pooled socket keeps one :class:`HTTP11Connection` (and so one
:class:`h11.Connection`) for its whole life, in the socket's protocol slot: after a
complete exchange h11's ``start_next_cycle()`` readies it for the next request,
whoever borrows the socket next.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Final

import h11
import trio

from ._body import chunk_bytes, close_iterator
from ._exceptions import (
    HTTPError,
    LocalProtocolError,
    ReadError,
    RemoteProtocolError,
    RequestTimeout,
    WriteError,
    WriteTimeout,
)
from ._interfaces import BodyReader, Unprocessed, read_timeout_error
from ._models import Response
from ._pool_access import discard, release

if TYPE_CHECKING:
    from .._connection import PooledConnection
    from .._pool import ConnectionPool
    from .._trace import Trace
    from ._body import Body
    from ._models import Target
    from ._timeouts import Timeout

__all__ = ["H11Body", "HTTP11Connection"]

_RECEIVE_SIZE: Final = 65536
#: The most one write sends under a write limit (which restarts for each write).
_WRITE_PIECE: Final = 65536
_NEED_DATA: Final = h11.NEED_DATA
_IDLE: Final = h11.IDLE
_DONE: Final = h11.DONE
_END: Final = h11.EndOfMessage()
_VERSIONS: Final = {b"1.1": "1.1", b"1.0": "1.0"}


class _ConnectionLost(Exception):
    """The connection failed before any byte of the response came: safe to retry an
    idempotent request (the server may have closed it while idle)."""

    def __init__(self, error: HTTPError) -> None:
        super().__init__(error)
        self.error = error


class HTTP11Connection:
    """HTTP/1.1 on one pooled socket: one request at a time, h11's state kept for the
    socket's life (see :meth:`of`)."""

    __slots__ = ("_conn", "_h11", "_pool")

    def __init__(self, pool: ConnectionPool, conn: PooledConnection) -> None:
        self._pool = pool
        self._conn = conn
        self._h11 = h11.Connection(h11.CLIENT)

    @classmethod
    def of(cls, pool: ConnectionPool, conn: PooledConnection) -> HTTP11Connection:
        """The socket's HTTP/1.1 connection, made on its first request."""
        protocol: HTTP11Connection | None = conn._protocol  # type: ignore[assignment]
        if protocol is None:
            protocol = conn._protocol = cls(pool, conn)
        return protocol

    def _forget(self) -> None:
        """The socket leaves HTTP (discarded or taken over): drop its h11 state."""
        self._conn._protocol = None

    def _discard(self) -> None:
        self._forget()
        discard(self._pool, self._conn)

    async def handle_request(
        self,
        target: Target,
        event: h11.Request,
        body: Body,
        idempotent: bool,
        limits: Timeout,
        trace: Trace | None,
    ) -> H11Body:
        """Send the request, read the response head (see
        :class:`~trio_pool.http._interfaces.HTTPConnectionInterface`). Any failure or
        cancellation discards the socket.

        Raises:
            Unprocessed: A reused socket died before answering: an idempotent request
                with a body in bytes may be sent again, once (the client's ``retry``).
        """
        conn = self._conn
        protocol = self._h11
        if protocol.our_state is not _IDLE or protocol.their_state is not _IDLE:
            protocol = self._h11 = h11.Connection(h11.CLIENT)
        try:
            if type(body) is not bytes:
                timer = _Timer(limits.write, limits.read)
                with timer.scope:
                    response = await _send_stream(
                        conn,
                        protocol,
                        target,
                        event,
                        body,  # type: ignore[arg-type]
                        timer,
                        trace,
                    )
                if timer.scope.cancelled_caught:
                    raise timer.error(target)
                return H11Body(self, response, target, limits.read)
            try:
                data = protocol.send(event) or b""
                if body:
                    data += protocol.send(h11.Data(data=body)) or b""
                data += protocol.send(_END) or b""
            except h11.LocalProtocolError as exc:  # pragma: no cover - checked before
                raise ValueError(f"cannot send this request: {exc}") from exc
            if limits.write is None and limits.read is None:
                response = await _send(conn, protocol, target, data, None, trace)
            else:
                # One cancel scope for the write and the head, its deadline moved per
                # phase: a scope per read would cost more than the rest.
                timer = _Timer(limits.write, limits.read)
                with timer.scope:
                    response = await _send(conn, protocol, target, data, timer, trace)
                if timer.scope.cancelled_caught:
                    raise timer.error(target)
        except _ConnectionLost as lost:
            self._discard()
            lost.error.connection_reused = conn.reused
            retry = idempotent and type(body) is bytes and conn.reused
            raise Unprocessed(lost.error, 2 if retry else 1, optional=True) from lost.__cause__
        except BaseException:
            self._discard()
            raise
        return H11Body(self, response, target, limits.read)


class H11Body(BodyReader):
    """The body of an HTTP/1.1 response, read from the socket through h11; at its end
    the socket is released if h11 can start a next cycle on it, else discarded."""

    __slots__ = ("_connection", "_head")

    trace_prefix = "http11."

    def __init__(
        self,
        connection: HTTP11Connection,
        head: h11.Response,
        target: Target,
        read_timeout: float | None,
    ) -> None:
        super().__init__(target, read_timeout)
        self._connection = connection
        self._head = head

    @property
    def response(self) -> h11.Response:
        return self._head

    @property
    def connection(self) -> PooledConnection:
        """The borrowed connection the body comes on."""
        return self._connection._conn

    def make_response(self, content: bytes | None) -> Response:
        event = self._head
        version = _VERSIONS.get(event.http_version) or event.http_version.decode("ascii")
        return Response(
            event.status_code,
            event.reason,
            event.headers,
            version,
            content,
            None if content is not None else self,
        )

    async def _next_piece(self) -> bytes:
        h = self._connection._h11
        try:
            while True:
                event = h.next_event()
                kind = type(event)
                if kind is h11.Data:
                    data = event.data  # type: ignore[union-attr]
                    if data:
                        return data if type(data) is bytes else bytes(data)
                elif kind is h11.EndOfMessage:
                    return b""
                elif event is _NEED_DATA:
                    await self._receive()
                else:  # pragma: no cover - h11 sends nothing else inside a body
                    raise RemoteProtocolError(f"unexpected {kind.__name__} in a response body")
        except h11.RemoteProtocolError as exc:
            self.abandon(f"the server broke the protocol ({exc})")
            raise RemoteProtocolError(f"{self._where()}: {exc}") from exc

    async def _receive(self) -> None:
        conn = self._connection._conn
        limit = self.read_timeout
        try:
            if limit is None:
                data = await conn.receive_some(_RECEIVE_SIZE)
            else:
                with trio.CancelScope() as scope:
                    # Set inside, as _Timer does: a read that need not wait never fails.
                    scope.deadline = trio.current_time() + limit
                    data = await conn.receive_some(_RECEIVE_SIZE)
                if scope.cancelled_caught:
                    raise read_timeout_error(self.target, limit, "reading the body")
        except trio.BrokenResourceError as exc:
            raise ReadError(f"{self._where()}: reading the response failed: {exc}") from exc
        except trio.ClosedResourceError as exc:
            if self.done:  # another task abandoned the body during this read
                raise self.closed_error() from exc
            raise  # pragma: no cover - the connection is only closed by abandoning
        if self.done:  # abandoned by another task while the bytes came in
            raise self.closed_error()
        self._connection._h11.receive_data(data)  # type: ignore[arg-type]  # bytearray too

    def _where(self) -> str:
        return f"{self.target.host}:{self.target.port}"

    def _finished(self, clean: bool) -> None:
        connection = self._connection
        h = connection._h11
        if clean and h.our_state is _DONE and h.their_state is _DONE and not h.trailing_data[0]:
            h.start_next_cycle()
            release(connection._pool, connection._conn)
        else:
            connection._discard()

    def detach(self) -> tuple[PooledConnection, bytes]:
        """Take the connection out of HTTP for good (after ``101 Switching Protocols``
        or a 2xx to ``CONNECT``): it stays borrowed, never released to the pool; the
        caller closes it (``aclose()`` discards it). Returns it with the bytes the
        server sent after the head, already read."""
        self.done = self.complete = True  # the HTTP body is empty
        self.closed_because = "the connection was taken over (protocol switched)"
        connection = self._connection
        connection._forget()
        return connection._conn, bytes(connection._h11.trailing_data[0])


async def _send(
    conn: PooledConnection,
    protocol: h11.Connection,
    target: Target,
    data: bytes,
    timer: _Timer | None,
    trace: Trace | None = None,
) -> h11.Response:
    """Send the request and read the response head.

    With a write limit, a request larger than :data:`_WRITE_PIECE` goes out in writes
    of that size, the limit restarting for each: it limits each wait for the server to
    take more, as on HTTP/2, not the whole of a large body. With a ``trace``, the head
    and the body (sent in one write) report httpcore's
    ``http11.send_request_headers.*`` then ``.send_request_body.*``.
    """
    try:
        if trace is not None:
            await trace("http11.send_request_headers.started", {})
        if timer is None:
            await conn.send_all(data)
        elif len(data) <= _WRITE_PIECE or timer.write is None:
            timer.writing()
            await conn.send_all(data)
        else:
            await _write(conn, data, timer)
        if trace is not None:
            await trace("http11.send_request_headers.complete", {})
            await trace("http11.send_request_body.started", {})
            await trace("http11.send_request_body.complete", {})
    except trio.BrokenResourceError as exc:
        error = WriteError(f"{target.host}:{target.port}: sending failed: {exc}")
        # The server may have answered before it stopped reading (a 413 to an upload,
        # say) and closed: its answer is waiting to be read. h11 has taken the whole
        # request already, so it reads a response as usual; the socket is dead, so this
        # never waits on the network for long (and fails at once for TLS, whose stream
        # is broken after a failed send).
        try:
            return await _receive_head(conn, protocol, target, timer)
        except (_ConnectionLost, HTTPError):
            raise _ConnectionLost(error) from exc
    return await _receive_head(conn, protocol, target, timer, trace)


async def _send_stream(
    conn: PooledConnection,
    protocol: h11.Connection,
    target: Target,
    event: h11.Request,
    body: AsyncIterable[object],
    timer: _Timer,
    trace: Trace | None = None,
) -> h11.Response:
    """Send the head, then each piece of ``body`` as it is produced (h11 frames them,
    chunked or held to the ``Content-Length``), then read the response head.

    The write limit runs per write (see :func:`_write`); the iterable's own time is
    not limited. An iterator left before its end (a failure, an early answer) is
    closed.
    """
    where = f"{target.host}:{target.port}"
    sending = False
    iterator: AsyncIterator[object] | None = None
    try:
        if trace is not None:
            await trace("http11.send_request_headers.started", {})
        data = protocol.send(event) or b""
        sending = True
        await _write(conn, data, timer)
        sending = False
        if trace is not None:
            await trace("http11.send_request_headers.complete", {})
            await trace("http11.send_request_body.started", {})
        iterator = aiter(body)
        while True:
            timer.producing()
            try:
                piece = await anext(iterator)
            except StopAsyncIteration:
                iterator = None
                break
            data = chunk_bytes(piece)
            if not data:
                continue
            try:
                data = protocol.send(h11.Data(data=data)) or b""
            except h11.LocalProtocolError as exc:
                raise LocalProtocolError(
                    f"{where}: content produced more bytes than its Content-Length ({exc})"
                ) from exc
            sending = True
            await _write(conn, data, timer)
            sending = False
        try:
            data = protocol.send(_END) or b""
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(
                f"{where}: content produced fewer bytes than its Content-Length ({exc})"
            ) from exc
        if data:
            sending = True
            await _write(conn, data, timer)
            sending = False
        if trace is not None:
            await trace("http11.send_request_body.complete", {})
    except trio.BrokenResourceError as exc:
        if not sending:  # raised by the iterable itself: its own error
            raise
        error = WriteError(f"{where}: sending failed: {exc}")
        # As in _send: the server may have answered before it stopped reading.
        try:
            return await _receive_head(conn, protocol, target, timer)
        except (_ConnectionLost, HTTPError):
            raise _ConnectionLost(error) from exc
    finally:
        if iterator is not None:
            await close_iterator(iterator)
    return await _receive_head(conn, protocol, target, timer, trace)


async def _receive_head(
    conn: PooledConnection,
    protocol: h11.Connection,
    target: Target,
    timer: _Timer | None,
    trace: Trace | None = None,
) -> h11.Response:
    if trace is not None:
        await trace("http11.receive_response_headers.started", {})
    got_bytes = False
    try:
        while True:
            event = protocol.next_event()
            if event is _NEED_DATA:
                if timer is not None:
                    timer.reading()
                try:
                    data = await conn.receive_some(_RECEIVE_SIZE)
                except trio.BrokenResourceError as exc:
                    error = ReadError(
                        f"{target.host}:{target.port}: reading the response failed: {exc}"
                    )
                    if got_bytes:
                        raise error from exc
                    raise _ConnectionLost(error) from exc
                if not data and not got_bytes:
                    raise _ConnectionLost(
                        RemoteProtocolError(
                            f"{target.host}:{target.port} closed the connection"
                            " without sending a response"
                        )
                    )
                got_bytes = True
                protocol.receive_data(data)  # type: ignore[arg-type]  # bytearray works too
                continue
            kind = type(event)
            if kind is h11.Response:
                if trace is not None:
                    await _trace_head(trace, event)  # type: ignore[arg-type]
                return event  # type: ignore[return-value]
            if event.status_code == 101:  # type: ignore[union-attr]
                # Switching protocols: the head is all; the stream is the caller's.
                if trace is not None:
                    await _trace_head(trace, event)  # type: ignore[arg-type]
                return event  # type: ignore[return-value]
            if kind is not h11.InformationalResponse:  # pragma: no cover - h11 forbids
                raise RemoteProtocolError(f"unexpected {kind.__name__} before the response")
    except h11.RemoteProtocolError as exc:
        raise RemoteProtocolError(f"{target.host}:{target.port}: {exc}") from exc


async def _trace_head(trace: Trace, event: h11.Response) -> None:
    """``http11.receive_response_headers.complete``, with httpcore's return value."""
    value = (event.http_version, event.status_code, event.reason, list(event.headers))
    await trace("http11.receive_response_headers.complete", {"return_value": value})


async def _write(conn: PooledConnection, data: bytes, timer: _Timer) -> None:
    """Send ``data`` in writes of at most :data:`_WRITE_PIECE` bytes, the write limit
    restarting for each: it limits each wait for the server to take more (as on
    HTTP/2, where it limits each wait for window), never a steady upload as a whole."""
    if len(data) <= _WRITE_PIECE or timer.write is None:
        timer.writing_piece()
        await conn.send_all(data)
        return
    view = memoryview(data)
    for start in range(0, len(data), _WRITE_PIECE):
        timer.writing_piece()
        await conn.send_all(view[start : start + _WRITE_PIECE])


class _Timer:
    """The write and read limits of sending a request and reading its head, in one
    cancel scope whose deadline moves with the phase.

    Moving a deadline costs about as much as the rest of a small request's client
    work, so the scope starts with the write deadline, and the read deadline replaces
    it only where the two differ by more than a millisecond (the common single
    ``timeout`` and a quick write: the read may then end up to 1 ms early).
    """

    __slots__ = ("read", "reading_now", "scope", "write")

    def __init__(self, write: float | None, read: float | None) -> None:
        self.write = write
        self.read = read
        self.reading_now = False
        # A zero write limit is set after entering (in writing()): a scope entered past
        # its deadline would fail a write that need not wait.
        first = math.inf if not write else trio.current_time() + write
        self.scope: trio.CancelScope = trio.CancelScope(deadline=first)

    def writing(self) -> None:
        if self.write == 0:
            self.scope.deadline = trio.current_time()

    def writing_piece(self) -> None:
        """One write of a streamed body: the write limit starts again."""
        write = self.write
        self.scope.deadline = math.inf if write is None else trio.current_time() + write

    def producing(self) -> None:
        """The streamed body's iterable is producing the next piece: no limit."""
        self.scope.deadline = math.inf

    def reading(self) -> None:
        self.reading_now = True
        read = self.read
        deadline = math.inf if read is None else trio.current_time() + read
        if abs(deadline - self.scope.deadline) > 0.001 or (deadline == math.inf) != (
            self.scope.deadline == math.inf
        ):
            self.scope.deadline = deadline

    def error(self, target: Target) -> RequestTimeout:
        if self.reading_now:
            assert self.read is not None
            return read_timeout_error(target, self.read, "waiting for the response head")
        return WriteTimeout(
            f"sending the request to {target.host}:{target.port} took longer than"
            f" {self.write} s (write timeout)"
        )
