"""Requests per second through a real tinyproxy: trio_pool against httpcore's proxy.

One nginx origin (``return 200 "ok"``, plain and TLS listeners, its own process) and one
tinyproxy (its own process, ``CONNECT`` allowed to the TLS port), both on 127.0.0.1 and
started here; every client measured in the same run against the same pair:

- ``trio_pool.http``: :class:`trio_pool.http.HTTPClient` with ``proxy=``;
- ``httpx+PoolTransport``: httpx over :class:`trio_pool.httpx.PoolTransport` with
  ``proxy=``;
- ``httpx (httpcore)``: ``httpx.AsyncClient(proxy=...)``, httpcore's own proxy, on trio.

Two routes:

- ``https`` (``CONNECT``): each connection is a tunnel through tinyproxy with TLS to
  nginx inside it. Pooled tunnels are reused: this is where pooling pays.
- ``http`` (forwarding): requests in absolute form to tinyproxy, which opens a
  connection to nginx per request and closes its client side after each response
  (tinyproxy does not keep forwarded connections alive), so every request costs a new
  connection for every client: the ratio here shows the per-request client cost only.

Each cell: N tasks loop for a warm-up and a measuring window (the rate counts the window
only). Without tinyproxy (``apt-get install tinyproxy``) or nginx, the benchmark is
skipped with a note. The ratios are ``trio_pool.http`` (and the transport) over httpcore
per route and concurrency.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
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
    free_port,
)

CONCURRENCIES = (1, 10, 50)
CLIENTS = ("trio_pool.http", "httpx+PoolTransport", "httpx (httpcore)")
ROUTES = ("https", "http")


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, name: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} failed:\n" + log.read_text(errors="replace"))
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextmanager
def _process(argv: list[str], root: Path, port: int, name: str, stop: int) -> Iterator[None]:
    log_path = root / f"{name}.stderr"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            _wait_listening(port, process, log_path, name)
            yield
        finally:
            process.send_signal(stop)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def origin_and_proxy(tls: Tls) -> Iterator[tuple[int, int, int]]:
    """nginx (plain and TLS ports) and tinyproxy in front of it: ``(http_port,
    https_port, proxy_port)``."""
    nginx = _nginx_binary()
    tinyproxy = shutil.which("tinyproxy") or (
        "/usr/bin/tinyproxy" if os.access("/usr/bin/tinyproxy", os.X_OK) else None
    )
    if nginx is None or tinyproxy is None:
        raise LookupError("nginx" if nginx is None else "tinyproxy")
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        root = Path(tmp)
        http_port, https_port, proxy_port = free_port(), free_port(), free_port()
        user = "user root;\n" if os.geteuid() == 0 else ""
        (root / "nginx.conf").write_text(
            f"daemon off;\nmaster_process on;\nworker_processes 1;\n{user}"
            f"worker_rlimit_nofile 65536;\nerror_log stderr warn;\npid {root}/nginx.pid;\n"
            "events { worker_connections 16384; }\n"
            "http {\n  access_log off;\n  default_type text/plain;\n"
            f"  client_body_temp_path {root}/body;\n  proxy_temp_path {root}/proxy;\n"
            f"  fastcgi_temp_path {root}/fcgi;\n  uwsgi_temp_path {root}/uwsgi;\n"
            f"  scgi_temp_path {root}/scgi;\n"
            "  keepalive_timeout 300s;\n  keepalive_requests 100000000;\n"
            f"  ssl_certificate {tls.certfile};\n  ssl_certificate_key {tls.certfile};\n"
            "  ssl_session_cache shared:bench:1m;\n"
            f"  server {{\n    listen {HOST}:{http_port} backlog=4096;\n"
            f"    listen {HOST}:{https_port} ssl backlog=4096;\n"
            '    location / { return 200 "ok"; }\n  }\n}\n'
        )
        (root / "tinyproxy.conf").write_text(
            f"Port {proxy_port}\nListen {HOST}\nTimeout 60\nAllow {HOST}\n"
            f'LogFile "{root}/tinyproxy.log"\nLogLevel Error\nPidFile "{root}/tinyproxy.pid"\n'
            f"MaxClients 256\nDisableViaHeader Yes\nConnectPort {https_port}\n"
        )
        nginx_argv = [nginx, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", "stderr"]
        tinyproxy_argv = [tinyproxy, "-d", "-c", str(root / "tinyproxy.conf")]
        with (
            _process(nginx_argv, root, http_port, "nginx", signal.SIGQUIT),
            _process(tinyproxy_argv, root, proxy_port, "tinyproxy", signal.SIGTERM),
        ):
            yield http_port, https_port, proxy_port


def _run_ours(
    url: str, proxy: str, context: ssl.SSLContext, n: int, warmup: float, window: float
) -> Cell:
    async def main() -> Cell:
        async with trio_pool.open_pool(max_size=n, acquire_timeout=None) as pool:
            client = HTTPClient(pool, proxy=proxy, ssl_context=context, timeout=None)

            async def worker(counter: list[int]) -> None:
                request = client.request
                while True:
                    try:
                        await request("GET", url)
                        counter[0] += 1
                    except trio_pool.PoolError:
                        counter[1] += 1
                        await trio.lowlevel.checkpoint()

            return await _measure(worker, n, warmup, window)

    return trio.run(main)


def _run_httpx(
    url: str,
    proxy: str,
    context: ssl.SSLContext,
    n: int,
    warmup: float,
    window: float,
    *,
    ours: bool,
) -> Cell:
    import httpx

    async def main() -> Cell:
        async with trio_pool.open_pool(max_size=n, acquire_timeout=None) as pool:
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            if ours:
                from trio_pool.httpx import PoolTransport

                transport = PoolTransport(pool, proxy=proxy, ssl_context=context)
                client = httpx.AsyncClient(transport=transport, timeout=None)
            else:
                client = httpx.AsyncClient(proxy=proxy, verify=context, limits=limits, timeout=None)
            async with client:
                return await _measure(_httpx_worker(client, url), n, warmup, window)

    return trio.run(main)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure every client on both routes; print the table and the ratios."""
    raise_nofile(20_000)
    warmup, window = (0.1, 0.5) if quick else (0.5, 2.0)
    _WARMUP_CAP[0] = 2.0 if quick else 3.0
    rounds = 1 if quick else 2
    concurrencies = CONCURRENCIES[:2] if quick else CONCURRENCIES
    best: dict[tuple[str, str, int], Cell] = {}
    with tls_files() as tls:
        try:
            servers = origin_and_proxy(tls)
            http_port, https_port, proxy_port = servers.__enter__()
        except LookupError as missing:
            note = f"{missing.args[0]} is not installed: bench_proxy skipped"
            print(note)
            return {"skipped": note, "ratios": {}}
        try:
            context = tls.client_context()
            proxy = f"http://{HOST}:{proxy_port}"
            urls = {"https": f"https://{HOST}:{https_port}/", "http": f"http://{HOST}:{http_port}/"}
            for _ in range(rounds):
                for route in ROUTES:
                    url = urls[route]
                    for n in concurrencies:
                        cells = {
                            "trio_pool.http": _run_ours(url, proxy, context, n, warmup, window),
                            "httpx+PoolTransport": _run_httpx(
                                url, proxy, context, n, warmup, window, ours=True
                            ),
                            "httpx (httpcore)": _run_httpx(
                                url, proxy, context, n, warmup, window, ours=False
                            ),
                        }
                        for name, cell in cells.items():
                            key = (route, name, n)
                            if key not in best or cell[0] > best[key][0]:
                                best[key] = cell
        finally:
            servers.__exit__(None, None, None)

    rows = []
    results = []
    for route in ROUTES:
        for name in CLIENTS:
            row: list[object] = [f"{route}: {name}"]
            for n in concurrencies:
                text, record = cell_entry(name, n, best[(route, name, n)], route=route)
                row.append(text)
                results.append(record)
            row.extend(f"{best[(route, name, n)][2] * 1e6:.0f}" for n in concurrencies)
            rows.append(row)
    print_table(
        f"GET through tinyproxy: req/s and client CPU us/request (best of {rounds}, {window} s)",
        ["route: client", *(f"c={n}" for n in concurrencies), *(f"us@{n}" for n in concurrencies)],
        rows,
    )

    def rps(route: str, name: str, n: int) -> float:
        return max(best[(route, name, n)][0], 1e-9)

    ratios: dict[str, float] = {}
    for route in ROUTES:
        for n in concurrencies:
            base = rps(route, "httpx (httpcore)", n)
            ratios[f"trio_pool.http/httpcore@{route},{n}"] = rps(route, "trio_pool.http", n) / base
            ratios[f"PoolTransport/httpcore@{route},{n}"] = (
                rps(route, "httpx+PoolTransport", n) / base
            )
    print_table(
        "ratios (same run; baseline httpx (httpcore) through the same tinyproxy)",
        ["ratio", "value"],
        [(name, f"{value:.2f}") for name, value in ratios.items()],
    )
    return {
        "quick": quick,
        "window_seconds": window,
        "rounds": rounds,
        "results": results,
        "ratios": ratios,
    }


if __name__ == "__main__":
    run(quick=True)
