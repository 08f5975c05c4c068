"""The body of an HTTP/2 response: :class:`H2Body`, the HTTP/2 side of
:class:`~trio_pool.http._interfaces.BodyReader`, read straight from its stream of the
:class:`~trio_pool.http._http2.H2Connection` (imports h2: loaded with the first
HTTP/2 response)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import h11
import trio

from ._h2_response import abandon_body, body_arrived, body_ended, receive_body, take_buffered
from ._interfaces import BodyReader, read_timeout_error
from ._models import Response

if TYPE_CHECKING:
    from ._h2_stream import _Stream
    from ._http2 import H2Connection
    from ._models import Target
    from ._timeouts import Timeout

__all__ = ["H2Body"]


class H2Body(BodyReader):
    """The body of an HTTP/2 response, read from its stream: each read hands its
    flow-control credit back; abandoning it resets the stream (the connection carries
    on)."""

    __slots__ = ("_conn", "_headers", "_status", "_stream")

    trace_prefix = "http2."

    def __init__(
        self,
        conn: H2Connection,
        stream: _Stream,
        status: int,
        headers: list[tuple[bytes, bytes]],
        target: Target,
        limits: Timeout,
    ) -> None:
        super().__init__(target, limits.read)
        self._conn = conn
        self._stream = stream
        self._status = status
        self._headers = headers

    @property
    def response(self) -> h11.Response:
        """The head as an h11 event (what the httpx transport reads), built on demand:
        :class:`Response` is made from the HTTP/2 head directly, without h11's
        re-validation of every header."""
        return h11.Response(
            status_code=self._status, headers=self._headers, http_version=b"2", reason=b""
        )

    @property
    def shared_stream(self) -> trio.abc.Stream:
        # The connection's own module's attribute (this module is its body side).
        return self._conn._stream

    @property
    def trace_info(self) -> dict[str, object]:
        return {"stream_id": self._stream.id}

    def make_response(self, content: bytes | None) -> Response:
        return Response(
            self._status,
            b"",
            self._headers,
            "2",
            content,
            None if content is not None else self,
        )

    async def _next_piece(self) -> bytes:
        limit = self.read_timeout
        if limit is None:
            return await receive_body(self._conn, self._stream)
        with trio.CancelScope() as scope:
            scope.deadline = trio.current_time() + limit
            return await receive_body(self._conn, self._stream)
        raise read_timeout_error(self.target, limit, "reading the body")

    def _finished(self, clean: bool) -> None:
        # A clean end has handed every byte's credit back as it was read.
        if not clean:
            abandon_body(self._conn, self._stream)

    def read_complete_nowait(self) -> bytes | None:
        """The whole body if it has all arrived (see :class:`BodyReader`): for
        :meth:`HTTPClient.request`, which has had its checkpoints by the time the
        response head is here."""
        if self.done or not body_arrived(self._stream):
            return None
        data = take_buffered(self._conn, self._stream)
        self._ended()
        return data

    async def read_all(self) -> bytes:
        """Read the rest of the body: what already arrived is taken in one go, with one
        checkpoint if that is the whole body; else read on, with the read limit on
        each wait."""
        chunks: list[bytes] = []
        if not self.done:
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException as exc:
                self._failed(exc)
                raise
            first = take_buffered(self._conn, self._stream)
            if body_ended(self._stream):
                self._ended()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return first
            if first:
                chunks.append(first)
        while chunk := await self.read_chunk():
            chunks.append(chunk)
        return b"".join(chunks)
