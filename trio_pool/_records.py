"""The plain records of the pool's state machine: keys, key states, waiters.

:class:`PoolKey` says where a connection goes; :class:`KeyState` holds one key's
connections, waiters and counters; a :class:`Waiter` is a task parked in an acquire and
a :class:`PendingConnect` a hand-off connect run on a waiter's behalf. No decision is
taken here (see :mod:`trio_pool._state`), and nothing here reads a clock or knows a
task: a waiter's ``task`` is an opaque token the pool's wake-up hook understands.
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from ._addresses import Address, Upstream
from ._connection import ConnectionState, PooledConnection
from ._proxy import Proxy
from ._shared import OpenMultiplexer, SharedConnection, StreamLease

if TYPE_CHECKING:
    import trio

__all__ = [
    "CONNECT",
    "HANDOFF",
    "Grant",
    "KeyState",
    "PendingConnect",
    "PoolKey",
    "SessionStore",
    "Taken",
    "Waiter",
]

IN_USE: Final = ConnectionState.IN_USE
IDLE: Final = ConnectionState.IDLE
CLOSED: Final = ConnectionState.CLOSED


class _Connect:
    """The grant "you hold a reserved slot: open a new connection in it"."""

    def __repr__(self) -> str:
        return "CONNECT"


class _Handoff:
    """The answer "a miss with room: wait, a connect is (or will be) started for you"."""

    def __repr__(self) -> str:
        return "HANDOFF"


#: Most TLS sessions a pool keeps (one per TLS key, least recently used out first).
SESSION_CAPACITY: Final = 1024

CONNECT: Final = _Connect()
HANDOFF: Final = _Handoff()

Grant = PooledConnection | _Connect | StreamLease
Taken = PooledConnection | _Connect | _Handoff | StreamLease


class PoolKey(NamedTuple):
    """Everything that makes a connection unsafe to share with another key.

    ``ssl_context`` compares by identity (:class:`ssl.SSLContext` defines no equality).
    For plain TCP the TLS fields are always ``None`` / ``True`` / ``None``.

    The route is part of the key: ``proxy`` (a :class:`~trio_pool.Proxy`, compared by
    value) tunnels to ``host:port`` through that proxy, or with ``forward`` connects to
    the HTTP proxy itself (then ``host:port`` is the proxy's address); ``uds`` connects
    to that Unix socket path instead of ``host:port``. So connections through different
    proxies, none, or different sockets are never shared.
    """

    host: str
    port: int
    tls: bool
    server_hostname: str | None
    verify_cert: bool
    ssl_context: ssl.SSLContext | None
    proxy: Proxy | None = None
    uds: str | None = None
    forward: bool = False
    #: ``"h2"``: TLS offers ALPN ``h2`` (and ``http/1.1``), the answer decides;
    #: ``"h2c"``: plain HTTP/2 by prior knowledge; ``None``: never multiplexed.
    http2: str | None = None
    #: Lent only to trio_pool's HTTP clients (``HTTPClient``, ``PoolTransport``), which
    #: give a connection back only at a message boundary. A raw borrower
    #: (``acquire``, ``connection()``) may give one back mid-answer, its tail still on
    #: the way (after any probe could see it): raw and HTTP connections never mix.
    http: bool = False
    #: The source IP address of its TCP connects (httpx's ``local_address``).
    local_address: str | None = None
    #: Options set on its socket right after connecting (httpcore's ``socket_options``):
    #: ``(level, option, value)`` or ``(level, option, None, length)`` tuples.
    socket_options: tuple[tuple[int, int, int | bytes] | tuple[int, int, None, int], ...] | None = (
        None
    )


class Waiter:
    """A task parked in an acquire, waiting for a connection or a connect slot."""

    __slots__ = (
        "connect_timeout",
        "handoff",
        "key",
        "new",
        "owns",
        "queue",
        "scope",
        "settled",
        "since",
        "task",
    )

    def __init__(
        self,
        key: KeyState,
        since: float,
        new: bool,
        *,
        handoff: bool = False,
        connect_timeout: float | None = None,
        scope: trio.CancelScope | None = None,
    ) -> None:
        # Whom the pool's wake-up hook resumes: set by PoolState.enqueue, in the task.
        self.task: Any = None
        self.key = key
        self.since = since
        self.new = new  # acquire_new: a handed-over idle connection is no use to it
        self.queue: OrderedDict[Waiter, None] | None = None
        # A miss with room to connect (hand-off): served by its connect or by a release,
        # whichever comes first. Otherwise it waits in line because the key (or the
        # pool) is full, and counts toward max_waiters.
        self.handoff = handoff
        self.connect_timeout = connect_timeout  # for connects started on its behalf
        self.scope = scope  # its acquire_timeout; lifted while a connect is its own
        self.owns: PendingConnect | None = None
        # Counted as a hit or a miss yet: a task waiting in line when its slot is granted
        # or a connection handed to it; a hand-off waiter when it is served (by a
        # released connection: a hit; by a new one: a miss) or its connect fails.
        self.settled = False

    def leave(self) -> None:
        """Leave the queue it waits in (served, failed, cancelled or timed out)."""
        assert self.queue is not None
        del self.queue[self]
        self.queue = None
        state = self.key
        state.waiting -= 1
        if not self.handoff:
            state.line -= 1


class PendingConnect:
    """A hand-off connect running in the pool's nursery, on behalf of ``owner``.

    Its connection goes to the owner if the owner still waits, else to the key's next
    waiter or to idle; its error goes to the owner (or, if it was the key's last
    hand-off connect, to every task waiting on a connect of the key).
    """

    __slots__ = ("owner", "timeout")

    def __init__(self, owner: Waiter) -> None:
        self.owner: Waiter | None = owner
        self.timeout = owner.connect_timeout  # the owner's, even after it left

    def __repr__(self) -> str:
        return f"<PendingConnect owner={'yes' if self.owner is not None else 'none'}>"


class KeyState:
    """Connections, waiters and counters for one :class:`PoolKey`."""

    __slots__ = (
        "acquire_timeouts",
        "address_counts",
        "aliases",
        "closed",
        "connect_failures",
        "connecting",
        "created",
        "dropped",
        "evicted",
        "handoffs",
        "hits",
        "idle",
        "in_use",
        "key",
        "last_active",
        "line",
        "misses",
        "monitor_hits",
        "monitor_misses",
        "multiplexed",
        "open_shared",
        "orphans",
        "refill_failures",
        "refill_not_before",
        "sessions",
        "shared",
        "shared_ready",
        "tls_handshakes",
        "tls_resumptions",
        "upstream",
        "wait_count",
        "wait_seconds",
        "waiters",
        "waiters_rejected",
        "waiting",
    )

    def __init__(self, key: PoolKey, now: float, sessions: SessionStore | None = None) -> None:
        self.key: PoolKey = key
        # The pool's TLS session store: sessions outlive this state (drop_key).
        self.sessions: SessionStore = sessions if sessions is not None else SessionStore()
        # Insertion order is release order: popitem() takes the warmest (LIFO), and
        # iteration starts at the coldest (eviction).
        self.idle: dict[PooledConnection, None] = {}
        self.waiters: OrderedDict[Waiter, None] = OrderedDict()
        self.waiting: int = 0  # waiters of this key in either queue
        self.line: int = 0  # of those, waiting because the key or the pool is full
        self.handoffs: int = 0  # hand-off connects in flight (part of connecting)
        self.orphans: list[PendingConnect] = []  # hand-off connects nobody waits on
        self.in_use: int = 0
        self.connecting: int = 0
        self.created: int = 0
        self.closed: int = 0
        self.hits: int = 0
        self.misses: int = 0
        self.evicted: int = 0
        self.connect_failures: int = 0
        self.acquire_timeouts: int = 0
        self.waiters_rejected: int = 0
        self.tls_handshakes: int = 0
        self.tls_resumptions: int = 0
        self.wait_count: int = 0
        self.wait_seconds: float = 0.0
        self.refill_failures: int = 0
        self.refill_not_before: float = 0.0
        self.monitor_hits: int = 0
        self.monitor_misses: int = 0
        self.last_active: float = now
        self.aliases: list[tuple[object, ...]] = []
        self.dropped: bool = False  # forgotten by drop_key: look the key up again
        # Multiplexed (HTTP/2) connections of the key, and those with a free stream, in
        # the order they got one (the first is lent first). While ``shared_ready`` is
        # non-empty nobody of this key waits.
        self.shared: dict[SharedConnection, None] = {}
        self.shared_ready: dict[SharedConnection, None] = {}
        # Whether the key's connections are (expected to be) multiplexed: a key offering
        # h2 starts hopeful, so a cold burst opens one connection, not max_connecting;
        # a connection that negotiated HTTP/1.1 sets it back.
        self.multiplexed: bool = key.http2 is not None
        self.open_shared: OpenMultiplexer | None = None  # set by the protocol layer
        # A direct TCP key to a host name: its host's addresses (set by the connector on
        # its first connect), and the key's open connections per address.
        self.upstream: Upstream | None = None
        self.address_counts: dict[Address, int] = {}

    @property
    def total(self) -> int:
        """Connections counted against ``max_size``: idle, in use and connecting."""
        return len(self.idle) + self.in_use + self.connecting

    @property
    def is_empty(self) -> bool:
        return not (self.idle or self.in_use or self.connecting or self.waiting)

    @property
    def tls_session(self) -> ssl.SSLSession | None:
        """The saved TLS session the next connect of this key offers (from the store)."""
        return self.sessions.get(self.key)

    def save_session(self, stream: trio.SSLStream[trio.SocketStream]) -> bool:
        """Keep the stream's TLS session for the next connect of this key.

        Returns:
            Whether a resumable session was saved: TLS 1.3 sessions are resumable only
            once their ticket arrived (after the handshake, with the first data), TLS 1.2
            ones right after the handshake.
        """
        session = stream.session
        if session is None:
            return False
        if session.has_ticket or stream.version() != "TLSv1.3":
            self.sessions.put(self.key, session)
            return True
        return False

    def forget_session(self) -> bool:
        """Never offer the saved session again (after a TLS error); whether there was one."""
        return self.sessions.discard(self.key)


class SessionStore:
    """TLS sessions per TLS key, least recently used first out beyond ``capacity``.

    Separate from the key states, so a key dropped after a long idle spell (``drop_key``)
    still resumes its session when it comes back. Keyed by the whole :class:`PoolKey`:
    host, port, SNI, verification and context (a session is only offered to the same
    server name, checked the same way, from the same context).
    """

    __slots__ = ("_sessions", "capacity")

    def __init__(self, capacity: int = SESSION_CAPACITY) -> None:
        self.capacity: int = capacity
        self._sessions: OrderedDict[PoolKey, ssl.SSLSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, key: PoolKey) -> ssl.SSLSession | None:
        session = self._sessions.get(key)
        if session is not None:
            self._sessions.move_to_end(key)
        return session

    def put(self, key: PoolKey, session: ssl.SSLSession) -> None:
        self._sessions[key] = session
        self._sessions.move_to_end(key)
        while len(self._sessions) > self.capacity:
            self._sessions.popitem(last=False)

    def discard(self, key: PoolKey) -> bool:
        return self._sessions.pop(key, None) is not None
