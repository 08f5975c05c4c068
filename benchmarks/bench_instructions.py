"""Per-request cost of pooling in CPU instructions: a count that noise does not move.

``bench_e2e`` times requests on a shared machine, where a ratio strays by ±0.05 between
identical runs (its A/A control shows it). This counts the instructions the client
executes per request instead, under valgrind's callgrind, for the same three ways of
sending a request as ``bench_e2e`` (16 bytes echoed by a server in its own process, C
tasks): dedicated streams, the CapacityLimiter + deque floor, and ``pool.connection()``.

Each variant runs twice, for N and 3N requests; the difference divided by 2N is the cost
of one request, with start-up and shutdown cancelled out. Counts are of user-space
instructions only: the system calls themselves (``send``, ``recv``, the pool's one
``poll`` per cycle) are not in them, so this measures the Python work per request,
including the cyclic GC's share (which moves with timing: repeated runs agree to about 1%).
Each count is taken under three hash seeds (``PYTHONHASHSEED`` 1, 2, 3: dict and set
layouts, and so the count, move with it by a few hundred instructions per request, which
once made 1.10 and 1.103 look like a change); the table gives the median and the spread
of the ratio.
Under valgrind the client runs ~50x slower than the echo server, so a receive never has to
wait: the GC's share is that of this regime, not the rhythm of a real run (where a request
waits twice, and how often young collections run depends on what stays alive across each
wait; see docs/benchmarks.md).

Needs ``valgrind`` on PATH (Debian: ``apt-get install valgrind``); without it, it says so
and reports nothing. A child of this script is the client:
``python -m benchmarks.bench_instructions client VARIANT TASKS REQUESTS``.
"""

from __future__ import annotations

import shutil
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import trio

import trio_pool

from ._common import HOST, callgrind_instructions, echo_server, median, print_table
from .bench_e2e import _request, open_streams

VARIANTS = ("dedicated", "floor", "pooled")
TASKS = 100


async def _client(port: int, variant: str, tasks: int, requests: int) -> None:
    streams = await open_streams(port, tasks)
    left = [requests]
    try:
        async with trio_pool.open_pool(max_size=tasks, acquire_timeout=None) as pool:
            await pool.prewarm(HOST, port, count=tasks)
            limiter = trio.CapacityLimiter(tasks)
            spare = deque(streams)
            connection = pool.connection

            async def dedicated(stream: trio.SocketStream) -> None:
                while left[0] > 0:
                    left[0] -= 1
                    await _request(stream)

            async def floor(_: trio.SocketStream) -> None:
                while left[0] > 0:
                    left[0] -= 1
                    async with limiter:
                        stream = spare.pop()
                        try:
                            await _request(stream)
                        finally:
                            spare.append(stream)

            async def pooled(_: trio.SocketStream) -> None:
                while left[0] > 0:
                    left[0] -= 1
                    async with connection(HOST, port) as conn:
                        await _request(conn)

            worker = {"dedicated": dedicated, "floor": floor, "pooled": pooled}[variant]
            async with trio.open_nursery() as nursery:
                for stream in streams:
                    nursery.start_soon(worker, stream)
    finally:
        for stream in streams:
            await stream.aclose()


#: The hash seeds each count is taken under (see the module docstring).
SEEDS = (1, 2, 3)


def _count(variant: str, tasks: int, requests: int, port: int, seed: int) -> int:
    """Instructions of one client run under callgrind, with hash seed ``seed``."""
    args = [variant, str(tasks), str(requests), str(port)]
    return callgrind_instructions("benchmarks.bench_instructions", args, seed)


def run(quick: bool = False) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        print("\n== instructions per request: skipped (valgrind is not installed)")
        return {"name": "instructions", "results": [], "ratios": {}, "skipped": "no valgrind"}
    # Fewer requests leave start-up effects in the difference: --quick leaves out the
    # dedicated streams instead.
    small = 2_000
    variants = VARIANTS[1:] if quick else VARIANTS
    with echo_server() as [(_, port)]:
        jobs = [(v, n, seed) for v in variants for n in (small, 3 * small) for seed in SEEDS]
        with ThreadPoolExecutor(max_workers=2) as pool:  # two clients at a time: 2 cores
            counts = dict(
                zip(
                    jobs,
                    pool.map(lambda job: _count(job[0], TASKS, job[1], port, job[2]), jobs),
                    strict=True,
                )
            )
    # Per seed: the cost of one request of each variant, and its ratio to the floor.
    costs = {
        (v, seed): (counts[(v, 3 * small, seed)] - counts[(v, small, seed)]) / (2 * small)
        for v in variants
        for seed in SEEDS
    }
    per_request = {v: median([costs[(v, seed)] for seed in SEEDS]) for v in variants}
    vs_floor = {
        v: sorted(costs[(v, seed)] / costs[("floor", seed)] for seed in SEEDS) for v in variants
    }
    floor = per_request["floor"]
    rows = [
        [
            v,
            f"{per_request[v]:,.0f}",
            f"{median(vs_floor[v]):.3f}x",
            f"{vs_floor[v][0]:.3f}-{vs_floor[v][-1]:.3f}",
        ]
        for v in variants
    ]
    print_table(
        f"instructions per request (callgrind, user space), c = {TASKS},"
        f" {3 * small:,} - {small:,} requests, median of hash seeds {SEEDS}",
        ["variant", "instructions/request", "vs floor", "range over seeds"],
        rows,
    )
    ratios = {
        "pooled_vs_floor": median(vs_floor["pooled"]),
        "pooled_minus_floor": per_request["pooled"] - floor,
    }
    if "dedicated" in per_request:
        ratios["floor_vs_dedicated"] = floor / per_request["dedicated"]
    return {
        "name": "instructions",
        "results": [{"variant": v, "instructions": per_request[v]} for v in variants],
        "ratios": ratios,
        "targets": {},
        "met": {},
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        variant, tasks, requests, port = sys.argv[2], *map(int, sys.argv[3:6])
        trio.run(_client, port, variant, tasks, requests)
    else:
        run(quick="--quick" in sys.argv)
