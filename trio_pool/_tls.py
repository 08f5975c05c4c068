"""TLS helpers: default contexts, session saving and a non-blocking health probe.

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

__all__ = ["default_context", "probe_tls"]


def default_context(verify: bool) -> ssl.SSLContext:
    """The context trio_pool uses when the caller gives none.

    Args:
        verify: Check the certificate chain and the host name (the default), or neither.
    """
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def probe_tls(stream: trio.SSLStream[trio.SocketStream], poller: select.poll) -> Health:
    """Look at an idle TLS connection without blocking.

    Decrypted bytes waiting in the SSL object count as pending. Bytes waiting in the
    socket are fed through the SSL object: post-handshake messages (session tickets,
    key updates) are consumed and the connection stays healthy; application data means
    pending; ``close_notify`` or EOF means closed.
    """
    ssl_object: ssl.SSLObject | None = getattr(stream, "_ssl_object", None)
    incoming: ssl.MemoryBIO | None = getattr(stream, "_incoming", None)
    if ssl_object is None or incoming is None:  # pragma: no cover - trio internals moved
        if stream.pending():
            return Health.PENDING
        return Health.PENDING if poller.poll(0) else Health.OK
    if ssl_object.pending():
        return Health.PENDING
    if not poller.poll(0) and not incoming.pending:
        return Health.OK
    if poller.poll(0):
        fd = stream.transport_stream.socket.fileno()
        if fd < 0:
            return Health.CLOSED
        try:
            data = _peek(fd, 65536, 0)
        except OSError:
            return Health.CLOSED
        if data == b"":
            incoming.write_eof()
        elif data is not None:
            incoming.write(data)
    try:
        chunk = ssl_object.read(1)
    except ssl.SSLWantReadError:
        return Health.OK
    except ssl.SSLWantWriteError:  # pragma: no cover - a key update asking for a reply
        return Health.PENDING
    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
        return Health.CLOSED
    except (ssl.SSLError, OSError):
        return Health.CLOSED
    return Health.PENDING if chunk else Health.CLOSED
