"""What the httpx transport glue costs: httpx + ``PoolTransport`` against the glue-free
bound, plain and TLS, HTTP/1.1 and HTTP/2, at concurrency 10, 100 and 1000.

One nginx (its own process, one worker, ``return 200 "ok"``, keep-alive without limits,
``http2_max_concurrent_streams 128``) listens three ways: plain HTTP/1.1, TLS (ALPN
``h2`` and ``http/1.1``) and plain HTTP/2 with prior knowledge (h2c). Four modes:

- ``http/1.1``: plain HTTP/1.1;
- ``https/1.1``: HTTP/1.1 over TLS (no ALPN offered: nginx speaks HTTP/1.1);
- ``h2c``: HTTP/2 with prior knowledge on plain TCP;
- ``h2``: HTTP/2 over TLS (ALPN ``h2``).

In each mode and at each concurrency C, three clients side by side in the same round,
each on a pool of ``max_size=C``, all with a 5 s limit per phase (httpx's default; the
connect limit 30 s so that 1,000 TLS handshakes at once are not cut short):

- (a) ``HTTPClient``: :class:`trio_pool.http.HTTPClient`, ``request("GET", url)``;
- (b) ``httpx, no I/O``: ``httpx.AsyncClient`` over a transport that does no I/O at all
  (it checkpoints once, as every real request waits at least once, and returns a
  canned response whose body streams like a real one): httpx's own cost;
- (c) ``httpx + PoolTransport``: ``httpx.AsyncClient`` over
  :class:`trio_pool.httpx.PoolTransport`.

If the transport glue cost nothing, (c) would spend the CPU of (a) and (b) together per
request: the glue-free bound is ``1 / (1/a + 1/b)`` requests per second, and the target
is ``c / bound >= 0.8`` in every cell. The same comparison in client CPU per request,
``(cpu_a + cpu_b) / cpu_c``, is printed beside it: steadier on a shared machine (the
throughput ratio also moves with how much CPU nginx and the other processes take).

Each cell: C tasks loop for a warm-up (connections get opened) and a measuring window;
the median over the rounds is reported (rounds interleave the three clients).

``python -m benchmarks.bench_httpx profile [MODE] [C]`` prints a cProfile of (c).
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import trio
import trio.lowlevel

import trio_pool
from trio_pool.http import HTTPClient, Timeout

from ._common import HOST, Tls, median, print_table, raise_nofile, tls_files
from .bench_http import (
    _WARMUP_CAP,
    Cell,
    _httpx_worker,
    _measure,
    _nginx_binary,
    cell_entry,
    client_worker,
    free_port,
    nginx_server,
    plain_listen,
)
from .bench_http2 import STREAMS, _nginx_version

__all__ = ["CLIENTS", "CONCURRENCIES", "MODES", "NullTransport", "run"]

CONCURRENCIES = (10, 100, 1000)
#: mode: (TLS, HTTP/2)
MODES: dict[str, tuple[bool, bool]] = {
    "http/1.1": (False, False),
    "https/1.1": (True, False),
    "h2c": (False, True),
    "h2": (True, True),
}
CLIENTS = ("HTTPClient", "httpx, no I/O", "httpx + PoolTransport")
GOAL = 0.8
_LIMIT = 5.0  # httpx's default timeout, per phase
_CONNECT_LIMIT = 30.0
# What nginx answers, for the transport without I/O.
_HEADERS = [
    (b"Server", b"nginx/1.22.1"),
    (b"Date", b"Sun, 06 Dec 2026 06:00:00 GMT"),
    (b"Content-Type", b"text/plain"),
    (b"Content-Length", b"2"),
    (b"Connection", b"keep-alive"),
]


class _Body(httpx.AsyncByteStream):
    """A canned response body, streamed as a transport's is (one chunk)."""

    def __init__(self) -> None:
        self._sent = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if not self._sent:
            self._sent = True
            yield b"ok"


class NullTransport(httpx.AsyncBaseTransport):
    """A transport with no I/O: one checkpoint, then a canned response."""

    def __init__(self, http2: bool) -> None:
        self._extensions = {
            "http_version": b"HTTP/2" if http2 else b"HTTP/1.1",
            "reason_phrase": b"OK",
        }

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await trio.lowlevel.checkpoint()
        return httpx.Response(
            200, headers=_HEADERS, stream=_Body(), extensions=dict(self._extensions)
        )


# -- the server -------------------------------------------------------------------------------


@contextmanager
def nginx_three_ways(tls: Tls) -> Iterator[dict[str, int]]:
    """One nginx listening plain (HTTP/1.1), TLS (ALPN h2, http/1.1) and h2c.

    Yields:
        The port of each mode.
    """
    binary = _nginx_binary()
    if binary is None:
        raise RuntimeError("bench_httpx needs nginx (apt-get install nginx-light)")
    new_syntax = _nginx_version(binary) >= (1, 25, 1)
    tls_port, h2c_port = free_port(), free_port()
    if new_syntax:
        tls_listen = f"listen {HOST}:{tls_port} ssl backlog=4096; http2 on;"
        h2c_listen = f"listen {HOST}:{h2c_port} backlog=4096; http2 on;"
    else:
        tls_listen = f"listen {HOST}:{tls_port} ssl http2 backlog=4096;"
        h2c_listen = f"listen {HOST}:{h2c_port} http2 backlog=4096;"
    ok = '    location / { return 200 "ok"; }\n'
    http = (
        f"  http2_max_concurrent_streams {STREAMS};\n"
        f"  server {{\n    {tls_listen}\n"
        f"    ssl_certificate {tls.certfile};\n    ssl_certificate_key {tls.certfile};\n"
        f"{ok}  }}\n"
        f"  server {{\n    {h2c_listen}\n{ok}  }}\n"
    )
    with nginx_server(plain_listen, http=http) as port:
        yield {"http/1.1": port, "https/1.1": tls_port, "h2c": h2c_port, "h2": tls_port}


# -- the three clients --------------------------------------------------------------------------


def _url(mode: str, ports: dict[str, int]) -> str:
    scheme = "https" if MODES[mode][0] else "http"
    return f"{scheme}://{HOST}:{ports[mode]}/"


def _http2(mode: str) -> bool | str:
    tls, http2 = MODES[mode]
    if not http2:
        return False
    return True if tls else "prior-knowledge"


def _run_ours(url: str, mode: str, n: int, warmup: float, window: float, context: Any) -> Cell:
    async def main() -> Cell:
        async with trio_pool.open_pool(max_size=n, acquire_timeout=None) as pool:
            client = HTTPClient(
                pool,
                http2=_http2(mode),
                ssl_context=context,
                timeout=Timeout(_LIMIT, connect=_CONNECT_LIMIT),
            )

            worker = client_worker(client, url)
            return await _measure(worker, n, warmup, window)

    return trio.run(main)


def _run_httpx(
    url: str, mode: str, n: int, warmup: float, window: float, context: Any, *, null: bool
) -> Cell:
    from trio_pool.httpx import PoolTransport

    async def main() -> Cell:
        async with trio_pool.open_pool(max_size=n, acquire_timeout=None) as pool:
            transport: httpx.AsyncBaseTransport
            if null:
                transport = NullTransport(MODES[mode][1])
            else:
                transport = PoolTransport(pool, http2=_http2(mode), ssl_context=context)
            timeout = httpx.Timeout(_LIMIT, connect=_CONNECT_LIMIT)
            async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
                return await _measure(_httpx_worker(client, url), n, warmup, window)

    return trio.run(main)


def _cell(
    client: str,
    url: str,
    mode: str,
    n: int,
    warmup: float,
    window: float,
    context: ssl.SSLContext,
) -> Cell:
    if client == "HTTPClient":
        return _run_ours(url, mode, n, warmup, window, context)
    return _run_httpx(url, mode, n, warmup, window, context, null=client == "httpx, no I/O")


def bound(a: float, b: float) -> float:
    """The glue-free bound of two rates: ``1 / (1/a + 1/b)`` (0 if either is 0)."""
    if a <= 0 or b <= 0:
        return 0.0
    return 1.0 / (1.0 / a + 1.0 / b)


# -- the benchmark ------------------------------------------------------------------------------


def run(
    quick: bool = False,
    *,
    modes: tuple[str, ...] = tuple(MODES),
    concurrencies: tuple[int, ...] = CONCURRENCIES,
    rounds: int | None = None,
) -> dict[str, Any]:
    """Measure the three clients in every mode and at every concurrency; print the
    table and the ratios."""
    raise_nofile(20_000)
    warmup, window = (0.2, 0.5) if quick else (0.5, 1.5)
    _WARMUP_CAP[0] = 3.0 if quick else 5.0
    if rounds is None:
        rounds = 1 if quick else 3
    samples: dict[tuple[str, str, int], list[Cell]] = {}
    with tls_files() as tls:
        context = tls.client_context()
        with nginx_three_ways(tls) as ports:
            for _ in range(rounds):
                for mode in modes:
                    url = _url(mode, ports)
                    for n in concurrencies:
                        for client in CLIENTS:
                            cell = _cell(client, url, mode, n, warmup, window, context)
                            samples.setdefault((mode, client, n), []).append(cell)

    def typical(key: tuple[str, str, int]) -> Cell:
        cells = samples[key]
        return (
            median([c[0] for c in cells]),
            sum(c[1] for c in cells),
            median([c[2] for c in cells]),
        )

    rows: list[list[object]] = []
    results: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    for mode in modes:
        for n in concurrencies:
            a, b, c = (typical((mode, client, n)) for client in CLIENTS)
            for client, cell in zip(CLIENTS, (a, b, c), strict=True):
                results.append(cell_entry(client, n, cell, mode=mode)[1])
            glue_free = bound(a[0], b[0])
            ratio = c[0] / glue_free if glue_free else 0.0
            cpu_ratio = (a[2] + b[2]) / c[2] if c[2] else 0.0
            ratios[f"{mode}@{n}"] = ratio
            ratios[f"{mode}_cpu@{n}"] = cpu_ratio
            rows.append(
                [
                    f"{mode} c={n}",
                    f"{a[0]:,.0f}",
                    f"{b[0]:,.0f}",
                    f"{c[0]:,.0f}",
                    f"{glue_free:,.0f}",
                    f"{ratio:.2f}" + (" *" if ratio < GOAL else ""),
                    f"{a[2] * 1e6:.0f}+{b[2] * 1e6:.0f} / {c[2] * 1e6:.0f}",
                    f"{cpu_ratio:.2f}",
                    str(a[1] + b[1] + c[1]),
                ]
            )
    print_table(
        f"httpx + PoolTransport against the glue-free bound (median of {rounds},"
        f" {window} s windows; * below {GOAL})",
        [
            "cell",
            "(a) HTTPClient",
            "(b) httpx no I/O",
            "(c) httpx+Pool",
            "bound",
            "c/bound",
            "CPU us a+b / c",
            "CPU ratio",
            "errors",
        ],
        rows,
    )
    return {
        "name": "httpx",
        "results": results,
        "ratios": ratios,
        "goal": GOAL,
        "rounds": rounds,
    }


def profile(mode: str = "https/1.1", n: int = 100) -> None:
    """cProfile of httpx + PoolTransport in one mode at one concurrency."""
    import cProfile
    import pstats

    raise_nofile(20_000)
    with tls_files() as tls:
        context = tls.client_context()
        with nginx_three_ways(tls) as ports:
            profiler = cProfile.Profile()
            profiler.enable()
            rate = _run_httpx(_url(mode, ports), mode, n, 0.3, 3.0, context, null=False)[0]
            profiler.disable()
    print(f"httpx + PoolTransport, {mode} at c={n}, under the profiler: {rate:,.0f} req/s")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(40)


def _main(argv: list[str]) -> None:
    if argv[:1] == ["profile"]:
        profile(argv[1] if argv[1:] else "https/1.1", int(argv[2]) if argv[2:] else 100)
        return
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_httpx")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--concurrency", nargs="+", type=int, default=list(CONCURRENCIES))
    args = parser.parse_args(argv)
    run(
        args.quick,
        modes=tuple(args.modes),
        concurrencies=tuple(args.concurrency),
        rounds=args.rounds,
    )


if __name__ == "__main__":
    _main(sys.argv[1:])
