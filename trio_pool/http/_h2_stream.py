"""One HTTP/2 stream of an :class:`~trio_pool.http._http2.H2Connection`: what the
reader knows about it (:class:`_Stream`), a stream reserved and not yet sent
(:class:`H2StreamSlot`), and its lifecycle, synchronously: flow-control credit handed
back, reset, failed by the peer, closed and unregistered."""

from __future__ import annotations

from typing import TYPE_CHECKING

import h2.exceptions
import trio
from h2.errors import ErrorCodes

from ._exceptions import HTTPError, RemoteProtocolError

if TYPE_CHECKING:
    from ._http2 import H2Connection

__all__ = [
    "H2StreamSlot",
    "acknowledge",
    "cancel_stream",
    "maybe_closed",
    "stream_error",
    "unregister",
]


class _Stream:
    """What the reader knows about one stream, and the one task waiting on it."""

    __slots__ = (
        "buffer",
        "error",
        "expected",
        "head",
        "headers",
        "id",
        "length",
        "local_ended",
        "received",
        "registered",
        "remote_ended",
        "reset",
        "send_stopped",
        "sent",
        "trailers",
        "unacked",
        "waiter",
    )

    def __init__(self, stream_id: int, *, head: bool = False) -> None:
        self.id: int = stream_id
        self.head = head  # a HEAD request: its response has no body
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.trailers: list[tuple[bytes, bytes]] | None = None
        # The body received and not read yet: bytes, whatever the framing (one window
        # at most, padding excluded: its credit goes back at once).
        self.buffer = bytearray()
        # Body bytes received and not yet handed back to the peer.
        self.unacked: int = 0
        # The response's content-length (None: none, or no body is due), and the body
        # bytes received so far.
        self.expected: int | None = None
        self.received: int = 0
        self.local_ended: bool = False
        self.remote_ended: bool = False
        self.reset: bool = False
        # The server answered before the body was sent: no more DATA; RST_STREAM(NO_ERROR)
        # once its response ends (RFC 9113, 8.1).
        self.send_stopped: bool = False
        self.length: int | None = None  # the request's Content-Length, held to
        self.sent: int = 0  # request body bytes queued
        self.registered: bool = True  # counted in the connection's open streams
        self.error: HTTPError | None = None
        # The task asleep in wait(): rescheduled directly, with no Event made per wait.
        self.waiter: trio.lowlevel.Task | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            trio.lowlevel.reschedule(waiter)

    async def wait(self) -> None:
        """Sleep until the reader (or a failure) changes something on this stream
        (a checkpoint: cancellation lands here, and the stream forgets the task)."""
        self.waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self.waiter = None
        return trio.lowlevel.Abort.SUCCEEDED


class H2StreamSlot:
    """A stream reserved on an :class:`H2Connection`, not yet sent.

    Counted in :attr:`H2Connection.open_streams` from the moment it is made; pass it to
    :meth:`H2Connection.request` (which uses it up) or :meth:`release` it.
    """

    __slots__ = ("_conn", "_held")

    def __init__(self, conn: H2Connection) -> None:
        self._conn = conn
        self._held = True

    @property
    def connection(self) -> H2Connection:
        """The connection the slot is on."""
        return self._conn

    @property
    def held(self) -> bool:
        """Whether the slot is still reserved (not used, not released)."""
        return self._held

    def release(self) -> None:
        """Give the slot back unused. Idempotent; synchronous, so safe in ``finally``."""
        if self._held:
            self._held = False
            self._conn._reserved -= 1
            self._conn._capacity_changed()

    def _use(self) -> None:
        if not self._held:
            raise RuntimeError("this H2StreamSlot was already used or released")
        self._held = False
        self._conn._reserved -= 1


# -- a stream's lifecycle (synchronous) ----------------------------------------


def acknowledge(conn: H2Connection, stream: _Stream, flow_controlled: int) -> None:
    """The caller consumed ``flow_controlled`` bytes: hand the credit back."""
    if flow_controlled and stream.unacked:
        stream.unacked -= flow_controlled
        if stream.registered and not conn._closed:
            conn._h2.acknowledge_received_data(flow_controlled, stream.id)
            conn._kick()


def cancel_stream(
    conn: H2Connection, stream: _Stream, code: ErrorCodes = ErrorCodes.CANCEL
) -> None:
    """Reset ``stream`` if it is still open and free it. Synchronous."""
    if not stream.registered:
        return
    stream.reset = True
    if not conn._closed and not (stream.local_ended and stream.remote_ended):
        try:
            conn._h2.reset_stream(stream.id, code)
        except h2.exceptions.ProtocolError:  # pragma: no cover - h2 says closed already
            pass
        conn._kick()
    unregister(conn, stream)


def stream_error(conn: H2Connection, stream: _Stream, problem: str) -> None:
    """The peer broke HTTP/2 on ``stream`` only (RFC 9113, 8.1.1): fail it, reset it
    with PROTOCOL_ERROR; the other streams carry on."""
    stream.error = RemoteProtocolError(f"the server broke HTTP/2 on stream {stream.id}: {problem}")
    stream.buffer.clear()
    cancel_stream(conn, stream, ErrorCodes.PROTOCOL_ERROR)


def maybe_closed(conn: H2Connection, stream: _Stream) -> None:
    if stream.registered and stream.remote_ended:
        if stream.local_ended:
            unregister(conn, stream)
        elif stream.send_stopped:  # answered early: close our side (RFC 9113, 8.1)
            cancel_stream(conn, stream, ErrorCodes.NO_ERROR)


def unregister(conn: H2Connection, stream: _Stream) -> None:
    """``stream`` is closed: stop counting it, give its unread bytes' credit back to
    the connection window, and tell the pool."""
    stream.registered = False
    del conn._streams[stream.id]
    if stream.unacked and not conn._closed:
        # Handed back to the connection window in batches of a stream window: the
        # connection window has one stream window more than the open streams can use,
        # so the credit held back never stops them.
        conn._credit += stream.unacked
        if conn._credit >= conn._stream_window:
            # The stream is closed in h2, so this only re-opens the connection window.
            conn._h2.acknowledge_received_data(conn._credit, stream.id)
            conn._credit = 0
            conn._kick()
    stream.unacked = 0
    stream.wake()
    conn._capacity_changed()
