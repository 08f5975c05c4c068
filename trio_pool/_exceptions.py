"""The exceptions trio_pool raises, all under one base class :class:`PoolError`."""

from __future__ import annotations

import trio

__all__ = ["ConnectError", "ConnectTimeout", "PoolClosed", "PoolError", "PoolExhausted"]


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


class PoolClosed(PoolError, trio.ClosedResourceError):
    """The pool is closed, or closed while this task was waiting for a connection."""
