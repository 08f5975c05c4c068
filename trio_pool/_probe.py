"""Non-blocking health probes of idle sockets: plain TCP and TLS.

The TLS probe is the one place trio_pool looks inside :class:`trio.SSLStream`: an idle TLS
1.3 connection usually has the server's session tickets waiting in its socket, and only
the SSL object can tell those (harmless) from application bytes (a desync). If a future
trio renames the internals, the probe falls back to "readable means unusable".

This module imports no other trio_pool module.
"""

from __future__ import annotations

import enum
import select
import socket
import ssl

import trio

__all__ = ["Health", "probe_tls"]


class Health(enum.Enum):
    """What a non-blocking look at a connection's socket found."""

    OK = "ok"
    PENDING = "pending"  # bytes nobody asked for: reusing it would desync the protocol
    CLOSED = "closed"  # the peer closed or reset it


def _peek(fd: int, size: int, flags: int) -> bytes | None:
    """Non-blocking ``recv`` on a socket we don't own; ``None`` if nothing is there."""
    sock = socket.socket(fileno=fd)
    try:
        return sock.recv(size, flags | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    finally:
        sock.detach()


def _whole_records(data: bytes) -> bool:
    """Whether ``data`` is a sequence of complete TLS records (5-byte header: type,
    version, 16-bit length; then that many bytes)."""
    offset, size = 0, len(data)
    while offset + 5 <= size:
        offset += 5 + int.from_bytes(data[offset + 3 : offset + 5], "big")
    return offset == size


def probe_tls(
    stream: trio.SSLStream[trio.SocketStream], poller: select.poll
) -> tuple[Health, bytes]:
    """Look at a TLS connection without blocking and without losing any byte.

    Decrypted bytes waiting in the SSL object count as pending. Bytes waiting in the
    socket are moved into the stream's incoming buffer (where :class:`trio.SSLStream`
    reads them next anyway) and run through the SSL object: post-handshake messages
    (session tickets, key updates) are consumed and the connection stays healthy;
    ``close_notify`` or EOF means closed; application data means pending.

    A record that has only partly arrived (its header, or a header and part of its
    body, alone or after complete records) cannot be decrypted yet, so nobody can tell
    a ticket from the start of a response nobody asked for: it counts as pending too.
    The SSL object would swallow such a fragment and just ask for more, so the probe
    checks the record framing of every byte it has not yet shown the SSL object; idle
    bytes always start on a record boundary, as the last read ended with one whole
    record and the incoming buffer holds only what came after it.

    Returns:
        The health, and the application bytes the probe had to decrypt to see them
        (``b""`` unless pending): the caller must hand those out before reading the
        stream again.
    """
    ssl_object: ssl.SSLObject | None = getattr(stream, "_ssl_object", None)
    incoming: ssl.MemoryBIO | None = getattr(stream, "_incoming", None)
    if ssl_object is None or incoming is None:  # pragma: no cover - trio internals moved
        if stream.pending():
            return Health.PENDING, b""
        return (Health.PENDING if poller.poll(0) else Health.OK), b""
    if ssl_object.pending():
        return Health.PENDING, b""
    readable = bool(poller.poll(0))
    if not readable and not incoming.pending:
        return Health.OK, b""
    # Every byte the SSL object has not seen: what trio buffered, then the socket's.
    unseen = incoming.read() if incoming.pending else b""
    eof = False
    if readable and not incoming.eof:
        fd = stream.transport_stream.socket.fileno()
        if fd < 0:
            return Health.CLOSED, b""
        try:
            data = _peek(fd, 65536, 0)
        except OSError:
            data, eof = b"", True
        if data == b"":
            eof = True
        elif data is not None:
            unseen += data
    if unseen:
        incoming.write(unseen)  # (the buffer was emptied above: the order is kept)
    if eof:
        incoming.write_eof()
    if not _whole_records(unseen):
        return (Health.CLOSED if eof else Health.PENDING), b""
    try:
        chunk = ssl_object.read(1)
    except ssl.SSLWantReadError:
        return Health.OK, b""
    except ssl.SSLWantWriteError:  # pragma: no cover - a key update asking for a reply
        return Health.PENDING, b""
    except (ssl.SSLError, OSError):  # close_notify, EOF, or garbage
        return Health.CLOSED, b""
    if not chunk:  # pragma: no cover - SSLObject raises at EOF rather than return b""
        return Health.CLOSED, b""
    # Application data: keep what was decrypted (and the rest of its record) for the reader.
    rest = ssl_object.pending()
    return Health.PENDING, chunk + (ssl_object.read(rest) if rest else b"")
