"""Who holds what: the indexes and counts of a pool, and the steps that keep them in step.

:class:`Ledger` is the bottom layer of :class:`~trio_pool._state.PoolState`: the key
states, the pool-wide idle index (coldest first), the total count against
``max_total``, the open and borrowed connections, and the few primitives every
decision uses (reserve a slot, hand a connection out, take it back, close it). The
layers above decide; this one records. Nothing here reads a clock or wakes a task:
times come in as arguments, the hooks come in through the constructor.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from trio.lowlevel import enable_ki_protection

from ._addresses import AddressBook
from ._config import PoolConfig
from ._connection import ConnectionOwner, ConnectionState, PooledConnection
from ._counters import retire, zero_counters
from ._events import Closed, CloseReason, EventHook
from ._records import (
    SESSION_CAPACITY,
    Grant,
    KeyState,
    PendingConnect,
    PoolKey,
    SessionStore,
    Waiter,
)
from ._shared import SharedConnection

if TYPE_CHECKING:
    import outcome

__all__ = ["Ledger", "Wake"]

IN_USE: Final = ConnectionState.IN_USE
IDLE: Final = ConnectionState.IDLE
CLOSED: Final = ConnectionState.CLOSED

#: The wake-up hook: resume a waiter's task (its ``task`` token) with an outcome.
#: The pool passes :func:`trio.lowlevel.reschedule`; a test records the calls.
Wake = Callable[[Any, "outcome.Outcome[Grant]"], None]


class Ledger:
    """The pool's indexes and counts (see the module docstring).

    Args:
        pool: The pool connections belong to (what they report to on ``aclose``).
        config: The pool's configuration.
        close_stream: Called (synchronously) for every connection this state closes; the
            I/O layer closes the socket, possibly scheduling a TLS ``close_notify``.
        now: The pool's clock (seconds, ``trio.current_time`` in a pool), read where no
            caller passes the time in (a connect failing, a multiplexer's hook).
        current_task: Called in a task about to wait; returns the token ``wake`` gets
            (the pool passes :func:`trio.lowlevel.current_task`).
        wake: Resumes a waiting task: ``wake(token, outcome)``.
        wake_by: Asks the maintenance task to wake no later than the given time.
        start_connect: Starts a hand-off connect for a key, in the pool's nursery.
        connection_type: Makes connections (tests pass a fake one).
        shared_type: Makes multiplexed connections (tests pass a fake one).
        on_event: Called with each lifecycle event decided here (see
            :mod:`trio_pool._events`); ``None``: none is built. The pool replaces
            :attr:`on_event` when a listener is added.
    """

    def __init__(
        self,
        pool: ConnectionOwner,
        config: PoolConfig,
        close_stream: Callable[[PooledConnection], None],
        *,
        now: Callable[[], float],
        current_task: Callable[[], Any],
        wake: Wake,
        wake_by: Callable[[float], None],
        start_connect: Callable[[KeyState, PendingConnect], None],
        connection_type: type[PooledConnection] = PooledConnection,
        shared_type: type[SharedConnection] = SharedConnection,
        on_event: EventHook | None = None,
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
        self._now = now
        self._current_task = current_task
        self._wake_task = wake
        self._wake_by = wake_by
        self._start_connect = start_connect
        self._connection_type = connection_type
        self._shared_type = shared_type
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
        self.retired: dict[str, float] = zero_counters()
        # When the sleeping maintenance task wakes next (-inf while it is not asleep): a
        # connection going idle with an earlier deadline brings the wake-up forward.
        self.wake_at = -float("inf")
        # The event hook (guarded: it never raises), or None: then no event is built.
        self.on_event: EventHook | None = on_event
        # The addresses of the host names the pool dials itself, and their health.
        self.addresses = AddressBook(config.dns_ttl, config.eject_after, config.eject_for, on_event)

    # -- keys ------------------------------------------------------------------

    def key_state(self, key: PoolKey, now: float) -> KeyState:
        state = self.keys.get(key)
        if state is None:
            state = self.keys[key] = KeyState(key, now, self.sessions)
        return state

    @enable_ki_protection
    def drop_key(self, state: KeyState) -> None:
        """Forget an empty key, folding its counters into the pool's totals."""
        assert state.is_empty
        retire(self.retired, state)
        del self.keys[state.key]
        state.dropped = True
        if state.upstream is not None:
            self.addresses.detach(state.upstream)
            state.upstream = None

    def expiry(self, now: float) -> float:
        """When a connection opened now must be closed (``max_lifetime`` less 0-2.5%)."""
        lifetime = self.config.max_lifetime
        if lifetime is None:
            return float("inf")
        return now + lifetime * (1.0 - random.uniform(0.0, 0.025))

    # -- the primitives ------------------------------------------------------------

    def _reserve(self, state: KeyState) -> None:
        """Count a connect slot of ``state`` (and of the pool) as taken."""
        state.connecting += 1
        self.total += 1

    def _hand_out(self, state: KeyState, conn: PooledConnection, now: float, reused: bool) -> None:
        """Lend ``conn`` out; ``reused`` (it was pooled, not just connected) is a hit."""
        conn._state = IN_USE
        conn._lease += 1
        conn.use_count += 1
        conn.reused = reused
        conn.last_used_at = conn.acquired_at = now
        state.in_use += 1
        if reused:
            state.hits += 1
        if self.borrowed is not None:
            self.borrowed[conn] = None

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

    def _evict(self, conn: PooledConnection, reason: CloseReason, *, counted: bool = True) -> None:
        """Close an idle connection (it leaves every idle index)."""
        if isinstance(conn, SharedConnection):
            self._drop_shared(conn)
        else:
            del conn._key.idle[conn]  # type: ignore[attr-defined]
            del self.idle_lru[conn]
        self._close(conn, reason, evicted=counted)

    def _drop_shared(self, conn: SharedConnection) -> None:
        """A multiplexed connection leaves its key's indexes (it is about to close)."""
        state: KeyState = conn._key  # type: ignore[assignment]
        state.shared.pop(conn, None)
        state.shared_ready.pop(conn, None)
        self.idle_lru.pop(conn, None)
        state.in_use -= 1

    def _close(self, conn: PooledConnection, reason: CloseReason, *, evicted: bool = False) -> None:
        """Count ``conn`` closed, free its slot, and have the I/O layer close it."""
        conn._state = CLOSED
        self.live.pop(conn, None)
        state: KeyState = conn._key  # type: ignore[assignment]
        state.closed += 1
        self.total -= 1
        if evicted:
            state.evicted += 1
        address = conn._address
        if address is not None:
            counts = state.address_counts
            left = counts[address] - 1  # type: ignore[index]
            if left:
                counts[address] = left  # type: ignore[index]
            else:
                del counts[address]  # type: ignore[arg-type]
            if conn._unproven is not None:
                conn._unproven = None
                address.ended()  # no verdict: a trial on it may go again
        self._close_stream(conn)
        if self.on_event is not None:
            now = self._now()
            self.on_event(Closed(state.key, now, reason, now - conn.created_at, conn.use_count))
