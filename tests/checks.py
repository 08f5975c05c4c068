"""Assertions and small I/O helpers shared by the test modules."""

from __future__ import annotations

import trio

from trio_pool import ConnectionPool, PooledConnection, PoolEvent, PoolStatistics


def _stats(subject: ConnectionPool | PoolStatistics) -> PoolStatistics:
    return subject.statistics() if isinstance(subject, ConnectionPool) else subject


def assert_balanced(subject: ConnectionPool | PoolStatistics) -> None:
    """No connect in flight, and created - closed == idle + active."""
    stats = _stats(subject)
    assert stats.connecting == 0, stats
    assert (
        stats.connections_created - stats.connections_closed
        == stats.idle_connections + stats.active_connections
    ), stats


def assert_settled(subject: ConnectionPool | PoolStatistics) -> None:
    """Nothing borrowed, nobody waiting, nothing connecting, and the books balance."""
    stats = _stats(subject)
    assert (stats.active_connections, stats.tasks_waiting) == (0, 0), stats
    assert_balanced(stats)


async def settle_connects(pool: ConnectionPool) -> None:
    """Wait (bounded) until no connect is in flight: hand-off connects run on their own
    in the pool's nursery and may outlive the tasks they were started for."""
    for _ in range(1000):
        if pool.statistics().connecting == 0:
            return
        await trio.sleep(0.005)
    raise AssertionError(f"connects still in flight: {pool.statistics()}")  # pragma: no cover


async def roundtrip(conn: PooledConnection, message: bytes = b"ping") -> None:
    """Send ``message`` to an echo server and read all of it back."""
    await conn.send_all(message)
    received = b""
    while len(received) < len(message):
        data = await conn.receive_some(len(message) - len(received))
        assert data, "server closed early"
        received += data
    assert received == message


class Recorder:
    """An ``on_event`` hook that keeps every event."""

    def __init__(self) -> None:
        self.events: list[PoolEvent] = []

    def __call__(self, event: PoolEvent) -> None:
        self.events.append(event)

    def of(self, kind: type[PoolEvent]) -> list[PoolEvent]:
        return [event for event in self.events if type(event) is kind]

    def kinds(self) -> list[str]:
        return [type(event).__name__ for event in self.events]

    def take(self) -> list[str]:
        kinds = self.kinds()
        self.events.clear()
        return kinds
