"""The sending side of one HTTP/2 request (what :class:`H2RequestStream` does): its
body as DATA frames within flow control and Content-Length, then the wait for the
response head. Synchronous changes to h2's state; the connection's writer sends."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import trio

from ._exceptions import LocalProtocolError, ReadTimeout, WriteTimeout

if TYPE_CHECKING:
    from ._http2 import H2Connection, H2Response, _Stream

__all__ = ["receive_head", "send_data"]

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
    conn._maybe_closed(stream)


def _stop_sending(conn: H2Connection, stream: _Stream) -> None:
    """The server answered before the body was sent: send no more, and close our
    side with ``RST_STREAM(NO_ERROR)`` once the response has ended."""
    stream.send_stopped = True
    conn._maybe_closed(stream)


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
    return conn._make_response(stream)


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
