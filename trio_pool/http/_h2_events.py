"""The reader side of an HTTP/2 connection: what the peer's bytes do to the
:class:`~trio_pool.http._http2.H2Connection` and its streams.

The connection's reader task calls :func:`receive` with each read; it checks the frames
h2 lets through (:class:`_FrameWatch`), feeds h2, and dispatches h2's events to the
per-stream state, synchronously, waking whoever waits on a stream. Connection errors
of the peer's queue our GOAWAY and fail every stream; stream errors reset one stream.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from ._exceptions import HTTPError, RemoteProtocolError
from ._h2_exceptions import RequestNotProcessed, StreamReset
from ._h2_stream import maybe_closed, stream_error, unregister

if TYPE_CHECKING:
    from ._h2_stream import _Stream
    from ._http2 import H2Connection

__all__ = ["ErrorFactory", "chained", "receive"]

# The most bytes of h2's automatic answers (PING and SETTINGS ACKs, RST_STREAMs) the
# peer may make us queue while our writer is stuck (the peer does not read): beyond,
# it is a flood, a connection error (ENHANCE_YOUR_CALM). Go caps queued control
# frames the same way.
_MAX_UNSENT_REPLIES: Final = 256 * 1024

# Our HPACK encoder's dynamic table at most, whatever the peer's
# SETTINGS_HEADER_TABLE_SIZE (Go and nghttp2 cap it at 4096 too).
_MAX_ENCODER_TABLE: Final = 4096

# How many streams the peer ended (END_STREAM) are remembered, to tell a frame on a
# closed stream (a connection error) from one in flight on a stream we reset (ignored).
_ENDED_REMEMBERED: Final = 256

# RFC 9113, 8.2.1: what a received field name or value must not contain.
_BAD_FIELD_NAME: Final = re.compile(rb"[\x00-\x20:A-Z\x7f-\xff]")
_BAD_FIELD_VALUE: Final = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")

_CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_FRAME_DATA: Final = 0x0
_FRAME_HEADERS: Final = 0x1
_FRAME_RST_STREAM: Final = 0x3
_FLAG_END_STREAM: Final = 0x1
# A GOAWAY frame without debug data, as h2 queues it on a protocol error: its header.
_GOAWAY_HEADER: Final = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"
_IGNORED_EVENTS: Final = (
    h2.events.SettingsAcknowledged,
    h2.events.PingReceived,
    h2.events.PriorityUpdated,
    h2.events.AlternativeServiceAvailable,
    h2.events.UnknownFrameReceived,
)

ErrorFactory = Callable[[], HTTPError]


def _header_problem(headers: Sequence[tuple[bytes, bytes]], *, trailers: bool) -> str | None:
    """What makes a received header block malformed (RFC 9113, 8.1.1, 8.2, 8.3.2), or
    ``None``: a response head has one ``:status`` of three digits, first; trailers have
    no pseudo-header; no name holds an uppercase letter, a space, a colon or a control
    character; no value holds CR, LF or NUL or starts or ends with white space; no
    connection-specific field.

    h2's own inbound validation is off (:class:`H2Connection`'s configuration): it
    raises for the whole connection, where a malformed response is an error of its
    stream only."""
    status = False
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if trailers or regular or status or name != b":status":
                return f"unexpected pseudo-header {name!r}"
            if not (len(value) == 3 and value.isdigit()):
                return f"bad :status {value!r}"
            status = True
            continue
        regular = True
        if not name or _BAD_FIELD_NAME.search(name):
            return f"invalid header name {name!r}"
        if value and _BAD_FIELD_VALUE.search(value):
            return f"invalid value of header {name!r}"
        if name in _CONNECTION_SPECIFIC or (name == b"te" and value.lower() != b"trailers"):
            return f"connection-specific header {name!r}"
    if not trailers and not status:
        return "no :status"
    return None


class _FrameWatch:
    """Reads the header of every frame the peer sends, before h2 does, for the stream
    state errors RFC 9113 (5.1) makes connection errors and h2 lets pass: RST_STREAM
    on an idle stream (PROTOCOL_ERROR), and DATA or HEADERS on a stream the peer has
    already ended (STREAM_CLOSED; h2 answers those with a stream error only).

    A stream *we* reset is not "ended by the peer" until its END_STREAM arrives, so
    what the peer had in flight when our RST_STREAM crossed it stays harmless.
    """

    __slots__ = ("_ended", "_partial", "_skip")

    def __init__(self) -> None:
        self._skip = 0  # bytes of the current frame's payload still to come
        self._partial = b""  # the start of a frame header split across reads
        self._ended: dict[int, None] = {}  # streams the peer ended, oldest first

    def feed(self, data: bytes, highest_stream_id: int) -> tuple[ErrorCodes, str] | None:
        """Look at ``data``, the next bytes from the peer; the first fault found, if any.

        Args:
            data: What was just received.
            highest_stream_id: The highest stream id we opened so far.
        """
        if self._partial:
            data = self._partial + data
            self._partial = b""
        pos = self._skip
        end = len(data)
        while pos + 9 <= end:
            length = int.from_bytes(data[pos : pos + 3], "big")
            kind = data[pos + 3]
            stream_id = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            if stream_id:
                fault = self._check(kind, data[pos + 4], stream_id, highest_stream_id)
                if fault is not None:
                    return fault
            pos += 9 + length
        if pos >= end:
            self._skip = pos - end
        else:
            self._skip = 0
            self._partial = data[pos:]
        return None

    def _check(
        self, kind: int, flags: int, stream_id: int, highest_stream_id: int
    ) -> tuple[ErrorCodes, str] | None:
        if kind == _FRAME_RST_STREAM and (stream_id % 2 == 0 or stream_id > highest_stream_id):
            return ErrorCodes.PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}"
        if kind in (_FRAME_DATA, _FRAME_HEADERS):
            ended = self._ended
            if stream_id in ended:
                return ErrorCodes.STREAM_CLOSED, f"a frame on stream {stream_id} after its end"
            if flags & _FLAG_END_STREAM:
                ended[stream_id] = None
                if len(ended) > _ENDED_REMEMBERED:
                    del ended[next(iter(ended))]
        return None


def receive(conn: H2Connection, data: bytes) -> bool:
    """Feed ``data`` to h2 and dispatch its events (which are gone on return: a
    read of many tiny frames leaves nothing behind). False after a connection
    error of the peer's, once our GOAWAY is queued."""
    fault = conn._watch.feed(data, conn._h2.highest_outbound_stream_id)
    if fault is not None:
        _connection_error(conn, fault[0], fault[1])
        return False
    # h2 clears its outbound buffer when a GOAWAY arrives: keep what is queued.
    conn._outbox += conn._h2.data_to_send()
    try:
        events = conn._h2.receive_data(data)
    except h2.exceptions.ProtocolError as exc:
        _protocol_error(conn, exc)
        return False
    # What h2 answered by itself (PING and SETTINGS ACKs, RST_STREAMs): a peer
    # that makes us queue too much of it without reading is flooding us.
    replies = conn._h2.data_to_send()
    if replies:
        conn._outbox += replies
        conn._unsent_replies += len(replies)
        if conn._unsent_replies > _MAX_UNSENT_REPLIES:
            _connection_error(
                conn,
                ErrorCodes.ENHANCE_YOUR_CALM,
                f"it made us queue over {_MAX_UNSENT_REPLIES} bytes of answers"
                " (PING or SETTINGS acknowledgements) without reading them",
            )
            return False
    for event in events:
        _dispatch(conn, event)
    conn._kick()
    return True


def _protocol_error(conn: H2Connection, exc: h2.exceptions.ProtocolError) -> None:
    """h2 found the peer breaking HTTP/2. h2 queues a GOAWAY with the error's code
    for most errors; not for those of the framing layer, so we do then."""
    pending = conn._h2.data_to_send()
    if pending[-17:-8] != _GOAWAY_HEADER:
        try:
            conn._h2.close_connection(error_code=exc.error_code)
        except h2.exceptions.ProtocolError:  # pragma: no cover - h2 already closed
            pass
        pending += conn._h2.data_to_send()
    conn._outbox += pending
    if isinstance(exc, h2.exceptions.InvalidBodyLengthError):
        message = f"the server sent a body that does not match its content-length: {exc}"
    else:
        message = f"the server broke HTTP/2: {type(exc).__name__}: {exc}"
    _fail_after_goaway(conn, chained(RemoteProtocolError, message, exc))


def _connection_error(conn: H2Connection, code: ErrorCodes, problem: str) -> None:
    """A connection error h2 does not detect: GOAWAY with ``code``, then close."""
    conn._outbox += conn._h2.data_to_send()
    try:
        conn._h2.close_connection(error_code=code)
    except h2.exceptions.ProtocolError:  # pragma: no cover - h2 already closed
        pass
    message = f"the server broke HTTP/2 ({code.name}): {problem}"
    _fail_after_goaway(conn, lambda: RemoteProtocolError(message))


def _fail_after_goaway(conn: H2Connection, error: ErrorFactory) -> None:
    """Fail every stream with ``error()``; the writer sends our GOAWAY, then stops."""
    conn._die(error, cancel=False)
    conn._kick()


def _dispatch(conn: H2Connection, event: h2.events.Event) -> None:
    if isinstance(event, h2.events.DataReceived):
        assert event.stream_id is not None
        assert event.data is not None
        flow_controlled = event.flow_controlled_length or 0
        stream = conn._streams.get(event.stream_id)
        size = len(event.data)
        # Padding (and the DATA of a stream we dropped) is handed back at once.
        credit = flow_controlled - size if stream is not None else flow_controlled
        if credit > 0:
            conn._h2.acknowledge_received_data(credit, event.stream_id)
        if stream is None or not size:
            return
        stream.buffer += event.data
        stream.unacked += size
        stream.received += size
        stream.wake()
    elif isinstance(event, h2.events.ResponseReceived):
        stream = conn._streams.get(event.stream_id or 0)
        if stream is not None:
            _on_head(conn, stream, list(event.headers or ()))
    elif isinstance(event, h2.events.StreamEnded):
        stream = conn._streams.get(event.stream_id or 0)
        if stream is not None:
            _on_end(conn, stream)
    elif isinstance(event, h2.events.StreamReset):
        _on_reset(conn, event)
    elif isinstance(event, h2.events.WindowUpdated):
        if event.stream_id:
            stream = conn._streams.get(event.stream_id)
            if stream is not None:
                stream.wake()
        else:
            for stream in conn._streams.values():
                stream.wake()
    elif isinstance(event, h2.events.TrailersReceived):
        stream = conn._streams.get(event.stream_id or 0)
        if stream is not None:
            trailers = list(event.headers or ())
            problem = _header_problem(trailers, trailers=True)
            if problem is not None:
                stream_error(conn, stream, f"malformed trailers: {problem}")
            else:
                stream.trailers = trailers
    elif isinstance(event, h2.events.InformationalResponseReceived):
        stream = conn._streams.get(event.stream_id or 0)
        if stream is not None:
            problem = _header_problem(list(event.headers or ()), trailers=False)
            if problem is not None:
                stream_error(conn, stream, f"malformed informational response: {problem}")
    elif isinstance(event, h2.events.RemoteSettingsChanged):
        conn._ready.set()
        changed = event.changed_settings
        if h2.settings.SettingCodes.HEADER_TABLE_SIZE in changed:
            # h2 sized our encoder's table to the peer's setting: cap it.
            encoder = conn._h2.encoder
            if encoder.header_table_size > _MAX_ENCODER_TABLE:
                encoder.header_table_size = _MAX_ENCODER_TABLE
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in changed:
            for stream in conn._streams.values():
                stream.wake()
        if h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS in changed:
            conn._limit = min(conn._h2.remote_settings.max_concurrent_streams, conn._cap)
            conn._capacity_changed()
    elif isinstance(event, h2.events.ConnectionTerminated):
        _on_goaway(conn, event)
    elif isinstance(event, h2.events.PingAckReceived):
        if conn._pinger is not None and event.ping_data is not None:
            conn._pinger.acked(event.ping_data)
    elif isinstance(event, _IGNORED_EVENTS):
        pass


def _on_head(conn: H2Connection, stream: _Stream, headers: list[tuple[bytes, bytes]]) -> None:
    """A final response head arrived on ``stream``."""
    problem = _header_problem(headers, trailers=False)
    if problem is not None:
        stream_error(conn, stream, f"malformed response: {problem}")
        return
    stream.headers = headers
    if not stream.head:
        status = b""
        length = None
        for name, value in headers:
            if name == b":status":
                status = value
            elif name == b"content-length":
                length = value  # h2 checked it: digits, and all copies equal
        if length is not None and status not in (b"204", b"304"):
            stream.expected = int(length)
    stream.wake()


def _on_end(conn: H2Connection, stream: _Stream) -> None:
    """The peer ended ``stream`` (END_STREAM on DATA, the head, or trailers)."""
    stream.remote_ended = True
    if stream.headers is None:  # pragma: no cover - h2 rejects this itself
        stream_error(conn, stream, "the stream ended without a response")
        return
    if stream.expected is not None and stream.received != stream.expected:
        stream_error(
            conn,
            stream,
            f"the body ended after {stream.received} bytes of the {stream.expected}"
            " its content-length announced",
        )
        return
    stream.wake()
    maybe_closed(conn, stream)


def _on_reset(conn: H2Connection, event: h2.events.StreamReset) -> None:
    stream = conn._streams.get(event.stream_id or 0)
    if stream is None:
        return
    code = int(event.error_code or 0)
    if code == ErrorCodes.NO_ERROR and stream.remote_ended:
        pass  # "stop sending, the response is complete" (RFC 9113, 8.1)
    elif code == ErrorCodes.REFUSED_STREAM:
        stream.error = RequestNotProcessed(
            f"the server refused stream {stream.id} (REFUSED_STREAM) before processing it"
        )
    else:
        stream.error = StreamReset(
            f"the server reset stream {stream.id} ({_code_name(code)})", code
        )
    stream.reset = True
    if stream.error is not None:
        stream.buffer.clear()
    unregister(conn, stream)


def _on_goaway(conn: H2Connection, event: h2.events.ConnectionTerminated) -> None:
    last = int(event.last_stream_id or 0)
    code = int(event.error_code or 0)
    conn._goaway = last if conn._goaway is None else min(last, conn._goaway)
    for stream in [s for s in conn._streams.values() if s.id > last]:
        stream.error = RequestNotProcessed(
            f"the server sent GOAWAY ({_code_name(code)}, last stream {last}) "
            f"before processing stream {stream.id}"
        )
        stream.reset = True
        stream.buffer.clear()
        unregister(conn, stream)
    conn._capacity_changed()


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error code {code}"


def chained(kind: type[HTTPError], message: str, cause: BaseException) -> ErrorFactory:
    def make() -> HTTPError:
        exc = kind(message)
        exc.__cause__ = cause
        return exc

    return make
