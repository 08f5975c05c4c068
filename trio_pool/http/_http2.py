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
``max_concurrent_streams * stream_window``, so open streams together can never use it
up and a stalled stream cannot starve the others; when a stream ends or is reset,
its unread bytes are handed back to the connection window at once. Sending waits for
the peer's ``WINDOW_UPDATE`` and for the writer to take what is queued, so the
outbound buffer stays small; each such wait has the request's write limit.

A request goes out in steps (:meth:`H2Connection.start_request`, then
:class:`H2RequestStream`'s ``send_data`` and ``receive_response``), so a body can be
streamed as it is produced; :meth:`H2Connection.request` does all three for a body
in bytes.

The connection's state and its public API are here; beside it, by concern: the task
and its two loops (``_h2_task``), what received frames do (``_h2_events``), a
request's sending side (``_h2_send``), h2's workarounds (``_h2_adapter``), and the
client's body reader (``_h2_body``). h2 is imported only by these modules;
:mod:`trio_pool.http` does not import them until HTTP/2 is used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio
from h2.errors import ErrorCodes
from hpack import NeverIndexedHeaderTuple

from .._redact import shape_of
from ._exceptions import (
    HTTPError,
    ReadError,
    RemoteProtocolError,
)
from ._h2_adapter import new_h2_connection
from ._h2_events import ErrorFactory, _FrameWatch
from ._h2_exceptions import ConnectionUnavailable, RequestNotProcessed
from ._h2_send import receive_head, send_data
from ._h2_task import CLOSE_TIMEOUT, DEFAULT_WINDOW, MAX_WINDOW, drained_wait, start

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
# How many body bytes may wait in h2's outbound buffer before a sender waits for the
# writer: one socket write's worth.
_HIGH_WATER: Final = 65536
_HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)
# Kept out of HPACK's dynamic table (never indexed), as h2's own normalization does.
_SECRET: Final = frozenset({b"authorization", b"proxy-authorization"})
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_BAD_VALUE: Final = re.compile(rb"[\r\n\x00]")


def _check_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("ascii")
        except UnicodeError:
            pass  # raised below: the codec's error would quote the value (a secret?)
        raise ValueError(f"{what} must be ASCII (the value is not shown)")
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def _request_headers(
    method: object,
    target: object,
    authority: object,
    scheme: object,
    headers: object,
) -> list[tuple[bytes, bytes]]:
    """The header block of a request: pseudo-headers first, then ``headers`` lowercased
    without the HTTP/1.1 connection-specific ones (``Host`` becomes ``:authority``).

    The block is complete and valid as it leaves here (values stripped, credentials
    never indexed), so h2's own outbound normalization and validation, which would
    redo all of it per request, is off (:class:`H2Connection`'s configuration)."""
    method_b = _check_bytes(method, "method")
    target_b = _check_bytes(target, "target")
    authority_b = _check_bytes(authority, "authority")
    scheme_b = _check_bytes(scheme, "scheme")
    if not method_b or not target_b or not authority_b:
        raise ValueError("method, target and authority must not be empty")
    if _BAD_VALUE.search(target_b + authority_b) or b" " in target_b:
        raise ValueError("target and authority must not contain spaces, CR, LF or NUL")
    if not _TOKEN.fullmatch(method_b):
        raise ValueError(f"method must be an HTTP token, got {method!r}")
    if scheme_b not in (b"http", b"https"):
        raise ValueError(f"scheme must be 'http' or 'https', got {scheme!r}")
    block = [
        (b":method", method_b),
        (b":scheme", scheme_b),
        (b":authority", authority_b),
        (b":path", target_b),
    ]
    if not isinstance(headers, Sequence) or isinstance(headers, str | bytes):
        raise TypeError(f"headers must be a sequence of pairs, not {type(headers).__name__}")
    for pair in headers:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"headers must hold (name, value) pairs, not {shape_of(pair)}")
        name = _check_bytes(pair[0], "header name").lower()
        value = _check_bytes(pair[1], "header value").strip()
        if not name or name.startswith(b":"):
            raise ValueError(f"header name {pair[0]!r} is empty or a pseudo-header")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"header name {pair[0]!r} is not an HTTP token")
        if _BAD_VALUE.search(value):
            raise ValueError(f"the value of header {pair[0]!r} contains CR, LF or NUL")
        if name in _HOP_BY_HOP or (name == b"te" and value.lower() != b"trailers"):
            continue
        if name in _SECRET or (name == b"cookie" and len(value) < 20):
            block.append(NeverIndexedHeaderTuple(name, value))
        else:
            block.append((name, value))
    return block


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
        self.waiter: trio.Event | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter.set()

    async def wait(self) -> None:
        """Sleep until the reader (or a failure) changes something on this stream."""
        waiter = self.waiter = trio.Event()
        await waiter.wait()


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
        key = (name.encode("latin-1") if isinstance(name, str) else name).lower()
        for header, value in self.headers:
            if header == key:
                return value
        return None

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
    conn._acknowledge(stream, len(data))
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
    conn._cancel_stream(stream)


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
            self._conn._cancel_stream(self._stream)
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
            self._conn._cancel_stream(self._stream)
            raise

    def reset(self) -> None:
        """Reset the stream (``RST_STREAM(CANCEL)``) unless it is closed already: a
        request given up while it was sent. Synchronous and idempotent."""
        self._conn._cancel_stream(self._stream)


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
        if (
            not isinstance(max_concurrent_streams, int)
            or isinstance(max_concurrent_streams, bool)
            or max_concurrent_streams < 1
        ):
            raise ValueError(
                f"max_concurrent_streams must be an int >= 1, got {max_concurrent_streams!r}"
            )
        if (
            not isinstance(stream_window, int)
            or isinstance(stream_window, bool)
            or not DEFAULT_WINDOW <= stream_window <= MAX_WINDOW
        ):
            raise ValueError(
                f"stream_window must be an int in [65535, 2**31 - 1], got {stream_window!r}"
            )
        self._stream = stream
        self._cap = max_concurrent_streams
        self._stream_window = stream_window
        self.on_capacity_change: Callable[[], None] | None = on_capacity_change
        # _request_headers builds every block valid and normalized: h2 needn't redo it.
        # Received blocks are checked by _header_problem instead of h2, which would fail
        # the whole connection for one malformed response.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self._h2 = new_h2_connection(config, lambda: len(self._streams))
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self._streams: dict[int, _Stream] = {}
        self._reserved = 0
        self._started = 0
        self._goaway: int | None = None  # the last_stream_id of a GOAWAY
        self._closed: bool = False
        self._error: ErrorFactory | None = None
        self._outbox = bytearray()  # h2's output, kept safe from h2 clearing it on GOAWAY
        self._queued = 0  # body bytes in h2's buffer that the writer has not taken yet
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
        return min(self._h2.remote_settings.max_concurrent_streams, self._cap)

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
            block = _request_headers(method, target, authority, scheme, headers)
            length = _content_length(block)
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

    def _make_response(self, stream: _Stream) -> H2Response:
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
        return H2Response(self, stream, status, headers)

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

    def _acknowledge(self, stream: _Stream, flow_controlled: int) -> None:
        """The caller consumed ``flow_controlled`` bytes: hand the credit back."""
        if flow_controlled and stream.unacked:
            stream.unacked -= flow_controlled
            if stream.registered and not self._closed:
                self._h2.acknowledge_received_data(flow_controlled, stream.id)
                self._kick()

    def _cancel_stream(self, stream: _Stream, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        """Reset ``stream`` if it is still open and free it. Synchronous."""
        if not stream.registered:
            return
        stream.reset = True
        if not self._closed and not (stream.local_ended and stream.remote_ended):
            try:
                self._h2.reset_stream(stream.id, code)
            except h2.exceptions.ProtocolError:  # pragma: no cover - h2 says closed already
                pass
            self._kick()
        self._unregister(stream)

    def _stream_error(self, stream: _Stream, problem: str) -> None:
        """The peer broke HTTP/2 on ``stream`` only (RFC 9113, 8.1.1): fail it, reset it
        with PROTOCOL_ERROR; the other streams carry on."""
        stream.error = RemoteProtocolError(
            f"the server broke HTTP/2 on stream {stream.id}: {problem}"
        )
        stream.buffer.clear()
        self._cancel_stream(stream, ErrorCodes.PROTOCOL_ERROR)

    def _maybe_closed(self, stream: _Stream) -> None:
        if stream.registered and stream.remote_ended:
            if stream.local_ended:
                self._unregister(stream)
            elif stream.send_stopped:  # answered early: close our side (RFC 9113, 8.1)
                self._cancel_stream(stream, ErrorCodes.NO_ERROR)

    def _unregister(self, stream: _Stream) -> None:
        """``stream`` is closed: stop counting it, give its unread bytes' credit back to
        the connection window, and tell the pool."""
        stream.registered = False
        del self._streams[stream.id]
        if stream.unacked and not self._closed:
            # The stream is closed in h2, so this only re-opens the connection window.
            self._h2.acknowledge_received_data(stream.unacked, stream.id)
            self._kick()
        stream.unacked = 0
        stream.wake()
        self._capacity_changed()

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


def _content_length(block: list[tuple[bytes, bytes]]) -> int | None:
    """The ``content-length`` of a request's header block, or ``None``.

    Raises:
        ValueError: Not a number, or two different values.
    """
    length: int | None = None
    for name, value in block:
        if name == b"content-length":
            if not value.isdigit():
                raise ValueError(f"Content-Length must be a number, got {value!r}")
            if length is not None and int(value) != length:
                raise ValueError("headers must not have two different Content-Length values")
            length = int(value)
    return length
