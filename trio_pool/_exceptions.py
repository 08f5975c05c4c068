"""The exceptions trio_pool raises, all under one base class :class:`PoolError`."""

from __future__ import annotations

import trio

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "HostUnavailable",
    "PoolClosed",
    "PoolError",
    "PoolExhausted",
    "ProxyError",
]


class PoolError(Exception):
    """Base class of every error raised by trio_pool itself."""


class PoolExhausted(PoolError, TimeoutError):
    """No connection became available within the acquire timeout.

    Raised when a host is at ``max_size`` (or the pool at ``max_total``) and the wait
    timed out, or failed fast because ``timeout=0``.
    """


class ConnectError(PoolError, OSError):
    """Opening a new connection failed; the original error is chained as ``__cause__``."""


class ConnectTimeout(ConnectError, TimeoutError):
    """Opening a new connection (TCP connect and TLS handshake) took longer than
    ``connection_timeout``."""


class HostUnavailable(ConnectError):
    """Every address of a host is ejected after failing (see :doc:`upstreams`): no
    connect is tried until the first backoff ends.

    Raised at once by an acquire that would connect, and given to the tasks waiting
    in line for a connect of the key, so a host that is down costs no dial per
    request.

    Attributes:
        host: The host name.
        port: The port.
        addresses: How many addresses the host has, all of them ejected.
        retry_at: When (:func:`trio.current_time`) the next trial connect may go, or
            ``None`` while a trial connect is in flight.
    """

    def __init__(
        self,
        message: str,
        *,
        host: str = "",
        port: int = 0,
        addresses: int = 0,
        retry_at: float | None = None,
    ) -> None:
        super().__init__(message)
        self.host = host
        self.port = port
        self.addresses = addresses
        self.retry_at = retry_at


class ProxyError(ConnectError):
    """A proxy refused or broke the tunnel to the origin.

    Raised when an HTTP proxy answers ``CONNECT`` with anything but 2xx (``status`` is
    that status: 407 asks for credentials, 403 or 502 refuse), or when a proxy (HTTP or
    SOCKS5) closes the connection, answers with something that is not its protocol, or
    refuses the SOCKS5 login or command (``status`` is ``None``). Failing to reach the
    proxy at all is a plain :class:`ConnectError`.

    Attributes:
        status: The HTTP status of a refused ``CONNECT``, else ``None``.
        proxy: URL of the proxy (without credentials).
    """

    def __init__(self, message: str, *, status: int | None = None, proxy: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.proxy = proxy


class PoolClosed(PoolError, trio.ClosedResourceError):
    """The pool is closed, or closed while this task was waiting for a connection."""
