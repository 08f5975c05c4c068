"""trio_pool: a connection pool for trio.

Per-host pools of TCP and TLS connections living in a nursery, with cancellation-safe
acquire, health checks, idle eviction, warm floors, TLS session resumption and
statistics. HTTP/1.1 keep-alive lives in :mod:`trio_pool.http`.
"""

from ._config import PoolConfig as PoolConfig
from ._config import recommended_max_size as recommended_max_size
from ._connection import ConnectionState as ConnectionState
from ._connection import PooledConnection as PooledConnection
from ._exceptions import ConnectError as ConnectError
from ._exceptions import ConnectTimeout as ConnectTimeout
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

__version__ = "0.1.0"

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionContext",
    "ConnectionPool",
    "ConnectionState",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "PoolExhausted",
    "PoolKey",
    "PoolStatistics",
    "PooledConnection",
    "Proxy",
    "ProxyError",
    "open_pool",
    "recommended_max_size",
]
