"""Hot path: acquire + release of a warm connection vs the floor trio allows.

The floor is a bare :class:`trio.CapacityLimiter` acquire/release plus a deque pop/append:
one checkpoint and O(1) bookkeeping, which is what a pool hit needs at least. Target:
``pool.acquire`` + ``pool.release`` <= 1.3x the floor. Also shown: the same on a pool
with a no-op ``on_event`` hook (what building and reporting the events costs),
``pool.connection()``, a bare checkpoint, and the synchronous parts alone (bookkeeping,
health probe).

Times are this process's CPU time (``time.process_time``), which a busy shared machine
disturbs far less than wall-clock time; everything here runs in one thread with no I/O.

``python -m benchmarks.bench_hotpath profile`` prints a cProfile of the hot loop.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import trio_pool
from trio_pool._route import Route

from ._common import HOST, echo_server, fmt_us, median, print_table, rounds_of

Measure = Callable[[], Awaitable[float]]


def _variants(
    pool: trio_pool.ConnectionPool, hooked: trio_pool.ConnectionPool, port: int, n: int
) -> dict[str, Measure]:
    limiter = trio.CapacityLimiter(100)
    spare: deque[object] = deque([object()])
    conn = None

    async def floor() -> float:
        acquire, release = limiter.acquire, limiter.release
        pop, append = spare.pop, spare.append
        start = time.process_time()
        for _ in range(n):
            await acquire()
            append(pop())
            release()
        return (time.process_time() - start) / n

    async def acquire_release(on: trio_pool.ConnectionPool = pool) -> float:
        acquire, release = on.acquire, on.release
        start = time.process_time()
        for _ in range(n):
            conn = await acquire(HOST, port)
            release(conn)
        return (time.process_time() - start) / n

    async def acquire_release_hooked() -> float:
        # The same on a pool with an on_event hook that does nothing: the events' cost.
        return await acquire_release(hooked)

    async def context() -> float:
        connection = pool.connection
        start = time.process_time()
        for _ in range(n):
            async with connection(HOST, port):
                pass
        return (time.process_time() - start) / n

    async def checkpoint() -> float:
        cp = trio.lowlevel.checkpoint
        start = time.process_time()
        for _ in range(n):
            await cp()
        return (time.process_time() - start) / n

    async def sync_bookkeeping() -> float:
        # PoolState.take + release alone: no checkpoint, no argument lookup.
        state = pool._state
        key = pool.lookup(Route(HOST, port))
        take, release = state.take, state.release
        now = trio.current_time()
        start = time.process_time()
        for _ in range(n):
            conn = take(key, now)
            release(conn, now)  # type: ignore[arg-type]
        elapsed = (time.process_time() - start) / n
        await trio.lowlevel.checkpoint()
        return elapsed

    async def health_probe() -> float:
        nonlocal conn
        if conn is None:
            conn = await pool.acquire(HOST, port)
            pool.release(conn)
        reusable = conn._reusable
        start = time.process_time()
        for _ in range(n):
            reusable()
        elapsed = (time.process_time() - start) / n
        await trio.lowlevel.checkpoint()
        return elapsed

    return {
        "floor (CapacityLimiter + deque)": floor,
        "pool.acquire + pool.release": acquire_release,
        "the same, on_event hook set": acquire_release_hooked,
        "async with pool.connection()": context,
        "bare checkpoint": checkpoint,
        "sync: PoolState.take + release": sync_bookkeeping,
        "sync: health probe (_reusable)": health_probe,
    }


async def _measure(port: int, rounds: int, n: int) -> dict[str, list[float]]:
    async with (
        trio_pool.open_pool(max_size=10) as pool,
        trio_pool.open_pool(max_size=10, on_event=lambda event: None) as hooked,
    ):
        await pool.prewarm(HOST, port, count=1)
        await hooked.prewarm(HOST, port, count=1)
        variants = _variants(pool, hooked, port, n)
        await rounds_of(1, variants)  # warm up
        return await rounds_of(rounds, variants)


def run(quick: bool = False) -> dict[str, Any]:
    rounds, n = (7, 3_000) if quick else (15, 20_000)
    with echo_server() as [(_, port)]:
        samples = trio.run(_measure, port, rounds, n)
    floor_med = median(samples["floor (CapacityLimiter + deque)"])
    floor_min = min(samples["floor (CapacityLimiter + deque)"])
    results = []
    rows = []
    for name, values in samples.items():
        med, best = median(values), min(values)
        results.append(
            {"variant": name, "median_us": med * 1e6, "min_us": best * 1e6, "samples": len(values)}
        )
        rows.append(
            [name, fmt_us(med), fmt_us(best), f"{med / floor_med:.2f}x", f"{best / floor_min:.2f}x"]
        )
    print_table(
        f"hot path: CPU µs per cycle, {rounds} rounds x {n} cycles"
        " (target: acquire+release <= 1.3x floor)",
        ["variant", "median CPU µs", "min CPU µs", "vs floor (med)", "vs floor (min)"],
        rows,
    )
    pool_med = median(samples["pool.acquire + pool.release"])
    ratios = {
        "acquire_release_vs_floor": pool_med / floor_med,
        "acquire_release_vs_floor_min": min(samples["pool.acquire + pool.release"]) / floor_min,
        "connection_ctx_vs_floor": median(samples["async with pool.connection()"]) / floor_med,
        "hooked_vs_unhooked": median(samples["the same, on_event hook set"]) / pool_med,
    }
    return {
        "name": "hotpath",
        "results": results,
        "ratios": ratios,
        "targets": {"acquire_release_vs_floor": "<= 1.3"},
        "met": {"acquire_release_vs_floor": ratios["acquire_release_vs_floor"] <= 1.3},
    }


def profile(n: int = 200_000) -> None:
    """cProfile the warm acquire/release loop and print the top functions."""
    import cProfile
    import pstats

    async def loop(port: int) -> None:
        async with trio_pool.open_pool(max_size=10) as pool:
            await pool.prewarm(HOST, port, count=1)
            acquire, release = pool.acquire, pool.release
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(n):
                conn = await acquire(HOST, port)
                release(conn)
            profiler.disable()
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(25)

    with echo_server() as [(_, port)]:
        trio.run(loop, port)


if __name__ == "__main__":
    if sys.argv[1:2] == ["profile"]:
        profile()
    else:
        run(quick="--quick" in sys.argv)
