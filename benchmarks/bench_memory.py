"""Memory: Python heap bytes per idle pooled connection, beyond the socket itself.

With :mod:`tracemalloc` on, measures the heap growth of holding 1,000 connections to an
echo server in its own process:

* baseline: 1,000 bare :class:`trio.SocketStream` (``trio.open_tcp_stream``) in a list;
* pooled: a pool (opened beforehand) prewarmed with 1,000 idle connections.

``(pooled - baseline) / 1000`` is what pooling costs per connection: the
:class:`~trio_pool.PooledConnection`, its ``select.poll`` object and the idle indexes
(allocated by trio_pool's code), plus the stale entries that trio's deadline heap keeps
for the connect timeouts until its next prune (bounded: at most ~1,000 + 2x the live
deadlines, so not really per idle connection). Kernel socket buffers are not Python heap
and are the same either way.
"""

from __future__ import annotations

import gc
import os
import select
import sys
import tracemalloc
from typing import Any

import trio

import trio_pool

from ._common import HOST, echo_server, print_table

CONNECTIONS = 1_000


def _heap() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _measure(port: int, count: int) -> dict[str, float]:
    # Warm everything up once (imports, trio's caches, the pool's code paths).
    async with trio_pool.open_pool(max_size=count) as pool:
        await pool.prewarm(HOST, port, count=10)
    warm = await trio.open_tcp_stream(HOST, port)
    await warm.aclose()

    streams: list[trio.SocketStream] = []

    async def open_one() -> None:
        streams.append(await trio.open_tcp_stream(HOST, port))

    # Twice: the first round grows trio's own structures (run queue) to 1,000 tasks.
    for _ in range(2):
        before = _heap()
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(open_one)
        bare = _heap() - before
        for stream in streams:
            await stream.aclose()
        streams.clear()

    async with trio_pool.open_pool(max_size=count) as pool:
        before = _heap()
        await pool.prewarm(HOST, port, count=count)
        assert pool.statistics().idle_connections == count
        pooled = _heap() - before

    # Again, to attribute the growth to source files (the snapshot itself takes memory).
    async with trio_pool.open_pool(max_size=count) as pool:
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        await pool.prewarm(HOST, port, count=count)
        gc.collect()
        by_pool = sum(
            stat.size_diff
            for stat in tracemalloc.take_snapshot().compare_to(snapshot, "filename")
            if f"{os.sep}trio_pool{os.sep}" in stat.traceback[0].filename
        )
        conn = await pool.acquire(HOST, port)
        conn_size = sys.getsizeof(conn)
        pool.release(conn)

    # One part of the difference on its own: a select.poll object with one fd registered.
    before = _heap()
    pollers = []
    for _ in range(count):
        poller = select.poll()
        poller.register(0, select.POLLIN)
        pollers.append(poller)
    poll_bytes = (_heap() - before) / count
    del pollers
    return {
        "bare_per_conn": bare / count,
        "pooled_per_conn": pooled / count,
        "overhead_per_conn": (pooled - bare) / count,
        "allocated_in_trio_pool_per_conn": by_pool / count,
        "elsewhere_per_conn": (pooled - bare - by_pool) / count,
        "pooled_connection_object": conn_size,
        "poll_object": poll_bytes,
    }


def run(quick: bool = False) -> dict[str, Any]:
    count = CONNECTIONS
    tracemalloc.start()
    try:
        with echo_server() as [(_, port)]:
            measured = trio.run(_measure, port, count)
    finally:
        tracemalloc.stop()
    print_table(
        f"memory: Python heap bytes per connection at {count} idle connections (tracemalloc)",
        ["what", "bytes per connection"],
        [
            ["bare trio.SocketStream (baseline)", f"{measured['bare_per_conn']:,.0f}"],
            ["pooled idle connection (total)", f"{measured['pooled_per_conn']:,.0f}"],
            ["pooling overhead (pooled - bare)", f"{measured['overhead_per_conn']:,.0f}"],
            [
                "  allocated by trio_pool code",
                f"{measured['allocated_in_trio_pool_per_conn']:,.0f}",
            ],
            [
                "  elsewhere (trio's lazily pruned deadline heap)",
                f"{measured['elsewhere_per_conn']:,.0f}",
            ],
            [
                "  PooledConnection object (part of trio_pool's)",
                f"{measured['pooled_connection_object']:,.0f}",
            ],
            ["  select.poll + 1 fd (part of trio_pool's)", f"{measured['poll_object']:,.0f}"],
        ],
    )
    return {
        "name": "memory",
        "results": [{"connections": count, **measured}],
        "ratios": {
            "pooled_vs_bare_bytes": measured["pooled_per_conn"] / measured["bare_per_conn"],
            "overhead_bytes_per_conn": measured["overhead_per_conn"],
        },
    }


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
