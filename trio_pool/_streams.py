"""HTTP/2 stream accounting: multiplexed connections lent as streams.

A multiplexed connection counts as one connection of its key (one slot of
``max_size`` and ``max_total``) for as long as it is open, and as in use while any
stream is open on it. Its streams are *shared leases*: a key's connections with a free
stream are kept in ``shared_ready``, in the order they got one, and the first is lent
first. The multiplexer calls :meth:`Streams._capacity_changed` whenever a stream ends,
the peer changes its limit, sends GOAWAY or the connection dies: the free streams go to
the key's waiters first, then to its waiters held back by ``max_total``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import outcome
from trio.lowlevel import enable_ki_protection

from ._connection import ConnectionState
from ._events import CloseReason, Reused
from ._exceptions import ConnectError, PoolClosed
from ._line import Line, _first
from ._records import KeyState, PendingConnect, Waiter
from ._shared import Multiplexer, SharedConnection, StreamLease

if TYPE_CHECKING:
    import trio

__all__ = ["Streams"]

IN_USE: Final = ConnectionState.IN_USE
IDLE: Final = ConnectionState.IDLE
CLOSED: Final = ConnectionState.CLOSED


class Streams(Line):
    """HTTP/2 stream accounting (see the module docstring)."""

    def _take_stream(self, state: KeyState, now: float) -> StreamLease:
        """Lend a stream of the key's first connection with one free (a hit)."""
        conn = next(iter(state.shared_ready))
        shared = conn.shared
        lease = shared.reserve_stream_nowait()
        if not shared.is_available:
            del state.shared_ready[conn]
        if self.on_event is not None:
            self._report_reuse(conn, now)
        self._lend_stream(conn, now)
        state.hits += 1
        return lease

    def _report_reuse(self, conn: SharedConnection, now: float) -> None:
        """Report a stream of ``conn`` lent (before :meth:`_lend_stream`)."""
        assert self.on_event is not None
        idle_for = now - conn.last_used_at if conn._state is IDLE else 0.0
        state: KeyState = conn._key  # type: ignore[assignment]
        self.on_event(Reused(state.key, now, idle_for, True))

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
        conn = self._shared_type(self.pool, state, stream, now, self.expiry(now), shared)
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
            self._retire_shared(conn, now, self._why_retired(conn, now))
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

    @enable_ki_protection
    def _capacity_changed(self, conn: SharedConnection) -> None:
        """The multiplexer's hook: a stream ended or was released, the peer changed its
        limit, sent GOAWAY, or the connection died. Synchronous, O(streams handed)."""
        if conn._state is CLOSED:
            return
        state: KeyState = conn._key  # type: ignore[assignment]
        shared = conn.shared
        now = self._now()
        if self.closed or not conn._reusable() or now >= conn._expires_at:
            # Never a new stream; the slot is freed once its streams are done.
            state.shared_ready.pop(conn, None)
            if not shared.open_streams:
                self._retire_shared(conn, now, self._why_retired(conn, now))
            return
        while shared.is_available and state.waiters:
            self._lend_to(_first(state.waiters), conn, now)
        if shared.is_available and state.waiting > len(state.waiters) and self.global_waiters:
            # Waiters of this key held back by max_total: a free stream is theirs.
            for waiter in [w for w in self.global_waiters if w.key is state]:
                if not shared.is_available:
                    break
                self._lend_to(waiter, conn, now)
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

    def _lend_to(self, waiter: Waiter, conn: SharedConnection, now: float) -> None:
        """Serve a waiter with a stream of ``conn`` (a hit)."""
        if self.on_event is not None:
            self._report_reuse(conn, now)
        self._lend_stream(conn, now)
        self._settle(waiter, now, hit=True)
        self._wake(waiter, outcome.Value(conn.shared.reserve_stream_nowait()))

    def _why_retired(self, conn: SharedConnection, now: float) -> CloseReason:
        """Why a multiplexed connection takes no new stream (see ``_capacity_changed``)."""
        if self.closed:
            return "pool_closed"
        if conn.shared.is_closed or conn._broken:
            return "lost"
        if conn.shared.is_going_away:
            return "goaway"
        if now >= conn._expires_at:
            return "lifetime"
        return "unusable"

    def _retire_shared(self, conn: SharedConnection, now: float, reason: CloseReason) -> None:
        """Close a multiplexed connection with no stream open and free its slot."""
        self._drop_shared(conn)
        self._close(conn, reason)
        self._freed(conn._key, now)  # type: ignore[arg-type]
