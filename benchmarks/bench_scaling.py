"""Scaling: acquire + release cost must not grow with hosts, idle connections or waiters.

Each comparison holds two pools side by side and times the same warm acquire + release
cycle on one key of each, rounds interleaved:

* hosts: a pool with 1 host vs one with 2,000 hosts (distinct loopback addresses
  127.0.x.y, each a listener of the echo server process) and 2,000 idle connections;
* idle on the key: 1 idle connection vs 2,000 idle connections on the measured key;
* waiters: 1 vs 1,000 tasks queued on another key of the same pool (``max_size=1``,
  its one connection held).

Target: every ratio <= 1.3 (acquire is O(1)). Times are this process's CPU time, which
other load on the machine disturbs less than wall-clock time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

import trio_pool

from ._common import echo_server, fmt_us, loopback_hosts, median, print_table, rounds_of

HOSTS = 2_000
IDLE = 2_000
WAITERS = 1_000


def _cycle(
    pool: trio_pool.ConnectionPool, host: str, port: int, n: int
) -> Callable[[], Awaitable[float]]:
    async def measure() -> float:
        acquire, release = pool.acquire, pool.release
        start = time.process_time()
        for _ in range(n):
            conn = await acquire(host, port)
            release(conn)
        return (time.process_time() - start) / n

    return measure


async def _prewarm_all(pool: trio_pool.ConnectionPool, addresses: list[tuple[str, int]]) -> None:
    async with trio.open_nursery() as nursery:
        for index in range(0, len(addresses), 100):
            batch = addresses[index : index + 100]

            async def warm(batch: list[tuple[str, int]] = batch) -> None:
                for host, port in batch:
                    await pool.prewarm(host, port, count=1)

            nursery.start_soon(warm)


async def _hold_waiters(
    pool: trio_pool.ConnectionPool,
    host: str,
    port: int,
    count: int,
    nursery: trio.Nursery,
) -> trio_pool.PooledConnection:
    """Hold the key's only connection and queue ``count`` tasks behind it."""
    held = await pool.acquire(host, port)

    async def wait() -> None:
        async with pool.connection(host, port, timeout=None):
            pass

    for _ in range(count):
        nursery.start_soon(wait)
    await trio.testing.wait_all_tasks_blocked()
    assert pool.statistics(host, port).tasks_waiting == count
    return held


async def _measure(
    addresses: list[tuple[str, int]], rounds: int, n: int
) -> dict[str, dict[str, list[float]]]:
    (host, port), (other_host, other_port) = addresses[0], addresses[1]
    samples: dict[str, dict[str, list[float]]] = {}
    async with trio_pool.open_pool(max_size=1) as one, trio_pool.open_pool(max_size=1) as many:
        await one.prewarm(host, port, count=1)
        await _prewarm_all(many, addresses[:HOSTS])
        assert many.statistics().idle_connections == HOSTS
        variants = {
            "1 host": _cycle(one, host, port, n),
            f"{HOSTS} hosts": _cycle(many, host, port, n),
        }
        await rounds_of(1, variants)
        samples["hosts"] = await rounds_of(rounds, variants)

    async with (
        trio_pool.open_pool(max_size=IDLE) as one,
        trio_pool.open_pool(max_size=IDLE) as many,
    ):
        await one.prewarm(host, port, count=1)
        await many.prewarm(host, port, count=IDLE)
        assert many.statistics().idle_connections == IDLE
        variants = {
            "1 idle on key": _cycle(one, host, port, n),
            f"{IDLE} idle on key": _cycle(many, host, port, n),
        }
        await rounds_of(1, variants)
        samples["idle"] = await rounds_of(rounds, variants)

    async with (
        trio.open_nursery() as nursery,
        trio_pool.open_pool(max_size=1, acquire_timeout=None) as one,
        trio_pool.open_pool(max_size=1, acquire_timeout=None) as many,
    ):
        await one.prewarm(host, port, count=1)
        await many.prewarm(host, port, count=1)
        held_one = await _hold_waiters(one, other_host, other_port, 1, nursery)
        held_many = await _hold_waiters(many, other_host, other_port, WAITERS, nursery)
        variants = {
            "1 waiter elsewhere": _cycle(one, host, port, n),
            f"{WAITERS} waiters elsewhere": _cycle(many, host, port, n),
        }
        await rounds_of(1, variants)
        samples["waiters"] = await rounds_of(rounds, variants)
        nursery.cancel_scope.cancel()  # the waiters leave their queue, O(1) each
        one.release(held_one)
        many.release(held_many)
    return samples


def run(quick: bool = False) -> dict[str, Any]:
    rounds, n = (5, 2_000) if quick else (15, 10_000)
    with echo_server(loopback_hosts(HOSTS)) as addresses:
        samples = trio.run(_measure, addresses, rounds, n)
    results = []
    rows = []
    ratios: dict[str, float] = {}
    for dimension, pair in samples.items():
        (_, base), (_, big) = pair.items()
        ratio = median(big) / median(base)
        ratios[f"{dimension}_ratio"] = ratio
        ratios[f"{dimension}_ratio_min"] = min(big) / min(base)
        for name, values in pair.items():
            results.append(
                {
                    "dimension": dimension,
                    "variant": name,
                    "median_us": median(values) * 1e6,
                    "min_us": min(values) * 1e6,
                }
            )
            rows.append(
                [
                    name,
                    fmt_us(median(values)),
                    fmt_us(min(values)),
                    f"{ratio:.2f}x" if values is big else "1.00x",
                ]
            )
    print_table(
        f"scaling: acquire + release CPU µs per cycle, {rounds} rounds x {n} (target: <= 1.3x)",
        ["pool", "median CPU µs", "min CPU µs", "ratio (median)"],
        rows,
    )
    return {
        "name": "scaling",
        "results": results,
        "ratios": ratios,
        "targets": {"hosts_ratio": "<= 1.3", "idle_ratio": "<= 1.3", "waiters_ratio": "<= 1.3"},
        "met": {k: ratios[k] <= 1.3 for k in ("hosts_ratio", "idle_ratio", "waiters_ratio")},
    }


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
