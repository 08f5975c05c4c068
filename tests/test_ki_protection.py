"""Ctrl-C safety (issue 21): ``release``, ``discard`` and the exit of ``connection()``
change the pool's state under trio's KeyboardInterrupt protection, so a Ctrl-C cannot
land between a count and its set. Hooks the state machine calls from inside them
(a waiter's wait observer, the release's health probe) see the protection."""

from __future__ import annotations

import select
from collections.abc import Callable

import trio

import trio_pool
from trio_pool import ConnectionPool, PooledConnection

from .checks import assert_balanced
from .servers import HOST


class ProtectionProbe:
    """Stands in for a connection's ``select.poll`` object: notes, at each poll,
    whether KeyboardInterrupt protection is on."""

    def __init__(self, inner: select.poll) -> None:
        self.inner = inner
        self.seen: list[bool] = []

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        self.seen.append(trio.lowlevel.currently_ki_protected())
        return self.inner.poll(timeout)


def watch_probes(conn: PooledConnection) -> ProtectionProbe:
    probe = ProtectionProbe(conn._poller)
    conn._poller = probe  # type: ignore[assignment]
    return probe


async def served_while(
    pool: ConnectionPool, port: int, give_back: Callable[[PooledConnection], object]
) -> list[bool]:
    """Hold the key's only connection while another task waits for it, give it back
    with ``give_back``, and return what the waiter's wait observer saw."""
    seen: list[bool] = []
    pool.listen(
        lambda event: (
            seen.append(trio.lowlevel.currently_ki_protected())
            if isinstance(event, trio_pool.Waited)
            else None
        )
    )
    conn = await pool.acquire(HOST, port)
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            pool.release(await pool.acquire(HOST, port))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        await give_back(conn)  # type: ignore[misc]
    return seen


async def test_release_and_discard_change_state_protected(echo_port: int) -> None:
    assert not trio.lowlevel.currently_ki_protected()
    async with trio_pool.open_pool(max_size=1) as pool:

        async def release(conn: PooledConnection) -> None:
            pool.release(conn)
            await trio.lowlevel.checkpoint()

        async def discard(conn: PooledConnection) -> None:
            pool.discard(conn)
            await trio.lowlevel.checkpoint()

        assert await served_while(pool, echo_port, release) == [True]
        assert await served_while(pool, echo_port, discard) == [True]
        assert_balanced(pool)


async def test_release_probe_runs_protected(echo_port: int) -> None:
    async with trio_pool.open_pool() as pool:
        conn = await pool.acquire(HOST, echo_port)
        probe = watch_probes(conn)
        pool.release(conn)
        assert probe.seen == [True]


async def test_connection_exit_changes_state_protected(echo_port: int) -> None:
    async with trio_pool.open_pool(max_size=1) as pool:
        async with pool.connection(HOST, echo_port) as conn:
            probe = watch_probes(conn)
        assert probe.seen == [True]  # the exit's release probed it, protected

        async def exit_context(conn: PooledConnection) -> None:
            context = pool.connection(HOST, echo_port)
            context._conn, context._lease = conn, conn._lease
            context._task = trio.lowlevel.current_task()  # as acquire_on records it
            await context.__aexit__(None, None, None)

        assert await served_while(pool, echo_port, exit_context) == [True]
        assert_balanced(pool)
