"""The pool's counters, and how :class:`~trio_pool.PoolStatistics` is built from them.

Each :class:`~trio_pool._records.KeyState` counts its own events (the names in
:data:`COUNTERS`); a key dropped after a long idle spell folds its counts into the
pool's ``retired`` totals, so the pool's statistics never go backwards. Gauges (idle,
in use, waiting, connecting, HTTP/2 connections and streams) are read from the key
states at the moment of the snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from ._connection import ConnectionState
from ._records import KeyState
from ._stats import PoolStatistics

__all__ = ["COUNTERS", "build_statistics", "retire", "zero_counters"]

#: The events every key state counts (attributes of :class:`KeyState`).
COUNTERS: Final = (
    "created",
    "closed",
    "hits",
    "misses",
    "evicted",
    "connect_failures",
    "acquire_timeouts",
    "waiters_rejected",
    "tls_handshakes",
    "tls_resumptions",
    "wait_count",
    "wait_seconds",
)


def zero_counters() -> dict[str, float]:
    """Every counter at zero."""
    return dict.fromkeys(COUNTERS, 0)


def retire(totals: dict[str, float], state: KeyState) -> None:
    """Fold the counters of a key state about to be forgotten into ``totals``."""
    for name in COUNTERS:
        totals[name] += getattr(state, name)


def build_statistics(
    states: Iterable[KeyState], retired: dict[str, float] | None = None
) -> PoolStatistics:
    """Sum the counters of ``states`` (and ``retired``, the dropped keys' totals) and
    read their gauges.

    An HTTP/2 connection with no stream open is reported idle, not active.
    """
    totals = zero_counters()
    if retired is not None:
        totals.update(retired)
    idle = in_use = waiting = connecting = multiplexed = streams = 0
    by_address: dict[str, int] = {}
    for state in states:
        retire(totals, state)
        if state.address_counts:
            port = state.key.port
            for address, count in state.address_counts.items():
                ip = address.ip
                name = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
                by_address[name] = by_address.get(name, 0) + count
        idle += len(state.idle)
        in_use += state.in_use
        waiting += state.waiting
        connecting += state.connecting
        if state.shared:
            multiplexed += len(state.shared)
            for conn in state.shared:
                streams += conn.shared.open_streams
                if conn._state is ConnectionState.IDLE:
                    idle += 1
                    in_use -= 1
    return PoolStatistics(
        connections_created=int(totals["created"]),
        connections_closed=int(totals["closed"]),
        pool_hits=int(totals["hits"]),
        pool_misses=int(totals["misses"]),
        idle_connections=idle,
        active_connections=in_use,
        tasks_waiting=waiting,
        connecting=connecting,
        connections_evicted=int(totals["evicted"]),
        connect_failures=int(totals["connect_failures"]),
        acquire_timeouts=int(totals["acquire_timeouts"]),
        tls_handshakes=int(totals["tls_handshakes"]),
        tls_resumptions=int(totals["tls_resumptions"]),
        acquire_wait_count=int(totals["wait_count"]),
        acquire_wait_seconds=float(totals["wait_seconds"]),
        waiters_rejected=int(totals["waiters_rejected"]),
        http2_connections=multiplexed,
        http2_streams=streams,
        address_connections=tuple(sorted(by_address.items())),
    )
