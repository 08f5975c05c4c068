"""Pool statistics: one frozen snapshot type, computed from the pool's counters."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PoolStatistics"]


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a pool's (or one host's) counters and gauges.

    Counters only grow; gauges are the state at the moment of the snapshot. Whenever no
    connect is in flight, ``connections_created - connections_closed ==
    idle_connections + active_connections``.

    Attributes:
        connections_created: Connections opened successfully.
        connections_closed: Connections closed, for any reason.
        pool_hits: Acquires served by an idle pooled connection (including hand-overs).
        pool_misses: Acquires that had to open a new connection.
        idle_connections: Connections waiting in the pool.
        active_connections: Connections handed out and not yet returned.
        tasks_waiting: Tasks waiting for a connection.
        connecting: Connects in flight (they hold a slot but are not counted as created yet).
        connections_evicted: Closed by the pool itself: idle timeout, lifetime, health, cap.
        connect_failures: Connects that failed or timed out.
        acquire_timeouts: Acquires that raised :class:`~trio_pool.PoolExhausted`.
        tls_handshakes: TLS handshakes completed.
        tls_resumptions: Of those, handshakes that resumed a saved session.
        acquire_wait_count: Acquires that waited in line and were then served.
        acquire_wait_seconds: Total seconds those acquires spent waiting in line.
        waiters_rejected: Acquires that raised :class:`~trio_pool.PoolExhausted` at once
            because ``max_waiters`` tasks were waiting already (not counted in
            ``acquire_timeouts``).
        http2_connections: Open multiplexed (HTTP/2) connections, with streams open
            or not; each is one connection of ``max_size``, counted in
            ``active_connections`` while streams are open and in
            ``idle_connections`` while none is.
        http2_streams: Streams open (or reserved) on them: requests in flight.
        address_connections: Connections per address (``"ip:port"``, IPv6 in
            brackets), open or connecting, of the keys that dial a host name's
            addresses themselves (:doc:`upstreams`), sorted by address; ``dict()``
            it for a mapping. Empty for IP literals, Unix sockets and proxies.
    """

    connections_created: int = 0
    connections_closed: int = 0
    pool_hits: int = 0
    pool_misses: int = 0
    idle_connections: int = 0
    active_connections: int = 0
    tasks_waiting: int = 0
    connecting: int = 0
    connections_evicted: int = 0
    connect_failures: int = 0
    acquire_timeouts: int = 0
    tls_handshakes: int = 0
    tls_resumptions: int = 0
    acquire_wait_count: int = 0
    acquire_wait_seconds: float = 0.0
    waiters_rejected: int = 0
    http2_connections: int = 0
    http2_streams: int = 0
    address_connections: tuple[tuple[str, int], ...] = ()

    @property
    def hit_rate(self) -> float:
        """``pool_hits / (pool_hits + pool_misses)``; 0.0 before any acquire."""
        total = self.pool_hits + self.pool_misses
        return self.pool_hits / total if total else 0.0
