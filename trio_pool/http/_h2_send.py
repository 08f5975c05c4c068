"""The sending side of one HTTP/2 request, :class:`H2RequestStream`: its body as DATA
frames within flow control and Content-Length, then the wait for the response head.
Synchronous changes to h2's state; the connection's writer sends."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import trio

from ._exceptions import LocalProtocolError, ReadTimeout, WriteTimeout
from ._h2_response import H2Response, make_response
from ._h2_stream import _Stream, cancel_stream, maybe_closed

if TYPE_CHECKING:
    from ._http2 import H2Connection

__all__ = ["H2RequestStream", "receive_head", "send_data"]

# How many body bytes may wait in h2's outbound buffer before a sender waits for the
# writer: one socket write's worth.
_HIGH_WATER: Final = 65536


async def send_data(
    conn: H2Connection, stream: _Stream, data: bytes, end_stream: bool, timeout: float | None
) -> bool:
    """:meth:`H2RequestStream.send_data`: frames as the stream's and the
    connection's windows allow, each wait (for window, or for the writer to take
    what is queued) limited to ``timeout`` seconds without progress."""
    await trio.lowlevel.checkpoint_if_cancelled()
    length = stream.length
    if length is not None and not stream.send_stopped:
        total = stream.sent + len(data)
        if total > length or (end_stream and total < length):
            # Never a mis-framed request on the wire (an HTTP/2-to-HTTP/1.1 proxy
            # would forward it as such): not a byte of it, no END_STREAM.
            longer = "longer" if total > length else "shorter"
            raise LocalProtocolError(
                f"the request body is {longer} than its Content-Length ({total} bytes,"
                f" Content-Length: {length}); HTTP/2 stream {stream.id} was reset"
            )
    view = memoryview(data)
    offset = 0
    deadline: float | None = None  # of the current wait; None while progressing
    waited = False
    while True:
        if stream.error is not None:
            raise stream.error
        if conn._error is not None:
            raise conn._error()
        if stream.local_ended:
            raise RuntimeError(f"the request on stream {stream.id} was already sent")
        if stream.send_stopped or stream.reset or _answered(stream):
            _stop_sending(conn, stream)
            break
        if conn._queued >= _HIGH_WATER:
            waiting_for = "the connection's writer (the server is not reading)"
        else:
            remaining = len(data) - offset
            if not remaining:
                if end_stream:
                    conn._h2.end_stream(stream.id)
                    _ended(conn, stream)
                break
            window = conn._h2.local_flow_control_window(stream.id)
            if window > 0:
                size = min(window, conn._h2.max_outbound_frame_size, remaining)
                end = end_stream and size == remaining
                piece = data if size == len(data) else bytes(view[offset : offset + size])
                conn._h2.send_data(stream.id, piece, end_stream=end)
                offset += size
                stream.sent += size
                conn._queued += size
                conn._kick()
                deadline = None
                if end:
                    _ended(conn, stream)
                    break
                continue
            waiting_for = "the server's flow-control window"
        if deadline is None:
            deadline = math.inf if timeout is None else trio.current_time() + timeout
        await _send_wait(conn, stream, deadline, waiting_for, timeout)
        waited = True
    if not waited:
        await trio.lowlevel.cancel_shielded_checkpoint()
    return not stream.send_stopped


def _ended(conn: H2Connection, stream: _Stream) -> None:
    stream.local_ended = True
    conn._kick()
    maybe_closed(conn, stream)


def _stop_sending(conn: H2Connection, stream: _Stream) -> None:
    """The server answered before the body was sent: send no more, and close our
    side with ``RST_STREAM(NO_ERROR)`` once the response has ended."""
    stream.send_stopped = True
    maybe_closed(conn, stream)


async def _send_wait(
    conn: H2Connection, stream: _Stream, deadline: float, waiting_for: str, timeout: float | None
) -> None:
    """Sleep until something changes on ``stream`` or the writer takes what is
    queued; :class:`WriteTimeout` at ``deadline``."""
    conn._send_waiters.add(stream)
    try:
        with trio.CancelScope(deadline=deadline) as scope:
            await stream.wait()
    finally:
        conn._send_waiters.discard(stream)
    if scope.cancelled_caught:
        raise WriteTimeout(
            f"sending on HTTP/2 stream {stream.id} waited longer than {timeout} s for"
            f" {waiting_for} (write timeout)"
        )


async def receive_head(conn: H2Connection, stream: _Stream, timeout: float | None) -> H2Response:
    """:meth:`H2RequestStream.receive_response`."""
    await trio.lowlevel.checkpoint_if_cancelled()
    if stream.headers is None and stream.error is None and stream.registered:
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        with trio.CancelScope(deadline=deadline) as scope:
            while stream.headers is None and stream.error is None and stream.registered:
                await stream.wait()
        if scope.cancelled_caught:
            raise ReadTimeout(
                f"no response head on HTTP/2 stream {stream.id} within {timeout} s"
                " (read timeout, waiting for the response head)"
            )
    else:
        await trio.lowlevel.cancel_shielded_checkpoint()
    if stream.headers is None:
        if stream.error is not None:
            raise stream.error
        raise trio.ClosedResourceError(f"stream {stream.id} was reset (abandoned)")
    return make_response(conn, stream)


# -- stream bookkeeping (synchronous) -----------------------------------------


def _answered(stream: _Stream) -> bool:
    """Whether the server answered ``stream`` before its body was sent: a complete
    response, or a final status of 300 or more (then the server does not want the
    rest; a 1xx or 2xx server may still read it, full-duplex)."""
    if stream.remote_ended:
        return True
    headers = stream.headers
    if headers is None:
        return False
    for name, value in headers:
        if name == b":status":
            return not value.startswith((b"1", b"2"))
    return False


class H2RequestStream:
    """A request on its stream, being sent: its body, then the response head.

    Made by :meth:`H2Connection.start_request` once the HEADERS are queued. Send the
    body with :meth:`send_data` (the last piece, or an empty one, with
    ``end_stream=True``), then wait for the head with :meth:`receive_response`. Any
    failure, timeout or cancellation of either resets the stream
    (``RST_STREAM(CANCEL)``); the other streams and the connection carry on.

    Each wait has its own limit: ``timeout`` of :meth:`send_data` limits each wait for
    the server's flow-control window or for the connection's writer (a steady upload is
    never cut off, a stalled one is), ``timeout`` of :meth:`receive_response` the wait
    for the head, counted from when the request was sent.
    """

    __slots__ = ("_conn", "_stream")

    def __init__(self, conn: H2Connection, stream: _Stream) -> None:
        self._conn = conn
        self._stream = stream

    def __repr__(self) -> str:
        return f"<H2RequestStream stream {self._stream.id}>"

    @property
    def stream_id(self) -> int:
        """The HTTP/2 stream id."""
        return self._stream.id

    @property
    def answered_early(self) -> bool:
        """Whether the server answered before the body was sent, so sending stopped."""
        return self._stream.send_stopped

    async def send_data(
        self, data: bytes, *, end_stream: bool = False, timeout: float | None = None
    ) -> bool:
        """Send ``data`` as DATA frames, as the flow-control windows allow, and with
        END_STREAM on the last frame if ``end_stream``. Returns once every frame is in
        the connection's outbound buffer (at most about 64 KiB waits there).

        Returns ``False``, having stopped sending, when the server has answered before
        the body was sent (RFC 9113, 8.1): a complete response, or a final status of
        300 or more (the server does not want the rest; Go's transport decides the
        same). The stream is then reset with ``NO_ERROR`` once the response has ended,
        and :meth:`receive_response` returns it.

        Args:
            data: The bytes to send (may be empty, to send END_STREAM alone).
            end_stream: Whether this ends the request body.
            timeout: Seconds each wait (for window, or for the writer) may last;
                ``None``: no limit, ``0``: fail as soon as sending would wait.

        Raises:
            WriteTimeout: A wait took longer than ``timeout``.
            StreamReset: The server reset the stream.
            RequestNotProcessed: GOAWAY or ``REFUSED_STREAM``: not processed.
            ReadError, WriteError, RemoteProtocolError: The connection failed.
        """
        try:
            return await send_data(self._conn, self._stream, data, end_stream, timeout)
        except BaseException:
            cancel_stream(self._conn, self._stream)
            raise

    async def receive_response(self, *, timeout: float | None = None) -> H2Response:
        """Wait for the response head (at most ``timeout`` seconds, ``None``: no limit).

        Raises:
            ReadTimeout: No head within ``timeout``.
            StreamReset, RequestNotProcessed, ReadError, WriteError,
                RemoteProtocolError: As for :meth:`send_data`.
        """
        try:
            return await receive_head(self._conn, self._stream, timeout)
        except BaseException:
            cancel_stream(self._conn, self._stream)
            raise

    def reset(self) -> None:
        """Reset the stream (``RST_STREAM(CANCEL)``) unless it is closed already: a
        request given up while it was sent. Synchronous and idempotent."""
        cancel_stream(self._conn, self._stream)
