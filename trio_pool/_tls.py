"""TLS helpers: default contexts, error classification, graceful close.

The health probe lives in :mod:`trio_pool._probe`.
"""

from __future__ import annotations

import ssl

import trio

__all__ = ["close_tls", "default_context", "is_tls_error"]


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
