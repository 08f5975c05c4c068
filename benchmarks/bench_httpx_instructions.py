"""bench_httpx's comparison in instructions: a count the shared machine's noise does not move.

``bench_httpx`` times three clients side by side; on a loaded 2-core machine its ratios
stray. This counts, under valgrind's callgrind, the user-space instructions per request
of the same three clients (``HTTPClient``; httpx over a transport without I/O; httpx +
``PoolTransport``) against the same nginx, each run for N and 3N requests (the
difference over 2N cancels start-up). The glue-free figure in instructions is
``a + b``; the ratio ``(a + b) / c`` is what the glue leaves of it (1.0: free).

``python -m benchmarks.bench_httpx_instructions [--modes ...] [--concurrency ...]
[--requests N]``; a child of it is the client:
``... client CLIENT MODE C REQUESTS URL CAFILE``.
"""

from __future__ import annotations

import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import trio

from ._common import callgrind_instructions, print_table, tls_files
from .bench_httpx import MODES, NullTransport, _http2, _url, nginx_three_ways

__all__ = ["run"]

_SHORT = {"HTTPClient": "a", "httpx, no I/O": "b", "httpx + PoolTransport": "c"}


async def _client(client: str, mode: str, tasks: int, requests: int, url: str, cafile: str) -> None:
    import ssl

    import httpx

    import trio_pool
    from trio_pool.http import HTTPClient
    from trio_pool.httpx import PoolTransport

    context = ssl.create_default_context(cafile=cafile)
    left = [requests]
    async with trio_pool.open_pool(max_size=tasks, acquire_timeout=None) as pool:
        if client == "a":
            ours = HTTPClient(pool, http2=_http2(mode), ssl_context=context)

            async def worker() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    await ours.request("GET", url)

            async with trio.open_nursery() as nursery:
                for _ in range(tasks):
                    nursery.start_soon(worker)
            return
        transport: httpx.AsyncBaseTransport
        if client == "b":
            transport = NullTransport(MODES[mode][1])
        else:
            transport = PoolTransport(pool, http2=_http2(mode), ssl_context=context)
        async with httpx.AsyncClient(transport=transport) as theirs:

            async def httpx_worker() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    response = await theirs.get(url)
                    response.content  # noqa: B018 - read already

            async with trio.open_nursery() as nursery:
                for _ in range(tasks):
                    nursery.start_soon(httpx_worker)


def _count(client: str, mode: str, tasks: int, requests: int, url: str, cafile: str) -> int:
    """Instructions of one client run under callgrind."""
    args = [client, mode, str(tasks), str(requests), url, cafile]
    return callgrind_instructions("benchmarks.bench_httpx_instructions", args)


def run(
    quick: bool = False,
    *,
    modes: tuple[str, ...] = tuple(MODES),
    concurrencies: tuple[int, ...] = (10, 100),
    requests: int = 1_000,
    clients: tuple[str, ...] = ("a", "b", "c"),
) -> dict[str, Any]:
    """Count each client's instructions per request in every mode and concurrency
    (``quick``: c=10 only, 300 requests)."""
    if quick:
        concurrencies, requests = (10,), 300
    if shutil.which("valgrind") is None:
        print("\n== httpx instructions per request: skipped (valgrind is not installed)")
        return {"name": "httpx_instructions", "results": [], "skipped": "no valgrind"}
    per_request: dict[tuple[str, str, int], float] = {}
    with tls_files() as tls:
        cafile = str(tls.certfile.parent / "ca.pem")
        tls.ca.cert_pem.write_to_path(cafile)
        with nginx_three_ways(tls) as ports:
            jobs = [
                (client, mode, n, size)
                for mode in modes
                for n in concurrencies
                for client in clients
                for size in (requests, 3 * requests)
                if n <= requests
            ]
            with ThreadPoolExecutor(max_workers=2) as executor:
                counts = dict(
                    zip(
                        jobs,
                        executor.map(
                            lambda job: _count(
                                job[0], job[1], job[2], job[3], _url(job[1], ports), cafile
                            ),
                            jobs,
                        ),
                        strict=True,
                    )
                )
    for client, mode, n, size in jobs:
        if size == requests:
            big = counts[(client, mode, n, 3 * requests)]
            per_request[(client, mode, n)] = (big - counts[(client, mode, n, size)]) / (
                2 * requests
            )
    rows: list[list[object]] = []
    ratios: dict[str, float] = {}
    for mode in modes:
        for n in concurrencies:
            if n > requests:
                continue
            got = {client: per_request.get((client, mode, n), 0.0) for client in "abc"}
            row: list[object] = [f"{mode} c={n}"]
            row += [f"{got[client]:,.0f}" if got[client] else "-" for client in "abc"]
            if all(got.values()):
                ratio = (got["a"] + got["b"]) / got["c"]
                ratios[f"{mode}@{n}"] = ratio
                row += [f"{got['c'] - got['a'] - got['b']:,.0f}", f"{ratio:.3f}"]
            else:
                row += ["-", "-"]
            rows.append(row)
    print_table(
        f"instructions per request (callgrind, user space), {3 * requests:,} - {requests:,}",
        ["cell", *(f"({v}) {k}" for k, v in _SHORT.items()), "glue c-a-b", "(a+b)/c"],
        rows,
    )
    return {
        "name": "httpx_instructions",
        "results": [
            {"client": client, "mode": mode, "concurrency": n, "instructions": value}
            for (client, mode, n), value in per_request.items()
        ],
        "ratios": ratios,
    }


def _main(argv: list[str]) -> None:
    if argv[:1] == ["client"]:
        client, mode, tasks, requests, url, cafile = argv[1:7]
        trio.run(_client, client, mode, int(tasks), int(requests), url, cafile)
        return
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_httpx_instructions")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--concurrency", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--requests", type=int, default=1_000)
    parser.add_argument("--clients", nargs="+", choices=["a", "b", "c"], default=["a", "b", "c"])
    args = parser.parse_args(argv)
    run(
        modes=tuple(args.modes),
        concurrencies=tuple(args.concurrency),
        requests=args.requests,
        clients=tuple(args.clients),
    )


if __name__ == "__main__":
    _main(sys.argv[1:])
