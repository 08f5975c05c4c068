"""HTTP/1.1 requests per second against a local nginx, at concurrency 10, 100 and 1000.

Clients, all measured in one run against the same nginx (``return 200 "ok"``, its own
process, one worker, keep-alive without limits):

- ``trio_pool.http``: :class:`trio_pool.http.HTTPClient` on a pool of ``max_size=N``;
- ``httpx+PoolTransport``: httpx over :class:`trio_pool.httpx.PoolTransport`;
- ``httpx (httpcore)``: httpx with its default transport, on trio, limits of N
  connections (it can collapse at high concurrency: each cell is capped by the same
  measuring window and reports what it achieved);
- ``aiohttp``: aiohttp on asyncio, in its own process;
- ``h11 ceiling``: N dedicated persistent connections, each driving its own
  :class:`h11.Connection` with a prebuilt request, no pool at all.

Each cell: N tasks loop for a warm-up (connections get opened) and then a measuring
window; the rate counts the window only. Client and server share the machine's cores.
Targets: ``trio_pool.http`` >= 0.8x the ceiling at every concurrency, >= 50x httpcore at
100, and >= 1.0x aiohttp.

``python -m benchmarks.bench_http profile`` prints a cProfile of trio_pool.http at 100.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h11
import trio
import trio.lowlevel

import trio_pool
from trio_pool.http import HTTPClient, HTTPError

from ._common import HOST, print_table, raise_nofile

CONCURRENCIES = (10, 100, 1000)
CLIENTS = ("trio_pool.http", "httpx+PoolTransport", "httpx (httpcore)", "aiohttp", "h11 ceiling")

Worker = Callable[[list[int]], Awaitable[None]]
_WARMUP_CAP = [5.0]  # longest warm-up (seconds) waiting for every worker's first response
# A cell: requests per second, errors, client CPU seconds per request.
Cell = tuple[float, int, float]


# -- the server -----------------------------------------------------------------------------


def _nginx_binary() -> str | None:
    if os.access("/usr/sbin/nginx", os.X_OK):
        return "/usr/sbin/nginx"
    from shutil import which

    return which("nginx")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server started in another process)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def plain_listen(port: int) -> str:
    """The ``server`` directives of a plain-HTTP nginx on ``port``."""
    return f"listen {HOST}:{port} backlog=4096;"


@contextmanager
def nginx_server(server: Callable[[int], str] = plain_listen, http: str = "") -> Iterator[int]:
    """nginx in its own process on a free port: ``return 200 "ok"`` for every request.

    Args:
        server: The ``server`` block's directives (``listen`` and the like) for a port.
        http: More directives for the ``http`` block.
    """
    binary = _nginx_binary()
    if binary is None:
        raise RuntimeError("this benchmark needs nginx (apt-get install nginx-light)")
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp:
        root = Path(tmp)
        port = free_port()
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = root / "nginx.conf"
        conf.write_text(
            f"daemon off;\nmaster_process on;\nworker_processes 1;\n{user}"
            f"worker_rlimit_nofile 65536;\nerror_log stderr warn;\npid {root}/nginx.pid;\n"
            "events { worker_connections 16384; }\n"
            "http {\n  access_log off;\n  default_type text/plain;\n"
            f"  client_body_temp_path {root}/body;\n  proxy_temp_path {root}/proxy;\n"
            f"  fastcgi_temp_path {root}/fcgi;\n  uwsgi_temp_path {root}/uwsgi;\n"
            f"  scgi_temp_path {root}/scgi;\n"
            "  keepalive_timeout 300s;\n  keepalive_requests 100000000;\n"
            f"{http}"
            f"  server {{\n    {server(port)}\n"
            '    location / { return 200 "ok"; }\n  }\n}\n'
        )
        log = open(root / "stderr", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [binary, "-p", str(root), "-c", str(conf), "-e", "stderr"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                if process.poll() is not None:
                    raise RuntimeError("nginx failed:\n" + (root / "stderr").read_text())
                try:
                    socket.create_connection((HOST, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            yield port
        finally:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


# -- one cell: N tasks for warm-up + window ---------------------------------------------------


async def _measure(
    worker: Worker, concurrency: int, warmup: float, window: float, *, report: bool = False
) -> Cell:
    """Run ``concurrency`` copies of ``worker`` and count completions in the window.

    Returns:
        Requests per second in the window, the errors counted over the run, and the
        client's CPU seconds per request in the window.
    """
    counter = [0, 0]  # done, errors
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker, counter)
        # Warm up until about every worker has had a response (its connection is open),
        # within a cap: a client that collapses still gets measured.
        with trio.move_on_after(_WARMUP_CAP[0]):
            while counter[0] < concurrency:  # noqa: ASYNC110 - no per-request Event cost
                await trio.sleep(0.01)
        await trio.sleep(warmup)
        start_count, start, cpu = counter[0], time.perf_counter(), time.process_time()
        await trio.sleep(window)
        done, elapsed = counter[0] - start_count, time.perf_counter() - start
        cpu = time.process_time() - cpu
        if report:  # a child process: print the cell and leave without any teardown
            print(json.dumps([done / elapsed, counter[1], cpu / max(done, 1)]), flush=True)
            os._exit(0)
        nursery.cancel_scope.cancel()
    return done / elapsed, counter[1], cpu / max(done, 1)


def _run_trio_pool(port: int, n: int, warmup: float, window: float) -> Cell:
    url = f"http://{HOST}:{port}/"

    async def main() -> Cell:
        async with trio_pool.open_pool(max_size=n, acquire_timeout=None) as pool:
            client = HTTPClient(pool)

            async def worker(counter: list[int]) -> None:
                request = client.request
                while True:
                    try:
                        await request("GET", url)
                        counter[0] += 1
                    except trio_pool.PoolError:
                        counter[1] += 1

            return await _measure(worker, n, warmup, window)

    return trio.run(main)


def _httpx_worker(client: Any, url: str) -> Callable[[list[int]], Awaitable[None]]:
    """A benchmark worker: GET ``url`` with an httpx client forever, counting
    ``[successes, errors]``."""
    import httpx

    async def worker(counter: list[int]) -> None:
        while True:
            try:
                response = await client.get(url)
                response.content  # noqa: B018 - read already
                counter[0] += 1
            except httpx.HTTPError:
                counter[1] += 1
                await trio.lowlevel.checkpoint()

    return worker


def client_worker(client: HTTPClient, url: str) -> Callable[[list[int]], Awaitable[None]]:
    """A benchmark worker: GET ``url`` with ``client`` forever, counting
    ``[successes, errors]`` (an error is a checkpoint, so a failing server cannot
    starve the scheduler)."""

    async def worker(counter: list[int]) -> None:
        request = client.request
        while True:
            try:
                await request("GET", url)
                counter[0] += 1
            except (trio_pool.PoolError, HTTPError):
                counter[1] += 1
                await trio.lowlevel.checkpoint()

    return worker


def _run_httpx(port: int, n: int, warmup: float, window: float, *, ours: bool) -> Cell:
    import httpx

    url = f"http://{HOST}:{port}/"

    async def main() -> Cell:
        async with trio_pool.open_pool(max_size=n, acquire_timeout=None) as pool:
            transport: httpx.AsyncBaseTransport | None = None
            if ours:
                from trio_pool.httpx import PoolTransport

                transport = PoolTransport(pool)
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            async with httpx.AsyncClient(
                transport=transport, limits=limits, timeout=None
            ) as client:
                return await _measure(_httpx_worker(client, url), n, warmup, window)

    return trio.run(main)


def cell_entry(client: str, n: int, cell: Cell, **labels: str) -> tuple[str, dict[str, Any]]:
    """One measured cell as its table text (req/s, errors) and its JSON record."""
    value, errors, seconds = cell
    text = f"{value:,.0f}" + (f" ({errors} err)" if errors else "")
    record = {
        **labels,
        "client": client,
        "concurrency": n,
        "requests_per_second": value,
        "errors": errors,
        "cpu_us_per_request": seconds * 1e6,
    }
    return text, record


def child_cell(module: str, argv: list[str], warmup: float, window: float) -> Cell:
    """Run ``python -m benchmarks.<module> httpcore-cell <argv>``: a cell in a child process
    that reports right after the window and exits without tearing down (at high
    concurrency httpcore's teardown alone can take a minute). A child that overruns the
    cap is killed and reported as 0 req/s."""
    cap = _WARMUP_CAP[0] + warmup + window + 20.0
    command = [sys.executable, "-m", f"benchmarks.{module}", "httpcore-cell", *argv]
    try:
        out = subprocess.run(
            command,
            check=True,
            capture_output=True,
            text=True,
            timeout=cap,
            cwd=Path(__file__).resolve().parent.parent,
        )
    except subprocess.TimeoutExpired:
        return 0.0, 0, 0.0
    rate, errors, seconds = json.loads(out.stdout.strip().splitlines()[-1])
    return float(rate), int(errors), float(seconds)


def _run_httpcore(port: int, n: int, warmup: float, window: float) -> Cell:
    """httpx's default transport (httpcore), in a child process (:func:`child_cell`)."""
    argv = [str(port), str(n), str(warmup), str(window), str(_WARMUP_CAP[0])]
    return child_cell("bench_http", argv, warmup, window)


def _httpcore_cell(argv: list[str]) -> None:
    port, n = int(argv[0]), int(argv[1])
    warmup, window, _WARMUP_CAP[0] = float(argv[2]), float(argv[3]), float(argv[4])
    raise_nofile(20_000)
    import httpx

    url = f"http://{HOST}:{port}/"

    async def main() -> None:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        client = httpx.AsyncClient(limits=limits, timeout=None)

        await _measure(_httpx_worker(client, url), n, warmup, window, report=True)

    trio.run(main)


def _run_ceiling(port: int, n: int, warmup: float, window: float) -> Cell:
    async def worker(counter: list[int]) -> None:
        stream = await trio.open_tcp_stream(HOST, port)
        try:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(method="GET", target="/", headers=[("Host", f"{HOST}:{port}")])
            end = h11.EndOfMessage()
            need_data, end_type = h11.NEED_DATA, h11.EndOfMessage
            while True:
                await stream.send_all((conn.send(request) or b"") + (conn.send(end) or b""))
                while True:
                    event = conn.next_event()
                    if event is need_data:
                        conn.receive_data(await stream.receive_some(65536))
                    elif type(event) is end_type:
                        break
                conn.start_next_cycle()
                counter[0] += 1
        finally:
            stream.socket.close()

    async def main() -> Cell:
        return await _measure(worker, n, warmup, window)

    return trio.run(main)


_AIOHTTP_SCRIPT = r"""
import asyncio, json, sys, time, resource
import aiohttp

port, concurrencies, warmup, window, warmup_cap = json.loads(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(20000, hard), hard))
url = f"http://127.0.0.1:{port}/"

async def cell(n):
    counter = [0, 0]
    connector = aiohttp.TCPConnector(limit=n, limit_per_host=n)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker():
            while True:
                try:
                    async with session.get(url) as response:
                        await response.read()
                    counter[0] += 1
                except aiohttp.ClientError:
                    counter[1] += 1
        tasks = [asyncio.ensure_future(worker()) for _ in range(n)]
        deadline = time.monotonic() + warmup_cap
        while counter[0] < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(warmup)
        c0, t0, cpu = counter[0], time.perf_counter(), time.process_time()
        await asyncio.sleep(window)
        done, elapsed = counter[0] - c0, time.perf_counter() - t0
        cpu = time.process_time() - cpu
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return done / elapsed, counter[1], cpu / max(done, 1)

results = {}
for n in concurrencies:
    results[n] = asyncio.run(cell(n))
print(json.dumps(results))
"""


def _run_aiohttp(
    port: int, concurrencies: tuple[int, ...], warmup: float, window: float
) -> dict[int, Cell]:
    args = json.dumps([port, list(concurrencies), warmup, window, _WARMUP_CAP[0]])
    out = subprocess.run(
        [sys.executable, "-c", _AIOHTTP_SCRIPT, args],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return {int(k): (v[0], v[1], v[2]) for k, v in json.loads(out.stdout).items()}


# -- the benchmark -----------------------------------------------------------------------------


def run(quick: bool = False) -> dict[str, Any]:
    """Measure every client at every concurrency; print the tables and the ratios."""
    raise_nofile(20_000)
    warmup, window = (0.1, 0.4) if quick else (0.5, 1.5)
    _WARMUP_CAP[0] = 2.0 if quick else 3.0
    rounds = 1 if quick else 2
    concurrencies = CONCURRENCIES[:2] if quick else CONCURRENCIES
    best: dict[tuple[str, int], Cell] = {}
    have_aiohttp = importlib.util.find_spec("aiohttp") is not None
    if not have_aiohttp:
        print("aiohttp is not installed: its row stays 0 and its ratios are left out")

    def keep(name: str, n: int, result: Cell) -> None:
        if (name, n) not in best or result[0] > best[(name, n)][0]:
            best[(name, n)] = result

    with nginx_server() as port:
        for _ in range(rounds):
            for n in concurrencies:
                keep("h11 ceiling", n, _run_ceiling(port, n, warmup, window))
                keep("trio_pool.http", n, _run_trio_pool(port, n, warmup, window))
                keep("httpx+PoolTransport", n, _run_httpx(port, n, warmup, window, ours=True))
                keep("httpx (httpcore)", n, _run_httpcore(port, n, warmup, window))
            if have_aiohttp:
                for n, result in _run_aiohttp(port, concurrencies, warmup, window).items():
                    keep("aiohttp", n, result)
            else:
                for n in concurrencies:
                    keep("aiohttp", n, (0.0, 0, 0.0))

    def rps(name: str, n: int) -> float:
        return max(best[(name, n)][0], 1e-9)

    def cpu(name: str, n: int) -> float:
        return max(best[(name, n)][2], 1e-12)

    rows = []
    results = []
    for name in CLIENTS:
        row: list[object] = [name]
        for n in concurrencies:
            text, record = cell_entry(name, n, best[(name, n)])
            row.append(text)
            results.append(record)
        row.extend(f"{cpu(name, n) * 1e6:.0f}" for n in concurrencies)
        rows.append(row)
    print_table(
        f"HTTP GET vs nginx: req/s and client CPU us/request (best of {rounds}, {window} s)",
        ["client", *(f"c={n}" for n in concurrencies), *(f"us@{n}" for n in concurrencies)],
        rows,
    )
    ours = "trio_pool.http"
    ratios: dict[str, float] = {}
    targets: dict[str, str] = {}
    for n in concurrencies:
        ratios[f"{ours}/ceiling@{n}"] = rps(ours, n) / rps("h11 ceiling", n)
        targets[f"{ours}/ceiling@{n}"] = ">= 0.8"
        # The same comparison in CPU per request: steadier on a busy machine.
        ratios[f"{ours}/ceiling_cpu@{n}"] = cpu("h11 ceiling", n) / cpu(ours, n)
    collapsed = [n for n in concurrencies if best[("httpx (httpcore)", n)][0] == 0]
    for n in concurrencies:
        if n not in collapsed:
            ratios[f"{ours}/httpcore@{n}"] = rps(ours, n) / rps("httpx (httpcore)", n)
    targets[f"{ours}/httpcore@100"] = ">= 50"
    for n in concurrencies if have_aiohttp else ():
        ratios[f"{ours}/aiohttp@{n}"] = rps(ours, n) / rps("aiohttp", n)
        targets[f"{ours}/aiohttp@{n}"] = ">= 1.0 (aim)"
    for n in concurrencies:
        if n not in collapsed:
            ratios[f"PoolTransport/httpcore@{n}"] = rps("httpx+PoolTransport", n) / rps(
                "httpx (httpcore)", n
            )
    print_table(
        "ratios (x_cpu: ceiling CPU per request / ours; > 1 would beat the ceiling)",
        ["ratio", "value", "target"],
        [[key, f"{value:.2f}x", targets.get(key, "")] for key, value in ratios.items()],
    )
    for n in collapsed:
        print(f"httpx (httpcore) at c={n}: no request completed in the window (collapsed)")
    return {"name": "http", "results": results, "ratios": ratios}


def profile() -> None:
    """cProfile of trio_pool.http at concurrency 100 (the client side only)."""
    import cProfile
    import pstats

    with nginx_server() as port:
        profiler = cProfile.Profile()
        profiler.enable()
        rate = _run_trio_pool(port, 100, 0.3, 3.0)[0]
        profiler.disable()
    print(f"trio_pool.http at c=100 under the profiler: {rate:,.0f} req/s")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    if sys.argv[1:2] == ["profile"]:
        profile()
    elif sys.argv[1:2] == ["httpcore-cell"]:
        _httpcore_cell(sys.argv[2:])
    else:
        run(quick="--quick" in sys.argv)
