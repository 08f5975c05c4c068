"""Upstream awareness (issue 23): four replicas of one host name, one stalls mid-run.

Workers open a new connection per request (``acquire_new``, one echo round trip,
discard) to ``replicas.bench``, whose custom resolver answers 127.0.0.2-5 (one port).
A quarter into the run one replica stops accepting (backlog full: connects hang). The
same run with ejection (``eject_after=5``) and without (``eject_after=None``) reports
failed requests, p99 latency of the requests (each needed a new connection), and how
long after the stall the replica was ejected (no more dials but one trial per backoff;
``never`` without ejection). Then balance: 100 connections held at once, most/fewest
per replica (goal <= 1.25).

For a chart the JSON also holds, per variant, a timeline in 100 ms bins of the requests
started in each (count, failed, median and slowest latency) and every request of 200 ms or
more as ``[start, latency ms]``, times in seconds from the run's start; the stall is at
``parameters.stall_at_s`` and the ejection ``ejected_after_s`` later.
"""

from __future__ import annotations

import socket
import sys
from collections import Counter
from functools import partial
from typing import Any, Final

import trio

import trio_pool

from ._common import percentile, print_table

NAME: Final = "replicas.bench"
IPS: Final = [f"127.0.0.{n}" for n in range(2, 6)]
WORKERS: Final = 16
CONNECT_TIMEOUT: Final = 1.0
BIN: Final = 0.1  # seconds per bin of the timeline
SLOW: Final = 0.2  # a request this slow paid a fallback (the 250 ms attempt delay)


class _Resolver(trio.abc.HostnameResolver):
    async def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        if host not in (NAME, NAME.encode()):
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port))) for ip in IPS]

    async def getnameinfo(self, *args: Any) -> Any:  # pragma: no cover
        raise NotImplementedError


async def _echo(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _serve(nursery: trio.Nursery) -> tuple[int, dict[str, trio.CancelScope]]:
    port = 0
    scopes: dict[str, trio.CancelScope] = {}
    for ip in IPS:
        scope = scopes[ip] = trio.CancelScope()

        async def serve(
            ip: str, scope: trio.CancelScope, port: int, task_status: trio.TaskStatus[Any]
        ) -> None:
            with scope:
                await trio.serve_tcp(_echo, port, host=ip, task_status=task_status)

        listeners = await nursery.start(partial(serve, ip, scope, port))
        port = listeners[0].socket.getsockname()[1]
    return port, scopes


async def _stall(ip: str, port: int) -> list[socket.socket]:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for _ in range(200):  # until the replica's own listener has closed
        try:
            listener.bind((ip, port))
            break
        except OSError:
            await trio.sleep(0.005)
    listener.listen(0)
    held = [listener]
    for _ in range(2):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex((ip, port))
        held.append(filler)
    return held


def _timeline(
    done: list[tuple[float, float]], failures: list[float], seconds: float
) -> list[dict[str, Any]]:
    """Per ``BIN`` from the run's start: requests started there that succeeded, those that
    failed, and the median and slowest latency (ms) of the first; ``done`` holds
    ``(start, latency)`` and ``failures`` starts, in seconds."""
    count = max(1, round(seconds / BIN))
    latencies: list[list[float]] = [[] for _ in range(count)]
    failed = [0] * count
    for start, latency in done:
        latencies[min(int(start / BIN), count - 1)].append(latency)
    for start in failures:
        failed[min(int(start / BIN), count - 1)] += 1
    return [
        {
            "start_s": round(index * BIN, 3),
            "requests": len(values),
            "failed": failed[index],
            "p50_ms": round(percentile(values, 50) * 1e3, 3) if values else None,
            "max_ms": round(max(values) * 1e3, 3) if values else None,
        }
        for index, values in enumerate(latencies)
    ]


async def _variant(eject_after: int | None, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    done: list[tuple[float, float]] = []  # (start from the run's start, latency)
    failures: list[float] = []
    failed = 0
    ejected_after: float | None = None
    held: list[socket.socket] = []
    async with trio.open_nursery() as servers:
        port, scopes = await _serve(servers)
        async with trio_pool.open_pool(
            eject_after=eject_after, connection_timeout=CONNECT_TIMEOUT, max_size=1000
        ) as pool:
            stalled = IPS[2]
            began = trio.current_time()
            stall_at = began + seconds / 4
            end = trio.current_time() + seconds

            async def worker() -> None:
                nonlocal failed
                while trio.current_time() < end:
                    start = trio.current_time()
                    try:
                        conn = await pool.acquire_new(NAME, port)
                        await conn.send_all(b"x")
                        await conn.receive_some()
                        pool.discard(conn)
                    except (trio_pool.ConnectError, trio.BrokenResourceError):
                        failed += 1
                        failures.append(start - began)
                        await trio.sleep(0.01)
                        continue
                    latencies.append(trio.current_time() - start)
                    done.append((start - began, latencies[-1]))

            async def staller() -> None:
                nonlocal ejected_after
                await trio.sleep_until(stall_at)
                scopes[stalled].cancel()
                held.extend(await _stall(stalled, port))
                book = pool._state.addresses.upstream(NAME, port)  # the bench's own peek
                while trio.current_time() < end:
                    address = book.addresses.get(stalled)
                    if address is not None and address.ejected_until is not None:
                        ejected_after = trio.current_time() - stall_at
                        return
                    await trio.sleep(0.005)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(staller)
                for _ in range(WORKERS):
                    nursery.start_soon(worker)
        servers.cancel_scope.cancel()
    for sock in held:
        sock.close()
    return {
        "requests": len(latencies),
        "failed": failed,
        "p99_ms": percentile(latencies, 99) * 1e3 if latencies else None,
        "slow": sum(1 for latency in latencies if latency >= SLOW),
        "ejected_after_s": ejected_after,
        "timeline": _timeline(done, failures, seconds),
        "slow_requests": sorted(
            [round(start, 4), round(latency * 1e3, 2)] for start, latency in done if latency >= SLOW
        ),
    }


async def _balance() -> float:
    async with trio.open_nursery() as servers:
        port, _ = await _serve(servers)
        async with trio_pool.open_pool(max_size=100) as pool:
            conns: list[trio_pool.PooledConnection] = []

            async def borrow() -> None:
                conns.append(await pool.acquire(NAME, port))

            async with trio.open_nursery() as nursery:
                for _ in range(100):
                    nursery.start_soon(borrow)
            per = Counter(conn.address for conn in conns)
            for conn in conns:
                pool.discard(conn)
        servers.cancel_scope.cancel()
    return max(per.values()) / min(per.values())


async def _main(quick: bool) -> dict[str, Any]:
    trio.socket.set_custom_hostname_resolver(_Resolver())
    seconds = 2.0 if quick else 6.0
    runs = {
        "eject_after=5": await _variant(5, seconds),
        "eject_after=None": await _variant(None, seconds),
    }
    balance = await _balance()
    print_table(
        f"upstream: 4 replicas, one stalls at {seconds / 4:.1f} s of {seconds:.0f} s,"
        f" {WORKERS} workers, a new connection per request, connect timeout"
        f" {CONNECT_TIMEOUT} s",
        ["variant", "requests", "failed", "p99 ms", ">= 200 ms", "stalled replica ejected after"],
        [
            [
                name,
                r["requests"],
                r["failed"],
                f"{r['p99_ms']:.1f}" if r["p99_ms"] is not None else "-",
                r["slow"],
                "never" if r["ejected_after_s"] is None else f"{r['ejected_after_s']:.2f} s",
            ]
            for name, r in runs.items()
        ],
    )
    print(f"balance: 100 connections over 4 replicas, most/fewest = {balance:.2f} (goal <= 1.25)")
    with_, without = runs["eject_after=5"], runs["eject_after=None"]
    return {
        "name": "upstream",
        "parameters": {
            "seconds": seconds,
            "workers": WORKERS,
            "connect_timeout": CONNECT_TIMEOUT,
            "replicas": IPS,
            "stalled": IPS[2],
            "stall_at_s": seconds / 4,
            "bin_s": BIN,
            "slow_ms": SLOW * 1e3,
        },
        "runs": runs,
        "ratios": {
            "upstream_p99_without_vs_with_ejection": (
                without["p99_ms"] / with_["p99_ms"]
                if with_["p99_ms"] and without["p99_ms"]
                else None
            ),
            "upstream_balance_most_vs_fewest": balance,
        },
        "targets": {"upstream_balance_most_vs_fewest": "<= 1.25"},
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    return trio.run(_main, quick)


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
