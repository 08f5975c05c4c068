"""The response side of an HTTP/2 stream: :class:`H2Response` (its head and body),
and the body readers it shares with :class:`~trio_pool.http._h2_body.H2Body`, reading
straight from the stream's buffer and handing the credit back as they go."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ._exceptions import RemoteProtocolError
from ._h2_stream import _Stream, acknowledge, cancel_stream
from ._models import first_header

if TYPE_CHECKING:
    from ._http2 import H2Connection

__all__ = [
    "H2Response",
    "abandon_body",
    "body_arrived",
    "body_ended",
    "make_response",
    "receive_body",
    "take_buffered",
]


class H2Response:
    """The head of an HTTP/2 response, and its body still to read.

    The body methods mirror the HTTP/1.1 exchange (``read_chunk``, ``read_all``,
    ``abandon``, ``done``, ``started``), so :class:`~trio_pool.http.Response` can
    wrap either.

    Attributes:
        status: The status code.
        headers: The response headers (no pseudo-headers), names lowercase.
        http_version: Always ``"2"``.
        stream_id: The HTTP/2 stream the response came on.
        done: Whether the body was read to its end.
        started: Whether any of the body was read.
    """

    __slots__ = ("_conn", "_stream", "done", "headers", "http_version", "started", "status")

    def __init__(
        self,
        conn: H2Connection,
        stream: _Stream,
        status: int,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self._conn = conn
        self._stream = stream
        self.status: int = status
        self.headers: list[tuple[bytes, bytes]] = headers
        self.http_version: str = "2"
        self.done: bool = False
        self.started: bool = False

    def __repr__(self) -> str:
        return f"<H2Response [{self.status}] stream {self._stream.id}>"

    @property
    def stream_id(self) -> int:
        """The HTTP/2 stream id."""
        return self._stream.id

    def header(self, name: str | bytes) -> bytes | None:
        """The value of the first header called ``name`` (any case), or ``None``."""
        return first_header(self.headers, name)

    @property
    def trailers(self) -> list[tuple[bytes, bytes]] | None:
        """Trailers, once the body ended with some; else ``None``."""
        return self._stream.trailers

    async def receive_data(self) -> bytes:
        """The next piece of the body, or ``b""`` at its end.

        Reading hands the bytes' flow-control credit back to the server. A read that is
        cancelled or fails resets the stream (``RST_STREAM(CANCEL)``): the rest of the
        body is lost, the connection carries on.

        Raises:
            StreamReset: The server reset the stream.
            ReadError: The connection was lost.
            RemoteProtocolError: The server broke HTTP/2.
        """
        data = await receive_body(self._conn, self._stream)
        if data:
            self.started = True
        else:
            self.done = True
        return data

    async def read_chunk(self) -> bytes:
        """Same as :meth:`receive_data` (the HTTP/1.1 body's name)."""
        return await self.receive_data()

    async def read_all(self) -> bytes:
        """Read the rest of the body and return it."""
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            self.abandon()
            raise
        first = take_buffered(self._conn, self._stream)
        self.started = self.started or bool(first)
        if body_ended(self._stream):
            self.done = True
            await trio.lowlevel.cancel_shielded_checkpoint()
            return first
        parts = [first]
        while chunk := await self.receive_data():
            parts.append(chunk)
        return b"".join(parts)

    def abandon(self) -> None:
        """Give up the rest of the body: reset the stream if it is still open.
        Synchronous and idempotent; the connection carries on."""
        abandon_body(self._conn, self._stream)

    async def aclose(self) -> None:
        """:meth:`abandon`, as a checkpoint. A no-op on a body read to its end."""
        self.abandon()
        await trio.lowlevel.checkpoint()


async def receive_body(conn: H2Connection, stream: _Stream) -> bytes:
    """The next piece of ``stream``'s body, or ``b""`` at its end, its flow-control
    credit handed back. A read that is cancelled or fails resets the stream.

    Raises:
        StreamReset: The server reset the stream.
        ReadError: The connection was lost.
        RemoteProtocolError: The server broke HTTP/2.
        trio.ClosedResourceError: The stream was reset by us (abandoned).
    """
    if stream.registered and not stream.buffer and stream.error is None and not stream.remote_ended:
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            while (
                stream.registered
                and not stream.buffer
                and stream.error is None
                and not stream.remote_ended
            ):
                await stream.wait()
        except BaseException:
            abandon_body(conn, stream)
            raise
    else:
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            abandon_body(conn, stream)
            raise
        await trio.lowlevel.cancel_shielded_checkpoint()
    if stream.buffer:
        return take_buffered(conn, stream)
    if stream.remote_ended and stream.error is None:
        return b""
    if stream.error is not None:
        raise stream.error
    raise trio.ClosedResourceError("this response's stream was reset (abandoned)")


def take_buffered(conn: H2Connection, stream: _Stream) -> bytes:
    """Every piece of ``stream``'s body received so far (``b""``: none), taken at once,
    its credit handed back in one go (the fast path of a body that is already here)."""
    buffer = stream.buffer
    if not buffer:
        return b""
    data = bytes(buffer)
    buffer.clear()
    acknowledge(conn, stream, len(data))
    return data


def body_arrived(stream: _Stream) -> bool:
    """Whether the whole of ``stream``'s body is here (ended, without error)."""
    return stream.remote_ended and stream.error is None


def body_ended(stream: _Stream) -> bool:
    """Whether ``stream``'s body has nothing more to give (ended and read)."""
    return stream.remote_ended and stream.error is None and not stream.buffer


def abandon_body(conn: H2Connection, stream: _Stream) -> None:
    """Give up the rest of ``stream``'s body: reset the stream if it is still open
    (``RST_STREAM(CANCEL)``), its unread bytes' credit handed back. Idempotent."""
    stream.buffer.clear()
    cancel_stream(conn, stream)


def make_response(conn: H2Connection, stream: _Stream) -> H2Response:
    """The final head received on ``stream`` as an :class:`H2Response`."""
    assert stream.headers is not None
    status = 0
    headers = []
    for name, value in stream.headers:
        if name == b":status":
            if not (len(value) == 3 and value.isdigit()):
                raise RemoteProtocolError(f"the server sent a bad :status {value!r}")
            status = int(value)
        elif not name.startswith(b":"):
            headers.append((name, value))
    return H2Response(conn, stream, status, headers)
