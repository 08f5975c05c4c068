"""The pool's background work: idle eviction, health probes, the warm floor
(refill with back-off), monitoring warnings, and leak reports.

One supervised task (:meth:`Maintenance.run`) sleeps until the next thing is due; every
pass is synchronous, and the connects it starts run in its own nursery.
"""

from __future__ import annotations

import logging
import math
from typing import Final, cast

import trio

from ._config import PoolConfig
from ._connector import Connector
from ._describe import describe_key
from ._exceptions import ConnectError
from ._route import KeyTable
from ._state import KeyState, PoolKey, PoolState

__all__ = ["Maintenance"]

logger: Final = logging.getLogger("trio_pool")

_MAX_PASS_FAILURES: Final = 5
_MAX_REFILL_BACKOFF: Final = 30.0
_WARNING_KINDS: Final = ("hit_rate", "busy")
_MIN_HIT_RATE_SAMPLE: Final = 20  # acquires in an interval before its hit rate is judged


class Maintenance:
    """The pool's maintenance task and its synchronous passes.

    Args:
        config: The pool's configuration.
        connector: Opens the warm floor's connections (and runs hand-off connects in
            this task's nursery while it lives).
        keys: The key table (a forgotten key's aliases go with it).
    """

    def __init__(self, config: PoolConfig, connector: Connector, keys: KeyTable) -> None:
        self._config = config
        self._connector = connector
        self._keys = keys
        #: The state machine; set by the pool right after making both.
        self.state: PoolState
        self._scope: trio.CancelScope | None = None
        self._sleep_scope: trio.CancelScope | None = None
        self._next_refill = math.inf
        self._warned: dict[tuple[PoolKey, str], float] = {}
        self._leaks_reported: set[tuple[int, int]] = set()

    def cancel(self) -> None:
        """Stop the task (the pool is closing)."""
        if self._scope is not None:
            self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The supervised background task: eviction, health, warm floor, monitoring.

        Started with ``nursery.start`` in the pool's nursery and cancelled by
        :meth:`aclose`. A full pass (health probes, monitoring, leak checks, dropping
        forgotten keys) runs every ``health_check_interval``; in between, the task also
        wakes exactly at the next idle deadline (``max_idle_time`` after last use, or a
        connection's lifetime) and at the next refill retry, and then only closes what is
        due and refills. So idle connections are closed on time, never up to an interval
        late, and dead ones within one interval.

        Supervision: an unexpected exception in a pass is logged with its traceback; after
        the k-th failure in a row a full pass is retried after ``min(interval, 0.1 * 2**k)``
        seconds. The 5th failure in a row propagates (inside an :class:`ExceptionGroup`)
        out of :func:`open_pool`, cancelling its body, so a broken pool is not hidden.
        """
        state = self.state
        interval = self._config.health_check_interval
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as self._connector.background:
                task_status.started()
                failures = 0
                next_check = trio.current_time() + interval
                while True:
                    wake = min(next_check, state.next_idle_deadline(), self._next_refill)
                    with trio.CancelScope(deadline=wake) as self._sleep_scope:
                        state.wake_at = wake
                        await trio.sleep_forever()
                    state.wake_at = -math.inf
                    self._sleep_scope = None
                    now = trio.current_time()
                    check = now >= next_check
                    if check:
                        next_check = now + interval
                    try:
                        self.run_pass(now, check=check)
                    except Exception:
                        failures += 1
                        logger.exception(
                            "trio_pool maintenance pass failed (%d in a row)", failures
                        )
                        if failures >= _MAX_PASS_FAILURES:
                            raise
                        await trio.sleep(min(interval, 0.1 * 2**failures))
                        next_check = trio.current_time()
                    else:
                        failures = 0

    def wake_by(self, when: float) -> None:
        """Bring the sleeping maintenance task's next wake-up forward to ``when``."""
        self.state.wake_at = when
        if self._sleep_scope is not None:
            self._sleep_scope.deadline = when

    def run_pass(self, now: float, *, check: bool = True) -> None:
        """One synchronous maintenance pass.

        Args:
            now: The current trio time.
            check: A full pass (every ``health_check_interval``): probe every idle
                socket, log monitoring warnings and leaks, forget keys unused for
                ``max_idle_time`` when ``min_size`` is 0. Otherwise only connections due
                by the clock are closed, and the warm floor refilled.
        """
        state = self.state
        state.sweep(now, probe=check)
        if check:
            self._check_leaks(now)
        min_size = self._config.min_size
        next_refill = math.inf
        for key_state in list(state.keys.values()):
            if check:
                self._monitor(key_state, now)
            if min_size:
                if key_state.total < min_size:
                    if now >= key_state.refill_not_before:
                        self._fill(key_state)
                    else:
                        next_refill = min(next_refill, key_state.refill_not_before)
            elif (
                check
                and key_state.is_empty
                and now - key_state.last_active >= self._config.max_idle_time
            ):
                self._drop_key(key_state)
        self._next_refill = next_refill

    def _drop_key(self, key_state: KeyState) -> None:
        """Forget a key nobody used for ``max_idle_time`` (``min_size == 0`` only).

        Its counters stay in the whole-pool totals; ``statistics(host, port)`` starts
        from zero for it when it is used again.
        """
        self._keys.forget(key_state)
        for kind in _WARNING_KINDS:
            self._warned.pop((key_state.key, kind), None)
        self.state.drop_key(key_state)

    def _fill(self, key_state: KeyState) -> None:
        """Start connects (in the pool's nursery) up to the key's ``min_size``.

        ``min_size`` counts every open connection of the key, idle, in use or
        connecting. While the key's host is failing only one connect at a time probes
        it; the first success fills the rest at once. Refills never wait in line and
        never evict: at ``max_size`` or ``max_total`` they are skipped.
        """
        missing = self._config.min_size - key_state.total
        if key_state.refill_failures:
            missing = min(missing, 1 - key_state.connecting)
        background = self._connector.background
        assert background is not None
        for _ in range(missing):
            if not self.state.reserve(key_state):
                break
            background.start_soon(self._refill, key_state)

    async def _refill(self, key_state: KeyState) -> None:
        """One warm-floor connect, in a slot already reserved (it is freed on failure).

        A failure backs the key off for ``0.5 * 2**(n-1)`` seconds after the n-th
        failing round in a row, at most 30 s; connects that fail together count as one
        round (and one log line). Success resets the back-off.
        """
        try:
            await self._connector.connect(key_state, to_idle=True)
        except Exception as exc:
            now = trio.current_time()
            if now < key_state.refill_not_before:
                return  # a sibling connect of the same round failed first
            key_state.refill_failures += 1
            backoff = min(_MAX_REFILL_BACKOFF, 0.5 * 2 ** (key_state.refill_failures - 1))
            key_state.refill_not_before = now + backoff
            self._next_refill = min(self._next_refill, key_state.refill_not_before)
            if key_state.refill_not_before < self.state.wake_at:
                self.wake_by(key_state.refill_not_before)
            logger.warning(
                "refilling %s failed (%s); retrying in %.1f s",
                describe_key(key_state.key),
                exc,
                backoff,
                exc_info=not isinstance(exc, ConnectError),
            )
        else:
            if key_state.refill_failures:
                key_state.refill_failures = 0
                self._fill(key_state)

    def _warn(self, key: PoolKey, kind: str, now: float, message: str, *args: object) -> None:
        """Log a monitoring warning, at most once a minute (or once an interval, if
        longer) per key and kind."""
        period = max(60.0, self._config.health_check_interval)
        last = self._warned.get((key, kind), -math.inf)
        if now - last >= period:
            self._warned[(key, kind)] = now
            logger.warning(message, *args)

    def _monitor(self, state: KeyState, now: float) -> None:
        """Warn about a key whose hit rate over the last interval fell below 0.8 (judged
        only on at least ``_MIN_HIT_RATE_SAMPLE`` acquires in that interval) or whose
        in-use connections exceed 90% of ``max_size``."""
        hits = state.hits - state.monitor_hits
        misses = state.misses - state.monitor_misses
        state.monitor_hits, state.monitor_misses = state.hits, state.misses
        key = describe_key(state.key)
        if hits + misses >= _MIN_HIT_RATE_SAMPLE and hits / (hits + misses) < 0.8:
            self._warn(
                state.key,
                "hit_rate",
                now,
                "hit rate for %s was %.0f%% over the last interval (%d acquires)",
                key,
                100 * hits / (hits + misses),
                hits + misses,
            )
        if state.in_use > 0.9 * self._config.max_size:
            self._warn(
                state.key,
                "busy",
                now,
                "%s has %d of max_size=%d connections in use",
                key,
                state.in_use,
                self._config.max_size,
            )

    def _check_leaks(self, now: float) -> None:
        threshold = self._config.leak_detection_threshold
        borrowed = self.state.borrowed
        if threshold is None or borrowed is None:
            return
        for conn in borrowed:
            token = (id(conn), conn._lease)
            if now - conn.acquired_at > threshold and token not in self._leaks_reported:
                self._leaks_reported.add(token)
                logger.warning(
                    "connection to %s held for %.1f s (leak_detection_threshold"
                    " %.1f s); acquired at:\n%s",
                    describe_key(cast(KeyState, conn._key).key),
                    now - conn.acquired_at,
                    threshold,
                    conn.acquired_by or "(unknown)",
                )
        live = {(id(c), c._lease) for c in borrowed}
        self._leaks_reported &= live
