"""Leaks (issue 7): file descriptors and memory stay flat over many pools and acquires.

Each test runs its loop twice as long as it measures: the first half warms every cache
(trio's, the ssl module's, the interpreter's), and the second half must then add
(almost) nothing. ``ResourceWarning`` is an error in this suite (``filterwarnings =
error``), so an unclosed socket fails the test on its own.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator

import pytest
import trio
import trio.testing

import trio_pool

from .servers import HOST, echo, open_fds, start_server

# A leak of one small object per iteration shows up as >= 500 * ~100 bytes in the second
# half; normal noise (free lists, interned strings, hypothesis-free test) stays far below.
_MEMORY_TOLERANCE = 32 * 1024


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


async def settle(clock: trio.testing.MockClock) -> tuple[int, int]:
    """Let every deadline pass, then count open fds and traced memory.

    trio keeps up to ~1,000 expired-in-advance deadline entries of exited cancel scopes
    in a heap until they come due or are pruned (bounded, but enough to look like a
    leak of ~70 KB); jumping the clock past them all empties it at each measurement.
    The pool's maintenance runs too, so idle connections are evicted on both sides.
    """
    clock.jump(10_000)
    await trio.testing.wait_all_tasks_blocked()
    gc.collect()
    return open_fds(), tracemalloc.get_traced_memory()[0]


async def test_open_close_pools_1000_times(
    nursery: trio.Nursery, traced: None, mock_clock: trio.testing.MockClock
) -> None:
    ports = [await start_server(nursery, echo) for _ in range(2)]
    fds: list[int] = []
    memory: list[int] = []
    for i in range(1000):
        leftover = None
        async with trio_pool.open_pool(max_size=2) as pool:
            if i % 4 == 0:  # every 4th pool connects; the 3rd of those outlives the pool
                conn = await pool.acquire(HOST, ports[i % 2])
                await conn.send_all(b"x")
                assert await conn.receive_some() == b"x"
                pool.release(conn)
                if i % 12 == 0:
                    leftover = await pool.acquire_new(HOST, ports[i % 2])
        if leftover is not None:
            pool.release(leftover)  # the pool is closed: it closes the connection
            assert leftover.is_closed
        if i in (499, 999):
            fd_count, traced_bytes = await settle(mock_clock)
            fds.append(fd_count)
            memory.append(traced_bytes)
    assert fds[1] == fds[0], f"{fds[1] - fds[0]} fds more after 500 more pools"
    growth = memory[1] - memory[0]
    print(f"1,000 pools: fds {fds}, traced memory {memory} (second half: {growth:+} bytes)")
    assert growth < _MEMORY_TOLERANCE, f"memory grew {growth} bytes over 500 pools"


async def test_10000_acquires(
    nursery: trio.Nursery, traced: None, mock_clock: trio.testing.MockClock
) -> None:
    """Hits, misses, discards, acquire_new, waits and cancelled waits on 4 hosts."""
    ports = [await start_server(nursery, echo) for _ in range(4)]
    fds: list[int] = []
    memory: list[int] = []
    async with trio_pool.open_pool(max_size=2, max_total=6) as pool:
        for i in range(10_000):
            port = ports[i % 4]
            kind = i % 50  # 80% plain hits, 14% with I/O, 2% each of the rest
            if kind < 40:
                conn = await pool.acquire(HOST, port)
                pool.release(conn)
            elif kind < 48:
                async with pool.connection(HOST, port) as conn:
                    await conn.send_all(b"y")
                    assert await conn.receive_some() == b"y"
                    if kind == 47:
                        pool.discard(conn)
            elif kind == 48:
                conn = await pool.acquire_new(HOST, port)
                pool.release(conn)
            else:
                # The key is full: one task fails fast, one is cancelled while waiting,
                # and the next in line is served by a release.
                held = [await pool.acquire(HOST, port) for _ in range(2)]
                with pytest.raises(trio_pool.PoolExhausted):
                    await pool.acquire(HOST, port, timeout=0)
                got: list[trio_pool.PooledConnection] = []
                doomed = trio.CancelScope()

                async def waiter(scope: trio.CancelScope) -> None:
                    with scope:
                        got.append(await pool.acquire(HOST, port, timeout=None))  # noqa: B023

                async with trio.open_nursery() as waiters:
                    waiters.start_soon(waiter, doomed)
                    waiters.start_soon(waiter, trio.CancelScope())
                    await trio.testing.wait_all_tasks_blocked()
                    assert pool.statistics().tasks_waiting == 2
                    doomed.cancel()  # the first in line gives up while waiting
                    await trio.testing.wait_all_tasks_blocked()
                    assert pool.statistics().tasks_waiting == 1
                    pool.release(held.pop())
                assert len(got) == 1
                assert got[0].reused  # handed straight over
                pool.release(got[0])
                pool.release(held.pop())
            if i in (4999, 9999):
                fd_count, traced_bytes = await settle(mock_clock)
                assert pool.statistics().idle_connections == 0  # all evicted: idle too long
                fds.append(fd_count)
                memory.append(traced_bytes)
    stats = pool.statistics()
    assert stats.connections_created - stats.connections_closed == stats.idle_connections
    assert fds[1] == fds[0], f"{fds[1] - fds[0]} fds more after 5,000 more acquires"
    growth = memory[1] - memory[0]
    print(f"10,000 acquires: fds {fds}, traced memory {memory} (second half: {growth:+} bytes)")
    assert growth < _MEMORY_TOLERANCE, f"memory grew {growth} bytes over 5,000 acquires"
