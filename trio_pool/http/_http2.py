"""HTTP/2 client connections: a thin trio I/O loop around h2's sans-IO state machine.

An :class:`H2Connection` runs over a stream that is already open: a
:class:`trio.SSLStream` whose ALPN chose ``h2``, or a plain stream for h2c by prior
knowledge. :meth:`H2Connection.open` sends the preface and our SETTINGS, starts the
connection's task in the nursery it is given (the pool's), and returns once the peer's
SETTINGS arrived, so the stream limit is known before the first stream is lent.

The connection's task runs two loops:

* the **reader**, the only code that receives from the socket. It feeds h2 and
  dispatches the events to per-stream state (:class:`_Stream`), synchronously, and
  wakes whoever waits on a stream;
* the **writer**, the only code that sends. Everyone else changes h2's state
  synchronously (headers, data, ``RST_STREAM``, window updates) and kicks the writer,
  which drains h2's outbound buffer to the socket. Cancelling a request therefore
  never interrupts a ``send_all`` half way, and resetting a stream needs no ``await``.

Flow control: every stream's receive window is ``stream_window`` bytes and is only
re-opened as the caller consumes the body, so a stream nobody reads buffers at most
one window and then the peer must stop. The connection window is
``(max_concurrent_streams + 1) * stream_window``, so open streams together can never use
it up and a stalled stream cannot starve the others; when a stream ends or is reset,
its unread bytes go back to the connection window, in batches of one stream window
(the one window more). Sending waits for
the peer's ``WINDOW_UPDATE`` and for the writer to take what is queued, so the
outbound buffer stays small; each such wait has the request's write limit.

A request goes out in steps (:meth:`H2Connection.start_request`, then
:class:`H2RequestStream`'s ``send_data`` and ``receive_response``), so a body can be
streamed as it is produced; :meth:`H2Connection.request` does all three for a body
in bytes.

The connection's state and its public API are here; beside it, by concern: its
settings and h2's configuration (``_h2_settings``), the task and its two loops
(``_h2_task``), what received frames do (``_h2_events``), a stream and its lifecycle
(``_h2_stream``), a request's header block (``_h2_headers``), its sending side
(``_h2_send``), the response and its body (``_h2_response``), h2's workarounds
(``_h2_adapter``), and the client's body reader (``_h2_body``). h2 is imported only
by these modules; :mod:`trio_pool.http` does not import them until HTTP/2 is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import h2.exceptions
import trio

from ._exceptions import ReadError
from ._h2_events import ErrorFactory, _FrameWatch
from ._h2_exceptions import ConnectionUnavailable, RequestNotProcessed
from ._h2_headers import LastBlock
from ._h2_response import H2Response as H2Response
from ._h2_send import H2RequestStream as H2RequestStream
from ._h2_settings import check_limits, new_state_machine
from ._h2_stream import H2StreamSlot as H2StreamSlot
from ._h2_stream import _Stream
from ._h2_task import CLOSE_TIMEOUT, drained_wait, start

if TYPE_CHECKING:
    from ._h2_liveness import Pinger

__all__ = [
    "DEFAULT_MAX_CONCURRENT_STREAMS",
    "DEFAULT_STREAM_WINDOW",
    "H2Connection",
    "H2ConnectionStatistics",
    "H2RequestStream",
    "H2Response",
    "H2StreamSlot",
]

#: Our own cap on concurrent streams per connection (the peer's limit may be lower).
DEFAULT_MAX_CONCURRENT_STREAMS: Final = 100
#: The receive window of each stream: the most a stream buffers while nobody reads it.
DEFAULT_STREAM_WINDOW: Final = 256 * 1024
_DEFAULT_SETTINGS_TIMEOUT: Final = 10.0


@dataclass(frozen=True, slots=True)
class H2ConnectionStatistics:
    """A snapshot of one HTTP/2 connection (from :meth:`H2Connection.statistics`).

    Attributes:
        open_streams: Streams in use, reserved ones included.
        max_concurrent_streams: The peer's limit, capped by ours.
        streams_started: Streams opened on this connection so far.
        goaway: Whether the peer sent GOAWAY.
        closed: Whether the connection is closed (or lost).
    """

    open_streams: int
    max_concurrent_streams: int
    streams_started: int
    goaway: bool
    closed: bool


class H2Connection:
    """A client HTTP/2 connection that multiplexes requests over one stream.

    Make one with :meth:`open`. Everything the pool needs to decide with is a
    synchronous property (:attr:`is_available`, :attr:`available_streams`,
    :attr:`is_idle`, ...), and :attr:`on_capacity_change` is called, synchronously,
    whenever the answer may have changed.

    Attributes:
        on_capacity_change: Called with no arguments when a stream ends or a
            reservation is released, the peer changes ``SETTINGS_MAX_CONCURRENT_STREAMS``,
            GOAWAY arrives, or the connection dies. It runs inside the connection's
            code (often the reader task), so it must neither block nor raise.
        idle_since: :func:`trio.current_time` when :attr:`open_streams` last fell to
            0 (or the connection opened); ``None`` while streams are open.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        on_capacity_change: Callable[[], None] | None = None,
    ) -> None:
        if not isinstance(stream, trio.abc.Stream):
            raise TypeError(f"stream must be a trio.abc.Stream, not {type(stream).__name__}")
        check_limits(max_concurrent_streams, stream_window)
        self._stream = stream
        self._cap = max_concurrent_streams
        self._stream_window = stream_window
        self.on_capacity_change: Callable[[], None] | None = on_capacity_change
        self._h2 = new_state_machine(
            max_concurrent_streams, stream_window, lambda: len(self._streams)
        )
        # min(the peer's SETTINGS_MAX_CONCURRENT_STREAMS, ours), read on every pool
        # decision: kept here, and updated when the peer's settings change (_h2_events).
        self._limit: int = min(self._h2.remote_settings.max_concurrent_streams, self._cap)
        self._streams: dict[int, _Stream] = {}
        self._last_block = LastBlock()  # the last request's header block, checked once
        self._reserved = 0
        self._started = 0
        self._goaway: int | None = None  # the last_stream_id of a GOAWAY
        self._closed: bool = False
        self._error: ErrorFactory | None = None
        self._outbox = bytearray()  # h2's output, kept safe from h2 clearing it on GOAWAY
        self._queued = 0  # body bytes in h2's buffer that the writer has not taken yet
        self._credit = 0  # connection-window credit of closed streams, not handed back yet
        self._send_waiters: set[_Stream] = set()  # senders waiting for the writer
        # Bytes of h2's automatic answers to the peer queued since the writer last took
        # the queue (bounded by _MAX_UNSENT_REPLIES).
        self._unsent_replies = 0
        self._watch = _FrameWatch()
        self._write_failed = False
        self._sending = False  # the writer is inside send_all
        self._running = False
        self._write_wanted = trio.Event()
        self._drained = trio.Event()
        self._drained.set()
        self._ready = trio.Event()
        self._finished = trio.Event()
        self._cancel_scope = trio.CancelScope()
        self._capacity_lot = trio.lowlevel.ParkingLot()
        self.idle_since: float | None = None
        self._pinger: Pinger | None = None  # PINGs a quiet connection (_h2_liveness)

    # -- opening and closing -------------------------------------------------------

    @classmethod
    async def open(
        cls,
        stream: trio.abc.Stream,
        nursery: trio.Nursery,
        *,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        settings_timeout: float = _DEFAULT_SETTINGS_TIMEOUT,
        on_capacity_change: Callable[[], None] | None = None,
    ) -> H2Connection:
        """Start HTTP/2 on ``stream`` and wait for the peer's SETTINGS.

        The connection owns ``stream`` from here on: it closes it when the connection
        ends, and at once if opening fails.

        Args:
            stream: An open stream: TLS after ALPN ``h2``, or plain for h2c.
            nursery: Where the connection's reader/writer task runs (the pool's); it
                ends when the connection closes.
            max_concurrent_streams: Our own cap on concurrent streams; the effective
                limit is the lower of this and the peer's.
            stream_window: Each stream's receive window in bytes (at most that much is
                buffered for a stream nobody reads).
            settings_timeout: Seconds to wait for the peer's SETTINGS frame.
            on_capacity_change: See :attr:`on_capacity_change`.

        Raises:
            TypeError, ValueError: A bad argument (nothing was sent; ``stream`` is left
                open).
            ConnectTimeout: The peer sent no SETTINGS within ``settings_timeout``.
            ReadError, WriteError, RemoteProtocolError: The connection failed first.
            GoAwayOnOpen: The peer sent GOAWAY with its SETTINGS: no stream was sent,
                so another connection may be tried.
        """
        if (
            not isinstance(settings_timeout, int | float)
            or isinstance(settings_timeout, bool)
            or not settings_timeout > 0
            or math.isnan(settings_timeout)
        ):
            raise ValueError(f"settings_timeout must be a number > 0, got {settings_timeout!r}")
        conn = cls(
            stream,
            max_concurrent_streams=max_concurrent_streams,
            stream_window=stream_window,
            on_capacity_change=on_capacity_change,
        )
        await start(conn, nursery, settings_timeout)
        return conn

    async def aclose(self) -> None:
        """Close the connection: GOAWAY, then the socket. Open streams fail with
        :class:`~trio_pool.http.ReadError`. Idempotent; waits at most about a second."""
        if not self._closed:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    self._h2.close_connection()
                except h2.exceptions.ProtocolError:  # pragma: no cover - h2 already closed
                    pass
                else:
                    self._kick()
                    await drained_wait(self)
            self._die(lambda: ReadError("the HTTP/2 connection was closed"))
        await self._wait_finished()

    async def _wait_finished(self) -> None:
        self._cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await self._finished.wait()

    # -- what the pool looks at ----------------------------------------------------

    @property
    def max_concurrent_streams(self) -> int:
        """The peer's ``SETTINGS_MAX_CONCURRENT_STREAMS``, capped by our own limit."""
        return self._limit

    @property
    def open_streams(self) -> int:
        """Streams in use: sent and not yet closed, plus reserved slots."""
        return len(self._streams) + self._reserved

    @property
    def available_streams(self) -> int:
        """How many more streams may be reserved now (0 once closed or going away)."""
        if self._closed or self._goaway is not None:
            return 0
        return max(0, self.max_concurrent_streams - self.open_streams)

    @property
    def is_available(self) -> bool:
        """Open, no GOAWAY, and at least one free stream."""
        return self.available_streams > 0

    @property
    def is_idle(self) -> bool:
        """No streams open or reserved."""
        return self.open_streams == 0

    @property
    def is_closed(self) -> bool:
        """Closed by us, by the peer, or lost; never gives a stream again."""
        return self._closed

    @property
    def is_going_away(self) -> bool:
        """The peer sent GOAWAY (or we ran out of stream ids): no new streams."""
        return self._goaway is not None

    def statistics(self) -> H2ConnectionStatistics:
        """A frozen snapshot of the connection's counters."""
        return H2ConnectionStatistics(
            open_streams=self.open_streams,
            max_concurrent_streams=self.max_concurrent_streams,
            streams_started=self._started,
            goaway=self._goaway is not None,
            closed=self._closed,
        )

    # -- lending streams -----------------------------------------------------------

    def reserve_stream_nowait(self) -> H2StreamSlot:
        """Reserve a stream, synchronously (what the pool's state machine calls).

        Raises:
            ConnectionUnavailable: Closed, going away, or every stream in use.
        """
        if not self.is_available:
            raise ConnectionUnavailable(self._unavailable_reason())
        self._reserved += 1
        self.idle_since = None
        return H2StreamSlot(self)

    async def reserve_stream(self) -> H2StreamSlot:
        """Reserve a stream, waiting while every stream is in use.

        For use without a pool; the pool reserves synchronously and keeps its own FIFO
        of waiters.

        Raises:
            ConnectionUnavailable: The connection is closed or going away.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.is_available:
            slot = self.reserve_stream_nowait()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return slot
        while not self.is_available:
            if self._closed or self._goaway is not None:
                raise ConnectionUnavailable(self._unavailable_reason())
            await self._capacity_lot.park()
        return self.reserve_stream_nowait()

    def _unavailable_reason(self) -> str:
        if self._closed:
            return "the HTTP/2 connection is closed"
        if self._goaway is not None:
            return "the server sent GOAWAY on this HTTP/2 connection"
        return f"all {self.max_concurrent_streams} streams of this HTTP/2 connection are in use"

    async def request(
        self,
        method: bytes | str,
        target: bytes | str,
        authority: bytes | str,
        scheme: bytes | str = b"https",
        headers: Sequence[tuple[bytes | str, bytes | str]] = (),
        body: bytes = b"",
        *,
        slot: H2StreamSlot | None = None,
        write_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> H2Response:
        """Send a request on a new stream and wait for the response head:
        :meth:`start_request`, then the body and the head of :class:`H2RequestStream`.

        Args:
            method: E.g. ``b"GET"``.
            target: The path and query, e.g. ``b"/index.html?q=1"``.
            authority: Host and port as in a ``Host`` header.
            scheme: ``b"https"`` or ``b"http"``.
            headers: ``(name, value)`` pairs; names are lowercased, and HTTP/1.1
                connection-specific headers (``Connection``, ``Host``, ...) dropped.
            body: The request body, sent as flow control allows. When the server
                answers before all of it is sent, the rest is not sent (see
                :meth:`H2RequestStream.send_data`).
            slot: A stream reserved with :meth:`reserve_stream_nowait`; without one,
                the request waits for a free stream (:meth:`reserve_stream`).
            write_timeout: The limit of each wait for window or writer.
            read_timeout: The limit of the wait for the head, once the body is sent.

        Returns:
            The response head; read its body with :meth:`H2Response.receive_data`.

        Raises:
            TypeError, ValueError: A bad argument, before any I/O.
            RequestNotProcessed: GOAWAY or ``REFUSED_STREAM``: the server did not
                process it; retrying elsewhere is safe for any method.
            ConnectionUnavailable: No slot given, and the connection is closed or
                going away.
            WriteTimeout, ReadTimeout: A wait took longer than its limit.
            StreamReset: The server reset the stream.
            ReadError, WriteError, RemoteProtocolError: The connection failed.

        Cancellation at any point resets the stream (``RST_STREAM(CANCEL)``) and frees
        it; the other streams carry on.
        """
        if not isinstance(body, bytes):
            raise TypeError(f"body must be bytes, not {type(body).__name__}")
        request = await self.start_request(
            method, target, authority, scheme, headers, end_stream=not body, slot=slot
        )
        if body:
            await request.send_data(body, end_stream=True, timeout=write_timeout)
        return await request.receive_response(timeout=read_timeout)

    async def start_request(
        self,
        method: bytes | str,
        target: bytes | str,
        authority: bytes | str,
        scheme: bytes | str = b"https",
        headers: Sequence[tuple[bytes | str, bytes | str]] = (),
        *,
        end_stream: bool = False,
        slot: H2StreamSlot | None = None,
    ) -> H2RequestStream:
        """Open a stream and queue the request's HEADERS (with END_STREAM if
        ``end_stream``: a request without a body). Arguments as for :meth:`request`.

        Returns:
            The request, to send its body and receive its response head.

        Raises:
            TypeError, ValueError: A bad argument, before any I/O (``slot`` is then
                released).
            RequestNotProcessed: The connection stopped taking streams.
            ConnectionUnavailable: As for :meth:`request`.
        """
        if slot is not None and (not isinstance(slot, H2StreamSlot) or slot._conn is not self):
            raise ValueError("slot must be an H2StreamSlot of this connection")
        try:
            block, length = self._last_block.build(method, target, authority, scheme, headers)
            if end_stream and length:
                raise ValueError(f"headers say Content-Length: {length}, but there is no body")
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        if slot is None:
            slot = await self.reserve_stream()
        else:
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                slot.release()
                raise
        try:
            # Only when the peer lowered its limit after the slot was reserved.
            while (
                len(self._streams) >= self.max_concurrent_streams
                and not self._closed
                and self._goaway is None
            ):
                await self._capacity_lot.park()
        except BaseException:
            slot.release()
            raise
        stream = self._send_headers(slot, block, end_stream=end_stream)
        stream.length = length
        return H2RequestStream(self, stream)

    def _send_headers(
        self, slot: H2StreamSlot, block: list[tuple[bytes, bytes]], *, end_stream: bool
    ) -> _Stream:
        """Use ``slot``: pick the next stream id and queue HEADERS, synchronously (ids
        must go out in the order they are taken)."""
        slot._use()
        if self._closed or self._goaway is not None:
            self._capacity_changed()
            raise RequestNotProcessed(
                f"{self._unavailable_reason()}: the request was not sent"
            ) from (self._error() if self._error is not None else None)
        try:
            stream_id = self._h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self._goaway = 0  # out of ids: behave as after GOAWAY
            self._capacity_changed()
            raise RequestNotProcessed("this HTTP/2 connection ran out of stream ids") from None
        stream = _Stream(stream_id, head=block[0][1] == b"HEAD")
        try:
            self._h2.send_headers(stream_id, block, end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:  # pragma: no cover - checked before
            self._capacity_changed()
            raise ValueError(f"h2 refused the request headers: {exc}") from exc
        stream.local_ended = end_stream
        self._streams[stream_id] = stream
        self._started += 1
        self._kick()
        return stream

    def _capacity_changed(self) -> None:
        if self.open_streams == 0:
            if self.idle_since is None:
                self.idle_since = trio.current_time()
            if self._goaway is not None and not self._closed:
                self._cancel_scope.cancel()  # nothing left to finish: close
        if self._capacity_lot:
            self._capacity_lot.unpark_all()
        hook = self.on_capacity_change
        if hook is not None:
            hook()

    def _die(self, error: ErrorFactory, *, cancel: bool = True) -> None:
        """The connection is over: fail every open stream with a fresh ``error()``, and
        stop the connection's task (unless ``cancel`` is false: then the reader returns
        and the writer sends what is queued, our GOAWAY, first)."""
        if self._closed:
            return
        self._closed = True
        self._error = error
        for stream in list(self._streams.values()):
            if stream.error is None and not stream.remote_ended:
                stream.error = error()
            stream.registered = False
            stream.unacked = 0
            stream.wake()
        self._streams.clear()
        self._ready.set()
        self._drained.set()
        if cancel:
            self._cancel_scope.cancel()
        self._capacity_changed()

    # -- the connection's task -----------------------------------------------------

    def _kick(self) -> None:
        self._write_wanted.set()
