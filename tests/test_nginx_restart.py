"""A real peer that goes away (issue 7): the HTTP client against nginx while nginx is
reloaded (``nginx -s reload``) and restarted mid-traffic.

A reload makes the old workers close their idle keep-alive connections: pooled
connections die under the client, which must notice (health check at hand-out) or retry
(a reused connection that dies before answering). A restart (graceful stop, then a new
nginx on the same port) adds a moment when connects are refused; that is the only
failure a caller may see, and the test's callers retry it, as any caller of an
idempotent request would. No stale connection may ever surface as a read or write error,
every request must get its complete, correct response, and the pool must end with
nothing in use and its invariant intact.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import trio

import trio_pool
from trio_pool.http import HTTPClient, HTTPError

from .nginx import TEXT, Nginx, find_nginx, open_nginx

pytestmark = pytest.mark.nginx

HOST = "127.0.0.1"
WORKERS = 8
REQUESTS = 600


async def start_again(nginx: Nginx) -> trio.Process:
    """Start a new nginx with the same root, config and port; wait until it accepts."""
    binary = find_nginx()
    assert binary is not None
    log_fd = os.open(nginx.root / "nginx.stderr", os.O_WRONLY | os.O_APPEND)
    try:
        process = await trio.lowlevel.open_process(
            [binary, "-p", str(nginx.root), "-c", str(nginx.conf_path), "-e", "stderr"],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
        )
    finally:
        os.close(log_fd)
    try:
        with trio.fail_after(10):
            while True:
                if process.returncode is not None:
                    raise RuntimeError("nginx did not start again:\n" + nginx.stderr())
                try:
                    stream = await trio.open_tcp_stream(HOST, nginx.port)
                except OSError:
                    await trio.sleep(0.01)
                else:
                    await stream.aclose()
                    return process
    except BaseException:
        await stop(process)
        raise


async def stop(process: trio.Process) -> None:
    """Graceful stop (SIGQUIT: workers finish their requests), then harder if needed."""
    with trio.CancelScope(shield=True):
        for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGKILL):
            if process.returncode is not None:
                break
            process.send_signal(sig)
            with trio.move_on_after(5):
                await process.wait()
        await process.wait()


class Traffic:
    """``WORKERS`` tasks sending ``REQUESTS`` GETs in all; failures counted by kind."""

    def __init__(self, client: HTTPClient, nginx: Nginx, requests: int = REQUESTS) -> None:
        self.client = client
        self.nginx = nginx
        self.remaining = requests
        self.done = 0
        # Connects refused, or new connections reset unanswered, while nginx was down:
        # retried by the caller. A stale pooled connection must never surface.
        self.refused = 0
        self.surfaced: Counter[str] = Counter()  # anything else: must stay empty
        self.progress = trio.Event()

    async def worker(self) -> None:
        urls = [self.nginx.url("/text"), self.nginx.url("/")]
        expected = {urls[0]: TEXT, urls[1]: b"ok"}
        while self.remaining > 0:
            self.remaining -= 1
            url = urls[self.remaining % 2]
            while True:
                try:
                    response = await self.client.request("GET", url, timeout=10)
                except trio_pool.ConnectError:
                    self.refused += 1
                    await trio.sleep(0.005)
                    continue
                except HTTPError as exc:
                    if exc.connection_reused is False:
                        # A new connection reset before answering: it sat in the accept
                        # queue of an nginx that was stopping. Like a refusal, retried.
                        self.refused += 1
                        await trio.sleep(0.005)
                        continue
                    self.surfaced[type(exc).__name__] += 1
                    break
                except (trio_pool.PoolError, OSError) as exc:
                    self.surfaced[type(exc).__name__] += 1
                    break
                assert response.status == 200
                assert response.content == expected[url]
                break
            self.done += 1
            if self.done % 50 == 0:
                self.progress.set()
                self.progress = trio.Event()

    def stop(self) -> None:
        """Send no more requests (those in flight complete)."""
        self.remaining = 0

    async def wait_for(self, done: int) -> None:
        while self.done < done and self.remaining > 0:
            await self.progress.wait()


def check_pool(pool: trio_pool.ConnectionPool) -> trio_pool.PoolStatistics:
    stats = pool.statistics()
    assert stats.active_connections == 0
    assert stats.tasks_waiting == 0
    assert stats.connecting == 0
    assert stats.connections_created - stats.connections_closed == stats.idle_connections
    return stats


async def test_reload_mid_traffic(tmp_path: Path) -> None:
    # Long keep-alive so that connections outlive each reload and go stale in the pool.
    async with (
        open_nginx(tmp_path, keepalive_timeout="60s", keepalive_requests=10_000) as nginx,
        trio_pool.open_pool(max_size=WORKERS) as pool,
    ):
        client = HTTPClient(pool)
        # Traffic runs until stopped: `nginx -s reload` only signals the master, and on a
        # busy machine a fixed number of requests could all finish before the old
        # workers close anything.
        traffic = Traffic(client, nginx, requests=100 * REQUESTS)
        reloads = 0
        async with trio.open_nursery() as nursery:
            for _ in range(WORKERS):
                nursery.start_soon(traffic.worker)
            for step in range(1, 5):
                await traffic.wait_for(step * REQUESTS // 5)
                closed = pool.statistics().connections_closed
                await nginx.reload()
                reloads += 1
                # The old workers close their keep-alive connections; the pool notices.
                with trio.fail_after(30):
                    while pool.statistics().connections_closed == closed:
                        await traffic.progress.wait()
            await traffic.wait_for(traffic.done + REQUESTS // 5)
            traffic.stop()
        stats = check_pool(pool)
        assert traffic.done >= REQUESTS
        assert traffic.surfaced == Counter(), traffic.surfaced
        assert traffic.refused == 0  # a reload never stops listening
        # The reloads really killed pooled connections: more were opened than fit.
        assert stats.connections_created > WORKERS, stats
        # And after the last reload, the pool still reuses connections.
        before = pool.statistics().pool_hits
        for _ in range(3):
            assert (await client.request("GET", nginx.url("/"))).content == b"ok"
        assert pool.statistics().pool_hits > before
    assert reloads == 4


async def test_restart_mid_traffic(tmp_path: Path) -> None:
    async with open_nginx(tmp_path, keepalive_timeout="60s", keepalive_requests=10_000) as nginx:
        processes: list[trio.Process] = []
        try:
            async with trio_pool.open_pool(max_size=WORKERS, connection_timeout=2.0) as pool:
                client = HTTPClient(pool)
                traffic = Traffic(client, nginx)
                async with trio.open_nursery() as nursery:
                    for _ in range(WORKERS):
                        nursery.start_soon(traffic.worker)
                    for step in (1, 3):
                        await traffic.wait_for(step * REQUESTS // 5)
                        current = processes[-1] if processes else nginx.process
                        await stop(current)  # graceful stop: idle keep-alives are closed
                        processes.append(await start_again(nginx))
                stats = check_pool(pool)
                assert traffic.done == REQUESTS
                assert traffic.surfaced == Counter(), traffic.surfaced
                assert stats.connections_created > WORKERS, stats
                response = await client.request("GET", nginx.url("/text"))
                assert response.content == TEXT
        finally:
            for process in processes:
                await stop(process)
