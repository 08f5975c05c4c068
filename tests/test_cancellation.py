"""Cancellation at any await inside acquire, ``connection()`` or a connect leaks nothing:
no slot, no socket, no place in line."""

from __future__ import annotations

import math
import random

import pytest
import trio
import trio.testing

import trio_pool
from trio_pool import ConnectionPool, ConnectionState, PooledConnection, PoolExhausted

from .checks import assert_settled, roundtrip, settle_connects
from .servers import HOST, open_fds, start_server

MAX_SIZE = 3


async def slow_echo(stream: trio.SocketStream) -> None:
    """Echo each message after a short random delay."""
    try:
        async for data in stream:
            await trio.sleep(random.uniform(0.0, 0.01))
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def assert_serves_max_size_at_once(pool: ConnectionPool, port: int) -> None:
    holders = [await pool.acquire(HOST, port, timeout=0) for _ in range(MAX_SIZE)]
    assert len({id(c) for c in holders}) == MAX_SIZE
    with pytest.raises(PoolExhausted):
        await pool.acquire(HOST, port, timeout=0)
    for conn in holders:
        await roundtrip(conn, b"still fine")
    for conn in holders:
        pool.release(conn)
    assert_settled(pool.statistics())


@pytest.mark.parametrize("max_connecting", [None, 1, 4])
@pytest.mark.parametrize("seed", [1, 2])
async def test_200_randomly_cancelled_tasks_leak_nothing(
    seed: int, max_connecting: int | None
) -> None:
    """The proof of issue 2: 200 tasks, each under a random ``move_on_after``, against
    ``max_size=3`` and a slow server, in every style of borrowing. Cancels land while
    waiting in line, connecting, being handed a connection, and mid-conversation; with
    hand-off (``max_connecting``), also while waiting for a connect started for the task
    (which then goes to another waiter or to idle)."""
    rng = random.Random(seed)
    fds_before = open_fds()
    outcomes = {"done": 0, "exhausted": 0, "cancelled waiting": 0, "cancelled holding": 0}
    async with trio.open_nursery() as server_nursery:
        port = await start_server(server_nursery, slow_echo)
        async with trio_pool.open_pool(
            max_size=MAX_SIZE, acquire_timeout=None, max_connecting=max_connecting
        ) as pool:

            async def with_context(phase: list[str]) -> None:
                async with pool.connection(HOST, port) as conn:
                    phase.append("holding")
                    await roundtrip(conn)

            async def with_acquire(phase: list[str], timeout: float | None = None) -> None:
                conn = await pool.acquire(HOST, port, timeout=timeout)
                try:
                    phase.append("holding")
                    await roundtrip(conn)
                finally:
                    pool.release(conn)

            async def with_new(phase: list[str]) -> None:
                conn = await pool.acquire_new(HOST, port)
                try:
                    phase.append("holding")
                    await roundtrip(conn)
                finally:
                    pool.discard(conn)

            async def worker(i: int, delay: float, deadline: float) -> None:
                await trio.sleep(delay)
                phase = ["waiting"]
                with trio.move_on_after(deadline) as scope:
                    try:
                        if i % 4 == 0:
                            await with_context(phase)
                        elif i % 8 == 2:
                            await with_acquire(phase, timeout=deadline / 2)
                        elif i % 8 == 6:
                            await with_new(phase)
                        else:
                            await with_acquire(phase)
                    except PoolExhausted:
                        outcomes["exhausted"] += 1
                        return
                outcomes[f"cancelled {phase[-1]}" if scope.cancelled_caught else "done"] += 1

            async with trio.open_nursery() as nursery:
                for i in range(200):
                    delay = rng.choice([0.0, rng.uniform(0.0, 0.25), rng.uniform(0.0, 0.25)])
                    # every tenth task is never cancelled, so some are surely served
                    deadline = math.inf if i % 10 == 9 else rng.uniform(0.0, 0.02)
                    nursery.start_soon(worker, i, delay, deadline)

            assert sum(outcomes.values()) == 200, outcomes
            assert outcomes["done"] >= 20, outcomes
            assert outcomes["cancelled waiting"] > 0, outcomes
            assert outcomes["cancelled holding"] > 0, outcomes
            await settle_connects(pool)
            stats = pool.statistics()
            assert_settled(stats)
            assert stats.idle_connections <= MAX_SIZE
            assert stats.pool_hits + stats.pool_misses >= outcomes["done"]
            await assert_serves_max_size_at_once(pool, port)
        server_nursery.cancel_scope.cancel()
    assert pool.statistics().idle_connections == 0
    assert open_fds() == fds_before


# -- targeted -----------------------------------------------------------------------


async def park_waiters(
    pool: ConnectionPool, port: int, nursery: trio.Nursery, *names: str
) -> tuple[dict[str, PooledConnection], dict[str, trio.CancelScope]]:
    """Start one acquiring task per name, in order, each in its own cancel scope, and
    return once all are parked: what each got, and the scope to cancel each with."""
    got: dict[str, PooledConnection] = {}
    scopes: dict[str, trio.CancelScope] = {}

    async def waiter(name: str) -> None:
        with trio.CancelScope() as scopes[name]:
            got[name] = await pool.acquire(HOST, port)

    for name in names:
        nursery.start_soon(waiter, name)
        await trio.testing.wait_all_tasks_blocked()
    return got, scopes


async def test_cancel_while_waiting_leaves_the_line(echo_port: int, nursery: trio.Nursery) -> None:
    async with trio_pool.open_pool(max_size=1, acquire_timeout=None) as pool:
        conn = await pool.acquire(HOST, echo_port)
        got, scopes = await park_waiters(pool, echo_port, nursery, "first", "second")
        assert pool.statistics().tasks_waiting == 2
        scopes["first"].cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().tasks_waiting == 1
        pool.release(conn)
        await trio.testing.wait_all_tasks_blocked()
        assert got == {"second": conn}
        assert scopes["first"].cancelled_caught
        pool.release(conn)
        stats = pool.statistics()
        assert (stats.idle_connections, stats.acquire_timeouts, stats.acquire_wait_count) == (
            1,
            0,
            1,
        )
        assert_settled(stats)


async def test_cancel_while_waiting_in_connection_context(
    echo_port: int, nursery: trio.Nursery
) -> None:
    async with trio_pool.open_pool(max_size=1, acquire_timeout=None) as pool:
        conn = await pool.acquire(HOST, echo_port)
        entered = []
        with trio.move_on_after(0.05) as scope:  # real time: the wait has nothing in flight
            async with pool.connection(HOST, echo_port):
                entered.append(True)  # pragma: no cover
        assert scope.cancelled_caught
        assert entered == []
        assert pool.statistics().tasks_waiting == 0
        pool.release(conn)
        assert_settled(pool.statistics())
        assert pool.statistics().idle_connections == 1


async def test_connection_context_hit_is_a_checkpoint(echo_port: int) -> None:
    # connection()'s enter has the hit path of acquire inlined: it must keep both halves
    # of the checkpoint (cancelled before taking anything, and a schedule point on a hit).
    async with trio_pool.open_pool() as pool:
        await pool.prewarm(HOST, echo_port, count=1)
        with trio.CancelScope() as scope:
            scope.cancel()
            async with pool.connection(HOST, echo_port):
                raise AssertionError("entered in a cancelled scope")  # pragma: no cover
        assert scope.cancelled_caught
        stats = pool.statistics()
        assert (stats.idle_connections, stats.active_connections, stats.pool_hits) == (1, 0, 0)
        with trio.testing.assert_checkpoints():
            async with pool.connection(HOST, echo_port) as conn:
                pass
        assert conn.state is ConnectionState.IDLE
        assert pool.statistics().pool_hits == 1
        assert_settled(pool.statistics())


async def test_cancel_during_connect_frees_the_slot(
    hanging_port: int, nursery: trio.Nursery
) -> None:
    fds_before = open_fds()
    # Tied connects (max_connecting=None): the connect runs in the acquiring task.
    # tests/test_handoff.py covers the hand-off connect that outlives its requester.
    async with trio_pool.open_pool(max_size=1, acquire_timeout=None, max_connecting=None) as pool:
        scopes: dict[str, trio.CancelScope] = {}

        async def attempt(name: str) -> None:
            with trio.CancelScope() as scopes[name]:
                await pool.acquire(HOST, hanging_port)

        nursery.start_soon(attempt, "connecting")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(attempt, "waiting")
        await trio.testing.wait_all_tasks_blocked()
        stats = pool.statistics()
        assert (stats.connecting, stats.tasks_waiting) == (1, 1)
        assert open_fds() == fds_before + 1
        scopes["connecting"].cancel()
        await trio.testing.wait_all_tasks_blocked()
        # The slot went straight to the waiter, which is connecting now.
        stats = pool.statistics()
        assert (stats.connecting, stats.tasks_waiting) == (1, 0)
        assert stats.connect_failures == 0  # a cancelled connect is no failure
        assert open_fds() == fds_before + 1
        scopes["waiting"].cancel()
        await trio.testing.wait_all_tasks_blocked()
        stats = pool.statistics()
        assert_settled(stats)
        assert (stats.connect_failures, stats.connections_created) == (0, 0)
        assert open_fds() == fds_before


@pytest.mark.parametrize("style", ["acquire", "connection"])
async def test_cancel_right_after_hand_over_loses_nothing(
    echo_port: int, nursery: trio.Nursery, style: str
) -> None:
    async with trio_pool.open_pool(max_size=1, acquire_timeout=None) as pool:
        conn = await pool.acquire(HOST, echo_port)
        got: list[PooledConnection] = []
        scope = trio.CancelScope()

        async def waiter() -> None:
            with scope:
                if style == "acquire":
                    mine = await pool.acquire(HOST, echo_port)
                    got.append(mine)
                    try:
                        await trio.sleep_forever()
                    finally:
                        pool.release(mine)
                else:
                    async with pool.connection(HOST, echo_port) as mine:
                        got.append(mine)
                        await trio.sleep_forever()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        pool.release(conn)  # handed over: the waiter is rescheduled holding it ...
        scope.cancel()  # ... and cancelled before it ever ran again
        await trio.testing.wait_all_tasks_blocked()
        assert got == [conn]  # the task did get it
        stats = pool.statistics()
        assert_settled(stats)
        if style == "acquire":  # released in the finally: back in the pool
            assert conn.state is trio_pool.ConnectionState.IDLE
            assert stats.idle_connections == 1
        else:  # the context discards on Cancelled
            assert conn.is_closed
            assert stats.connections_closed == 1


async def test_waiter_granted_a_slot_then_cancelled_passes_it_on(
    echo_port: int, nursery: trio.Nursery
) -> None:
    # Tied connects: the granted slot passes on. With hand-off the connect itself passes
    # on (tests/test_handoff.py).
    async with trio_pool.open_pool(max_size=1, acquire_timeout=None, max_connecting=None) as pool:
        conn = await pool.acquire(HOST, echo_port)
        got, scopes = await park_waiters(pool, echo_port, nursery, "first", "second")
        pool.discard(conn)  # frees the slot: "first" is granted a connect in it ...
        stats = pool.statistics()
        assert (stats.connecting, stats.tasks_waiting) == (1, 1)
        scopes["first"].cancel()  # ... and cancelled before it started connecting
        await trio.testing.wait_all_tasks_blocked()
        assert list(got) == ["second"]
        assert scopes["first"].cancelled_caught
        assert not got["second"].reused
        await roundtrip(got["second"])
        pool.release(got["second"])
        stats = pool.statistics()
        assert_settled(stats)
        assert (stats.connections_created, stats.connect_failures) == (2, 0)
        assert stats.idle_connections == 1


async def test_cancelled_before_acquire_takes_nothing(echo_port: int) -> None:
    async with trio_pool.open_pool() as pool:
        conn = await pool.acquire(HOST, echo_port)
        pool.release(conn)
        with trio.CancelScope() as scope:
            scope.cancel()
            await pool.acquire(HOST, echo_port)  # an idle one is there: still a checkpoint
        assert scope.cancelled_caught
        with trio.CancelScope() as scope:
            scope.cancel()
            await pool.acquire_new(HOST, echo_port)
        assert scope.cancelled_caught
        stats = pool.statistics()
        assert (stats.pool_hits, stats.pool_misses, stats.idle_connections) == (0, 1, 1)
        assert_settled(stats)


async def test_hand_over_wins_against_an_expiring_wait(
    echo_port: int, mock_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """Deadline passed and connection released in the same tick: the waiter was
    rescheduled with the connection first, so it gets it (no PoolExhausted, no loss)."""
    async with trio_pool.open_pool(max_size=1) as pool:
        conn = await pool.acquire(HOST, echo_port)
        result: list[object] = []

        async def waiter() -> None:
            try:
                result.append(await pool.acquire(HOST, echo_port, timeout=1.0))
            except PoolExhausted as exc:  # pragma: no cover - the bug this guards against
                result.append(exc)

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(1.0)
        pool.release(conn)
        await trio.testing.wait_all_tasks_blocked()
        assert result == [conn]
        stats = pool.statistics()
        assert (stats.active_connections, stats.acquire_timeouts, stats.tasks_waiting) == (1, 0, 0)
        pool.release(conn)
        assert_settled(pool.statistics())


async def test_cancelled_prewarm_frees_every_slot(hanging_port: int) -> None:
    fds_before = open_fds()
    async with trio_pool.open_pool(max_size=5) as pool:
        with trio.move_on_after(0.05) as scope:  # real time: the connects hang
            await pool.prewarm(HOST, hanging_port, count=3)
        assert scope.cancelled_caught
        stats = pool.statistics()
        assert_settled(stats)
        assert (stats.connect_failures, stats.connections_created) == (0, 0)
        assert open_fds() == fds_before
