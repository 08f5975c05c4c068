"""HTTP/2 through the pool: shared leases (a stream each) on multiplexed connections,
through HTTPClient(http2=...) and PoolTransport(http2=...), against hypercorn (TLS +
ALPN, and h2c), nginx (http2 on TLS, and without http2: ALPN falls back to HTTP/1.1)
and raw h2 fault servers."""

from __future__ import annotations

import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import h2.settings
import httpx
import pytest
import trio
import trustme

import trio_pool
from trio_pool.http import DEFAULT_TIMEOUT, HTTPClient, StreamReset, Timeout

from .checks import assert_settled, settle_connects
from .h2servers import App, H2Server, ServerStream, open_nginx_h2, start_hypercorn, write_cert
from .nginx import free_port, open_nginx, require_nginx
from .servers import HOST, open_fds

MAX_STREAMS = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert(HOST)


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


StartH2 = Callable[..., Awaitable[tuple[H2Server, int]]]
StartApp = Callable[..., Awaitable[int]]
OpenClient = Callable[..., AbstractAsyncContextManager[tuple[trio_pool.ConnectionPool, HTTPClient]]]


@pytest.fixture
def start_h2(nursery: trio.Nursery) -> StartH2:
    """Starts a raw h2 server for the test (:class:`H2Server`'s keywords); returns it
    and its port."""

    async def start(**settings: Any) -> tuple[H2Server, int]:
        server = H2Server(**settings)
        return server, await server.start(nursery)

    return start


@pytest.fixture
async def start_app(
    nursery: trio.Nursery, cert: trustme.LeafCert, tmp_path: Path
) -> AsyncIterator[StartApp]:
    """Serves an :class:`App` with hypercorn for the test, shut down after it: with
    ``tls=True`` on TLS with ALPN (the test CA's certificate), else plain (HTTP/1.1 and
    h2c); other keywords go to :func:`start_hypercorn`. Returns the port."""
    shutdowns: list[trio.Event] = []

    async def start(app: App, *, tls: bool = False, **options: int) -> int:
        cert_files = write_cert(cert, tmp_path) if tls else None
        port, shutdown = await start_hypercorn(nursery, app, cert_files=cert_files, **options)
        shutdowns.append(shutdown)
        return port

    yield start
    for shutdown in shutdowns:
        shutdown.set()


@pytest.fixture
def open_client(ca: trustme.CA) -> OpenClient:
    """Opens a pool (:func:`trio_pool.open_pool`'s keywords) with an HTTP/2 client on it:
    h2c by prior knowledge, or with ``tls=True`` HTTP/2 by ALPN with a context trusting
    the test CA; ``timeout`` is the client's."""

    @asynccontextmanager
    async def open_client(
        *, tls: bool = False, timeout: float | Timeout | None = DEFAULT_TIMEOUT, **config: Any
    ) -> AsyncIterator[tuple[trio_pool.ConnectionPool, HTTPClient]]:
        async with trio_pool.open_pool(**config) as pool:
            if tls:
                client = HTTPClient(pool, http2=True, ssl_context=trusting(ca), timeout=timeout)
            else:
                client = HTTPClient(pool, http2="prior-knowledge", timeout=timeout)
            yield pool, client

    return open_client


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - state of a server
            await trio.sleep(0.01)
    assert condition(), what


async def settled(pool: trio_pool.ConnectionPool) -> None:
    await settle_connects(pool)
    await wait_until(lambda: pool.statistics().http2_streams == 0, "no stream open")
    assert_settled(pool)


def holding(release: trio.Event) -> Callable[[ServerStream], object]:
    async def hold(stream: ServerStream) -> None:
        await release.wait()
        await stream.respond(b"held")

    return hold


# -- real peers -------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [True, False], ids=["tls-alpn", "h2c"])
async def test_hypercorn_requests_share_one_connection(
    tls: bool, ca: trustme.CA, start_app: StartApp
) -> None:
    app = App()
    port = await start_app(app, tls=tls)
    scheme = "https" if tls else "http"
    async with trio_pool.open_pool(max_size=10) as pool:
        client = HTTPClient(
            pool, http2=True if tls else "prior-knowledge", ssl_context=trusting(ca)
        )
        statuses: list[tuple[int, str, int]] = []

        async def one(path: str) -> None:
            response = await client.request("GET", f"{scheme}://{HOST}:{port}{path}")
            statuses.append((response.status, response.http_version, len(response.content)))

        async with trio.open_nursery() as inner:
            for _ in range(40):
                inner.start_soon(one, "/slow/4000")
        assert statuses == [(200, "2", 4000)] * 40
        stats = pool.statistics()
        assert stats.connections_created == 1  # a cold burst opened ONE connection
        assert stats.http2_connections == 1
        assert app.max_in_flight > 1  # really concurrent on it
        assert app.http_versions == {"2"}
        assert stats.pool_hits + stats.pool_misses == 40
        await settled(pool)
        assert pool.statistics().idle_connections == 1
        # streamed: the body read piece by piece
        async with client.stream("GET", f"{scheme}://{HOST}:{port}/size/300000") as response:
            assert response.http_version == "2"
            body = b"".join([chunk async for chunk in response.aiter_bytes()])
        assert len(body) == 300_000
        await settled(pool)


async def test_nginx_http2_and_alpn_fallback(
    tmp_path: Path, cert: trustme.LeafCert, open_client: OpenClient
) -> None:
    require_nginx()
    async with (
        open_nginx_h2(tmp_path, cert) as (_nginx, port),
        open_client(tls=True) as (pool, client),
    ):
        results: list[tuple[int, str, int]] = []

        async def one() -> None:
            response = await client.request("GET", f"https://{HOST}:{port}/files/mid")
            results.append((response.status, response.http_version, len(response.content)))

        async with trio.open_nursery() as inner:
            for _ in range(30):
                inner.start_soon(one)
        assert results == [(200, "2", 100_000)] * 30
        assert pool.statistics().connections_created == 1
        await settled(pool)


async def test_alpn_falls_back_to_http11(
    tmp_path: Path, cert: trustme.LeafCert, open_client: OpenClient
) -> None:
    require_nginx()
    chain, key = write_cert(cert, tmp_path / "certs")
    port = free_port()
    server = f"""
    server {{
        listen {HOST}:{port} ssl;
        ssl_certificate {chain};
        ssl_certificate_key {key};
        location = / {{ return 200 "plain"; }}
    }}
"""
    async with (
        open_nginx(tmp_path, extra_servers=server, keepalive_requests=1000),
        open_client(tls=True, max_size=4) as (pool, client),
    ):
        results: list[tuple[int, str, bytes]] = []

        async def one() -> None:
            response = await client.request("GET", f"https://{HOST}:{port}/")
            results.append((response.status, response.http_version, response.content))

        async with trio.open_nursery() as inner:
            for _ in range(12):
                inner.start_soon(one)
        assert results == [(200, "1.1", b"plain")] * 12
        stats = pool.statistics()
        assert stats.http2_connections == 0
        assert stats.connections_created > 1  # HTTP/1.1: one request per connection
        await settled(pool)


async def test_httpx_transport_http2(ca: trustme.CA, start_app: StartApp) -> None:
    from trio_pool.httpx import PoolTransport

    app = App()
    port = await start_app(app, tls=True)
    async with trio_pool.open_pool() as pool:
        transport = PoolTransport(pool, http2=True, ssl_context=trusting(ca))
        async with httpx.AsyncClient(transport=transport) as client:
            responses = []

            async def one() -> None:
                responses.append(await client.get(f"https://{HOST}:{port}/size/1000"))

            async with trio.open_nursery() as inner:
                for _ in range(20):
                    inner.start_soon(one)
            assert {(r.status_code, r.http_version, len(r.content)) for r in responses} == {
                (200, "HTTP/2", 1000)
            }
        assert pool.statistics().connections_created == 1
        await settled(pool)


# -- stream limits ----------------------------------------------------------------------


async def test_full_connection_opens_another_within_max_size(
    start_h2: StartH2, open_client: OpenClient
) -> None:
    release = trio.Event()
    server, port = await start_h2(max_concurrent_streams=3, routes={"/hold": holding(release)})
    async with open_client(max_size=3) as (pool, client):
        statuses: list[int] = []

        async def one() -> None:
            statuses.append((await client.request("GET", f"http://{HOST}:{port}/hold")).status)

        async with trio.open_nursery() as inner:
            for _ in range(12):
                inner.start_soon(one)
            await wait_until(lambda: server.open == 9, "three full connections")
            await trio.sleep(0.05)
            stats = pool.statistics()
            assert len(server.connections) == 3  # max_size
            assert stats.http2_connections == 3
            assert stats.http2_streams == 9
            assert stats.tasks_waiting == 3
            assert server.max_open == 9  # h2 on the server side fails a 4th stream
            release.set()
        assert statuses == [200] * 12
        assert len(server.connections) == 3
        await settled(pool)


async def test_peer_lowering_its_limit_is_honoured(
    start_h2: StartH2, open_client: OpenClient
) -> None:
    release = trio.Event()
    server, port = await start_h2(max_concurrent_streams=5, routes={"/hold": holding(release)})
    async with open_client(max_size=1) as (pool, client):
        statuses: list[int] = []

        async def one(path: str) -> None:
            statuses.append((await client.request("GET", f"http://{HOST}:{port}{path}")).status)

        async with trio.open_nursery() as inner:
            for _ in range(5):
                inner.start_soon(one, "/hold")
            await wait_until(lambda: server.open == 5, "five streams open")
            await server.connections[0].update_settings({MAX_STREAMS: 2})
            server.limit_after_ack = 2
            for _ in range(10):
                inner.start_soon(one, "/")
            await trio.sleep(0.05)
            assert server.requests == 5  # the others wait: 5 open is over the new limit
            assert pool.statistics().tasks_waiting == 10
            release.set()
        assert statuses == [200] * 15
        assert server.max_open_after_ack <= 2
        assert len(server.connections) == 1
        await settled(pool)


# -- GOAWAY, RST_STREAM ---------------------------------------------------------------------


async def test_goaway_mid_flight_retries_above_last_stream_id(
    start_h2: StartH2, open_client: OpenClient
) -> None:
    release = trio.Event()
    server, port = await start_h2(routes={"/hold": holding(release)})
    async with open_client(max_size=2) as (pool, client):
        bodies: list[bytes] = []

        async def one() -> None:
            # POST: not idempotent, still retried (the server never processed it)
            response = await client.request("POST", f"http://{HOST}:{port}/hold", content=b"x")
            bodies.append(response.content)

        async with trio.open_nursery() as inner:
            for index in range(4):
                inner.start_soon(one)
                await wait_until(lambda i=index: server.open == i + 1, "stream open")  # type: ignore[misc]
            first = server.connections[0]
            await first.goaway(last_stream_id=3)  # streams 1 and 3 complete, 5 and 7 retried
            await wait_until(lambda: len(server.connections) == 2, "retried on a new connection")
            await trio.sleep(0.02)
            release.set()
        assert bodies == [b"held"] * 4
        assert server.requests == 6  # 4 + 2 retried
        await settled(pool)
        stats = pool.statistics()
        assert stats.http2_connections == 1  # the one that went away is closed
        # and never given a new stream
        assert (await client.request("GET", f"http://{HOST}:{port}/")).status == 200
        assert len(server.connections) == 2


async def test_rst_stream_fails_only_that_request(
    start_h2: StartH2, open_client: OpenClient
) -> None:
    release = trio.Event()

    async def reset(stream: ServerStream) -> None:
        await stream.reset_stream()

    server, port = await start_h2(routes={"/hold": holding(release), "/reset": reset})
    async with open_client() as (pool, client):
        held: list[int] = []

        async def hold() -> None:
            held.append((await client.request("GET", f"http://{HOST}:{port}/hold")).status)

        async with trio.open_nursery() as inner:
            for _ in range(3):
                inner.start_soon(hold)
            await wait_until(lambda: server.open == 3, "three open")
            with pytest.raises(StreamReset):
                await client.request("GET", f"http://{HOST}:{port}/reset")
            release.set()
        assert held == [200] * 3
        assert len(server.connections) == 1
        await settled(pool)


# -- idle, statistics, cancellation ------------------------------------------------------------


async def test_idle_http2_connection_evicted_by_max_idle_time(
    start_h2: StartH2, open_client: OpenClient
) -> None:
    server, port = await start_h2()
    async with open_client(max_idle_time=0.2, health_check_interval=0.05) as (pool, client):
        assert (await client.request("GET", f"http://{HOST}:{port}/")).status == 200
        assert pool.statistics().idle_connections == 1
        await wait_until(lambda: pool.statistics().connections_closed == 1, "evicted")
        stats = pool.statistics()
        assert (stats.http2_connections, stats.connections_evicted) == (0, 1)
        assert (await client.request("GET", f"http://{HOST}:{port}/")).status == 200
        assert len(server.connections) == 2
        await settled(pool)


async def test_cancellation_storm_through_the_pool(
    start_app: StartApp, open_client: OpenClient
) -> None:
    app = App()
    port = await start_app(app, max_concurrent_streams=50)
    fds = open_fds()
    rng = random.Random(14)
    completed = 0
    async with open_client(max_size=4, timeout=20) as (pool, client):

        async def one(path: str, deadline: float | None) -> None:
            nonlocal completed
            with trio.move_on_after(deadline if deadline is not None else 30):
                if rng.random() < 0.5:
                    await client.request("GET", f"http://{HOST}:{port}{path}")
                else:
                    async with client.stream("GET", f"http://{HOST}:{port}{path}") as response:
                        await response.aread()
                completed += 1

        with trio.fail_after(60):
            async with trio.open_nursery() as inner:
                for _ in range(400):
                    deadline = rng.uniform(0, 0.05) if rng.random() < 0.5 else None
                    path = rng.choice(
                        ["/hold", "/slow/20000", "/size/100000", "/"]
                        if deadline is not None
                        else ["/slow/20000", "/size/100000", "/"]
                    )
                    inner.start_soon(one, path, deadline)
        assert 0 < completed < 400
        await settled(pool)
        stats = pool.statistics()
        assert stats.connections_created <= 4
        assert (await client.request("GET", f"http://{HOST}:{port}/")).status == 200
        await settled(pool)
    await wait_until(lambda: open_fds() <= fds, "no socket left open")


def test_http2_argument_checked() -> None:
    async def main() -> None:
        async with trio_pool.open_pool() as pool:
            with pytest.raises(ValueError, match="http2"):
                HTTPClient(pool, http2="yes")
            with pytest.raises(ValueError, match="http2"):
                HTTPClient(pool, http2=1)  # type: ignore[arg-type]

    trio.run(main)


async def test_one_context_for_http2_and_http11_clients(
    ca: trustme.CA, start_app: StartApp
) -> None:
    """A caller's context gets ALPN h2 for the HTTP/2 client's connections only: the
    HTTP/1.1 client's handshakes on the same context still offer http/1.1 alone."""
    app = App()
    port = await start_app(app, tls=True)
    context = trusting(ca)
    async with trio_pool.open_pool() as pool:
        both = [
            HTTPClient(pool, http2=True, ssl_context=context),
            HTTPClient(pool, ssl_context=context),
        ]
        for _ in range(2):
            versions = [
                (await client.request("GET", f"https://{HOST}:{port}/")).http_version
                for client in both
            ]
            assert versions == ["2", "1.1"]
        assert pool.statistics().connections_created == 2
        await settled(pool)
    assert app.http_versions == {"2", "1.1"}


async def test_httpx_transport_maps_http2_errors(
    start_h2: StartH2, pool: trio_pool.ConnectionPool
) -> None:
    from trio_pool.httpx import PoolTransport

    async def reset(stream: ServerStream) -> None:
        await stream.reset_stream()

    server, port = await start_h2(routes={"/reset": reset})
    transport = PoolTransport(pool, http2="prior-knowledge")
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="reset"):
            await client.get(f"http://{HOST}:{port}/reset")
        response = await client.get(f"http://{HOST}:{port}/")
        assert (response.status_code, response.http_version) == (200, "HTTP/2")
    assert len(server.connections) == 1  # the reset cost only its stream
    await settled(pool)


async def test_read_timeouts_reset_only_their_stream(
    start_h2: StartH2, open_client: OpenClient
) -> None:
    never = trio.Event()

    async def silent(stream: ServerStream) -> None:
        await never.wait()

    server, port = await start_h2(routes={"/silent": silent})
    async with open_client(timeout=0.2) as (pool, client):
        with pytest.raises(trio_pool.http.ReadTimeout, match="response head"):
            await client.request("GET", f"http://{HOST}:{port}/silent")
        await wait_until(lambda: len(server.resets) == 1, "the stream was reset")
        assert (await client.request("GET", f"http://{HOST}:{port}/")).status == 200
        assert len(server.connections) == 1
        await settled(pool)


async def test_nginx_goaway_after_keepalive_requests_through_the_pool(
    tmp_path: Path, cert: trustme.LeafCert, open_client: OpenClient
) -> None:
    """nginx sends GOAWAY after 7 streams a connection: every request still succeeds,
    on new connections, and the old ones close."""
    require_nginx()
    async with (
        open_nginx_h2(tmp_path, cert, keepalive_requests=7) as (_nginx, port),
        open_client(tls=True, max_size=4) as (pool, client),
    ):
        statuses: list[int] = []

        async def one() -> None:
            statuses.append((await client.request("GET", f"https://{HOST}:{port}/")).status)

        # Bursts of 10: a retried request may meet a connection near its 7 again, and
        # is sent at most three times (see docs/tutorial.rst, HTTP/2).
        for _ in range(6):
            async with trio.open_nursery() as inner:
                for _ in range(10):
                    inner.start_soon(one)
        assert statuses == [200] * 60
        stats = pool.statistics()
        assert stats.connections_created >= 60 // 7
        await wait_until(lambda: pool.statistics().http2_connections <= 1, "old ones closed")
        await settled(pool)


async def test_pool_closed_with_streams_in_flight(
    start_h2: StartH2, open_client: OpenClient
) -> None:
    """Closing the pool lends no new stream; streams in flight complete, then their
    connection closes and its reader task ends (open_pool's exit does not hang)."""
    release = trio.Event()
    server, port = await start_h2(routes={"/hold": holding(release)})
    statuses: list[int] = []
    with trio.fail_after(10):
        async with open_client() as (pool, client):

            async def one() -> None:
                statuses.append((await client.request("GET", f"http://{HOST}:{port}/hold")).status)

            async with trio.open_nursery() as inner:
                for _ in range(3):
                    inner.start_soon(one)
                await wait_until(lambda: server.open == 3, "three open")
                await pool.aclose()
                with pytest.raises(trio_pool.PoolClosed):
                    await client.request("GET", f"http://{HOST}:{port}/")
                release.set()
            assert statuses == [200] * 3
            await wait_until(lambda: pool.statistics().http2_connections == 0, "closed")
            assert pool.statistics().connections_closed == 1


async def test_cancellation_storm_nginx_through_the_pool(
    tmp_path: Path, cert: trustme.LeafCert, open_client: OpenClient
) -> None:
    require_nginx()
    rng = random.Random(7)
    completed = 0
    async with (
        open_nginx_h2(tmp_path, cert, max_concurrent_streams=32) as (_nginx, port),
        open_client(tls=True, max_size=3, timeout=20) as (pool, client),
    ):
        fds = open_fds()

        async def one(path: str, deadline: float) -> None:
            nonlocal completed
            with trio.move_on_after(deadline):
                response = await client.request("GET", f"https://{HOST}:{port}{path}")
                assert response.status == 200
                completed += 1

        with trio.fail_after(60):
            async with trio.open_nursery() as inner:
                for _ in range(300):
                    path = rng.choice(["/files/big", "/files/mid", "/"])
                    inner.start_soon(one, path, rng.choice([rng.uniform(0, 0.05), 30.0]))
        assert 0 < completed < 300
        await settled(pool)
        assert pool.statistics().connections_created <= 3 + 2  # a few replaced after GOAWAY at most
        assert (await client.request("GET", f"https://{HOST}:{port}/")).status == 200
        await settled(pool)
        await pool.aclose()
        await wait_until(lambda: open_fds() <= fds, "no socket left open")


async def test_http2_gauges_exported(start_h2: StartH2, open_client: OpenClient) -> None:
    from prometheus_client import CollectorRegistry

    from trio_pool.metrics import PrometheusCollector

    from .test_metrics import scrape, value

    release = trio.Event()
    server, port = await start_h2(routes={"/hold": holding(release)})
    registry = CollectorRegistry()
    async with open_client() as (pool, client):
        registry.register(PrometheusCollector(pool))
        async with trio.open_nursery() as inner:
            for _ in range(3):
                inner.start_soon(client.request, "GET", f"http://{HOST}:{port}/hold")
            await wait_until(lambda: server.open == 3, "three open")
            during = scrape(registry)
            assert value(during, "trio_pool_http2_connections", port) == 1
            assert value(during, "trio_pool_http2_streams", port) == 3
            assert value(during, "trio_pool_active_connections", port) == 1
            release.set()
        after = scrape(registry)
        assert value(after, "trio_pool_http2_streams", port) == 0
        assert value(after, "trio_pool_idle_connections", port) == 1
        await settled(pool)


@pytest.mark.parametrize("pool_timeout", [None, 0], ids=["hand-off", "own-connect"])
async def test_peer_allowing_no_stream(
    pool_timeout: float | None, start_h2: StartH2, open_client: OpenClient
) -> None:
    server, port = await start_h2(max_concurrent_streams=0)
    async with open_client(timeout=trio_pool.http.Timeout(5, pool=pool_timeout)) as (pool, client):
        with pytest.raises(trio_pool.ConnectError, match="stream"):
            await client.request("GET", f"http://{HOST}:{port}/")
        await settled(pool)
        stats = pool.statistics()
        assert (stats.connections_created, stats.connections_closed) == (1, 1)
        assert server.requests == 0


async def test_httpx_transport_http2_body_whole_or_late(
    start_h2: StartH2, pool: trio_pool.ConnectionPool
) -> None:
    """Over HTTP/2 a body that came with its head is handed to httpx in one piece; one
    that comes later is read as it comes; traced either way."""
    from trio_pool.httpx import PoolTransport

    go = trio.Event()

    async def late(stream: ServerStream) -> None:
        h2c = stream.conn.h2
        h2c.send_headers(stream.id, [(b":status", b"200")])
        await stream.conn.flush()
        await go.wait()
        h2c.send_data(stream.id, b"late", end_stream=True)
        stream.conn._close_stream(stream)
        await stream.conn.flush()

    server, port = await start_h2(routes={"/late": late})
    events: list[str] = []

    async def trace(name: str, info: dict[str, object]) -> None:
        events.append(name)

    transport = PoolTransport(pool, http2="prior-knowledge")
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            response = await client.get(f"http://{HOST}:{port}/", extensions={"trace": trace})
            assert (response.http_version, response.content) == ("HTTP/2", b"ok")
        async with client.stream("GET", f"http://{HOST}:{port}/late") as response:
            go.set()
            assert [chunk async for chunk in response.aiter_raw()] == [b"late"]
        assert (await client.get(f"http://{HOST}:{port}/")).content == b"ok"
    assert events.count("http2.receive_response_body.complete") == 3
    assert events.count("http2.response_closed.complete") == 3
    assert len(server.connections) == 1
    await settled(pool)
