"""Without vs with pooling: a new connection per request vs ``pool.connection()``.

One task sends requests one after another (16 bytes out, the 16-byte echo back) to an echo
server in its own process, plain TCP and TLS (a trustme certificate for 127.0.0.1):

* connect per request: ``trio.open_tcp_stream`` / ``trio.open_ssl_over_tcp_stream`` (full
  handshake each time, as a client without a pool does), request, ``aclose``;
* pooled: ``async with pool.connection(...)`` on a warm pool (hits after the first).

The two alternate in blocks so that noise hits both alike. Reported: the speed-up (mean
latency ratio, i.e. throughput ratio) and the p50/p99 latency of each.
"""

from __future__ import annotations

import ssl
import sys
import time
from typing import Any

import trio

import trio_pool

from ._common import HOST, MESSAGE, Tls, echo_server, percentile, print_table, tls_files

BLOCK = 25  # requests per variant before switching to the other


async def _request(stream: trio.abc.Stream) -> None:
    await stream.send_all(MESSAGE)
    got = 0
    while got < len(MESSAGE):
        data = await stream.receive_some(len(MESSAGE) - got)
        if not data:
            raise RuntimeError("echo server closed the connection")
        got += len(data)


async def _measure(port: int, context: ssl.SSLContext | None, requests: int) -> dict[str, Any]:
    tls = context is not None

    async def connect_per_request() -> float:
        start = time.perf_counter()
        stream: trio.abc.Stream
        if context is not None:
            stream = await trio.open_ssl_over_tcp_stream(
                HOST, port, ssl_context=context, https_compatible=True
            )
        else:
            stream = await trio.open_tcp_stream(HOST, port)
        try:
            await _request(stream)
        finally:
            await stream.aclose()
        return time.perf_counter() - start

    async with trio_pool.open_pool(max_size=4) as pool:

        async def pooled() -> float:
            start = time.perf_counter()
            async with pool.connection(HOST, port, tls=tls, ssl_context=context) as conn:
                await _request(conn)
            return time.perf_counter() - start

        for _ in range(5):  # warm up: the pool's connection, imports, TLS context
            await connect_per_request()
            await pooled()
        latencies: dict[str, list[float]] = {"connect per request": [], "pooled": []}
        done = 0
        while done < requests:
            block = min(BLOCK, requests - done)
            for _ in range(block):
                latencies["connect per request"].append(await connect_per_request())
            for _ in range(block):
                latencies["pooled"].append(await pooled())
            done += block
        stats = pool.statistics()
    return {
        "latencies": latencies,
        "hit_rate": stats.hit_rate,
        "created": stats.connections_created,
    }


def _summarize(kind: str, measured: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for variant, values in measured["latencies"].items():
        mean = sum(values) / len(values)
        rows.append(
            {
                "transport": kind,
                "variant": variant,
                "requests": len(values),
                "mean_us": mean * 1e6,
                "p50_us": percentile(values, 50) * 1e6,
                "p90_us": percentile(values, 90) * 1e6,
                "p99_us": percentile(values, 99) * 1e6,
                "req_per_s": 1 / mean,
            }
        )
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    plain_requests, tls_requests = (300, 100) if quick else (3000, 1000)
    results: list[dict[str, Any]] = []
    with echo_server() as [(_, port)]:
        results += _summarize("plain", trio.run(_measure, port, None, plain_requests))
    tls: Tls
    with tls_files() as tls, echo_server(tls=tls) as [(_, tls_port)]:
        results += _summarize(
            "TLS", trio.run(_measure, tls_port, tls.client_context(), tls_requests)
        )
    ratios: dict[str, float] = {}
    rows = []
    for kind in ("plain", "TLS"):
        new, pooled = (r for r in results if r["transport"] == kind)
        speedup = new["mean_us"] / pooled["mean_us"]
        ratios[f"{kind.lower()}_speedup"] = speedup
        ratios[f"{kind.lower()}_p99_speedup"] = new["p99_us"] / pooled["p99_us"]
        for r in (new, pooled):
            rows.append(
                [
                    f"{kind}: {r['variant']}",
                    r["requests"],
                    f"{r['p50_us']:.0f}",
                    f"{r['p99_us']:.0f}",
                    f"{r['req_per_s']:,.0f}",
                    f"{speedup:.1f}x" if r is pooled else "1.0x",
                ]
            )
    print_table(
        "without vs with pooling: sequential 16-byte echo requests",
        ["variant", "requests", "p50 µs", "p99 µs", "req/s", "speed-up"],
        rows,
    )
    return {"name": "pooling", "results": results, "ratios": ratios}


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
