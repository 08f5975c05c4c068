"""The pool's bookkeeping: every decision, no I/O, no ``await``.

Everything that changes who holds what happens here, synchronously, so a cancellation
can never land between "state changed" and "state recorded" (the way pool slots leak,
httpcore#1093). The I/O layer in :mod:`trio_pool._pool` asks this module what to do
(hand out this idle connection, connect in this reserved slot, wait in line, close
these) and then does it.

Capacity is counted per key (``max_size``) and across the pool (``max_total``): a
connection counts from the moment its connect slot is reserved until it is closed.
Waiters queue FIFO on their key when the key is full, or on the pool when only the
global cap stands in the way; either queue is an ordered dict, so a cancelled waiter
leaves in O(1).
"""

from __future__ import annotations

import random
import ssl
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NamedTuple

import outcome
import trio

from ._config import PoolConfig
from ._connection import ConnectionState, PooledConnection
from ._exceptions import PoolClosed
from ._proxy import Proxy
from ._stats import PoolStatistics

if TYPE_CHECKING:
    from ._pool import ConnectionPool

__all__ = ["CONNECT", "KeyState", "PoolKey", "PoolState", "Waiter"]

IN_USE: Final = ConnectionState.IN_USE
IDLE: Final = ConnectionState.IDLE
CLOSED: Final = ConnectionState.CLOSED


class _Connect:
    """The grant "you hold a reserved slot: open a new connection in it"."""

    def __repr__(self) -> str:
        return "CONNECT"


CONNECT: Final = _Connect()

Grant = PooledConnection | _Connect


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


class Waiter:
    """A task parked in an acquire, waiting for a connection or a connect slot."""

    __slots__ = ("key", "new", "queue", "since", "task")

    def __init__(self, key: KeyState, since: float, new: bool) -> None:
        self.task = trio.lowlevel.current_task()
        self.key = key
        self.since = since
        self.new = new  # acquire_new: a handed-over idle connection is no use to it
        self.queue: OrderedDict[Waiter, None] | None = None

    def wake(self, result: outcome.Outcome[Grant]) -> None:
        assert self.queue is not None
        del self.queue[self]
        self.queue = None
        self.key.waiting -= 1
        trio.lowlevel.reschedule(self.task, result)


class KeyState:
    """Connections, waiters and counters for one :class:`PoolKey`."""

    __slots__ = (
        "acquire_timeouts",
        "aliases",
        "closed",
        "connect_failures",
        "connecting",
        "created",
        "dropped",
        "evicted",
        "hits",
        "idle",
        "in_use",
        "key",
        "last_active",
        "misses",
        "monitor_hits",
        "monitor_misses",
        "refill_failures",
        "refill_not_before",
        "tls_handshakes",
        "tls_resumptions",
        "tls_session",
        "wait_count",
        "wait_seconds",
        "waiters",
        "waiting",
    )

    def __init__(self, key: PoolKey, now: float) -> None:
        self.key: PoolKey = key
        # Insertion order is release order: popitem() takes the warmest (LIFO), and
        # iteration starts at the coldest (eviction).
        self.idle: dict[PooledConnection, None] = {}
        self.waiters: OrderedDict[Waiter, None] = OrderedDict()
        self.waiting: int = 0  # waiters of this key in either queue
        self.in_use: int = 0
        self.connecting: int = 0
        self.created: int = 0
        self.closed: int = 0
        self.hits: int = 0
        self.misses: int = 0
        self.evicted: int = 0
        self.connect_failures: int = 0
        self.acquire_timeouts: int = 0
        self.tls_handshakes: int = 0
        self.tls_resumptions: int = 0
        self.wait_count: int = 0
        self.wait_seconds: float = 0.0
        self.tls_session: ssl.SSLSession | None = None
        self.refill_failures: int = 0
        self.refill_not_before: float = 0.0
        self.monitor_hits: int = 0
        self.monitor_misses: int = 0
        self.last_active: float = now
        self.aliases: list[tuple[object, ...]] = []
        self.dropped: bool = False  # forgotten by drop_key: look the key up again

    @property
    def total(self) -> int:
        """Connections counted against ``max_size``: idle, in use and connecting."""
        return len(self.idle) + self.in_use + self.connecting

    @property
    def is_empty(self) -> bool:
        return not (self.idle or self.in_use or self.connecting or self.waiting)

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
            self.tls_session = session
            return True
        return False


_COUNTERS: Final = (
    "created",
    "closed",
    "hits",
    "misses",
    "evicted",
    "connect_failures",
    "acquire_timeouts",
    "tls_handshakes",
    "tls_resumptions",
    "wait_count",
    "wait_seconds",
)


def _first(queue: OrderedDict[Waiter, None]) -> Waiter:
    return next(iter(queue))


class PoolState:
    """The synchronous heart of a pool: who holds what, who waits, what to close.

    Args:
        config: The pool's configuration.
        close_stream: Called (synchronously) for every connection this state closes; the
            I/O layer closes the socket, possibly scheduling a TLS ``close_notify``.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        config: PoolConfig,
        close_stream: Callable[[PooledConnection], None],
    ) -> None:
        self.pool = pool
        self.config = config
        self.max_size = config.max_size
        self.min_size = config.min_size
        self.max_total = config.max_total
        self.max_idle_time = config.max_idle_time
        self._close_stream = close_stream
        self.keys: dict[PoolKey, KeyState] = {}
        # Every idle connection of every key, coldest first: the max_total victim order.
        self.idle_lru: dict[PooledConnection, None] = {}
        self.global_waiters: OrderedDict[Waiter, None] = OrderedDict()
        self.total = 0  # idle + in use + connecting, all keys
        self.closed = False
        # Connections handed out, tracked only for leak detection.
        self.borrowed: dict[PooledConnection, None] | None = (
            {} if config.leak_detection_threshold is not None else None
        )
        # Counters of key states dropped after a long idle spell, so totals stay right.
        self.retired: dict[str, float] = dict.fromkeys(_COUNTERS, 0)
        # When the sleeping maintenance task wakes next (-inf while it is not asleep): a
        # connection going idle with an earlier deadline brings the wake-up forward.
        self.wake_at = -float("inf")
        # Called (synchronously; must not raise) with the key and the seconds waited each
        # time a waiting acquire is served: the metrics' acquire-wait histogram.
        self.wait_observers: list[Callable[[PoolKey, float], None]] = []

    # -- keys ------------------------------------------------------------------

    def key_state(self, key: PoolKey, now: float) -> KeyState:
        state = self.keys.get(key)
        if state is None:
            state = self.keys[key] = KeyState(key, now)
        return state

    def drop_key(self, state: KeyState) -> None:
        """Forget an empty key, folding its counters into the pool's totals."""
        assert state.is_empty
        for name in _COUNTERS:
            self.retired[name] += getattr(state, name)
        del self.keys[state.key]
        state.dropped = True

    def expiry(self, now: float) -> float:
        """When a connection opened now must be closed (``max_lifetime`` less 0-2.5%)."""
        lifetime = self.config.max_lifetime
        if lifetime is None:
            return float("inf")
        return now + lifetime * (1.0 - random.uniform(0.0, 0.025))

    # -- acquire -------------------------------------------------------------------

    def take(self, state: KeyState, now: float, *, new: bool = False) -> Grant | None:
        """Serve an acquire at once if possible.

        Returns:
            A healthy idle connection (a hit, now in use); :data:`CONNECT` with a slot
            reserved for a new connection (a miss); or ``None``: the caller must wait.

        Raises:
            PoolClosed: The pool is closed.
        """
        if self.closed:
            raise PoolClosed("the pool is closed")
        state.last_active = now
        if not new:
            idle = state.idle
            max_idle = self.max_idle_time
            while idle:
                conn = idle.popitem()[0]
                del self.idle_lru[conn]
                if (
                    now < conn.last_used_at + max_idle
                    and now < conn._expires_at
                    and conn._reusable()
                ):
                    self._hand_out(state, conn, now, reused=True)
                    return conn
                # Dead, stale or dirty: never handed out. Its slot is ours to use below.
                self._close(conn, evicted=True)
        if state.waiters:
            return None
        if state.total >= self.max_size:
            if not (new and state.idle):
                return None
            self._evict(next(iter(state.idle)))
        if self.max_total is not None and self.total >= self.max_total:
            if self.global_waiters or not self.idle_lru:
                return None
            self._evict(next(iter(self.idle_lru)))
        self._reserve(state)
        state.misses += 1
        return CONNECT

    def enqueue(self, waiter: Waiter) -> None:
        """Put a waiter in line: on its key if the key is full, else on the global cap
        (also behind any waiter of the same key already waiting there: FIFO per key)."""
        state = waiter.key
        if (state.waiters or state.total >= self.max_size) and state.waiting == len(state.waiters):
            queue = state.waiters
        else:
            queue = self.global_waiters
        queue[waiter] = None
        waiter.queue = queue
        state.waiting += 1

    def cancel_wait(self, waiter: Waiter, *, timed_out: bool) -> None:
        """A waiter gave up (cancelled or timed out) before being served."""
        assert waiter.queue is not None
        del waiter.queue[waiter]
        waiter.queue = None
        state = waiter.key
        state.waiting -= 1
        if timed_out:
            state.acquire_timeouts += 1

    def reserve(self, state: KeyState) -> bool:
        """Reserve a connect slot without waiting or evicting (prewarm and refill)."""
        if self.closed or state.waiters or state.total >= self.max_size:
            return False
        if self.max_total is not None and self.total >= self.max_total:
            return False
        self._reserve(state)
        return True

    # -- connects ------------------------------------------------------------------

    def connected(
        self,
        state: KeyState,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        now: float,
        *,
        to_idle: bool = False,
    ) -> PooledConnection:
        """A connect in a reserved slot succeeded.

        Args:
            to_idle: Put it in the pool (prewarm, refill) instead of handing it to the
                caller.
        """
        state.connecting -= 1
        state.created += 1
        conn = PooledConnection(self.pool, state, stream, now, self.expiry(now))
        if to_idle:
            if self.closed:
                self._close(conn)
            else:
                self._offer(state, conn, now)
        else:
            self._hand_out(state, conn, now, reused=False)
        return conn

    def connect_failed(self, state: KeyState, *, failed: bool) -> None:
        """A connect in a reserved slot failed (``failed``) or was cancelled."""
        state.connecting -= 1
        self.total -= 1
        if failed:
            state.connect_failures += 1
        # A failing host is refilled on the back-off schedule, not at every failure.
        self._freed(state, trio.current_time(), refill=not failed)

    # -- return ----------------------------------------------------------------------

    def _take_back(self, conn: PooledConnection, action: str, now: float) -> KeyState:
        """Check that ``conn`` is borrowed from this pool, and stop counting it in use."""
        if conn._pool is not self.pool:
            raise RuntimeError(f"cannot {action} a connection that belongs to another pool")
        if conn._state is not IN_USE:
            raise RuntimeError(
                f"cannot {action} a connection that is {conn._state.value}"
                " (released or discarded already?)"
            )
        state = conn._key
        state.in_use -= 1
        if self.borrowed is not None:
            self.borrowed.pop(conn, None)
        conn.last_used_at = now
        return state

    def release(self, conn: PooledConnection, now: float) -> None:
        """Take a borrowed connection back: pool it, hand it over, or close it."""
        state = self._take_back(conn, "release", now)
        if self.closed or not conn._reusable():
            self._close(conn)
            self._freed(state, now)
        elif now >= conn._expires_at:
            self._close(conn, evicted=True)
            self._freed(state, now)
        else:
            self._offer(state, conn, now)

    def discard(self, conn: PooledConnection, now: float) -> None:
        """Close a borrowed connection for good."""
        state = self._take_back(conn, "discard", now)
        self._close(conn)
        self._freed(state, now)

    # -- maintenance --------------------------------------------------------------

    def sweep(self, now: float, *, probe: bool = True) -> int:
        """Close idle connections that are stale, past their lifetime, or unhealthy.

        Args:
            probe: Also look at every idle socket (one ``poll`` each) and close those
                the peer closed or that hold unexpected bytes. Without it only what is
                due by the clock is closed (passes woken early by a deadline).

        Returns:
            How many were closed.
        """
        max_idle = self.max_idle_time
        # The same comparisons as next_idle_deadline: a pass woken at a deadline
        # always closes what made it wake (no busy loop on float rounding).
        doomed = [
            conn
            for conn in self.idle_lru
            if now >= conn.last_used_at + max_idle
            or now >= conn._expires_at
            or (probe and not conn._reusable())
        ]
        for conn in doomed:
            self._evict(conn)
            self._freed(conn._key, now)
        return len(doomed)

    def next_idle_deadline(self) -> float:
        """When the next idle connection goes stale or reaches its lifetime (``inf``
        with nothing idle).

        O(1) without ``max_lifetime`` (``idle_lru`` is in last-use order, so the coldest
        goes stale first); with it, lifetimes are in no order and every idle connection
        is looked at (no I/O, once per maintenance pass).
        """
        if not self.idle_lru:
            return float("inf")
        deadline = next(iter(self.idle_lru)).last_used_at + self.max_idle_time
        if self.config.max_lifetime is not None:
            for conn in self.idle_lru:
                deadline = min(deadline, conn._expires_at)
        return deadline

    def close(self) -> None:
        """Close the pool: idle connections now, borrowed ones when they come back,
        and every waiter wakes with :class:`PoolClosed`."""
        if self.closed:
            return
        self.closed = True
        for conn in list(self.idle_lru):
            self._evict(conn, counted=False)
        for queue in [self.global_waiters, *(s.waiters for s in self.keys.values())]:
            while queue:
                _first(queue).wake(outcome.Error(PoolClosed("the pool was closed")))

    # -- internals ----------------------------------------------------------------

    def _reserve(self, state: KeyState) -> None:
        state.connecting += 1
        self.total += 1

    def _hand_out(
        self, state: KeyState, conn: PooledConnection, now: float, *, reused: bool
    ) -> None:
        """Lend ``conn`` out; ``reused`` (it was pooled, not just connected) is a hit."""
        conn._state = IN_USE
        conn._lease += 1
        conn.use_count += 1
        conn.reused = reused
        conn.last_used_at = now
        conn.acquired_at = now
        state.in_use += 1
        if reused:
            state.hits += 1
        if self.borrowed is not None:
            self.borrowed[conn] = None

    def _offer(self, state: KeyState, conn: PooledConnection, now: float) -> None:
        """A usable connection is free: the longest waiter of its key gets it, else the
        pool keeps it (and gives its place up to a waiter held back by ``max_total``).

        A waiter held back by ``max_total`` whose own key this connection belongs to
        gets it directly (a hit) rather than a connect paid for by closing another idle
        connection.
        """
        waiter_of_cap = self._next_global_waiter() if self.global_waiters else None
        if state.waiters:
            waiter = _first(state.waiters)
            if waiter.new:
                # acquire_new wants a fresh connection: this one makes room for it.
                self._close(conn)
                self._grant(waiter, now)
            else:
                self._hand_over(waiter, conn, now)
            return
        if waiter_of_cap is not None and waiter_of_cap.key is state and not waiter_of_cap.new:
            self._hand_over(waiter_of_cap, conn, now)
            return
        conn._state = IDLE
        state.idle[conn] = None
        self.idle_lru[conn] = None
        if waiter_of_cap is not None:
            # The coldest idle connection anywhere (maybe this one) makes room for it.
            self._evict(next(iter(self.idle_lru)))
            self._grant(waiter_of_cap, now)
            return
        deadline = now + self.max_idle_time
        if conn._expires_at < deadline:
            deadline = conn._expires_at
        if deadline < self.wake_at:  # the maintenance task must wake earlier for it
            self.pool._wake_by(deadline)

    def _freed(self, state: KeyState, now: float, *, refill: bool = True) -> None:
        """One slot of ``state`` (and one of the global cap) just became free.

        If that leaves the key below ``min_size`` (and ``refill``), the maintenance task
        wakes now to refill it, unless the key's host is being backed off.
        """
        if self.closed:
            return
        if state.waiters:
            self._grant(_first(state.waiters), now)
        elif self.global_waiters:
            self._grant_global(now)
        if refill and state.total < self.min_size and state.refill_not_before <= now < self.wake_at:
            self.pool._wake_by(now)

    def _next_global_waiter(self) -> Waiter | None:
        """The first globally waiting task whose own key has room; waiters whose key
        filled up meanwhile move to their key's line."""
        while self.global_waiters:
            waiter = _first(self.global_waiters)
            state = waiter.key
            if state.total < self.max_size:
                return waiter
            del self.global_waiters[waiter]
            state.waiters[waiter] = None
            waiter.queue = state.waiters
        return None

    def _grant_global(self, now: float) -> None:
        waiter = self._next_global_waiter()
        if waiter is not None:
            self._grant(waiter, now)

    def _hand_over(self, waiter: Waiter, conn: PooledConnection, now: float) -> None:
        """Serve a waiter with a released connection of its key (a hit)."""
        state = waiter.key
        self._note_wait(state, waiter, now)
        self._hand_out(state, conn, now, reused=True)
        waiter.wake(outcome.Value(conn))

    def _grant(self, waiter: Waiter, now: float) -> None:
        """Serve a waiter with a connect slot reserved for its key (a miss)."""
        state = waiter.key
        self._note_wait(state, waiter, now)
        self._reserve(state)
        state.misses += 1
        waiter.wake(outcome.Value(CONNECT))

    def _note_wait(self, state: KeyState, waiter: Waiter, now: float) -> None:
        waited = now - waiter.since
        state.wait_count += 1
        state.wait_seconds += waited
        for observe in self.wait_observers:
            observe(state.key, waited)

    def _evict(self, conn: PooledConnection, *, counted: bool = True) -> None:
        """Close an idle connection (it leaves both idle indexes)."""
        del conn._key.idle[conn]
        del self.idle_lru[conn]
        self._close(conn, evicted=counted)

    def _close(self, conn: PooledConnection, *, evicted: bool = False) -> None:
        conn._state = CLOSED
        state = conn._key
        state.closed += 1
        self.total -= 1
        if evicted:
            state.evicted += 1
        self._close_stream(conn)

    # -- statistics -------------------------------------------------------------

    def statistics(self, states: list[KeyState] | None = None) -> PoolStatistics:
        """Sum the counters of some keys (all of them, and the retired ones, by default)."""
        totals: dict[str, float] = dict.fromkeys(_COUNTERS, 0)
        idle = in_use = waiting = connecting = 0
        if states is None:
            states = list(self.keys.values())
            totals.update(self.retired)
        for state in states:
            for name in _COUNTERS:
                totals[name] += getattr(state, name)
            idle += len(state.idle)
            in_use += state.in_use
            waiting += state.waiting
            connecting += state.connecting
        return PoolStatistics(
            connections_created=int(totals["created"]),
            connections_closed=int(totals["closed"]),
            pool_hits=int(totals["hits"]),
            pool_misses=int(totals["misses"]),
            idle_connections=idle,
            active_connections=in_use,
            tasks_waiting=waiting,
            connecting=connecting,
            connections_evicted=int(totals["evicted"]),
            connect_failures=int(totals["connect_failures"]),
            acquire_timeouts=int(totals["acquire_timeouts"]),
            tls_handshakes=int(totals["tls_handshakes"]),
            tls_resumptions=int(totals["tls_resumptions"]),
            acquire_wait_count=int(totals["wait_count"]),
            acquire_wait_seconds=float(totals["wait_seconds"]),
        )
