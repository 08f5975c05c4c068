"""A host name's addresses on loopback (issue 23): replicas on 127.0.0.2 ... 127.0.0.9
with one port, a custom resolver (no DNS) whose answer changes mid-test, and replicas
that refuse, stall, reset, or die and come back."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import trio_pool
from trio_pool import ConnectError, ConnectionPool, HostUnavailable, PooledConnection
from trio_pool._route import Route

from .resolvers import LoopbackResolver
from .upstreams import IPS, NAME, ReplicaResolver, Replicas


@pytest.fixture
async def replicas(nursery: trio.Nursery) -> AsyncIterator[Replicas]:
    started = Replicas(nursery)
    yield started
    started.close()


@pytest.fixture
async def resolver() -> ReplicaResolver:
    custom = ReplicaResolver(IPS[:4])
    trio.socket.set_custom_hostname_resolver(custom)
    return custom


async def exchange(conn: PooledConnection) -> bytes:
    """One echo round trip (the first response byte passes the address's verdict)."""
    await conn.send_all(b"ping")
    return await conn.receive_some()


async def test_100_connections_spread_evenly_over_4_replicas(
    replicas: Replicas, resolver: ReplicaResolver
) -> None:
    for ip in IPS[:4]:
        await replicas.start(ip)
    async with trio_pool.open_pool(max_size=100) as pool:
        held: list[PooledConnection] = []

        async def borrow() -> None:
            held.append(await pool.acquire(NAME, replicas.port))

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(borrow)
        by_address = {ip: sum(1 for c in held if c.address == ip) for ip in IPS[:4]}
        for conn in held:
            assert await exchange(conn) == b"ping"
            pool.release(conn)
    assert sum(by_address.values()) == 100
    assert max(by_address.values()) / min(by_address.values()) <= 1.25
    assert replicas.accepted == by_address
    assert resolver.lookups == 1  # one lookup for the burst


async def test_a_refusing_replica_is_skipped_and_ejected(
    replicas: Replicas, resolver: ReplicaResolver, caplog: pytest.LogCaptureFixture
) -> None:
    for ip in IPS[:4]:
        if ip != IPS[1]:
            await replicas.start(ip)  # nothing listens on IPS[1]: refused
    async with trio_pool.open_pool(eject_after=2) as pool:
        with caplog.at_level(logging.WARNING, logger="trio_pool"):
            for _ in range(20):
                conn = await pool.acquire_new(NAME, replicas.port)
                assert conn.address != IPS[1]
                assert await exchange(conn) == b"ping"
                pool.discard(conn)
    ejections = [r.getMessage() for r in caplog.records if "ejected" in r.getMessage()]
    assert ejections == [
        f"trio_pool: address {IPS[1]} of {NAME}:{replicas.port} ejected for 5 s after 2"
        " failure(s) in a row"
    ]
    assert sum(replicas.accepted.values()) == 20


async def test_a_replica_that_resets_before_the_first_byte_is_ejected(
    replicas: Replicas, resolver: ReplicaResolver
) -> None:
    for ip in IPS[:4]:
        await replicas.start(ip, "reset" if ip == IPS[2] else "echo")
    async with trio_pool.open_pool(eject_after=3) as pool:
        failures = 0
        for _ in range(40):
            conn = await pool.acquire_new(NAME, replicas.port)
            try:
                assert await exchange(conn) == b"ping"
            except (trio.BrokenResourceError, AssertionError):
                failures += 1
            pool.discard(conn)
    # Accepted three times (each connect succeeded), reset three times, then ejected.
    assert replicas.accepted[IPS[2]] == 3
    assert failures == 3


async def test_a_stalling_replica_is_ejected(replicas: Replicas, resolver: ReplicaResolver) -> None:
    resolver.answer = IPS[:2]
    await replicas.start(IPS[0])
    replicas.stall(IPS[1])
    async with trio_pool.open_pool(eject_after=2, connection_timeout=10) as pool:
        for _ in range(8):
            conn = await pool.acquire_new(NAME, replicas.port)
            assert conn.address == IPS[0]  # the fallback, 250 ms later at worst
            await exchange(conn)
            pool.discard(conn)
        upstream = pool._state.addresses.upstream(NAME, replicas.port)
        assert upstream.addresses[IPS[1]].ejected_until is not None


async def test_every_address_ejected_fails_at_once_then_one_trial_restores(
    replicas: Replicas, resolver: ReplicaResolver, mock_clock: trio.testing.MockClock
) -> None:
    """A replica dies and comes back; nothing is in flight while the clock jumps."""
    resolver.answer = IPS[:1]
    await replicas.start(IPS[0])
    async with trio_pool.open_pool(eject_after=2, eject_for=5.0) as pool:
        conn = await pool.acquire(NAME, replicas.port)
        await exchange(conn)
        pool.release(conn)
        replicas.stop(IPS[0])
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(2):  # the idle connection is dead; two refused connects
            with pytest.raises(ConnectError) as refused:
                await pool.acquire_new(NAME, replicas.port)
            assert not isinstance(refused.value, HostUnavailable)
        start = trio.current_time()
        with pytest.raises(HostUnavailable) as info:
            await pool.acquire(NAME, replicas.port)
        assert info.value.retry_at == start + 5.0
        assert info.value.addresses == 1
        assert f"{NAME}:{replicas.port} is unavailable" in str(info.value)
        mock_clock.jump(5.0)
        await replicas.start(IPS[0])  # back
        conn = await pool.acquire(NAME, replicas.port)  # the one trial
        with pytest.raises(HostUnavailable, match="trial connect is in flight"):
            await pool.acquire_new(NAME, replicas.port)
        await exchange(conn)  # its first byte restores the address
        other = await pool.acquire_new(NAME, replicas.port)
        pool.release(other)
        pool.release(conn)


async def test_resolutions_ejections_and_restorations_are_events(
    replicas: Replicas, resolver: ReplicaResolver, mock_clock: trio.testing.MockClock
) -> None:
    """A replica dies and comes back, told by events under the connecting key."""
    resolver.answer = IPS[:1]
    await replicas.start(IPS[0])
    events: list[trio_pool.PoolEvent] = []
    address_events = (trio_pool.Resolved, trio_pool.AddressEjected, trio_pool.AddressRestored)
    async with trio_pool.open_pool(eject_after=2, eject_for=5.0, on_event=events.append) as pool:
        conn = await pool.acquire(NAME, replicas.port)
        await exchange(conn)
        pool.discard(conn)
        replicas.stop(IPS[0])
        for _ in range(2):
            with pytest.raises(ConnectError):
                await pool.acquire_new(NAME, replicas.port)
        ejected_at = trio.current_time()
        mock_clock.jump(5.0)
        await replicas.start(IPS[0])
        conn = await pool.acquire(NAME, replicas.port)
        await exchange(conn)
        restored_at = trio.current_time()
        pool.release(conn)
    told = [event for event in events if isinstance(event, address_events)]
    assert [type(event) for event in told] == [
        trio_pool.Resolved,
        trio_pool.AddressEjected,
        trio_pool.AddressRestored,
    ]
    resolved, ejected, restored = told
    assert all(event.key.host == NAME and event.key.port == replicas.port for event in told)
    assert isinstance(resolved, trio_pool.Resolved)
    assert (resolved.addresses, resolved.ttl) == ((IPS[0],), 10.0)
    assert isinstance(ejected, trio_pool.AddressEjected)
    assert (ejected.address, ejected.failures) == (IPS[0], 2)
    assert (ejected.time, ejected.until) == (ejected_at, ejected_at + 5.0)
    assert isinstance(restored, trio_pool.AddressRestored)
    assert (restored.address, restored.time) == (IPS[0], restored_at)


NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _AnyTestName(LoopbackResolver):
    """Answers every ``*.test`` name with the first replica."""

    def answer_for(self, name: str) -> list[str] | None:
        return [IPS[0]] if name.endswith(".test") else None


async def test_the_book_forgets_the_hosts_of_dropped_keys(
    replicas: Replicas, mock_clock: trio.testing.MockClock
) -> None:
    """A pool that talks to ever new host names keeps no address book entry for keys
    it forgot (unused for max_idle_time); one still held by another key stays."""
    await replicas.start(IPS[0])
    trio.socket.set_custom_hostname_resolver(_AnyTestName())
    config = {"max_idle_time": 5.0, "health_check_interval": 1.0}
    async with trio_pool.open_pool(**config) as pool:
        for n in range(20):
            conn = await pool.acquire(f"host{n}.test", replicas.port)
            await exchange(conn)
            pool.discard(conn)
        book = pool._state.addresses
        assert len(book.upstreams) == 20
        kept = await pool.acquire("host0.test", replicas.port)
        # A second key on host0's upstream (its own socket options), dropped with the rest.
        other = await pool.acquire_on(
            pool.lookup(Route("host0.test", replicas.port, socket_options=(NODELAY,))),
            None,
            None,
        )
        assert isinstance(other, PooledConnection)
        pool.discard(other)
        mock_clock.jump(6.0)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()
        assert list(book.upstreams) == [("host0.test", replicas.port)]  # kept holds it
        assert await exchange(kept) == b"ping"
        pool.discard(kept)
        mock_clock.jump(6.0)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()
        assert book.upstreams == {}
        conn = await pool.acquire("host0.test", replicas.port)  # looked up anew
        assert conn.address == IPS[0]
        pool.release(conn)


async def test_tasks_in_line_get_host_unavailable_too(
    replicas: Replicas, resolver: ReplicaResolver
) -> None:
    resolver.answer = IPS[:1]  # nothing listening: refused
    errors: list[BaseException] = []
    async with trio_pool.open_pool(eject_after=1) as pool:

        async def one() -> None:
            with pytest.raises(ConnectError) as info:
                await pool.acquire(NAME, 9)
            errors.append(info.value)

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one)
        with pytest.raises(HostUnavailable):
            await pool.acquire(NAME, 9)
    assert len(errors) == 20
    assert any(isinstance(e, HostUnavailable) for e in errors)


async def test_a_reresolution_drains_dropped_addresses(
    replicas: Replicas, resolver: ReplicaResolver
) -> None:
    for ip in IPS[:4]:
        await replicas.start(ip)
    resolver.answer = IPS[:2]
    async with trio_pool.open_pool(dns_ttl=0) as pool:
        first = await pool.acquire(NAME, replicas.port)
        second = await pool.acquire(NAME, replicas.port)
        assert {first.address, second.address} == set(IPS[:2])
        pool.release(first)
        resolver.answer = IPS[2:4]
        third = await pool.acquire_new(NAME, replicas.port)  # looks the name up again
        assert third.address in IPS[2:4]
        assert first.is_closed  # idle on a drained address: closed now
        assert not second.is_closed
        pool.release(second)  # borrowed: closed when it comes back
        assert second.is_closed
        pool.release(third)
        again = await pool.acquire(NAME, replicas.port)
        assert again is third
        pool.release(again)
        assert resolver.lookups == 3  # dns_ttl=0: one per connect


async def test_one_lookup_per_ttl(
    replicas: Replicas, resolver: ReplicaResolver, mock_clock: trio.testing.MockClock
) -> None:
    await replicas.start(IPS[0])
    resolver.answer = IPS[:1]
    async with trio_pool.open_pool(dns_ttl=10.0) as pool:
        for _ in range(3):
            pool.discard(await pool.acquire(NAME, replicas.port))
        assert resolver.lookups == 1
        mock_clock.jump(10.0)
        pool.discard(await pool.acquire(NAME, replicas.port))
        assert resolver.lookups == 2


async def test_a_failed_lookup_keeps_the_known_addresses(
    replicas: Replicas, resolver: ReplicaResolver, caplog: pytest.LogCaptureFixture
) -> None:
    await replicas.start(IPS[0])
    resolver.answer = IPS[:1]
    async with trio_pool.open_pool(dns_ttl=0) as pool:
        pool.discard(await pool.acquire(NAME, replicas.port))
        resolver.answer = []  # the resolver answers nothing now
        with caplog.at_level(logging.WARNING, logger="trio_pool"):
            conn = await pool.acquire(NAME, replicas.port)
        assert conn.address == IPS[0]
        pool.discard(conn)
    assert "keeping its 1 known address(es)" in caplog.text


async def test_an_unknown_name_is_a_connect_error(pool: ConnectionPool) -> None:
    trio.socket.set_custom_hostname_resolver(ReplicaResolver([]))
    with pytest.raises(ConnectError, match=r"cannot resolve 'nowhere\.test'"):
        await pool.acquire("nowhere.test", 80)


async def test_ip_literals_and_eject_after_none_keep_the_old_path(
    replicas: Replicas, resolver: ReplicaResolver
) -> None:
    await replicas.start(IPS[0])
    async with trio_pool.open_pool(eject_after=None) as pool:
        conn = await pool.acquire(IPS[0], replicas.port)
        assert conn.address is None
        pool.release(conn)
        for _ in range(10):  # never ejected
            with pytest.raises(ConnectError) as info:
                await pool.acquire_new(NAME, 9)
            assert not isinstance(info.value, HostUnavailable)
    assert resolver.lookups == 1


async def test_statistics_and_prometheus_show_connections_per_address(
    replicas: Replicas, resolver: ReplicaResolver
) -> None:
    from prometheus_client import CollectorRegistry

    from trio_pool.metrics import PrometheusCollector

    from .test_metrics import scrape

    resolver.answer = IPS[:2]
    for ip in IPS[:2]:
        await replicas.start(ip)
    registry = CollectorRegistry()
    async with trio_pool.open_pool() as pool:
        registry.register(PrometheusCollector(pool))
        held = [await pool.acquire(NAME, replicas.port) for _ in range(3)]
        expected = ((f"{IPS[0]}:{replicas.port}", 2), (f"{IPS[1]}:{replicas.port}", 1))
        assert pool.statistics().address_connections == expected
        assert pool.statistics(NAME).address_connections == expected
        assert pool.host_statistics()[(NAME, replicas.port)].address_connections == expected
        samples = scrape(registry)
        for address, count in expected:
            labels = (("address", address), ("host", NAME), ("port", str(replicas.port)))
            assert samples[("trio_pool_address_connections", labels)] == count
        for conn in held:
            pool.discard(conn)
        assert pool.statistics().address_connections == ()


async def test_http_client_requests_eject_a_replica_that_resets(
    replicas: Replicas, resolver: ReplicaResolver
) -> None:
    """The HTTP/1.1 client reads through the pooled connection: a reset before the
    response's first byte counts against the address (echo replicas answer with bytes,
    which is enough for the address, though they are not HTTP)."""
    from trio_pool.http import HTTPClient, HTTPError

    resolver.answer = IPS[:2]
    await replicas.start(IPS[0])
    await replicas.start(IPS[1], "reset")
    async with trio_pool.open_pool(eject_after=3) as pool:
        client = HTTPClient(pool, retry=False)
        for _ in range(20):
            with pytest.raises(HTTPError):
                await client.request("GET", f"http://{NAME}:{replicas.port}/")
    assert replicas.accepted[IPS[1]] == 3
    assert replicas.accepted[IPS[0]] == 17
