"""trio_pool.metrics: scraped with prometheus_client.generate_latest from a real registry."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import trio_pool
from trio_pool._demo import _exchange, _start_servers, _tls_contexts, _tls_server
from trio_pool.metrics import PrometheusCollector

from .servers import HOST, start_server

HOLD = 0.05  # seconds the first borrower keeps the only connection


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    name: str,
    port: int,
    **labels: str,
) -> float:
    key = (name, tuple(sorted({"host": HOST, "port": str(port), **labels}.items())))
    return samples[key]


async def test_counters_gauges_and_wait_histogram(echo_port: int) -> None:
    registry = CollectorRegistry()
    async with trio_pool.open_pool(max_size=1) as pool:
        registry.register(PrometheusCollector(pool))
        assert "trio_pool_hits_total" not in scrape(registry)  # no host yet: no samples

        conn = await pool.acquire(HOST, echo_port)
        served = trio.Event()

        async def second() -> None:
            async with pool.connection(HOST, echo_port) as again:
                assert again is conn
            served.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            during = scrape(registry)
            assert value(during, "trio_pool_waiting_tasks", echo_port) == 1
            assert value(during, "trio_pool_active_connections", echo_port) == 1
            assert value(during, "trio_pool_acquire_wait_seconds_count", echo_port) == 0
            await trio.sleep(HOLD)
            pool.release(conn)  # handed straight to the waiting task
        assert served.is_set()

        after = scrape(registry)
        stats = pool.statistics(HOST, echo_port)
        expected = {
            "trio_pool_connections_created_total": 1,
            "trio_pool_connections_closed_total": 0,
            "trio_pool_connections_evicted_total": 0,
            "trio_pool_hits_total": 1,
            "trio_pool_misses_total": 1,
            "trio_pool_connect_failures_total": 0,
            "trio_pool_acquire_timeouts_total": 0,
            "trio_pool_waiters_rejected_total": 0,
            "trio_pool_tls_handshakes_total": 0,
            "trio_pool_tls_resumptions_total": 0,
            "trio_pool_idle_connections": 1,
            "trio_pool_active_connections": 0,
            "trio_pool_waiting_tasks": 0,
            "trio_pool_connecting": 0,
            "trio_pool_http2_connections": 0,
            "trio_pool_http2_streams": 0,
            "trio_pool_acquire_wait_seconds_count": 1,
        }
        for name, want in expected.items():
            assert value(after, name, echo_port) == want, name
        # The histogram agrees with the statistics, and the wait lasted at least HOLD.
        assert stats.acquire_wait_count == 1
        wait_sum = value(after, "trio_pool_acquire_wait_seconds_sum", echo_port)
        assert wait_sum == pytest.approx(stats.acquire_wait_seconds)
        assert wait_sum >= HOLD
        bucket = "trio_pool_acquire_wait_seconds_bucket"
        assert value(after, bucket, echo_port, le="0.025") == 0
        assert value(after, bucket, echo_port, le="+Inf") == 1

        # Timeouts are counted too.
        conn = await pool.acquire(HOST, echo_port)
        with pytest.raises(trio_pool.PoolExhausted):
            await pool.acquire(HOST, echo_port, timeout=0)
        pool.release(conn)
        assert value(scrape(registry), "trio_pool_acquire_timeouts_total", echo_port) == 1


async def test_collector_listens_beside_the_on_event_hook(echo_port: int) -> None:
    """The wait histogram sits on the pool's events: with a user hook set, both hear
    every served wait (and a hook that raises disturbs neither)."""
    heard: list[trio_pool.PoolEvent] = []

    def hook(event: trio_pool.PoolEvent) -> None:
        heard.append(event)
        raise RuntimeError("a broken hook")

    registry = CollectorRegistry()
    async with trio_pool.open_pool(max_size=1, on_event=hook) as pool:
        registry.register(PrometheusCollector(pool))
        for _ in range(2):
            conn = await pool.acquire(HOST, echo_port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_borrow, pool, echo_port)
                await trio.testing.wait_all_tasks_blocked()
                pool.release(conn)
        samples = scrape(registry)
    waits = [event for event in heard if isinstance(event, trio_pool.Waited)]
    assert len(waits) == 2
    assert value(samples, "trio_pool_acquire_wait_seconds_count", echo_port) == 2
    assert value(samples, "trio_pool_acquire_wait_seconds_sum", echo_port) == pytest.approx(
        sum(event.waited for event in waits)
    )


async def _borrow(pool: trio_pool.ConnectionPool, port: int) -> None:
    pool.release(await pool.acquire(HOST, port))


async def test_waiters_rejected_by_max_waiters_are_exported(echo_port: int) -> None:
    registry = CollectorRegistry()
    async with trio_pool.open_pool(max_size=1, max_waiters=0) as pool:
        registry.register(PrometheusCollector(pool))
        conn = await pool.acquire(HOST, echo_port)
        with pytest.raises(trio_pool.PoolExhausted, match="max_waiters=0"):
            await pool.acquire(HOST, echo_port)
        pool.release(conn)
        after = scrape(registry)
        assert value(after, "trio_pool_waiters_rejected_total", echo_port) == 1
        assert value(after, "trio_pool_acquire_timeouts_total", echo_port) == 0


async def test_hosts_are_labelled_and_tls_resumptions_counted(
    nursery: trio.Nursery, echo_port: int
) -> None:
    server_context, client_context = _tls_contexts()
    (tls_port,) = await _start_servers(nursery, _tls_server(server_context), 1)
    other_port = await start_server(nursery, _echo_lines)
    registry = CollectorRegistry()
    async with trio_pool.open_pool() as pool:
        registry.register(PrometheusCollector(pool, namespace="api_pool"))
        async with pool.connection(HOST, tls_port, tls=True, ssl_context=client_context) as conn:
            await _exchange(conn)  # reads the session ticket along with the response
        fresh = await pool.acquire_new(HOST, tls_port, tls=True, ssl_context=client_context)
        await _exchange(fresh)
        pool.release(fresh)
        for port in (echo_port, other_port):
            async with pool.connection(HOST, port):
                pass
        samples = scrape(registry)
    assert value(samples, "api_pool_tls_handshakes_total", tls_port) == 2
    assert value(samples, "api_pool_tls_resumptions_total", tls_port) == 1
    assert value(samples, "api_pool_connections_created_total", tls_port) == 2
    for port in (echo_port, other_port):
        assert value(samples, "api_pool_connections_created_total", port) == 1
        assert value(samples, "api_pool_tls_handshakes_total", port) == 0
    assert not any(name.startswith("trio_pool_") for name, _ in samples)


async def _echo_lines(stream: trio.SocketStream) -> None:
    async with stream:
        async for data in stream:
            await stream.send_all(data)


async def test_registry_rejects_a_clashing_second_collector(echo_port: int) -> None:
    registry = CollectorRegistry()
    async with trio_pool.open_pool() as first, trio_pool.open_pool() as second:
        registry.register(PrometheusCollector(first))
        with pytest.raises(ValueError, match="Duplicated"):
            registry.register(PrometheusCollector(second))
        registry.register(PrometheusCollector(second, namespace="second_pool"))
        async with second.connection(HOST, echo_port):
            pass
        samples = scrape(registry)
    assert value(samples, "second_pool_misses_total", echo_port) == 1
    assert ("trio_pool_misses_total", (("host", HOST), ("port", str(echo_port)))) not in samples


async def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="pool"):
        PrometheusCollector(object())  # type: ignore[arg-type]
    async with trio_pool.open_pool() as pool:
        with pytest.raises(ValueError, match="buckets"):
            PrometheusCollector(pool, buckets=(1.0, 0.5))
        with pytest.raises(ValueError, match="buckets"):
            PrometheusCollector(pool, buckets=())
        with pytest.raises(ValueError, match="namespace"):
            PrometheusCollector(pool, namespace="")


def test_import_trio_pool_does_not_import_prometheus_client() -> None:
    code = "import sys, trio_pool; assert 'prometheus_client' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
