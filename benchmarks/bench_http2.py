"""HTTP/2 requests per second against a local nginx (``http2`` on TLS), at concurrency
10, 100 and 1000.

Clients, all measured in one run against the same nginx (``return 200 "ok"``, its own
process, one worker, ``http2_max_concurrent_streams 128``, keep-alive without limits):

- ``trio_pool h2``: :class:`trio_pool.http.HTTPClient` with ``http2=True`` (ALPN ``h2``):
  requests share connections, a stream each, a new connection only when all are full;
- ``httpx+PoolTransport h2``: httpx over :class:`trio_pool.httpx.PoolTransport` with
  ``http2=True``;
- ``httpx (httpcore) h2``: httpx's default transport with ``http2=True`` (httpcore + h2)
  on trio, in a child process (it can collapse at high concurrency: each cell is capped
  by the same measuring window and reports what it achieved, or 0 when killed);
- ``trio_pool http/1.1``: the same HTTPClient without HTTP/2, over TLS to the same
  listener (no ALPN: nginx speaks HTTP/1.1), a pool of ``max_size=N``.

Targets (issue 24), all from the same run: ``trio_pool h2`` >= 1.0x the throughput of
``trio_pool http/1.1`` and <= 1.0x its client CPU per request at concurrency 100 and
1000, >= 4x httpcore's HTTP/2 at 100, and no failed request. The ratios are printed,
and charted (``_charts.http2_series``): HTTP/2 against our HTTP/1.1 at each
concurrency, throughput and CPU per request.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

import trio_pool
from trio_pool.http import HTTPClient

from ._common import HOST, Tls, print_table, raise_nofile, tls_files
from .bench_http import (
    _WARMUP_CAP,
    Cell,
    _httpx_worker,
    _measure,
    _nginx_binary,
    cell_entry,
    child_cell,
    client_worker,
    nginx_server,
)

CONCURRENCIES = (10, 100, 1000)
CLIENTS = ("trio_pool h2", "httpx+PoolTransport h2", "httpx (httpcore) h2", "trio_pool http/1.1")
STREAMS = 128  # nginx's http2_max_concurrent_streams


def _nginx_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stderr
    version = out.strip().rsplit("/", 1)[-1].split()[0]
    return tuple(int(part) for part in version.split("."))


@contextmanager
def nginx_h2_server(tls: Tls) -> Iterator[int]:
    """nginx on a free port: TLS, ALPN ``h2`` and ``http/1.1``, ``return 200 "ok"``."""
    binary = _nginx_binary()
    if binary is None:
        raise RuntimeError("bench_http2 needs nginx (apt-get install nginx-light)")
    new_syntax = _nginx_version(binary) >= (1, 25, 1)

    def server(port: int) -> str:
        if new_syntax:
            listen = f"listen {HOST}:{port} ssl backlog=4096; http2 on;"
        else:
            listen = f"listen {HOST}:{port} ssl http2 backlog=4096;"
        certificate = f"ssl_certificate {tls.certfile};\n    ssl_certificate_key {tls.certfile};"
        return f"{listen}\n    {certificate}"

    with nginx_server(server, http=f"  http2_max_concurrent_streams {STREAMS};\n") as port:
        yield port


def _run_ours(
    port: int, n: int, warmup: float, window: float, context: ssl.SSLContext, *, http2: bool
) -> tuple[Cell, int]:
    """Our HTTPClient; also returns how many connections it opened."""
    url = f"https://{HOST}:{port}/"

    async def main() -> tuple[Cell, int]:
        async with trio_pool.open_pool(max_size=n, acquire_timeout=None) as pool:
            client = HTTPClient(pool, http2=http2, ssl_context=context, timeout=None)

            worker = client_worker(client, url)
            cell = await _measure(worker, n, warmup, window)
            return cell, pool.statistics().connections_created

    return trio.run(main)


def _run_transport(
    port: int, n: int, warmup: float, window: float, context: ssl.SSLContext
) -> Cell:
    import httpx

    from trio_pool.httpx import PoolTransport

    url = f"https://{HOST}:{port}/"

    async def main() -> Cell:
        async with trio_pool.open_pool(max_size=n, acquire_timeout=None) as pool:
            transport = PoolTransport(pool, http2=True, ssl_context=context)
            async with httpx.AsyncClient(transport=transport, timeout=None) as client:
                return await _measure(_httpx_worker(client, url), n, warmup, window)

    return trio.run(main)


def _run_httpcore(port: int, n: int, warmup: float, window: float, cafile: Path) -> Cell:
    """httpx + httpcore with ``http2=True``, in a child process (:func:`child_cell`)."""
    argv = [str(port), str(n), str(warmup), str(window), str(_WARMUP_CAP[0]), str(cafile)]
    return child_cell("bench_http2", argv, warmup, window)


def _httpcore_cell(argv: list[str]) -> None:
    port, n = int(argv[0]), int(argv[1])
    warmup, window, _WARMUP_CAP[0] = float(argv[2]), float(argv[3]), float(argv[4])
    cafile = argv[5]
    raise_nofile(20_000)
    import httpx

    url = f"https://{HOST}:{port}/"

    async def main() -> None:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        context = ssl.create_default_context(cafile=cafile)
        client = httpx.AsyncClient(limits=limits, timeout=None, http2=True, verify=context)
        await _measure(_httpx_worker(client, url), n, warmup, window, report=True)

    trio.run(main)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure every client at every concurrency; print the tables and the ratios."""
    raise_nofile(20_000)
    warmup, window = (0.1, 0.4) if quick else (0.5, 1.5)
    _WARMUP_CAP[0] = 2.0 if quick else 3.0
    rounds = 1 if quick else 2
    best: dict[tuple[str, int], Cell] = {}
    connections: dict[int, int] = {}

    def keep(name: str, n: int, result: Cell) -> None:
        if (name, n) not in best or result[0] > best[(name, n)][0]:
            best[(name, n)] = result

    with tls_files() as tls:
        cafile = tls.certfile.parent / "ca.pem"
        tls.ca.cert_pem.write_to_path(str(cafile))
        context = tls.client_context()
        with nginx_h2_server(tls) as port:
            for _ in range(rounds):
                for n in CONCURRENCIES:
                    cell, opened = _run_ours(port, n, warmup, window, context, http2=True)
                    keep("trio_pool h2", n, cell)
                    connections[n] = opened
                    keep(
                        "httpx+PoolTransport h2",
                        n,
                        _run_transport(port, n, warmup, window, context),
                    )
                    keep("httpx (httpcore) h2", n, _run_httpcore(port, n, warmup, window, cafile))
                    cell, _ = _run_ours(port, n, warmup, window, context, http2=False)
                    keep("trio_pool http/1.1", n, cell)

    def rps(name: str, n: int) -> float:
        return max(best[(name, n)][0], 1e-9)

    rows = []
    results = []
    for name in CLIENTS:
        row: list[object] = [name]
        for n in CONCURRENCIES:
            text, record = cell_entry(name, n, best[(name, n)])
            row.append(text)
            results.append(record)
        rows.append(row)
    print_table(
        f"HTTPS GET vs nginx (http2 on TLS): req/s (best of {rounds}, {window} s windows)",
        ["client", *(f"c={n}" for n in CONCURRENCIES)],
        rows,
    )
    print(
        "connections opened by trio_pool h2: "
        + ", ".join(f"c={n}: {connections[n]}" for n in CONCURRENCIES)
    )
    ours = "trio_pool h2"
    ratios: dict[str, float] = {}
    targets: dict[str, str] = {}
    collapsed = [n for n in CONCURRENCIES if best[("httpx (httpcore) h2", n)][0] == 0]
    for n in CONCURRENCIES:
        if n not in collapsed:
            ratios[f"{ours}/httpcore_h2@{n}"] = rps(ours, n) / rps("httpx (httpcore) h2", n)
            ratios[f"PoolTransport_h2/httpcore_h2@{n}"] = rps("httpx+PoolTransport h2", n) / rps(
                "httpx (httpcore) h2", n
            )
        ratios[f"{ours}/ours_http11@{n}"] = rps(ours, n) / rps("trio_pool http/1.1", n)
        ratios[f"{ours}_cpu/ours_http11_cpu@{n}"] = best[(ours, n)][2] / max(
            best[("trio_pool http/1.1", n)][2], 1e-12
        )
    targets[f"{ours}/httpcore_h2@100"] = ">= 4"
    for n in (100, 1000):
        targets[f"{ours}/ours_http11@{n}"] = ">= 1"
        targets[f"{ours}_cpu/ours_http11_cpu@{n}"] = "<= 1"
    print_table(
        "ratios",
        ["ratio", "value", "target"],
        [[key, f"{value:.2f}x", targets.get(key, "")] for key, value in ratios.items()],
    )
    for n in collapsed:
        print(f"httpx (httpcore) h2 at c={n}: no request completed in the window (collapsed)")
    errors = {n: best[(ours, n)][1] for n in CONCURRENCIES}
    print("trio_pool h2 failed requests: " + ", ".join(f"c={n}: {e}" for n, e in errors.items()))
    return {
        "name": "http2",
        "results": results,
        "ratios": ratios,
        "connections_opened": connections,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["httpcore-cell"]:
        _httpcore_cell(sys.argv[2:])
    else:
        run(quick="--quick" in sys.argv)
