"""The pool's bookkeeping: every decision, no I/O, no ``await``, no clock of its own.

Everything that changes who holds what happens here, synchronously, so a cancellation
can never land between "state changed" and "state recorded" (the way pool slots leak,
httpcore#1093). The I/O layer in :mod:`trio_pool._pool` asks this module what to do
(hand out this idle connection, connect in this reserved slot, wait in line, close
these) and then does it.

Capacity is counted per key (``max_size``) and across the pool (``max_total``): a
connection counts from the moment its connect slot is reserved until it is closed.

:class:`PoolState` is the coordinator of four layers, one concern each:

- :mod:`trio_pool._ledger`: the indexes and counts, and the primitives that keep them
  in step (reserve, hand out, take back, close);
- :mod:`trio_pool._line`: the waiter line and the hand-off (who is next, what they get);
- :mod:`trio_pool._streams`: HTTP/2 stream accounting (shared leases);
- :mod:`trio_pool._counters`: the counters and how statistics are built from them;

with the records they keep (keys, key states, waiters) in :mod:`trio_pool._records`.
The clock, the wake-up of a waiting task and the start of a connect are hooks passed to
the constructor, so the whole machine runs without trio, sockets or threads
(``tests/test_state_machine.py``). Methods that update more than one structure run
under :func:`trio.lowlevel.enable_ki_protection`, so Ctrl-C cannot split them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from trio.lowlevel import enable_ki_protection

from ._addresses import Address
from ._connection import ConnectionState, PooledConnection
from ._counters import build_statistics
from ._events import CloseReason, Discarded, Released, Reused
from ._exceptions import PoolClosed
from ._line import MIN_CONNECTING, _first
from ._records import (
    CONNECT,
    HANDOFF,
    SESSION_CAPACITY,
    Grant,
    KeyState,
    PendingConnect,
    PoolKey,
    SessionStore,
    Taken,
    Waiter,
    _Handoff,
)
from ._shared import Multiplexer, SharedConnection
from ._stats import PoolStatistics
from ._streams import Streams

if TYPE_CHECKING:
    import trio

__all__ = [
    "CONNECT",
    "FRESH_FOR",
    "HANDOFF",
    "MIN_CONNECTING",
    "SESSION_CAPACITY",
    "Grant",
    "KeyState",
    "PendingConnect",
    "PoolKey",
    "PoolState",
    "SessionStore",
    "Taken",
    "Waiter",
]

IN_USE: Final = ConnectionState.IN_USE
IDLE: Final = ConnectionState.IDLE
CLOSED: Final = ConnectionState.CLOSED

#: Longest a release's probe stands for the hand-out that takes the connection back in
#: the same task step (see ``take``'s ``fresh``), in seconds of the pool's clock.
FRESH_FOR: Final = 0.001


class PoolState(Streams):
    """The synchronous heart of a pool: who holds what, who waits, what to close.

    The constructor's arguments are :class:`~trio_pool._ledger.Ledger`'s.
    """

    # -- acquire -------------------------------------------------------------------

    @enable_ki_protection
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
                    if self.on_event is not None:
                        self.on_event(Reused(state.key, now, now - conn.last_used_at, False))
                    self._hand_out(state, conn, now, True)  # reused: a hit
                    return conn
                # Dead, stale or dirty: never handed out. Its slot is ours to use below.
                self._close(conn, self._why_not_taken(state, conn, now), evicted=True)
            if self.max_connecting is not None:
                return self._miss(state, now)
        upstream = state.upstream
        if upstream is not None and now < upstream.available_at:
            raise upstream.unavailable(now)
        if state.waiters:
            return None
        if state.total >= self.max_size:
            if not (new and state.idle):
                return None
            self._evict(next(iter(state.idle)), "capacity")
        if self.max_total is not None and self.total >= self.max_total:
            if self.global_waiters or not self.idle_lru:
                return None
            self._evict(next(iter(self.idle_lru)), "capacity")
        self._reserve(state)
        state.misses += 1
        return CONNECT

    def _why_not_taken(self, state: KeyState, conn: PooledConnection, now: float) -> CloseReason:
        """Why ``take`` closed an idle connection instead of handing it out."""
        if not (now < conn.last_used_at + self.max_idle_time or state.total <= self.min_size):
            return "idle_timeout"
        if now >= conn._expires_at:
            return "lifetime"
        return "unhealthy"

    def _miss(self, state: KeyState, now: float) -> _Handoff | None:
        """A miss with hand-off on: wait for a connect if there is room for one.

        Raises:
            HostUnavailable: Every address of the key's host is ejected.
        """
        upstream = state.upstream
        if upstream is not None and now < upstream.available_at:
            raise upstream.unavailable(now)
        if state.total >= self.max_size or (state.waiters and state.line):
            return None  # full, or behind tasks waiting in line for a free slot
        if (
            self.max_total is not None
            and self.total >= self.max_total
            and (self.global_waiters or not self.idle_lru)
        ):
            return None
        return HANDOFF  # counted as a hit or a miss when it is served

    @enable_ki_protection
    def reserve(self, state: KeyState) -> bool:
        """Reserve a connect slot without waiting or evicting (prewarm and refill)."""
        if self.closed or state.waiters or state.total >= self.max_size:
            return False
        if self.max_total is not None and self.total >= self.max_total:
            return False
        self._reserve(state)
        return True

    @enable_ki_protection
    def connect_now(self, state: KeyState) -> None:
        """Reserve a slot for a miss that connects in its own task after all (a fail-fast
        acquire, ``timeout=0``, after :meth:`take` said :data:`HANDOFF`)."""
        if self.max_total is not None and self.total >= self.max_total:
            self._evict(next(iter(self.idle_lru)), "capacity")
        self._reserve(state)
        state.misses += 1

    # -- connects ------------------------------------------------------------------

    @enable_ki_protection
    def connected(
        self,
        state: KeyState,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        now: float,
        *,
        to_idle: bool = False,
        pending: PendingConnect | None = None,
        shared: Multiplexer | None = None,
        address: Address | None = None,
    ) -> PooledConnection:
        """A connect in a reserved slot succeeded.

        Args:
            to_idle: Put it in the pool (prewarm, refill) instead of handing it to the
                caller.
            pending: A hand-off connect: its owner gets it if still waiting, else the
                key's next waiter, else the pool.
            shared: The connection is multiplexed (HTTP/2): it is lent as streams (see
                :meth:`_connected_shared`).
            address: The address it was dialed to (a host name's, see
                :mod:`trio_pool._addresses`): counted per address, and a new
                connection not multiplexed waits for its first response byte to
                pass its verdict on (an HTTP/2 one got the peer's SETTINGS already).
        """
        state.connecting -= 1
        state.created += 1
        if shared is not None:
            mux = self._connected_shared(state, stream, now, shared, to_idle, pending)
            if address is not None and mux._state is not CLOSED:
                self._count_address(state, mux, address)
            return mux
        if state.multiplexed:  # the peer chose HTTP/1.1: connect as for any key again
            state.multiplexed = False
        conn = self._connection_type(self.pool, state, stream, now, self.expiry(now))
        if address is not None:
            self._count_address(state, conn, address)
            conn._unproven = address
        self.live[conn] = None
        if pending is not None:
            owner = self._handoff_done(state, pending)
            if self.closed:
                self._close(conn, "pool_closed")
            elif owner is not None:
                self._serve_fresh(owner, conn, now)
            else:
                self._offer(state, conn, now, fresh=True)
            self._serve_line(state, now)
        elif to_idle:
            if self.closed:
                self._close(conn, "pool_closed")
            else:
                self._offer(state, conn, now)
        else:
            self._hand_out(state, conn, now, reused=False)
        return conn

    def _count_address(self, state: KeyState, conn: PooledConnection, address: Address) -> None:
        conn._address = address
        state.address_counts[address] = state.address_counts.get(address, 0) + 1
        if address.drained and conn._state is not CLOSED:
            self._drain(conn, self._now())  # drained while it was connecting

    @enable_ki_protection
    def drain(self, addresses: list[Address], now: float) -> None:
        """A re-resolution dropped ``addresses``: their connections are never handed out
        again; idle ones close now, borrowed ones when they come back (as broken), an
        HTTP/2 one lends no more streams and closes when its last one ends."""
        if not addresses:
            return
        dropped = set(addresses)
        for conn in list(self.live):
            if conn._address in dropped:
                self._drain(conn, now)

    def _drain(self, conn: PooledConnection, now: float) -> None:
        conn._broken = True
        if isinstance(conn, SharedConnection):
            self._capacity_changed(conn)
        elif conn._state is IDLE:
            self._evict(conn, "drained")
            self._freed(conn._key, now)  # type: ignore[arg-type]

    @enable_ki_protection
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
        now = self._now()
        if pending is not None:
            self._handoff_failed(state, pending, error, now)
        # A failing host is refilled on the back-off schedule, not at every failure.
        # (The slot freed here goes to the line first: a waiter kept above is in it,
        # with no connect of its own, so it gets a connect now, under its own limit.)
        self._freed(state, now, refill=not failed)

    @enable_ki_protection
    def release(self, conn: PooledConnection, now: float) -> None:
        """Take a borrowed connection back: pool it, hand it over, or close it."""
        state = self._take_back(conn, "release", now)
        if self.closed or not conn._reusable():
            self._give_back_closed(state, conn, now, "pool_closed" if self.closed else "unusable")
        elif now >= conn._expires_at:
            self._give_back_closed(state, conn, now, "lifetime", evicted=True)
        else:
            if self.on_event is not None:
                self.on_event(Released(state.key, now, now - conn.acquired_at))
            self._offer(state, conn, now)

    @enable_ki_protection
    def discard(
        self, conn: PooledConnection, now: float, reason: CloseReason = "discarded"
    ) -> None:
        """Close a borrowed connection for good."""
        state = self._take_back(conn, "discard", now)
        self._give_back_closed(state, conn, now, reason)

    def _give_back_closed(
        self,
        state: KeyState,
        conn: PooledConnection,
        now: float,
        reason: CloseReason,
        *,
        evicted: bool = False,
    ) -> None:
        """A borrowed connection came back to be closed: close it, free its slot."""
        if self.on_event is not None:
            self.on_event(Discarded(state.key, now, now - conn.acquired_at, reason))
        self._close(conn, reason, evicted=evicted)
        self._freed(state, now)

    # -- maintenance --------------------------------------------------------------

    @enable_ki_protection
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
        doomed: list[tuple[PooledConnection, CloseReason]] = []
        if not min_size:
            for conn in self.idle_lru:
                if now >= conn.last_used_at + max_idle:
                    doomed.append((conn, "idle_timeout"))
                elif now >= conn._expires_at:
                    doomed.append((conn, "lifetime"))
                elif probe and not conn._reusable():
                    doomed.append((conn, "unhealthy"))
        else:
            left: dict[KeyState, int] = {}  # connections each key keeps so far
            recycling: set[KeyState] = set()  # keys retiring an expired one this pass
            for conn in self.idle_lru:  # coldest first
                state: KeyState = conn._key  # type: ignore[assignment]
                kept = left.get(state, state.total)
                reason: CloseReason = "unhealthy"  # dead or dirty: always replaced
                if probe and not conn._reusable():
                    pass
                elif now >= conn._expires_at:
                    if kept <= min_size and (state.connecting or state in recycling):
                        continue  # the floor recycles one connection at a time
                    recycling.add(state)
                    reason = "lifetime"
                elif not (now >= conn.last_used_at + max_idle and kept > min_size):
                    continue  # fresh, or part of the warm floor
                else:
                    reason = "idle_timeout"
                doomed.append((conn, reason))
                left[state] = kept - 1
        for conn, reason in doomed:
            self._evict(conn, reason)
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

    @enable_ki_protection
    def close(self) -> None:
        """Close the pool: idle connections now, borrowed ones when they come back,
        and every waiter wakes with :class:`PoolClosed`."""
        if self.closed:
            return
        self.closed = True
        for conn in list(self.idle_lru):
            self._evict(conn, "pool_closed", counted=False)
        for state in self.keys.values():
            state.shared_ready.clear()  # busy HTTP/2 connections close when their streams end
        for queue in [self.global_waiters, *(s.waiters for s in self.keys.values())]:
            while queue:
                self._fail(_first(queue), PoolClosed("the pool was closed"))

    @enable_ki_protection
    def close_borrowed(self, now: float) -> None:
        """The end of the pool's block: close the connections still borrowed, at once
        (no TLS ``close_notify``: their holder may be using them). A later use raises
        :exc:`trio.ClosedResourceError`; a later release or discard does nothing.
        Multiplexed connections close as before, when their streams end."""
        for conn in list(self.live):
            if conn._state is IN_USE and not isinstance(conn, SharedConnection):
                conn._broken = True  # closed abruptly, see ConnectionPool._close_stream
                conn._closed_by_user = True  # not the holder's to give back any more
                self.discard(conn, now, "pool_closed")

    # -- statistics -------------------------------------------------------------

    def statistics(self, states: list[KeyState] | None = None) -> PoolStatistics:
        """Sum the counters of some keys (all of them, and the retired ones, by default)."""
        if states is None:
            return build_statistics(self.keys.values(), self.retired)
        return build_statistics(states)
