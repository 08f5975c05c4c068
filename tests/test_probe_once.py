"""One probe per cycle when a task takes back what it just released (issues 16, 21).

A release probes the connection it pools, and a hand-out probes the connection it takes.
When the same task takes the connection back before its next schedule point (as in a
loop of requests) and within ``FRESH_FOR``, the release's probe stands and the hand-out
does not poll again. The release marks the task with the connection in
``Task.custom_sleep_data``, which trio documents as reset to ``None`` whenever it
reschedules a task: no private attribute of trio. Any schedule point, another task, or
the clock moving on brings the hand-out's own probe back: these tests put real bytes on
the wire between the release and the take to show it, and fail if trio stops resetting
the mark.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from trio_pool import ConnectionPool, PooledConnection
from trio_pool._state import FRESH_FOR

from .checks import assert_balanced, roundtrip
from .servers import HOST, echo, start_server


class CountingPoll:
    """Stands in for a connection's ``select.poll`` object and counts its polls."""

    def __init__(self, inner: select.poll) -> None:
        self.inner = inner
        self.calls = 0

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        self.calls += 1
        return self.inner.poll(timeout)


def count_polls(conn: PooledConnection) -> CountingPoll:
    counter = CountingPoll(conn._poller)
    conn._poller = counter  # type: ignore[assignment]
    return counter


class Peers:
    """An echo server that keeps each accepted socket, so a test can write on it
    synchronously (in the middle of a task step) with a plain socket."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    async def handler(self, stream: trio.SocketStream) -> None:
        self.sockets.append(socket.socket(fileno=os.dup(stream.socket.fileno())))
        await echo(stream)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
async def peers(nursery: trio.Nursery) -> AsyncIterator[tuple[Peers, int]]:
    server = Peers()
    try:
        yield server, await start_server(nursery, server.handler)
    finally:
        server.close()


async def replaced_at_hand_out(pool: ConnectionPool, port: int, dirty: PooledConnection) -> None:
    """Acquire, and get a new connection: the hand-out's probe closed ``dirty``."""
    fresh = await pool.acquire(HOST, port)
    assert fresh is not dirty
    assert dirty.is_closed
    await roundtrip(fresh)  # a clean stream: no JUNK in front of the reply
    pool.release(fresh)
    stats = pool.statistics()
    assert (stats.pool_misses, stats.connections_evicted) == (2, 1)
    assert_balanced(stats)


async def test_same_step_retake_polls_once_per_cycle(echo_port: int, pool: ConnectionPool) -> None:
    conn = await pool.acquire(HOST, echo_port)
    await roundtrip(conn)
    polls = count_polls(conn)
    for cycle in range(1, 4):
        pool.release(conn)  # probed here
        again = await pool.acquire(HOST, echo_port)  # same step: not probed again
        assert again is conn
        assert polls.calls == cycle
        await roundtrip(conn)
    pool.release(conn)
    for _ in range(2):  # connection() too: probed at its exit only
        async with pool.connection(HOST, echo_port) as again:
            assert again is conn
    assert polls.calls == 3 + 3  # one probe per cycle
    stats = pool.statistics()
    assert (stats.pool_hits, stats.pool_misses) == (5, 1)
    assert_balanced(stats)


async def test_a_schedule_point_brings_the_hand_out_probe_back(
    echo_port: int, pool: ConnectionPool
) -> None:
    conn = await pool.acquire(HOST, echo_port)
    await roundtrip(conn)
    polls = count_polls(conn)
    pool.release(conn)
    await trio.lowlevel.checkpoint()
    assert await pool.acquire(HOST, echo_port) is conn
    assert polls.calls == 2  # at release, and again at hand-out
    pool.release(conn)


async def test_bytes_arriving_across_a_schedule_point_are_caught(
    peers: tuple[Peers, int], pool: ConnectionPool
) -> None:
    server, port = peers
    conn = await pool.acquire(HOST, port)
    await roundtrip(conn)
    pool.release(conn)  # clean: pooled
    assert not conn.is_closed
    server.sockets[0].send(b"JUNK")  # on loopback, in the client's socket on return
    await trio.lowlevel.checkpoint()
    await replaced_at_hand_out(pool, port, conn)


async def test_bytes_arriving_across_a_schedule_point_are_caught_by_connection(
    peers: tuple[Peers, int], pool: ConnectionPool
) -> None:
    server, port = peers
    async with pool.connection(HOST, port) as conn:
        await roundtrip(conn)
    assert not conn.is_closed  # pooled by the exit
    server.sockets[0].send(b"JUNK")
    await trio.lowlevel.checkpoint()
    async with pool.connection(HOST, port) as fresh:
        assert fresh is not conn
        assert conn.is_closed
        await roundtrip(fresh)
    assert_balanced(pool)


async def test_another_task_always_probes(peers: tuple[Peers, int], pool: ConnectionPool) -> None:
    server, port = peers
    conn = await pool.acquire(HOST, port)
    await roundtrip(conn)

    # Each in its first step, so both tasks have had as many schedule points (none):
    # only the task tells them apart.
    async def releaser() -> None:
        pool.release(conn)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(releaser)
    server.sockets[0].send(b"JUNK")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(replaced_at_hand_out, pool, port, conn)


async def test_the_clock_moving_on_brings_the_probe_back(
    peers: tuple[Peers, int], mock_clock: trio.testing.MockClock, pool: ConnectionPool
) -> None:
    server, port = peers
    conn = await pool.acquire(HOST, port)
    await roundtrip(conn)
    pool.release(conn)
    server.sockets[0].send(b"JUNK")
    mock_clock.jump(FRESH_FOR)  # no schedule point, but the release's look is old
    await replaced_at_hand_out(pool, port, conn)


async def test_trio_resets_the_mark_at_every_schedule_point() -> None:
    """The contract the skip rests on (trio's docs of ``Task.custom_sleep_data``)."""
    task = trio.lowlevel.current_task()
    task.custom_sleep_data = mark = object()
    assert task.custom_sleep_data is mark
    await trio.lowlevel.cancel_shielded_checkpoint()
    assert task.custom_sleep_data is None
