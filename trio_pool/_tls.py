"""TLS helpers: default contexts, a non-blocking health probe, graceful close.

The probe is the one place trio_pool looks inside :class:`trio.SSLStream`: an idle TLS
1.3 connection usually has the server's session tickets waiting in its socket, and only
the SSL object can tell those (harmless) from application bytes (a desync). If a future
trio renames the internals, the probe falls back to "readable means unusable".
"""

from __future__ import annotations

import select
import ssl

import trio

from ._connection import Health, _peek

__all__ = ["close_tls", "default_context", "is_tls_error", "probe_tls"]


def default_context(verify: bool) -> ssl.SSLContext:
    """The context trio_pool uses when the caller gives none.

    Args:
        verify: Check the certificate chain and the host name (the default), or neither.

    Returns:
        :func:`ssl.create_default_context`, with checks turned off if ``verify`` is False.
    """
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def is_tls_error(exc: BaseException) -> bool:
    """Whether ``exc`` is trio's wrapping of a TLS protocol error (not a plain socket error)."""
    return isinstance(exc, trio.BrokenResourceError) and isinstance(exc.__cause__, ssl.SSLError)


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


async def close_tls(stream: trio.SSLStream[trio.SocketStream], timeout: float) -> None:
    """Send ``close_notify`` and close, giving up after ``timeout`` seconds.

    A clean TLS close lets servers with a session cache keep the session (OpenSSL drops
    the sessions of connections that end without one). Pooled streams are opened
    ``https_compatible`` so a peer's missing ``close_notify`` reads as a plain EOF; that
    mode would also skip sending ours, so it is switched off for the close alone.
    """
    sock = stream.transport_stream.socket
    try:
        with trio.move_on_after(timeout):
            if hasattr(stream, "_https_compatible"):
                stream._https_compatible = False
            try:
                await stream.aclose()
            except Exception:  # already broken or busy: nothing to say goodbye on
                pass
    finally:
        sock.close()
