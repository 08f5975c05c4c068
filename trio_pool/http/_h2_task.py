"""The task of an HTTP/2 connection: starting it (preface, SETTINGS), and its two
loops, run in the pool's nursery until the connection ends.

* the **reader**, the only code that receives from the socket: it hands each read to
  :func:`trio_pool.http._h2_events.receive`;
* the **writer**, the only code that sends: everyone else changes h2's state
  synchronously and kicks it, and it drains h2's outbound buffer to the socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import trio

from .._exceptions import ConnectTimeout
from ._exceptions import ReadError, WriteError
from ._h2_events import chained, receive
from ._h2_exceptions import GoAwayOnOpen
from ._h2_settings import DEFAULT_WINDOW, MAX_WINDOW

if TYPE_CHECKING:
    from ._http2 import H2Connection

__all__ = ["CLOSE_TIMEOUT", "drained_wait", "run", "start"]

CLOSE_TIMEOUT: Final = 1.0
_RECEIVE_SIZE: Final = 65536


async def start(conn: H2Connection, nursery: trio.Nursery, settings_timeout: float) -> None:
    conn._h2.initiate_connection()
    # One stream window more than the open streams can use: the credit of closed
    # streams is handed back a stream window at a time (_h2_stream.unregister).
    connection_window = (conn._cap + 1) * conn._stream_window
    increment = min(connection_window, MAX_WINDOW) - DEFAULT_WINDOW
    if increment > 0:
        conn._h2.increment_flow_control_window(increment)
    try:
        await nursery.start(run, conn)
        with trio.move_on_after(settings_timeout):
            await conn._ready.wait()
    except BaseException:
        conn._die(lambda: ReadError("the HTTP/2 connection was abandoned while opening"))
        if not conn._running:  # the nursery never ran our task: close the stream here
            conn._finished.set()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(conn._stream)
        await conn._wait_finished()
        raise
    if conn._error is not None:
        exc = conn._error()
        # The task ends by itself (the writer sending our GOAWAY first, if any).
        with trio.CancelScope(shield=True):
            await conn._finished.wait()
        raise exc
    if not conn._ready.is_set():
        conn._die(lambda: ReadError("the server sent no HTTP/2 SETTINGS"))
        await conn._wait_finished()
        raise ConnectTimeout(f"the server sent no HTTP/2 SETTINGS within {settings_timeout} s")
    if conn._goaway is not None:
        # GOAWAY came with the SETTINGS: the connection never takes a stream, and no
        # request was sent on it, so the caller may try another connection.
        conn._die(lambda: ReadError("the server sent GOAWAY as the connection opened"))
        await conn._wait_finished()
        raise GoAwayOnOpen(
            "the server sent GOAWAY as the HTTP/2 connection opened: nothing was sent"
        )
    conn.idle_since = trio.current_time()


def writer_took(conn: H2Connection) -> None:
    """The writer took everything queued: wake the senders waiting for it."""
    conn._queued = 0
    if conn._send_waiters:
        for stream in conn._send_waiters:
            stream.wake()


async def drained_wait(conn: H2Connection) -> None:
    while not conn._drained.is_set():
        await conn._drained.wait()


async def run(
    conn: H2Connection, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    conn._running = True
    try:
        with conn._cancel_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_write_loop, conn)
                if conn._pinger is not None:
                    nursery.start_soon(conn._pinger.run, conn)
                task_status.started()
                await _read_loop(conn)
                if conn._pinger is not None:
                    conn._pinger.stop()
                # The reader stopped on a connection error (the socket is fine): the
                # writer sends what is queued, our GOAWAY last, and stops; a writer
                # the peer does not let write is given a short deadline.
                nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT
                conn._kick()
    finally:
        conn._die(lambda: ReadError("the HTTP/2 connection was closed"))
        with trio.CancelScope(shield=True):
            leftover = bytes(conn._outbox) + conn._h2.data_to_send()
            conn._outbox.clear()
            # Nothing more goes out after a failed write or one cut off half way.
            if leftover and not conn._write_failed and not conn._sending:
                # A GOAWAY of ours (after aclose), RST_STREAMs: best effort.
                with trio.move_on_after(CLOSE_TIMEOUT):
                    try:
                        await conn._stream.send_all(leftover)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
            await trio.aclose_forcefully(conn._stream)
        conn._finished.set()


async def _write_loop(conn: H2Connection) -> None:
    while True:
        if conn._outbox:
            data = bytes(conn._outbox) + conn._h2.data_to_send()
            conn._outbox.clear()
        else:
            data = conn._h2.data_to_send()
        conn._unsent_replies = 0
        if not data:
            writer_took(conn)
            conn._drained.set()
            if conn._closed:  # everything queued went out (a GOAWAY of ours last)
                return
            conn._write_wanted = trio.Event()
            await conn._write_wanted.wait()
            continue
        writer_took(conn)
        if conn._drained.is_set() and not conn._closed:
            conn._drained = trio.Event()
        conn._sending = True
        try:
            await conn._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            conn._write_failed = True
            conn._die(chained(WriteError, "sending on the HTTP/2 connection failed", exc))
            return
        conn._sending = False


async def _read_loop(conn: H2Connection) -> None:
    """Receive, feed h2, dispatch its events; return (without cancelling the writer)
    on a connection error of the peer's, once our GOAWAY is queued."""
    while True:
        try:
            data = await conn._stream.receive_some(_RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            conn._die(chained(ReadError, "the HTTP/2 connection was lost", exc))
            return
        if not data:
            conn._die(lambda: ReadError("the server closed the HTTP/2 connection"))
            return
        if conn._pinger is not None:
            conn._pinger.received()
        if not receive(conn, bytes(data)):
            return
