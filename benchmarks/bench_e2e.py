"""End-to-end: request throughput through ``pool.connection()`` vs dedicated connections.

A request is 16 bytes sent and the 16-byte echo read back over a keep-alive socket, to an
echo server in its own process. At concurrency C, C tasks loop for a fixed time:

* baseline: each task owns one persistent :class:`trio.SocketStream` (C streams);
* floor: the same C streams behind a bare :class:`trio.CapacityLimiter` + deque, taken
  and put back per request: the least a trio-conventional pool can cost (the same
  checkpoint, O(1) bookkeeping, no health check);
* pooled: each request borrows through ``async with pool.connection(...)`` from a pool
  of ``max_size=C`` prewarmed connections.

Targets: pooled / dedicated >= 0.8 at concurrency 10, 100 and 1000, and flat; pooled /
floor >= 0.9 at each. The floor also runs a second time in each round, as an A/A control:
its ratio to the first shows how far a ratio strays on this machine in this run. Each
variant is measured in a window of steady state (after its C tasks started, before they
stop), in rounds whose orders are balanced: each variant follows each other one equally
often. Also shown:
the client's CPU time per request (``time.process_time``), whose ratio is the throughput
ratio a CPU-bound client would see, and which a busy shared machine disturbs less.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from functools import partial
from typing import Any

import trio

import trio_pool

from ._common import HOST, MESSAGE, echo_server, median, percentile, print_table

CONCURRENCY = (10, 100, 1000)


async def _request(stream: trio.abc.Stream) -> None:
    await stream.send_all(MESSAGE)
    got = 0
    while got < len(MESSAGE):
        data = await stream.receive_some(len(MESSAGE) - got)
        if not data:
            raise RuntimeError("echo server closed the connection")
        got += len(data)


async def _drive(tasks: int, seconds: float, one_task: Any) -> tuple[float, float]:
    """Run ``one_task(index, counts, stop)`` in ``tasks`` tasks and measure ``seconds`` of
    steady state: the window opens after every task has started and a short warm-in, and
    closes before they are stopped, so spawning and stopping C tasks is left out.

    Returns:
        Requests per second (wall clock) and this process's CPU seconds per request,
        within the window.
    """
    counts = [0] * tasks
    stop = [False]
    async with trio.open_nursery() as nursery:
        for index in range(tasks):
            nursery.start_soon(one_task, index, counts, stop)
        await trio.sleep(min(0.05, seconds / 5))
        before, start, cpu = sum(counts), time.perf_counter(), time.process_time()
        await trio.sleep(seconds)
        done = sum(counts) - before
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        stop[0] = True
    return done / wall, cpu / done


async def _dedicated(streams: list[trio.SocketStream], seconds: float) -> tuple[float, float]:
    async def worker(index: int, counts: list[int], stop: list[bool]) -> None:
        stream = streams[index]
        while not stop[0]:
            await _request(stream)
            counts[index] += 1

    return await _drive(len(streams), seconds, worker)


async def _floor(streams: list[trio.SocketStream], seconds: float) -> tuple[float, float]:
    limiter = trio.CapacityLimiter(len(streams))
    spare = deque(streams)
    pop, append = spare.pop, spare.append

    async def worker(index: int, counts: list[int], stop: list[bool]) -> None:
        while not stop[0]:
            async with limiter:
                stream = pop()
                try:
                    await _request(stream)
                finally:
                    append(stream)
            counts[index] += 1

    return await _drive(len(streams), seconds, worker)


async def _pooled(
    pool: trio_pool.ConnectionPool, port: int, tasks: int, seconds: float
) -> tuple[float, float]:
    connection = pool.connection

    async def worker(index: int, counts: list[int], stop: list[bool]) -> None:
        while not stop[0]:
            async with connection(HOST, port) as conn:
                await _request(conn)
            counts[index] += 1

    return await _drive(tasks, seconds, worker)


async def open_streams(port: int, count: int) -> list[trio.SocketStream]:
    """``count`` TCP streams to the echo server, opened concurrently."""
    streams: list[trio.SocketStream] = []

    async def open_one() -> None:
        streams.append(await trio.open_tcp_stream(HOST, port))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(open_one)
    return streams


def _balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``n`` variants (``n`` even) in which each variant runs right after each
    other variant exactly once (a Williams design): a run that leaves the process slower
    or faster for the next (the GC's generations, caches) then biases no comparison.
    Measured: with a plain rotation, the floor's A/A control read 1.13x at c = 1000."""
    first = [0]
    for step in range(1, n):
        first.append((step + 1) // 2 if step % 2 else n - step // 2)
    return [[(v + shift) % n for v in first] for shift in range(n)]


async def _measure(port: int, rounds: int, seconds: float) -> list[dict[str, Any]]:
    results = []
    for tasks in CONCURRENCY:
        streams = await open_streams(port, tasks)
        try:
            async with trio_pool.open_pool(max_size=tasks, acquire_timeout=None) as pool:
                await pool.prewarm(HOST, port, count=tasks)
                await _dedicated(streams, seconds / 4)  # warm up all three
                await _floor(streams, seconds / 4)
                await _pooled(pool, port, tasks, seconds / 4)
                dedicated: list[tuple[float, float]] = []
                floor: list[tuple[float, float]] = []
                control: list[tuple[float, float]] = []  # the floor again: the A/A noise
                pooled: list[tuple[float, float]] = []
                orders = _balanced_orders(4)
                for index in range(rounds):  # one run of each per round, in balanced orders
                    runs = [
                        (dedicated, partial(_dedicated, streams, seconds)),
                        (floor, partial(_floor, streams, seconds)),
                        (pooled, partial(_pooled, pool, port, tasks, seconds)),
                        (control, partial(_floor, streams, seconds)),
                    ]
                    for position in orders[index % len(orders)]:
                        samples, measure = runs[position]
                        samples.append(await measure())
                stats = pool.statistics()
        finally:
            for stream in streams:
                await stream.aclose()
        per_round = [p[0] / d[0] for p, d in zip(pooled, dedicated, strict=True)]
        cpu_per_round = [d[1] / p[1] for p, d in zip(pooled, dedicated, strict=True)]
        floor_per_round = [p[0] / f[0] for p, f in zip(pooled, floor, strict=True)]
        floor_cpu_per_round = [f[1] / p[1] for p, f in zip(pooled, floor, strict=True)]
        control_per_round = [c[0] / f[0] for c, f in zip(control, floor, strict=True)]
        results.append(
            {
                "concurrency": tasks,
                "dedicated_rps": median([d[0] for d in dedicated]),
                "floor_rps": median([f[0] for f in floor]),
                "pooled_rps": median([p[0] for p in pooled]),
                "dedicated_cpu_us": median([d[1] for d in dedicated]) * 1e6,
                "floor_cpu_us": median([f[1] for f in floor]) * 1e6,
                "pooled_cpu_us": median([p[1] for p in pooled]) * 1e6,
                "ratio": median(per_round),  # of paired rounds: robust to drift in load
                "ratio_per_round": per_round,
                # Client CPU per request, dedicated / pooled: throughput if CPU-bound.
                "cpu_ratio": median(cpu_per_round),
                # Pooled vs the CapacityLimiter + deque floor on the same streams.
                "floor_ratio": median(floor_per_round),
                "floor_ratio_per_round": floor_per_round,
                "floor_cpu_ratio": median(floor_cpu_per_round),
                "floor_ratio_iqr": quartiles(floor_per_round),
                # The floor against itself, measured the same way: how far a ratio of 1.0
                # strays on this machine in this run.
                "control_ratio": median(control_per_round),
                "control_ratio_iqr": quartiles(control_per_round),
                "pool_hit_rate": stats.hit_rate,
                "pool_connections_created": stats.connections_created,
            }
        )
    return results


def quartiles(values: list[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles."""
    return percentile(values, 25), percentile(values, 75)


def run(quick: bool = False) -> dict[str, Any]:
    rounds, seconds = (4, 0.25) if quick else (16, 0.4)
    with echo_server() as [(_, port)]:
        results = trio.run(_measure, port, rounds, seconds)
    rows = [
        [
            r["concurrency"],
            f"{r['dedicated_rps']:,.0f}",
            f"{r['pooled_rps']:,.0f}",
            f"{r['ratio']:.2f}x",
            f"{min(r['ratio_per_round']):.2f}-{max(r['ratio_per_round']):.2f}",
            f"{r['dedicated_cpu_us']:.1f}",
            f"{r['pooled_cpu_us']:.1f}",
            f"{r['cpu_ratio']:.2f}x",
            f"{r['pool_hit_rate']:.3f}",
        ]
        for r in results
    ]
    print_table(
        f"end-to-end 16-byte echo, median ratio of {rounds} paired rounds x {seconds} s"
        " (target: pooled/dedicated >= 0.8, flat)",
        [
            "concurrency",
            "dedicated req/s",
            "pooled req/s",
            "ratio",
            "range",
            "dedicated CPU µs/req",
            "pooled CPU µs/req",
            "CPU ratio",
            "hit rate",
        ],
        rows,
    )
    floor_rows = [
        [
            r["concurrency"],
            f"{r['floor_rps']:,.0f}",
            f"{r['pooled_rps']:,.0f}",
            f"{r['floor_ratio']:.2f}x",
            "{:.2f}-{:.2f}".format(*r["floor_ratio_iqr"]),
            f"{r['control_ratio']:.2f}x",
            "{:.2f}-{:.2f}".format(*r["control_ratio_iqr"]),
            f"{r['floor_rps'] / r['dedicated_rps']:.2f}x",
            f"{r['floor_cpu_us']:.1f}",
            f"{r['pooled_cpu_us']:.1f}",
            f"{r['floor_cpu_ratio']:.2f}x",
        ]
        for r in results
    ]
    print_table(
        "pool vs floor (the same streams behind CapacityLimiter + deque), median of"
        f" {rounds} rounds, interquartile range; A/A: the floor against itself, the noise"
        " (target: pooled/floor >= 0.9)",
        [
            "concurrency",
            "floor req/s",
            "pooled req/s",
            "pooled/floor",
            "IQR",
            "A/A",
            "A/A IQR",
            "floor/dedicated",
            "floor CPU µs/req",
            "pooled CPU µs/req",
            "CPU ratio",
        ],
        floor_rows,
    )
    ratios: dict[str, float] = {
        f"pooled_vs_dedicated_c{r['concurrency']}": r["ratio"] for r in results
    }
    spread = max(ratios.values()) - min(ratios.values())
    ratios["spread_across_concurrency"] = spread
    for r in results:
        ratios[f"cpu_pooled_vs_dedicated_c{r['concurrency']}"] = r["cpu_ratio"]
        ratios[f"pooled_vs_floor_c{r['concurrency']}"] = r["floor_ratio"]
        ratios[f"cpu_pooled_vs_floor_c{r['concurrency']}"] = r["floor_cpu_ratio"]
        ratios[f"floor_vs_floor_c{r['concurrency']}"] = r["control_ratio"]
    return {
        "name": "e2e",
        "results": results,
        "ratios": ratios,
        "targets": {
            "pooled_vs_dedicated": ">= 0.8 at every concurrency, flat",
            "pooled_vs_floor": ">= 0.9 at every concurrency",
        },
        "met": {
            "pooled_vs_dedicated": all(r["ratio"] >= 0.8 for r in results),
            "pooled_vs_floor": all(r["floor_ratio"] >= 0.9 for r in results),
        },
    }


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
