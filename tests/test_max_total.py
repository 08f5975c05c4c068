"""``max_total``: one cap across all hosts (issue 3).

Two echo servers on different 127.0.0.1 ports are the two "hosts" (same host, another
port: another key). At the cap an acquire for a host with nothing idle closes the least
recently used idle connection elsewhere and connects; it waits only when every
connection is in use, and waiters held back by the cap are served first come, first
served whenever any connection anywhere is released or discarded.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

import trio_pool
from trio_pool import ConnectionPool, PooledConnection, PoolExhausted

from .servers import HOST, echo, start_server


@pytest.fixture
async def port_b(nursery: trio.Nursery) -> int:
    """A second echo server: another "host" for the pool."""
    return await start_server(nursery, echo)


def check_books(pool: ConnectionPool) -> None:
    """The pool's own counts agree with each other and with the statistics."""
    state = pool._state
    stats = pool.statistics()
    assert stats.connections_created - stats.connections_closed == (
        stats.idle_connections + stats.active_connections
    )
    assert state.total == sum(k.total for k in state.keys.values())
    assert len(state.idle_lru) == stats.idle_connections
    assert stats.tasks_waiting == sum(len(k.waiters) for k in state.keys.values()) + len(
        state.global_waiters
    )


async def test_full_of_idle_host_a_serves_host_b_without_waiting(
    echo_port: int, port_b: int
) -> None:
    async with trio_pool.open_pool(max_total=4, max_size=10) as pool:
        held = [await pool.acquire(HOST, echo_port) for _ in range(4)]
        for conn in held:  # held[0] becomes the least recently used
            pool.release(conn)
        assert pool.statistics().idle_connections == 4
        conn_b = await pool.acquire(HOST, port_b, timeout=0)  # would raise if it had to wait
        await conn_b.send_all(b"b")
        assert await conn_b.receive_some() == b"b"
        assert held[0].is_closed
        assert not any(c.is_closed for c in held[1:])
        a, b = pool.statistics(HOST, echo_port), pool.statistics(HOST, port_b)
        assert (a.idle_connections, a.connections_evicted) == (3, 1)
        assert (b.active_connections, b.pool_misses) == (1, 1)
        assert pool._state.total == 4
        pool.release(conn_b)
        check_books(pool)


async def test_waits_only_when_every_connection_is_in_use(echo_port: int, port_b: int) -> None:
    async with trio_pool.open_pool(max_total=2, max_size=10) as pool:
        held = [await pool.acquire(HOST, echo_port) for _ in range(2)]
        with pytest.raises(PoolExhausted):
            await pool.acquire(HOST, port_b, timeout=0)
        with pytest.raises(PoolExhausted):
            await pool.acquire(HOST, echo_port, timeout=0)  # A has room, the pool has not
        assert pool.statistics().acquire_timeouts == 2
        for conn in held:
            pool.release(conn)
        check_books(pool)


async def test_cap_waiters_served_fifo_on_release_and_discard(
    nursery: trio.Nursery, echo_port: int, port_b: int
) -> None:
    port_c = await start_server(nursery, echo)
    served: list[tuple[str, PooledConnection]] = []
    async with trio_pool.open_pool(max_total=2, max_size=10) as pool:
        a1 = await pool.acquire(HOST, echo_port)
        a2 = await pool.acquire(HOST, echo_port)

        async def wait_for(name: str, port: int) -> None:
            served.append((name, await pool.acquire(HOST, port)))

        async with trio.open_nursery() as waiters:
            for name, port in (("b1", port_b), ("c1", port_c), ("b2", port_b)):
                waiters.start_soon(wait_for, name, port)
                await trio.testing.wait_all_tasks_blocked()
            assert pool.statistics().tasks_waiting == 3
            check_books(pool)

            pool.release(a1)  # goes idle, is the LRU, makes room for b1
            await trio.testing.wait_all_tasks_blocked()
            assert [name for name, _ in served] == ["b1"]
            assert a1.is_closed

            pool.discard(a2)  # frees a slot: c1, not b2
            await trio.testing.wait_all_tasks_blocked()
            assert [name for name, _ in served] == ["b1", "c1"]

            b1 = served[0][1]
            pool.release(b1)  # b2 waits for the same key: handed over, no connect
            await trio.testing.wait_all_tasks_blocked()
        assert [name for name, _ in served] == ["b1", "c1", "b2"]
        b2 = served[2][1]
        assert b2 is b1
        assert b2.reused
        stats = pool.statistics()
        assert stats.connections_created == 4  # a1, a2, b1, c1
        assert stats.tasks_waiting == 0
        assert stats.acquire_wait_count == 3
        for _, conn in served[1:]:
            pool.release(conn)
        check_books(pool)


async def test_cap_waiter_of_the_same_key_gets_the_released_connection(echo_port: int) -> None:
    async with trio_pool.open_pool(max_total=2, max_size=5) as pool:
        a1 = await pool.acquire(HOST, echo_port)
        a2 = await pool.acquire(HOST, echo_port)
        got: list[PooledConnection] = []

        async def third() -> None:
            got.append(await pool.acquire(HOST, echo_port))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(third)
            await trio.testing.wait_all_tasks_blocked()
            assert len(pool._state.global_waiters) == 1  # the key had room, the pool not
            pool.release(a1)
        assert got == [a1]
        stats = pool.statistics()
        assert (stats.connections_created, stats.connections_evicted) == (2, 0)
        assert (stats.pool_hits, stats.pool_misses) == (1, 2)
        pool.release(a1)
        pool.release(a2)
        check_books(pool)


async def test_cancelled_cap_waiter_leaves_no_trace(echo_port: int, port_b: int) -> None:
    async with trio_pool.open_pool(max_total=1) as pool:
        a = await pool.acquire(HOST, echo_port)
        with trio.move_on_after(0.05) as scope:
            await pool.acquire(HOST, port_b, timeout=None)
        assert scope.cancelled_caught
        assert not pool._state.global_waiters
        assert pool.statistics().tasks_waiting == 0
        pool.release(a)
        assert not a.is_closed  # nobody waits: pooled, not evicted for a ghost
        assert pool.statistics().idle_connections == 1
        check_books(pool)


async def test_acquire_timeout_at_the_cap(
    echo_port: int, port_b: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio_pool.open_pool(max_total=1, acquire_timeout=3.0) as pool:
        a = await pool.acquire(HOST, echo_port)
        start = trio.current_time()
        with pytest.raises(PoolExhausted):
            await pool.acquire(HOST, port_b)
        assert trio.current_time() - start == 3.0
        assert not pool._state.global_waiters
        pool.release(a)
        check_books(pool)


async def test_refill_never_breaks_or_waits_for_the_cap(
    echo_port: int, port_b: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio_pool.open_pool(
        min_size=2, max_total=3, max_idle_time=1000.0, health_check_interval=5.0
    ) as pool:
        assert await pool.prewarm(HOST, echo_port) == 2
        pool.release(await pool.acquire(HOST, port_b))
        await trio.sleep(50.0)
        stats = pool.statistics()
        assert stats.idle_connections == 3  # B stays below its floor: the cap wins
        assert stats.connections_evicted == 0  # refills never steal
        assert stats.tasks_waiting == 0
        # A real acquire still gets through by taking the LRU idle connection.
        conn = await pool.acquire(HOST, port_b, timeout=0)
        assert pool.statistics().connections_evicted == 0  # B's own idle one: a hit
        assert conn.reused
        pool.release(conn)
        check_books(pool)


async def test_random_mix_keeps_the_books_and_the_cap(nursery: trio.Nursery) -> None:
    ports = [await start_server(nursery, echo) for _ in range(3)]
    rng = random.Random(3)
    peak = 0
    async with trio_pool.open_pool(max_total=5, max_size=3, acquire_timeout=None) as pool:

        async def client(i: int) -> None:
            nonlocal peak
            port = rng.choice(ports)
            with trio.move_on_after(rng.choice([0.002, 0.01, 1.0, 5.0])):
                async with pool.connection(HOST, port) as conn:
                    peak = max(peak, pool._state.total)
                    await conn.send_all(b"x")
                    assert await conn.receive_some() == b"x"
                    await trio.sleep(rng.random() * 0.01)
                    if i % 7 == 0:
                        pool.discard(conn)

        async with trio.open_nursery() as clients:
            for i in range(150):
                clients.start_soon(client, i)
        assert peak == 5  # the cap was reached, never passed
        stats = pool.statistics()
        assert (stats.active_connections, stats.tasks_waiting) == (0, 0)
        assert pool._state.total == stats.idle_connections <= 5
        check_books(pool)
        # Every slot is usable again.
        conns = [await pool.acquire(HOST, ports[i % 3], timeout=0) for i in range(5)]
        for conn in conns:
            pool.release(conn)
