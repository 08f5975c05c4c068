"""Spike: a burst of requests against a few warm connections to a slow-to-connect server.

A TLS echo server in its own process answers each new connection's handshake only after
150 ms (an artificial delay: a far or busy server), so connect + handshake takes about
150 ms while a request on an open connection takes well under a millisecond. Each round
opens a pool with 5 warm connections (prewarmed), then 50 tasks start at once; each
acquires, sends one 16-byte request and reads the echo, and releases the connection 2 ms
after it got it.

* hand-off (the default ``max_connecting``): a miss is served by whichever comes first, a
  released connection or a connect running in the pool's nursery; a key has at most as
  many connects in flight as open connections (at least 4, at most ``max_connecting``),
  and those not needed any more are pooled;
* tied (``max_connecting=None``, the behaviour before hand-off): every miss opens its own
  connection and waits for it.

Rounds alternate between the two. Reported: the spike's total time (median over rounds)
and how many connections it opened. Targets: hand-off >= 5x faster than tied, and at most
10 new connections. The JSON also holds, per variant, the last round's per-request
``[start, end]`` seconds from the spike's start (``timelines``) for a chart.
"""

from __future__ import annotations

import ssl
import sys
import time
from typing import Any

import trio

import trio_pool

from ._common import HOST, MESSAGE, echo_server, median, print_table, tls_files

WARM = 5
REQUESTS = 50
HOLD = 0.002
HANDSHAKE_DELAY = 0.150
MAX_SIZE = 100
VARIANTS: dict[str, int | None] = {
    "hand-off": trio_pool.PoolConfig().max_connecting,
    "tied": None,
}


async def _request(conn: trio_pool.PooledConnection) -> None:
    await conn.send_all(MESSAGE)
    received = b""
    while len(received) < len(MESSAGE):
        chunk = await conn.receive_some(len(MESSAGE) - len(received))
        if not chunk:
            raise RuntimeError("the echo server closed the connection")
        received += chunk


async def _spike(port: int, context: ssl.SSLContext, max_connecting: int | None) -> dict[str, Any]:
    """One round: a fresh pool, 5 warm connections, 50 concurrent requests."""
    async with trio_pool.open_pool(
        max_size=MAX_SIZE, max_connecting=max_connecting, acquire_timeout=None
    ) as pool:
        await pool.prewarm(HOST, port, count=WARM, tls=True, ssl_context=context)
        # The warm connections have seen data (TLS 1.3 tickets), as warm ones would.
        warm = [await pool.acquire_tls(HOST, port, ssl_context=context) for _ in range(WARM)]
        for conn in warm:
            await _request(conn)
        for conn in warm:
            pool.release(conn)
        before = pool.statistics()
        timeline: list[list[float]] = []
        start = time.perf_counter()

        async def one() -> None:
            began = time.perf_counter() - start
            conn = await pool.acquire_tls(HOST, port, ssl_context=context)
            held_until = trio.current_time() + HOLD
            try:
                await _request(conn)
                await trio.sleep_until(held_until)  # held 2 ms in all, request included
            finally:
                pool.release(conn)
            timeline.append([round(began, 6), round(time.perf_counter() - start, 6)])

        async with trio.open_nursery() as nursery:
            for _ in range(REQUESTS):
                nursery.start_soon(one)
        elapsed = time.perf_counter() - start
        after = pool.statistics()
        # Connects still in flight (hand-off) count too: they were opened by the spike.
        opened = after.connections_created - before.connections_created + after.connecting
    timeline.sort()
    return {"seconds": elapsed, "opened": opened, "timeline": timeline}


async def _main(quick: bool) -> dict[str, Any]:
    rounds = 3 if quick else 10
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    with tls_files() as tls, echo_server(tls=tls, handshake_delay=HANDSHAKE_DELAY) as servers:
        port = servers[0][1]
        context = tls.client_context()
        for _ in range(rounds):
            for name, max_connecting in VARIANTS.items():
                samples[name].append(await _spike(port, context, max_connecting))
    seconds = {name: median([s["seconds"] for s in runs]) for name, runs in samples.items()}
    opened = {name: max(s["opened"] for s in runs) for name, runs in samples.items()}
    ratio = seconds["tied"] / seconds["hand-off"]
    print_table(
        f"spike: {REQUESTS} requests on {WARM} warm TLS connections, handshake"
        f" {HANDSHAKE_DELAY * 1e3:.0f} ms, hold {HOLD * 1e3:.0f} ms, {rounds} rounds"
        " (targets: hand-off >= 5x faster than tied, <= 10 new connections)",
        ["variant", "max_connecting", "median ms", "min ms", "max new connections"],
        [
            [
                name,
                str(VARIANTS[name]),
                f"{seconds[name] * 1e3:.1f}",
                f"{min(s['seconds'] for s in samples[name]) * 1e3:.1f}",
                opened[name],
            ]
            for name in VARIANTS
        ],
    )
    print(f"hand-off is {ratio:.1f}x faster than tied connects")
    return {
        "name": "spike",
        "parameters": {
            "warm": WARM,
            "requests": REQUESTS,
            "hold_seconds": HOLD,
            "handshake_delay_seconds": HANDSHAKE_DELAY,
            "rounds": rounds,
            "max_connecting": VARIANTS,
        },
        "seconds": seconds,
        "samples": {name: [s["seconds"] for s in runs] for name, runs in samples.items()},
        "connections_opened": opened,
        "timelines": {name: runs[-1]["timeline"] for name, runs in samples.items()},
        "ratios": {
            "spike_tied_vs_handoff": ratio,
            "spike_handoff_new_connections": opened["hand-off"],
            "spike_tied_new_connections": opened["tied"],
        },
        "targets": {
            "spike_tied_vs_handoff": ">= 5",
            "spike_handoff_new_connections": "<= 10",
        },
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    return trio.run(_main, quick)


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
