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

import copy
import math
import random
import ssl
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, NamedTuple

import outcome
import trio

from ._config import PoolConfig
from ._connection import ConnectionOwner, ConnectionState, PooledConnection
from ._exceptions import ConnectError, ConnectTimeout, PoolClosed
from ._proxy import Proxy
from ._shared import Multiplexer, OpenMultiplexer, SharedConnection, StreamLease
from ._stats import PoolStatistics

__all__ = ["CONNECT", "HANDOFF", "KeyState", "PendingConnect", "PoolKey", "PoolState", "Waiter"]

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


#: Hand-off connects a key may always have in flight, however few connections it has.
MIN_CONNECTING: Final = 4

#: Longest a release's probe stands for the hand-out that takes the connection back in
#: the same task step (see ``take``'s ``fresh``), in seconds of the pool's clock.
FRESH_FOR: Final = 0.001

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
        self.task = trio.lowlevel.current_task()
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

    def wake(self, result: outcome.Outcome[Grant]) -> None:
        assert self.queue is not None
        del self.queue[self]
        self.queue = None
        state = self.key
        state.waiting -= 1
        if not self.handoff:
            state.line -= 1
        trio.lowlevel.reschedule(self.task, result)


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

    def __init__(self, capacity: int = 1024) -> None:
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


_COUNTERS: Final = (
    "created",
    "closed",
    "hits",
    "misses",
    "evicted",
    "connect_failures",
    "acquire_timeouts",
    "waiters_rejected",
    "tls_handshakes",
    "tls_resumptions",
    "wait_count",
    "wait_seconds",
)


def _first(queue: OrderedDict[Waiter, None]) -> Waiter:
    return next(iter(queue))


def _copy_error(error: BaseException, key: PoolKey) -> BaseException:
    """The same connect error for another waiter.

    An exception object is raised in one task only (tracebacks would mix), so each
    waiter gets a shallow copy: the same type and attributes (a
    :class:`~trio_pool.ProxyError`'s ``status`` and ``proxy``), the same cause and
    context, its own notes list, and a traceback of its own. An error that cannot be
    copied that way (or is no connect error) is wrapped in a
    :class:`~trio_pool.ConnectError` chained from it.
    """
    if isinstance(error, ConnectError | PoolClosed):
        copied: BaseException | None
        try:
            copied = copy.copy(error)
        except Exception:  # e.g. a subclass whose __init__ wants more than its args
            copied = None
        if copied is not None and type(copied) is type(error):
            copied.__cause__ = error.__cause__
            copied.__context__ = error.__context__
            copied.__suppress_context__ = error.__suppress_context__
            copied.__traceback__ = None
            notes = getattr(error, "__notes__", None)
            if isinstance(notes, list):
                copied.__notes__ = list(notes)
            return copied
    wrapped = ConnectError(f"cannot connect to {key.host}:{key.port}: {error!r}")
    wrapped.__cause__ = error
    return wrapped


class PoolState:
    """The synchronous heart of a pool: who holds what, who waits, what to close.

    Args:
        config: The pool's configuration.
        close_stream: Called (synchronously) for every connection this state closes; the
            I/O layer closes the socket, possibly scheduling a TLS ``close_notify``.
    """

    def __init__(
        self,
        pool: ConnectionOwner,
        config: PoolConfig,
        close_stream: Callable[[PooledConnection], None],
        *,
        wake_by: Callable[[float], None],
        start_connect: Callable[[KeyState, PendingConnect], None],
    ) -> None:
        self.pool = pool
        self.config = config
        self.max_size = config.max_size
        self.min_size = config.min_size
        self.max_total = config.max_total
        self.max_idle_time = config.max_idle_time
        # None: every miss opens its own connection and waits for it (no hand-off).
        self.max_connecting = config.max_connecting
        self._close_stream = close_stream
        self._wake_by = wake_by
        self._start_connect = start_connect
        self.keys: dict[PoolKey, KeyState] = {}
        self.sessions = SessionStore(SESSION_CAPACITY)
        # Every idle connection of every key, coldest first: the max_total victim order.
        self.idle_lru: dict[PooledConnection, None] = {}
        self.global_waiters: OrderedDict[Waiter, None] = OrderedDict()
        self.total = 0  # idle + in use + connecting, all keys
        self.closed = False
        # Every open connection (added when connected, removed when closed: never on
        # the hot path), so that the end of open_pool can close borrowed ones too.
        self.live: dict[PooledConnection, None] = {}
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
            state = self.keys[key] = KeyState(key, now, self.sessions)
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

    def take(
        self,
        state: KeyState,
        now: float,
        fresh: PooledConnection | None = None,
        *,
        new: bool = False,
    ) -> Taken | None:
        """Serve an acquire at once if possible.

        Args:
            fresh: A connection the caller vouches for: released and probed in the
                calling task's current step. If it is the one taken, within
                :data:`FRESH_FOR` of its release, it is handed out without a second
                probe.

        Returns:
            A healthy idle connection (a hit, now in use); :data:`CONNECT` with a slot
            reserved for a new connection (a miss without hand-off, or ``acquire_new``);
            :data:`HANDOFF` (a miss with room: wait as a hand-off waiter, see
            :meth:`enqueue`); or ``None``: the key or the pool is full, wait in line.

        Raises:
            PoolClosed: The pool is closed.
        """
        if self.closed:
            raise PoolClosed("the pool is closed")
        state.last_active = now
        if state.shared_ready and not new:
            return self._take_stream(state, now)
        if not new:
            idle = state.idle
            max_idle = self.max_idle_time
            while idle:
                conn = idle.popitem()[0]
                del self.idle_lru[conn]
                if (
                    (now < conn.last_used_at + max_idle or state.total <= self.min_size)
                    and now < conn._expires_at
                    and (
                        (conn is fresh and now - conn.last_used_at < FRESH_FOR) or conn._reusable()
                    )
                ):
                    # _hand_out(state, conn, now, reused=True), inline: every hit.
                    conn._state = IN_USE
                    conn._lease += 1
                    conn.use_count += 1
                    conn.reused = True
                    conn.last_used_at = conn.acquired_at = now
                    state.in_use += 1
                    state.hits += 1
                    if self.borrowed is not None:
                        self.borrowed[conn] = None
                    return conn
                # Dead, stale or dirty: never handed out. Its slot is ours to use below.
                self._close(conn, evicted=True)
            if self.max_connecting is not None:
                return self._miss(state)
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

    def _miss(self, state: KeyState) -> _Handoff | None:
        """A miss with hand-off on: wait for a connect if there is room for one."""
        if state.total >= self.max_size or (state.waiters and state.line):
            return None  # full, or behind tasks waiting in line for a free slot
        if (
            self.max_total is not None
            and self.total >= self.max_total
            and (self.global_waiters or not self.idle_lru)
        ):
            return None
        return HANDOFF  # counted as a hit or a miss when it is served

    def enqueue(self, waiter: Waiter, now: float) -> None:
        """Put a waiter in line.

        A hand-off waiter joins its key's line and connects are started for the line
        (up to ``max_connecting``). Others wait on their key if the key is full, else on
        the global cap (also behind any waiter of the same key already waiting there:
        FIFO per key).
        """
        state = waiter.key
        if waiter.handoff or (
            (state.waiters or state.total >= self.max_size) and state.waiting == len(state.waiters)
        ):
            queue = state.waiters
        else:
            queue = self.global_waiters
        queue[waiter] = None
        waiter.queue = queue
        state.waiting += 1
        if not waiter.handoff:
            state.line += 1
        else:
            self._serve_line(state, now)

    def cancel_wait(self, waiter: Waiter, *, timed_out: bool) -> None:
        """A waiter gave up (cancelled or timed out) before being served."""
        assert waiter.queue is not None
        del waiter.queue[waiter]
        waiter.queue = None
        state = waiter.key
        state.waiting -= 1
        if not waiter.handoff:
            state.line -= 1
        if timed_out:
            state.acquire_timeouts += 1
        self._orphan(waiter)

    def reject(self, state: KeyState) -> None:
        """An acquire found the line full (``max_waiters``)."""
        state.waiters_rejected += 1

    def reserve(self, state: KeyState) -> bool:
        """Reserve a connect slot without waiting or evicting (prewarm and refill)."""
        if self.closed or state.waiters or state.total >= self.max_size:
            return False
        if self.max_total is not None and self.total >= self.max_total:
            return False
        self._reserve(state)
        return True

    def connect_now(self, state: KeyState) -> None:
        """Reserve a slot for a miss that connects in its own task after all (a fail-fast
        acquire, ``timeout=0``, after :meth:`take` said :data:`HANDOFF`)."""
        if self.max_total is not None and self.total >= self.max_total:
            self._evict(next(iter(self.idle_lru)))
        self._reserve(state)
        state.misses += 1

    # -- connects ------------------------------------------------------------------

    def connected(
        self,
        state: KeyState,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        now: float,
        *,
        to_idle: bool = False,
        pending: PendingConnect | None = None,
        shared: Multiplexer | None = None,
    ) -> PooledConnection:
        """A connect in a reserved slot succeeded.

        Args:
            to_idle: Put it in the pool (prewarm, refill) instead of handing it to the
                caller.
            pending: A hand-off connect: its owner gets it if still waiting, else the
                key's next waiter, else the pool.
            shared: The connection is multiplexed (HTTP/2): it is lent as streams (see
                :meth:`_connected_shared`).
        """
        state.connecting -= 1
        state.created += 1
        if shared is not None:
            return self._connected_shared(state, stream, now, shared, to_idle, pending)
        if state.multiplexed:  # the peer chose HTTP/1.1: connect as for any key again
            state.multiplexed = False
        conn = PooledConnection(self.pool, state, stream, now, self.expiry(now))
        self.live[conn] = None
        if pending is not None:
            owner = self._handoff_done(state, pending)
            if self.closed:
                self._close(conn)
            elif owner is not None:
                self._serve_fresh(owner, conn, now)
            else:
                self._offer(state, conn, now, fresh=True)
            self._serve_line(state, now)
        elif to_idle:
            if self.closed:
                self._close(conn)
            else:
                self._offer(state, conn, now)
        else:
            self._hand_out(state, conn, now, reused=False)
        return conn

    def connect_failed(
        self,
        state: KeyState,
        *,
        failed: bool,
        error: BaseException | None = None,
        pending: PendingConnect | None = None,
    ) -> None:
        """A connect in a reserved slot failed (``failed``) or was cancelled.

        Args:
            error: What the requester(s) of a hand-off connect get.
            pending: A hand-off connect: its owner gets ``error``; if no other hand-off
                connect of the key is left, so does every hand-off waiter without one
                (a host that refuses fails them all now, with no connect each), each
                its own copy (see :func:`_copy_error`). A :class:`ConnectTimeout` fails
                only waiters whose own connect limit is no longer than the connect's:
                a waiter never fails on a shorter limit than its own, it stays in line
                and gets a connect of its own.
        """
        state.connecting -= 1
        self.total -= 1
        if failed:
            state.connect_failures += 1
        now = trio.current_time()
        if pending is not None:
            owner = self._handoff_done(state, pending)
            if error is None:
                error = PoolClosed("the pool's background tasks stopped")
            # A connect that ran out of time fails only waiters whose own limit is no
            # longer: the others wait on (and connect again, within their own limit).
            limit = self._connect_limit(pending.timeout)
            timed_out = isinstance(error, ConnectTimeout)

            def outlasts(waiter: Waiter) -> bool:
                return timed_out and self._connect_limit(waiter.connect_timeout) > limit

            if owner is not None and not outlasts(owner):
                self._settle(owner, now, hit=False)
                self._fail(owner, error)
            if not state.handoffs:
                for waiter in [w for w in state.waiters if w.handoff and w.owns is None]:
                    if outlasts(waiter):
                        continue
                    self._settle(waiter, now, hit=False)
                    self._fail(waiter, _copy_error(error, waiter.key.key))
        # A failing host is refilled on the back-off schedule, not at every failure.
        # (The slot freed here goes to the line first: a waiter kept above is in it,
        # with no connect of its own, so it gets a connect now, under its own limit.)
        self._freed(state, now, refill=not failed)

    def _connect_limit(self, timeout: float | None) -> float:
        """The limit a connect with this ``connect_timeout`` runs under (``None``: the
        pool's ``connection_timeout``; no limit at all is ``inf``)."""
        if timeout is None:
            timeout = self.config.connection_timeout
        return math.inf if timeout is None else timeout

    def _handoff_done(self, state: KeyState, pending: PendingConnect) -> Waiter | None:
        """A hand-off connect ended: detach it, and return its owner (if still waiting)."""
        state.handoffs -= 1
        owner = pending.owner
        if owner is None:
            state.orphans.remove(pending)  # at most max_connecting long
        else:
            owner.owns = None
            pending.owner = None
        return owner

    def _serve_line(self, state: KeyState, now: float) -> bool:
        """Start hand-off connects for the key's waiters that have none: an orphaned
        connect is adopted first, then new ones, up to ``max_connecting`` in flight,
        ``max_size`` and ``max_total``. An ``acquire_new`` waiter at the front gets its
        slot to connect in itself.

        Returns:
            Whether a slot was taken (a freed slot left over can go to the global line).
        """
        if self.closed or self.max_connecting is None:
            return False
        took = False
        for waiter in state.waiters:
            if waiter.owns is not None:
                continue
            if state.orphans and not waiter.new:
                self._own(waiter, state.orphans.pop())
                continue
            if state.total >= self.max_size:
                break
            if self.max_total is not None and self.total >= self.max_total:
                if self.global_waiters or not self.idle_lru:
                    break
                self._evict(next(iter(self.idle_lru)))
            if waiter.new:
                self._grant(waiter, now)  # leaves the line: restart the scan
                return self._serve_line(state, now) or True
            if state.handoffs >= self._connect_budget(state):
                break
            pending = PendingConnect(waiter)
            self._reserve(state)
            state.handoffs += 1
            if not waiter.handoff:  # its wait in line ends with a slot: a miss
                self._settle(waiter, now, hit=False)
            self._own(waiter, pending)
            self._start_connect(state, pending)
            took = True
        return took

    def _connect_budget(self, state: KeyState) -> int:
        """How many hand-off connects the key may have in flight: as many as it has
        open connections (at least ``MIN_CONNECTING``), never more than
        ``max_connecting``. A warm key meets a spike with its own connections and a few
        connects; a cold key under load grows like TCP slow start, doubling per connect
        round, rather than a fixed few at a time."""
        assert self.max_connecting is not None
        if state.multiplexed:
            return 1  # one connection serves many: open the next only when all are full
        established = len(state.idle) + state.in_use
        return min(self.max_connecting, max(MIN_CONNECTING, established))

    def _own(self, waiter: Waiter, pending: PendingConnect) -> None:
        pending.owner = waiter
        waiter.owns = pending
        if waiter.scope is not None:
            # Waiting for its own connect now: connection_timeout bounds that, not the
            # acquire timeout.
            waiter.scope.deadline = math.inf

    def _orphan(self, waiter: Waiter) -> None:
        """``waiter`` left the line: its connect (if any) goes to the next waiter."""
        pending = waiter.owns
        if pending is None:
            return
        waiter.owns = None
        pending.owner = None
        state = waiter.key
        for other in state.waiters:
            if other.owns is None and not other.new:
                self._own(other, pending)
                return
        state.orphans.append(pending)

    def _serve_fresh(self, waiter: Waiter, conn: PooledConnection, now: float) -> None:
        """Serve a waiter with a connection just opened (a miss)."""
        state = waiter.key
        self._settle(waiter, now, hit=False)
        self._hand_out(state, conn, now, reused=False)
        self._wake(waiter, outcome.Value(conn))

    def _fail(self, waiter: Waiter, error: BaseException) -> None:
        self._wake(waiter, outcome.Error(error))

    def _wake(self, waiter: Waiter, result: outcome.Outcome[Grant]) -> None:
        waiter.wake(result)
        self._orphan(waiter)

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
        state: KeyState = conn._key  # type: ignore[assignment]  # always ours
        state.in_use -= 1
        if self.borrowed is not None:
            self.borrowed.pop(conn, None)
        conn.last_used_at = now
        return state

    def release(self, conn: PooledConnection, now: float) -> None:
        """Take a borrowed connection back: pool it, hand it over, or close it."""
        # _take_back(conn, "release", now), inline: every release.
        if conn._pool is not self.pool or conn._state is not IN_USE:
            self._take_back(conn, "release", now)  # raises the right error
        state: KeyState = conn._key  # type: ignore[assignment]  # always ours
        state.in_use -= 1
        if self.borrowed is not None:
            self.borrowed.pop(conn, None)
        conn.last_used_at = now
        if self.closed or not conn._reusable():
            self._close(conn)
            self._freed(state, now)
        elif now >= conn._expires_at:
            self._close(conn, evicted=True)
            self._freed(state, now)
        elif state.waiters or self.global_waiters:
            self._offer(state, conn, now)
        else:
            # _offer's tail, inline: nobody waits, so the pool keeps it.
            conn._state = IDLE
            state.idle[conn] = None
            self.idle_lru[conn] = None
            deadline = now + self.max_idle_time
            if conn._expires_at < deadline or (self.min_size and state.total <= self.min_size):
                deadline = conn._expires_at
            if deadline < self.wake_at:
                self._wake_by(deadline)

    def discard(self, conn: PooledConnection, now: float) -> None:
        """Close a borrowed connection for good."""
        state = self._take_back(conn, "discard", now)
        self._close(conn)
        self._freed(state, now)

    # -- maintenance --------------------------------------------------------------

    def sweep(self, now: float, *, probe: bool = True) -> int:
        """Close idle connections that are stale, past their lifetime, or unhealthy.

        The warm floor stays warm: a key keeps ``min_size`` connections however long
        they sit idle (they are still probed, and replaced when dead), and recycles them
        at ``max_lifetime`` one at a time: an expired one is retired only while no
        connect of its key is in flight, so the floor never drops all at once.

        Args:
            probe: Also look at every idle socket (one ``poll`` each) and close those
                the peer closed or that hold unexpected bytes. Without it only what is
                due by the clock is closed (passes woken early by a deadline).

        Returns:
            How many were closed.
        """
        max_idle = self.max_idle_time
        min_size = self.min_size
        # The same comparisons as next_idle_deadline: a pass woken at a deadline
        # always closes what made it wake (no busy loop on float rounding).
        if not min_size:
            doomed = [
                conn
                for conn in self.idle_lru
                if now >= conn.last_used_at + max_idle
                or now >= conn._expires_at
                or (probe and not conn._reusable())
            ]
        else:
            doomed = []
            left: dict[KeyState, int] = {}  # connections each key keeps so far
            recycling: set[KeyState] = set()  # keys retiring an expired one this pass
            for conn in self.idle_lru:  # coldest first
                state: KeyState = conn._key  # type: ignore[assignment]
                kept = left.get(state, state.total)
                if probe and not conn._reusable():
                    pass  # dead or dirty: always replaced
                elif now >= conn._expires_at:
                    if kept <= min_size and (state.connecting or state in recycling):
                        continue  # the floor recycles one connection at a time
                    recycling.add(state)
                elif not (now >= conn.last_used_at + max_idle and kept > min_size):
                    continue  # fresh, or part of the warm floor
                doomed.append(conn)
                left[state] = kept - 1
        for conn in doomed:
            self._evict(conn)
            self._freed(conn._key, now)  # type: ignore[arg-type]
        return len(doomed)

    def next_idle_deadline(self) -> float:
        """When the next idle connection goes stale or reaches its lifetime (``inf``
        with nothing idle), leaving out what :meth:`sweep` would keep then: floor
        connections going stale, and expired floor connections waiting their turn.

        O(1) without ``max_lifetime`` and ``min_size`` (``idle_lru`` is in last-use
        order, so the coldest goes stale first); otherwise every idle connection is
        looked at (no I/O, once per maintenance pass).
        """
        if not self.idle_lru:
            return float("inf")
        max_idle = self.max_idle_time
        min_size = self.min_size
        if not min_size:
            deadline = next(iter(self.idle_lru)).last_used_at + max_idle
            if self.config.max_lifetime is not None:
                for conn in self.idle_lru:
                    deadline = min(deadline, conn._expires_at)
            return deadline
        deadline = float("inf")
        left: dict[KeyState, int] = {}
        for conn in self.idle_lru:
            state: KeyState = conn._key  # type: ignore[assignment]
            kept = left.get(state, state.total)
            if kept > min_size:
                # Beyond the floor: it may go stale (coldest first, so once counted).
                deadline = min(deadline, conn.last_used_at + max_idle)
                left[state] = kept - 1
            if not (state.connecting and kept <= min_size):
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
        for state in self.keys.values():
            state.shared_ready.clear()  # busy HTTP/2 connections close when their streams end
        for queue in [self.global_waiters, *(s.waiters for s in self.keys.values())]:
            while queue:
                self._fail(_first(queue), PoolClosed("the pool was closed"))

    def close_borrowed(self, now: float) -> None:
        """The end of the pool's block: close the connections still borrowed, at once
        (no TLS ``close_notify``: their holder may be using them). A later use raises
        :exc:`trio.ClosedResourceError`; a later release or discard does nothing.
        Multiplexed connections close as before, when their streams end."""
        for conn in list(self.live):
            if conn._state is IN_USE and type(conn) is not SharedConnection:
                conn._broken = True  # closed abruptly, see ConnectionPool._close_stream
                conn._closed_by_user = True  # not the holder's to give back any more
                self.discard(conn, now)

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

    def _offer(
        self, state: KeyState, conn: PooledConnection, now: float, *, fresh: bool = False
    ) -> None:
        """A usable connection is free: the longest waiter of its key gets it, else the
        pool keeps it (and gives its place up to a waiter held back by ``max_total``).

        A waiter held back by ``max_total`` whose own key this connection belongs to
        gets it directly (a hit) rather than a connect paid for by closing another idle
        connection. ``fresh``: it was just opened by a hand-off connect (a miss for
        whoever gets it, ``acquire_new`` waiters included).
        """
        waiter_of_cap = self._next_global_waiter() if self.global_waiters else None
        if state.waiters:
            waiter = _first(state.waiters)
            if fresh:
                self._serve_fresh(waiter, conn, now)
            elif waiter.new:
                # acquire_new wants a fresh connection: this one makes room for it.
                self._close(conn)
                self._grant(waiter, now)
            else:
                self._hand_over(waiter, conn, now)
            return
        if waiter_of_cap is not None and waiter_of_cap.key is state and not waiter_of_cap.new:
            if fresh:
                self._serve_fresh(waiter_of_cap, conn, now)
            else:
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
        if conn._expires_at < deadline or (self.min_size and state.total <= self.min_size):
            deadline = conn._expires_at  # the warm floor does not go stale
        if deadline < self.wake_at:  # the maintenance task must wake earlier for it
            self._wake_by(deadline)

    def _freed(self, state: KeyState, now: float, *, refill: bool = True) -> None:
        """One slot of ``state`` (and one of the global cap) just became free.

        If that leaves the key below ``min_size`` (and ``refill``), the maintenance task
        wakes now to refill it, unless the key's host is being backed off.
        """
        if self.closed:
            return
        if self.max_connecting is not None:
            if not (state.waiters and self._serve_line(state, now)) and self.global_waiters:
                self._grant_global(now)
        elif state.waiters:
            self._grant(_first(state.waiters), now)
        elif self.global_waiters:
            self._grant_global(now)
        if refill and state.total < self.min_size and state.refill_not_before <= now < self.wake_at:
            self._wake_by(now)

    def _next_global_waiter(self) -> Waiter | None:
        """The first globally waiting task whose own key has room; waiters whose key
        filled up meanwhile move to their key's line, and so do (with hand-off) waiters
        whose key has ``max_connecting`` connects in flight already: one of those, or a
        release, serves them there (an orphaned connect is theirs at once)."""
        max_connecting = self.max_connecting
        while self.global_waiters:
            waiter = _first(self.global_waiters)
            state = waiter.key
            bounded = (
                max_connecting is not None
                and not waiter.new
                and state.handoffs >= self._connect_budget(state)
            )
            if state.total < self.max_size and not bounded:
                return waiter
            del self.global_waiters[waiter]
            state.waiters[waiter] = None
            waiter.queue = state.waiters
            if state.orphans and not waiter.new:
                self._own(waiter, state.orphans.pop())
        return None

    def _grant_global(self, now: float) -> None:
        waiter = self._next_global_waiter()
        if waiter is not None:
            self._grant(waiter, now)

    def _hand_over(self, waiter: Waiter, conn: PooledConnection, now: float) -> None:
        """Serve a waiter with a released connection of its key (a hit, unless the
        waiter was counted as a miss already, when a connect slot was granted to it)."""
        state = waiter.key
        self._settle(waiter, now, hit=True)
        self._hand_out(state, conn, now, reused=False)
        conn.reused = True
        self._wake(waiter, outcome.Value(conn))

    def _grant(self, waiter: Waiter, now: float) -> None:
        """Serve a waiter with a connect slot reserved for its key (a miss): with
        hand-off on (and not ``acquire_new``), a connect starts on its behalf and it
        stays in its key's line, served by whichever comes first."""
        state = waiter.key
        if self.max_connecting is not None and not waiter.new:
            if waiter.queue is not state.waiters:
                assert waiter.queue is not None
                del waiter.queue[waiter]
                state.waiters[waiter] = None
                waiter.queue = state.waiters
            if not waiter.handoff:
                self._settle(waiter, now, hit=False)
            pending = PendingConnect(waiter)
            self._reserve(state)
            state.handoffs += 1
            self._own(waiter, pending)
            self._start_connect(state, pending)
            return
        self._settle(waiter, now, hit=False)
        self._reserve(state)
        self._wake(waiter, outcome.Value(CONNECT))

    def _settle(self, waiter: Waiter, now: float, *, hit: bool) -> None:
        """Count a waiter's acquire once: a hit or a miss, and (for a task that waited
        in line because the key or pool was full) its wait."""
        if waiter.settled:
            return
        waiter.settled = True
        state = waiter.key
        if not waiter.handoff:
            self._note_wait(state, waiter, now)
        if hit:
            state.hits += 1
        else:
            state.misses += 1

    def _note_wait(self, state: KeyState, waiter: Waiter, now: float) -> None:
        waited = now - waiter.since
        state.wait_count += 1
        state.wait_seconds += waited
        for observe in self.wait_observers:
            observe(state.key, waited)

    def _evict(self, conn: PooledConnection, *, counted: bool = True) -> None:
        """Close an idle connection (it leaves both idle indexes)."""
        if type(conn) is SharedConnection:
            self._drop_shared(conn)
            self._close(conn, evicted=counted)
            return
        del conn._key.idle[conn]  # type: ignore[attr-defined]
        del self.idle_lru[conn]
        self._close(conn, evicted=counted)

    def _close(self, conn: PooledConnection, *, evicted: bool = False) -> None:
        conn._state = CLOSED
        self.live.pop(conn, None)
        state: KeyState = conn._key  # type: ignore[assignment]
        state.closed += 1
        self.total -= 1
        if evicted:
            state.evicted += 1
        self._close_stream(conn)

    # -- shared leases (multiplexed connections) -----------------------------------

    def _take_stream(self, state: KeyState, now: float) -> StreamLease:
        """Lend a stream of the key's first connection with one free (a hit)."""
        conn = next(iter(state.shared_ready))
        shared = conn.shared
        lease = shared.reserve_stream_nowait()
        if not shared.is_available:
            del state.shared_ready[conn]
        self._lend_stream(conn, now)
        state.hits += 1
        return lease

    def _lend_stream(self, conn: SharedConnection, now: float) -> None:
        if conn._state is IDLE:  # its first stream since it went idle
            conn._state = IN_USE
            del self.idle_lru[conn]
        conn.use_count += 1
        conn.acquired_at = now

    def _connected_shared(
        self,
        state: KeyState,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        now: float,
        shared: Multiplexer,
        to_idle: bool,
        pending: PendingConnect | None,
    ) -> SharedConnection:
        """A multiplexed connection opened: the connecting task (or the hand-off
        connect's owner) takes one stream, and the key's next waiters, FIFO, as many
        of the others as they need; what is left is lent to later acquires at once."""
        conn = SharedConnection(self.pool, state, stream, now, self.expiry(now), shared)
        self.live[conn] = None
        state.multiplexed = True
        state.shared[conn] = None
        state.in_use += 1  # an open multiplexed connection counts as in use
        shared.on_capacity_change = lambda: self._capacity_changed(conn)
        owner = self._handoff_done(state, pending) if pending is not None else None
        if self.closed or not shared.is_available:
            if owner is not None:
                self._settle(owner, now, hit=False)
                self._fail(
                    owner,
                    PoolClosed("the pool was closed")
                    if self.closed
                    else ConnectError("the new HTTP/2 connection has no free stream"),
                )
            self._retire_shared(conn, now)
            return conn
        if owner is not None:
            self._lend_stream(conn, now)
            self._settle(owner, now, hit=False)
            self._wake(owner, outcome.Value(shared.reserve_stream_nowait()))
        elif pending is None and not to_idle:
            self._lend_stream(conn, now)
            conn.first = shared.reserve_stream_nowait()
        # Otherwise (prewarm, or an orphaned connect) it counts as in use until the hook
        # below finds it has no stream open and makes it idle.
        self._capacity_changed(conn)
        if pending is not None:
            self._serve_line(state, now)
        return conn

    def _capacity_changed(self, conn: SharedConnection) -> None:
        """The multiplexer's hook: a stream ended or was released, the peer changed its
        limit, sent GOAWAY, or the connection died. Synchronous, O(streams handed)."""
        if conn._state is CLOSED:
            return
        state: KeyState = conn._key  # type: ignore[assignment]
        shared = conn.shared
        now = trio.current_time()
        if self.closed or not conn._reusable() or now >= conn._expires_at:
            # Never a new stream; the slot is freed once its streams are done.
            state.shared_ready.pop(conn, None)
            if not shared.open_streams:
                self._retire_shared(conn, now)
            return
        while shared.is_available and state.waiters:
            waiter = _first(state.waiters)
            self._lend_stream(conn, now)
            self._settle(waiter, now, hit=True)
            self._wake(waiter, outcome.Value(shared.reserve_stream_nowait()))
        if shared.is_available and state.waiting > len(state.waiters) and self.global_waiters:
            # Waiters of this key held back by max_total: a free stream is theirs.
            for waiter in [w for w in self.global_waiters if w.key is state]:
                if not shared.is_available:
                    break
                self._lend_stream(conn, now)
                self._settle(waiter, now, hit=True)
                self._wake(waiter, outcome.Value(shared.reserve_stream_nowait()))
        if shared.is_available:
            if conn not in state.shared_ready:
                state.shared_ready[conn] = None
        else:
            state.shared_ready.pop(conn, None)
        if not shared.open_streams and conn._state is IN_USE:
            # No stream open: idle, evicted by max_idle_time like any connection.
            conn._state = IDLE
            conn.last_used_at = now
            self.idle_lru[conn] = None
            deadline = min(now + self.max_idle_time, conn._expires_at)
            if deadline < self.wake_at:
                self._wake_by(deadline)

    def _drop_shared(self, conn: SharedConnection) -> None:
        state: KeyState = conn._key  # type: ignore[assignment]
        state.shared.pop(conn, None)
        state.shared_ready.pop(conn, None)
        self.idle_lru.pop(conn, None)
        state.in_use -= 1

    def _retire_shared(self, conn: SharedConnection, now: float) -> None:
        """Close a multiplexed connection with no stream open and free its slot."""
        self._drop_shared(conn)
        self._close(conn)
        self._freed(conn._key, now)  # type: ignore[arg-type]

    # -- statistics -------------------------------------------------------------

    def statistics(self, states: list[KeyState] | None = None) -> PoolStatistics:
        """Sum the counters of some keys (all of them, and the retired ones, by default)."""
        totals: dict[str, float] = dict.fromkeys(_COUNTERS, 0)
        idle = in_use = waiting = connecting = multiplexed = streams = 0
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
            if state.shared:
                # An HTTP/2 connection with no stream open is reported idle.
                multiplexed += len(state.shared)
                for conn in state.shared:
                    streams += conn.shared.open_streams
                    if conn._state is IDLE:
                        idle += 1
                        in_use -= 1
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
            waiters_rejected=int(totals["waiters_rejected"]),
            http2_connections=multiplexed,
            http2_streams=streams,
        )
