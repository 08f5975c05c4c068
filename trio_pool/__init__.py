"""trio_pool: a connection pool for trio.

Per-host pools of TCP and TLS connections living in a nursery, with cancellation-safe
acquire, health checks, idle eviction, warm floors, TLS session resumption, proxies,
Unix sockets and statistics. HTTP/1.1 keep-alive and HTTP/2 live in
:mod:`trio_pool.http`, an httpx transport in :mod:`trio_pool.httpx`.

The integrations are submodules, reachable as attributes after ``import trio_pool``
(``trio_pool.http``, ``trio_pool.httpx``, ``trio_pool.anyio``, ``trio_pool.metrics``);
each is imported on first use, so ``import trio_pool`` imports neither h11 nor any
extra (httpx, anyio, prometheus_client).
"""

import importlib as _importlib
from typing import TYPE_CHECKING

from ._config import PoolConfig as PoolConfig
from ._config import recommended_max_size as recommended_max_size
from ._connection import ConnectionState as ConnectionState
from ._connection import PooledConnection as PooledConnection
from ._events import AcquireTimedOut as AcquireTimedOut
from ._events import AddressEjected as AddressEjected
from ._events import AddressRestored as AddressRestored
from ._events import Closed as Closed
from ._events import CloseReason as CloseReason
from ._events import ConnectDone as ConnectDone
from ._events import ConnectFailed as ConnectFailed
from ._events import ConnectStarted as ConnectStarted
from ._events import Discarded as Discarded
from ._events import EventHook as EventHook
from ._events import PingAnswered as PingAnswered
from ._events import PingSent as PingSent
from ._events import PingTimedOut as PingTimedOut
from ._events import PoolEvent as PoolEvent
from ._events import Queued as Queued
from ._events import Released as Released
from ._events import Resolved as Resolved
from ._events import Reused as Reused
from ._events import TLSResumed as TLSResumed
from ._events import Waited as Waited
from ._exceptions import ConnectError as ConnectError
from ._exceptions import ConnectTimeout as ConnectTimeout
from ._exceptions import HostUnavailable as HostUnavailable
from ._exceptions import PoolClosed as PoolClosed
from ._exceptions import PoolError as PoolError
from ._exceptions import PoolExhausted as PoolExhausted
from ._exceptions import ProxyError as ProxyError
from ._pool import ConnectionContext as ConnectionContext
from ._pool import ConnectionPool as ConnectionPool
from ._pool import open_pool as open_pool
from ._proxy import Proxy as Proxy
from ._state import PoolKey as PoolKey
from ._stats import PoolStatistics as PoolStatistics

if TYPE_CHECKING:  # for type checkers; at run time __getattr__ imports them on first use
    from . import anyio as anyio
    from . import http as http
    from . import httpx as httpx
    from . import metrics as metrics

__version__ = "0.2.0"

_SUBMODULES = frozenset({"anyio", "http", "httpx", "metrics"})

__all__ = [
    "AcquireTimedOut",
    "AddressEjected",
    "AddressRestored",
    "CloseReason",
    "Closed",
    "ConnectDone",
    "ConnectError",
    "ConnectFailed",
    "ConnectStarted",
    "ConnectTimeout",
    "ConnectionContext",
    "ConnectionPool",
    "ConnectionState",
    "Discarded",
    "EventHook",
    "HostUnavailable",
    "PingAnswered",
    "PingSent",
    "PingTimedOut",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "PoolEvent",
    "PoolExhausted",
    "PoolKey",
    "PoolStatistics",
    "PooledConnection",
    "Proxy",
    "ProxyError",
    "Queued",
    "Released",
    "Resolved",
    "Reused",
    "TLSResumed",
    "Waited",
    "open_pool",
    "recommended_max_size",
]


def __getattr__(name: str) -> object:
    """Import a submodule (``trio_pool.http``, ...) on first attribute access.

    Importing it sets the attribute on the package, so this runs once per submodule. A
    submodule whose extra is missing raises the :exc:`ImportError` that names the extra.
    """
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES})
