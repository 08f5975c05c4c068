"""A raw HTTP/2 server for the tests: a script writes any frame, valid or not.

:class:`H2Server` (tests/h2servers.py) runs h2's own server state machine, which
refuses to send what a hostile or broken server sends (uppercase header names, a DATA
frame on a closed stream, a RST_STREAM on an idle one, floods). A :class:`RawPeer`
frames bytes itself with hyperframe and hpack, so a test's script says exactly what
goes on the wire, and reads back, frame by frame, what the client sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import hpack
import trio
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)

from .servers import start_server

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class RawPeer:
    """The server end of one connection, frame by frame.

    Attributes:
        tcp: The connection.
        encoder: HPACK state for the header blocks :meth:`headers` builds.
    """

    def __init__(self, tcp: trio.SocketStream) -> None:
        self.tcp = tcp
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self._buffer = bytearray()

    async def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            try:
                data = await self.tcp.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            if not data:
                return False
            self._buffer += data
        return True

    async def handshake(self, settings: dict[int, int] | None = None, *then: Frame | bytes) -> None:
        """Read the client's preface; send our SETTINGS, and ``then`` in the same write
        (not waiting for the client's ACK)."""
        assert await self._fill(len(PREFACE)), "the client sent no preface"
        assert bytes(self._buffer[: len(PREFACE)]) == PREFACE
        del self._buffer[: len(PREFACE)]
        await self.send(self.settings(settings or {}), *then)

    async def read_frame(self) -> Frame | None:
        """The client's next frame, or ``None`` once it closed the connection."""
        if not await self._fill(9):
            return None
        frame, length = Frame.parse_frame_header(memoryview(bytes(self._buffer[:9])))
        if not await self._fill(9 + length):
            return None
        frame.parse_body(memoryview(bytes(self._buffer[9 : 9 + length])))
        del self._buffer[: 9 + length]
        return frame

    async def read_until(self, kind: type[Frame]) -> Frame | None:
        """Read frames up to the first of ``kind``; ``None`` if the client closed first."""
        while (frame := await self.read_frame()) is not None:
            if isinstance(frame, kind):
                return frame
        return None

    async def request_stream(self) -> int:
        """Read up to the client's next HEADERS; its stream id."""
        frame = await self.read_until(HeadersFrame)
        assert frame is not None, "the client closed before sending a request"
        return int(frame.stream_id)

    async def read_request(self) -> tuple[int, str]:
        """Read up to the client's next HEADERS and decode them: stream id and path."""
        frame = await self.read_until(HeadersFrame)
        assert frame is not None, "the client closed before sending a request"
        assert "END_HEADERS" in frame.flags
        assert isinstance(frame, HeadersFrame)
        headers = dict(self.decoder.decode(bytes(frame.data), raw=True))
        return int(frame.stream_id), bytes(headers[b":path"]).decode()

    async def goaway_code(self) -> int | None:
        """Read to the client's GOAWAY: its error code, or ``None`` if it closed without
        one (a bare close)."""
        frame = await self.read_until(GoAwayFrame)
        assert frame is None or isinstance(frame, GoAwayFrame)
        return None if frame is None else int(frame.error_code)

    async def send(self, *frames: Frame | bytes) -> None:
        """Write ``frames`` (or raw bytes) in one go; a client that is gone is ignored."""
        data = b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames)
        try:
            await self.tcp.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    @staticmethod
    def settings(values: dict[int, int]) -> SettingsFrame:
        return SettingsFrame(0, settings=values)

    def headers(
        self,
        stream_id: int,
        headers: Sequence[tuple[bytes, bytes]],
        *,
        end_stream: bool = False,
    ) -> HeadersFrame:
        """A complete header block (END_HEADERS), HPACK-encoded as given: nothing is
        checked or normalized, so uppercase names and the like go out as they are."""
        flags = ["END_HEADERS", "END_STREAM"] if end_stream else ["END_HEADERS"]
        return HeadersFrame(stream_id, data=self.encoder.encode(list(headers)), flags=flags)

    @staticmethod
    def data(stream_id: int, payload: bytes, *, end_stream: bool = False) -> DataFrame:
        return DataFrame(stream_id, data=payload, flags=["END_STREAM"] if end_stream else [])

    @staticmethod
    def reset(stream_id: int, code: int) -> RstStreamFrame:
        return RstStreamFrame(stream_id, error_code=code)

    async def close(self) -> None:
        await trio.aclose_forcefully(self.tcp)


Script = Callable[[RawPeer], Awaitable[None]]


async def start_raw_server(nursery: trio.Nursery, script: Script) -> tuple[int, list[RawPeer]]:
    """Serve ``script`` on a free 127.0.0.1 port: it runs once per connection with a
    :class:`RawPeer` whose SETTINGS are not sent yet. Returns the port and the list of
    peers (one per connection, appended as they come)."""
    peers: list[RawPeer] = []

    async def handler(tcp: trio.SocketStream) -> None:
        peer = RawPeer(tcp)
        peers.append(peer)
        try:
            await script(peer)
        finally:
            await peer.close()

    return await start_server(nursery, handler), peers
