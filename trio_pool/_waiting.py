"""Waiting in line: the one place an acquire sleeps until the state machine serves it.

A waiter is parked with :func:`trio.lowlevel.wait_task_rescheduled`; whoever frees
what it waits for (a release, a discard, a connect) grants it synchronously with
:func:`trio.lowlevel.reschedule` (see :class:`~trio_pool._state.Waiter`).
"""

from __future__ import annotations

import math
from typing import Any

import trio

from ._events import AcquireTimedOut, Queued
from ._exceptions import PoolExhausted
from ._state import CONNECT, Grant, KeyState, PoolState, Waiter

__all__ = ["wait_in_line"]


async def wait_in_line(
    pool_state: PoolState,
    state: KeyState,
    now: float,
    timeout: float | None,
    new: bool,
    connect_timeout: float | None,
    *,
    handoff: bool,
) -> Grant:
    """Wait in line: for a free slot or connection (the key or pool is full), or as
    a hand-off waiter for whichever comes first, a released connection of the key
    or a connect started for it."""
    if handoff:
        if timeout is not None and timeout <= 0:
            # Fail-fast callers keep the plain miss: they connect themselves.
            pool_state.connect_now(state)
            return CONNECT
    else:
        max_waiters = pool_state.config.max_waiters
        if max_waiters is not None and state.line >= max_waiters:
            pool_state.reject(state)
            if pool_state.on_event is not None:
                pool_state.on_event(AcquireTimedOut(state.key, now, 0.0, "line_full"))
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise PoolExhausted(
                f"the line for {state.key.host}:{state.key.port} is full:"
                f" {state.line} tasks wait already (max_waiters={max_waiters})"
            )
        if timeout is not None and timeout <= 0:
            state.acquire_timeouts += 1
            if pool_state.on_event is not None:
                pool_state.on_event(AcquireTimedOut(state.key, now, 0.0, "fail_fast"))
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise PoolExhausted(f"no connection to {state.key.host}:{state.key.port} is free")
    scope = trio.CancelScope(deadline=math.inf if timeout is None else now + timeout)
    waiter = Waiter(state, now, new, handoff=handoff, connect_timeout=connect_timeout, scope=scope)
    pool_state.enqueue(waiter, now)
    if not handoff and pool_state.on_event is not None:
        pool_state.on_event(Queued(state.key, now, state.line))

    def abort(_: Any) -> trio.lowlevel.Abort:
        pool_state.cancel_wait(waiter, timed_out=False)
        return trio.lowlevel.Abort.SUCCEEDED

    with scope:
        grant: Grant = await trio.lowlevel.wait_task_rescheduled(abort)
        return grant
    state.acquire_timeouts += 1
    if pool_state.on_event is not None:
        end = trio.current_time()
        pool_state.on_event(AcquireTimedOut(state.key, end, end - now, "timeout"))
    raise PoolExhausted(
        f"no connection to {state.key.host}:{state.key.port} became free within {timeout} s"
    )
