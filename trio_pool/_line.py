"""The waiter line and the hand-off: who is next, and what they get.

Waiters queue FIFO on their key when the key is full, or on the pool when only
``max_total`` stands in the way; either queue is an ordered dict, so a cancelled waiter
leaves in O(1). With hand-off on (``max_connecting``), a miss with room waits in its
key's line too, and a connect started for it in the pool's nursery
(:class:`~trio_pool._records.PendingConnect`) serves it, unless a released connection
comes first. A free connection goes to the longest waiter of its key, else to the
pool's idle set; a freed slot goes to the key's line, else to the pool's.

The layer knows tasks only as tokens: it hands a waiter's token and its outcome to the
wake-up hook it was given (:func:`trio.lowlevel.reschedule` in a pool).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Final

import outcome
from trio.lowlevel import enable_ki_protection

from ._connection import ConnectionState, PooledConnection
from ._events import Reused, Waited
from ._exceptions import ConnectError, ConnectTimeout, PoolClosed
from ._ledger import Ledger
from ._records import CONNECT, Grant, KeyState, PendingConnect, PoolKey, Waiter

__all__ = ["MIN_CONNECTING", "Line"]

IDLE: Final = ConnectionState.IDLE

#: Hand-off connects a key may always have in flight, however few connections it has.
MIN_CONNECTING: Final = 4


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


class Line(Ledger):
    """The waiter line and the hand-off (see the module docstring)."""

    # -- waiting -------------------------------------------------------------------

    @enable_ki_protection
    def enqueue(self, waiter: Waiter, now: float) -> None:
        """Put a waiter in line (called in the waiting task: its token is taken here).

        A hand-off waiter joins its key's line and connects are started for the line
        (up to ``max_connecting``). Others wait on their key if the key is full, else on
        the global cap (also behind any waiter of the same key already waiting there:
        FIFO per key).
        """
        waiter.task = self._current_task()
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

    @enable_ki_protection
    def cancel_wait(self, waiter: Waiter, *, timed_out: bool) -> None:
        """A waiter gave up (cancelled or timed out) before being served."""
        waiter.leave()
        if timed_out:
            waiter.key.acquire_timeouts += 1
        self._orphan(waiter)

    def reject(self, state: KeyState) -> None:
        """An acquire found the line full (``max_waiters``)."""
        state.waiters_rejected += 1

    def _wake(self, waiter: Waiter, result: outcome.Outcome[Grant]) -> None:
        """Serve (or fail) a waiter: it leaves the line, its connect goes to the next."""
        waiter.leave()
        self._wake_task(waiter.task, result)
        self._orphan(waiter)

    def _fail(self, waiter: Waiter, error: BaseException) -> None:
        self._wake(waiter, outcome.Error(error))

    def _settle(self, waiter: Waiter, now: float, *, hit: bool) -> None:
        """Count a waiter's acquire once: a hit or a miss, and (for a task that waited
        in line because the key or pool was full) its wait."""
        if waiter.settled:
            return
        waiter.settled = True
        state = waiter.key
        if not waiter.handoff:
            waited = now - waiter.since
            state.wait_count += 1
            state.wait_seconds += waited
            if self.on_event is not None:
                self.on_event(Waited(state.key, now, waited))
        if hit:
            state.hits += 1
        else:
            state.misses += 1

    # -- a free connection -----------------------------------------------------------

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
        waiter_of_cap = None
        if state.waiters or self.global_waiters:  # else (most releases) straight to idle
            waiter_of_cap = self._next_global_waiter() if self.global_waiters else None
            if state.waiters:
                waiter = _first(state.waiters)
                if fresh:
                    self._serve_fresh(waiter, conn, now)
                elif waiter.new:
                    # acquire_new wants a fresh connection: this one makes room for it.
                    self._close(conn, "capacity")
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
            self._evict(next(iter(self.idle_lru)), "capacity")
            self._grant(waiter_of_cap, now)
            return
        deadline = now + self.max_idle_time
        if conn._expires_at < deadline or (self.min_size and state.total <= self.min_size):
            deadline = conn._expires_at  # the warm floor does not go stale
        if deadline < self.wake_at:  # the maintenance task must wake earlier for it
            self._wake_by(deadline)

    def _hand_over(self, waiter: Waiter, conn: PooledConnection, now: float) -> None:
        """Serve a waiter with a released connection of its key (a hit, unless the
        waiter was counted as a miss already, when a connect slot was granted to it)."""
        self._settle(waiter, now, hit=True)
        self._hand_out(waiter.key, conn, now, reused=False)
        conn.reused = True
        if self.on_event is not None:
            self.on_event(Reused(waiter.key.key, now, 0.0, False))
        self._wake(waiter, outcome.Value(conn))

    def _serve_fresh(self, waiter: Waiter, conn: PooledConnection, now: float) -> None:
        """Serve a waiter with a connection just opened (a miss)."""
        self._settle(waiter, now, hit=False)
        self._hand_out(waiter.key, conn, now, reused=False)
        self._wake(waiter, outcome.Value(conn))

    # -- a free slot -------------------------------------------------------------------

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
            if self.max_total is not None and self.total == self.max_total - 1:
                self._serve_other_lines(state, now)
        elif state.waiters:
            self._grant(_first(state.waiters), now)
        elif self.global_waiters:
            self._grant_global(now)
        if refill and state.total < self.min_size and state.refill_not_before <= now < self.wake_at:
            self._wake_by(now)

    def _serve_other_lines(self, freed: KeyState, now: float) -> None:
        """The pool just fell below ``max_total`` and the freed slot is still free:
        serve the lines of other keys, whose waiters ``max_total`` may have held with
        no connect of their own (they wait in their key's line, not the global one,
        when their key had a connect in flight as they came). Runs only on that
        transition, so a pool below its cap pays nothing."""
        for other in self.keys.values():
            if other is not freed and other.waiters:
                self._serve_line(other, now)
                if self.total >= self.max_total:  # type: ignore[operator]
                    return

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
            self._start_handoff(waiter, now)
            return
        self._settle(waiter, now, hit=False)
        self._reserve(state)
        self._wake(waiter, outcome.Value(CONNECT))

    # -- hand-off connects ------------------------------------------------------------

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
                self._evict(next(iter(self.idle_lru)), "capacity")
            if waiter.new:
                self._grant(waiter, now)  # leaves the line: restart the scan
                return self._serve_line(state, now) or True
            if state.handoffs >= self._connect_budget(state):
                break
            self._start_handoff(waiter, now)
            took = True
        return took

    def _start_handoff(self, waiter: Waiter, now: float) -> None:
        """Reserve a slot and start a hand-off connect owned by ``waiter`` (a miss, if
        it waited in line for a free slot)."""
        state = waiter.key
        pending = PendingConnect(waiter)
        self._reserve(state)
        state.handoffs += 1
        if not waiter.handoff:  # its wait in line ends with a slot: a miss
            self._settle(waiter, now, hit=False)
        self._own(waiter, pending)
        self._start_connect(state, pending)

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

    def _handoff_failed(
        self, state: KeyState, pending: PendingConnect, error: BaseException | None, now: float
    ) -> None:
        """A hand-off connect failed: its owner gets ``error``; if no other hand-off
        connect of the key is left, so does every hand-off waiter without one, each its
        own copy (see :func:`_copy_error`). A :class:`ConnectTimeout` fails only waiters
        whose own connect limit is no longer than the connect's: a waiter never fails on
        a shorter limit than its own, it stays in line and gets a connect of its own."""
        owner = self._handoff_done(state, pending)
        if error is None:
            error = PoolClosed("the pool's background tasks stopped")
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

    def _connect_limit(self, timeout: float | None) -> float:
        """The limit a connect with this ``connect_timeout`` runs under (``None``: the
        pool's ``connection_timeout``; no limit at all is ``inf``)."""
        if timeout is None:
            timeout = self.config.connection_timeout
        return math.inf if timeout is None else timeout
