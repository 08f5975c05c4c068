"""The maintenance task (issue 3): idle eviction, health, warm floor, monitoring,
lifetime, supervision.

Deterministic tests run on trio's ``autojump_clock`` and check exact trio times where no
real I/O is in flight (an idle loopback socket nobody reads is fine); health and refill
against servers that drop connections run in real time with a short interval and
generous bounds.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

import pytest
import trio
import trio.testing

import trio_pool
from trio_pool import ConnectError, ConnectionPool, PoolKey
from trio_pool._describe import describe_key

from .servers import HOST, echo, refused_port, start_server

EPS = 1e-6
LOGGER = "trio_pool"


def invariant_holds(pool: ConnectionPool) -> bool:
    stats = pool.statistics()
    return (
        stats.connections_created - stats.connections_closed
        == stats.idle_connections + stats.active_connections + 0 * stats.connecting
    )


async def ping(conn: trio_pool.PooledConnection) -> None:
    await conn.send_all(b"ping")
    assert await conn.receive_some() == b"ping"


async def wait_for(
    predicate: Callable[[], bool], *, step: float = 0.01, pool: ConnectionPool | None = None
) -> None:
    try:
        while not predicate():  # noqa: ASYNC110 - polling what real sockets did
            await trio.sleep(step)
    except trio.Cancelled:
        if pool is not None:  # say where it got stuck
            print("stuck at", pool.statistics(), pool._state.keys)
        raise


async def reply_then_close(stream: trio.SocketStream) -> None:
    """Echo one message, then close a moment later (once the client has pooled it)."""
    data = await stream.receive_some()
    await stream.send_all(data)
    await trio.sleep(0.05)


async def reply_then_junk(stream: trio.SocketStream) -> None:
    """Echo one message, then a moment later send bytes nobody asked for."""
    data = await stream.receive_some()
    await stream.send_all(data)
    await trio.sleep(0.05)
    await stream.send_all(b"JUNK")
    await trio.sleep_forever()


# -- the task itself -------------------------------------------------------------------


async def test_task_is_started_and_cancelled_with_the_pool(
    echo_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    async with trio_pool.open_pool(health_check_interval=5.0, min_size=1) as pool:
        scope = pool._maintenance._scope
        assert scope is not None
        assert not scope.cancel_called
        await pool.prewarm(HOST, echo_port)
    # Leaving did not wait for a pass: the task was cancelled, not awaited.
    assert trio.current_time() == start
    assert scope.cancel_called
    stats = pool.statistics()
    assert stats.idle_connections == 0
    assert stats.connections_created == stats.connections_closed == 1


async def test_passes_run_every_interval(
    echo_port: int, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[float, bool]] = []
    async with trio_pool.open_pool(health_check_interval=7.0) as pool:
        start = trio.current_time()
        real_pass = pool._maintenance.run_pass

        def spy(now: float, *, check: bool = True) -> None:
            calls.append((now - start, check))
            real_pass(now, check=check)

        monkeypatch.setattr(pool._maintenance, "run_pass", spy)
        await trio.sleep(30.0)
    assert calls == [(7.0, True), (14.0, True), (21.0, True), (28.0, True)]


# -- idle eviction ----------------------------------------------------------------------


@pytest.mark.parametrize(("max_idle", "interval"), [(10.0, 30.0), (12.0, 5.0)])
async def test_idle_connection_evicted_exactly_at_max_idle_time(
    echo_port: int, autojump_clock: trio.testing.MockClock, max_idle: float, interval: float
) -> None:
    async with trio_pool.open_pool(max_idle_time=max_idle, health_check_interval=interval) as pool:
        await trio.sleep(1.5)  # not in step with the interval
        conn = await pool.acquire(HOST, echo_port)
        await ping(conn)
        pool.release(conn)
        released = trio.current_time()
        await trio.sleep_until(released + max_idle - EPS)
        assert pool.statistics().idle_connections == 1
        assert not conn.is_closed
        await trio.sleep_until(released + max_idle + EPS)
        stats = pool.statistics()
        assert conn.is_closed
        assert stats.idle_connections == 0
        assert stats.connections_evicted == 1
        assert stats.connections_closed == 1


async def test_reuse_restarts_the_idle_clock(
    echo_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio_pool.open_pool(max_idle_time=10.0, health_check_interval=3.0) as pool:
        conn = await pool.acquire(HOST, echo_port)
        pool.release(conn)
        await trio.sleep(8.0)
        again = await pool.acquire(HOST, echo_port)
        assert again is conn
        pool.release(again)
        released = trio.current_time()
        await trio.sleep_until(released + 10.0 - EPS)
        assert not conn.is_closed
        await trio.sleep_until(released + 10.0 + EPS)
        assert conn.is_closed
        assert pool.statistics().connections_evicted == 1


async def test_only_stale_connections_are_evicted(
    echo_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio_pool.open_pool(max_idle_time=10.0, health_check_interval=30.0) as pool:
        old = await pool.acquire(HOST, echo_port)
        new = await pool.acquire(HOST, echo_port)
        pool.release(old)
        t_old = trio.current_time()
        await trio.sleep(4.0)
        pool.release(new)
        await trio.sleep_until(t_old + 10.0 + EPS)
        assert old.is_closed
        assert not new.is_closed
        await trio.sleep_until(t_old + 14.0 + EPS)
        assert new.is_closed
        assert pool.statistics().connections_evicted == 2


# -- lifetime ---------------------------------------------------------------------------


async def test_lifetime_jitter_is_zero_to_two_and_a_half_percent(echo_port: int) -> None:
    async with trio_pool.open_pool(max_lifetime=200.0) as pool:
        lifetimes = [pool._state.expiry(1000.0) - 1000.0 for _ in range(5000)]
    assert all(195.0 <= life <= 200.0 for life in lifetimes)
    # Spread over the whole window, not clustered.
    assert min(lifetimes) < 195.1
    assert max(lifetimes) > 199.9
    assert len(set(lifetimes)) > 4900


async def test_fleet_opened_together_expires_spread_over_the_jitter_window(
    echo_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    count = 40
    async with trio_pool.open_pool(
        max_size=count, max_lifetime=100.0, max_idle_time=1000.0, health_check_interval=30.0
    ) as pool:
        conns = [await pool.acquire(HOST, echo_port) for _ in range(count)]
        opened = trio.current_time()
        assert all(conn.created_at == opened for conn in conns)
        for conn in conns:
            pool.release(conn)
        await trio.sleep_until(opened + 97.5 - EPS)
        assert pool.statistics().idle_connections == count  # none expired early
        await trio.sleep_until(opened + 98.75)
        assert 0 < pool.statistics().idle_connections < count  # not all at once
        await trio.sleep_until(opened + 100.0)
        stats = pool.statistics()
        assert stats.idle_connections == 0
        assert stats.connections_evicted == count
        assert stats.pool_hits == 0


async def test_expired_connection_closed_on_release(
    echo_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio_pool.open_pool(max_lifetime=60.0, max_idle_time=1000.0) as pool:
        young = await pool.acquire(HOST, echo_port)
        old = await pool.acquire(HOST, echo_port)
        await trio.sleep(58.0)  # below 97.5% of the lifetime: still pooled
        pool.release(young)
        assert not young.is_closed
        await trio.sleep(2.0 + EPS)
        pool.release(old)
        assert old.is_closed
        stats = pool.statistics()
        assert (stats.idle_connections, stats.connections_evicted) == (0, 2)  # young too
        assert young.is_closed


async def test_expired_idle_connection_is_never_handed_out(
    echo_port: int, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with trio_pool.open_pool(max_lifetime=60.0, max_idle_time=1000.0) as pool:
        # No passes: only acquire itself can notice the expiry.
        monkeypatch.setattr(pool._maintenance, "run_pass", lambda now, *, check=True: None)
        conn = await pool.acquire(HOST, echo_port)
        pool.release(conn)
        await trio.sleep_until(conn._expires_at)
        assert pool.statistics().idle_connections == 1
        fresh = await pool.acquire(HOST, echo_port)
        assert fresh is not conn
        assert not fresh.reused
        assert conn.is_closed
        pool.release(fresh)
        assert pool.statistics().connections_evicted == 1


# -- health -----------------------------------------------------------------------------


@pytest.mark.parametrize("handler", [reply_then_close, reply_then_junk])
async def test_idle_connection_dropped_or_dirtied_by_server_leaves_within_an_interval(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], object]
) -> None:
    port = await start_server(nursery, handler)  # type: ignore[arg-type]
    async with trio_pool.open_pool(health_check_interval=0.05) as pool:
        conn = await pool.acquire(HOST, port)
        await ping(conn)
        pool.release(conn)
        released = trio.current_time()
        with trio.fail_after(2.0):  # one 0.05 s interval, generously
            await wait_for(lambda: pool.statistics().idle_connections == 0, step=0.005)
        assert trio.current_time() - released < 2.0
        stats = pool.statistics()
        assert conn.is_closed
        assert stats.connections_evicted == 1
        assert (stats.pool_hits, stats.pool_misses) == (0, 1)  # no acquire found it


async def test_healthy_idle_connections_survive_health_checks(echo_port: int) -> None:
    async with trio_pool.open_pool(health_check_interval=0.02) as pool:
        conn = await pool.acquire(HOST, echo_port)
        await ping(conn)
        pool.release(conn)
        await trio.sleep(0.2)
        assert pool.statistics().connections_evicted == 0
        again = await pool.acquire(HOST, echo_port)
        assert again is conn
        pool.release(again)


# -- warm floor -------------------------------------------------------------------------


class DroppingServer:
    """Keeps every connection open, reading nothing, until told to drop them all."""

    def __init__(self) -> None:
        self.accepted = 0
        self._drop = trio.Event()

    async def handler(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        await self._drop.wait()  # serve_tcp closes the stream when this returns

    def drop_all(self) -> None:
        self._drop.set()
        self._drop = trio.Event()


async def test_floor_refilled_within_a_second_after_server_drops_idle_connections(
    nursery: trio.Nursery,
) -> None:
    server = DroppingServer()
    port = await start_server(nursery, server.handler)
    async with trio_pool.open_pool(min_size=3, health_check_interval=0.05) as pool:
        conn = await pool.acquire(HOST, port)  # the pool has now seen the key
        pool.release(conn)
        with trio.fail_after(5.0):
            await wait_for(lambda: pool.statistics().idle_connections == 3, pool=pool)
        assert pool.statistics().connections_created == 3
        for round_ in (1, 2):
            # Every connection is being served (the server accepts after the pool connects).
            with trio.fail_after(5.0):
                await wait_for(lambda: server.accepted == 3 * round_)  # noqa: B023
            server.drop_all()
            dropped = trio.current_time()
            with trio.fail_after(5.0):
                await wait_for(
                    lambda: (
                        pool.statistics().connections_created == 3 * (round_ + 1)  # noqa: B023
                        and pool.statistics().idle_connections == 3
                    ),
                    pool=pool,
                )
            assert trio.current_time() - dropped < 1.0
            stats = pool.statistics()
            assert stats.connections_evicted == 3 * round_
            assert stats.connect_failures == 0
            assert stats.active_connections == 0
            assert invariant_holds(pool)
        with trio.fail_after(5.0):
            await wait_for(lambda: server.accepted == 9)


async def test_floor_refilled_after_idle_eviction_and_lifetime(
    echo_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio_pool.open_pool(
        min_size=2, max_idle_time=10.0, max_lifetime=25.0, health_check_interval=30.0
    ) as pool:
        assert await pool.prewarm(HOST, echo_port) == 2
        opened = trio.current_time()
        await trio.sleep_until(opened + 10.0 + EPS)  # past max_idle_time: the floor stays
        stats = pool.statistics()
        assert (stats.connections_created, stats.connections_evicted) == (2, 0)
        assert stats.idle_connections == 2
        assert all(c.created_at == opened for c in pool._state.idle_lru)
        # Busy connections count toward the floor: none is opened while both are in use.
        a = await pool.acquire(HOST, echo_port)
        b = await pool.acquire(HOST, echo_port)
        assert a.reused  # idle beyond max_idle_time, still handed out
        assert b.reused
        await trio.sleep(30.0)  # lifetime (24.375..25 s) passes while in use
        assert pool.statistics().connections_created == 2
        pool.release(a)  # expired: closed on release, and the floor is refilled at once
        pool.release(b)
        await trio.sleep(EPS)
        stats = pool.statistics()
        assert (stats.connections_created, stats.connections_evicted) == (4, 2)
        assert stats.idle_connections == 2


async def test_warm_floor_stays_warm_without_traffic(
    echo_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio_pool.open_pool(
        min_size=2, max_idle_time=0.3, health_check_interval=0.1
    ) as pool:
        assert await pool.prewarm(HOST, echo_port) == 2
        await trio.sleep(2.0)  # 20 full passes, each probing both connections
        stats = pool.statistics()
        assert (stats.connections_created, stats.connections_closed) == (2, 0)
        assert stats.idle_connections == 2
        # Above the floor, idle connections still go after max_idle_time.
        extra = [await pool.acquire(HOST, echo_port) for _ in range(3)]
        for conn in extra:
            pool.release(conn)
        assert pool.statistics().idle_connections == 3
        await trio.sleep(0.3 + EPS)
        stats = pool.statistics()
        assert (stats.idle_connections, stats.connections_closed) == (2, 1)


async def test_dead_floor_connection_is_replaced(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    port = await start_server(nursery, reply_then_close)
    async with trio_pool.open_pool(
        min_size=1, max_idle_time=0.3, health_check_interval=1.0
    ) as pool:
        conn = await pool.acquire(HOST, port)
        await conn.send_all(b"x")
        await conn.receive_some()
        pool.release(conn)
        await trio.sleep(1.0 + EPS)  # the server closed it; the next full pass sees it
        assert conn.is_closed
        await trio.sleep(EPS)
        stats = pool.statistics()
        assert (stats.connections_created, stats.idle_connections) == (2, 1)


async def test_floor_recycles_lifetime_one_connection_at_a_time(
    echo_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio_pool.open_pool(
        min_size=2, max_lifetime=10.0, health_check_interval=100.0
    ) as pool:
        assert await pool.prewarm(HOST, echo_port) == 2
        originals = list(pool._state.idle_lru)
        for conn in originals:  # the worst case: both expire at the same instant
            conn._expires_at = trio.current_time() + 10.0
        idle_left: list[int] = []
        close_stream = pool._state._close_stream

        def record(conn: trio_pool.PooledConnection) -> None:
            idle_left.append(pool.statistics().idle_connections)
            close_stream(conn)

        pool._state._close_stream = record
        with trio.fail_after(50.0):
            await wait_for(lambda: all(c.is_closed for c in originals))
        # Each was retired only with another connection idle beside it.
        assert idle_left == [1, 1]
        await trio.sleep(EPS)
        stats = pool.statistics()
        assert (stats.connections_created, stats.idle_connections) == (4, 2)


async def test_refill_backs_off_from_a_failing_host_then_recovers(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    port = refused_port()
    async with trio_pool.open_pool(min_size=2, health_check_interval=10.0) as pool:
        start = trio.current_time()
        with pytest.raises(ConnectError):
            await pool.acquire(HOST, port)  # seen: the floor applies to it now

        def failures() -> int:
            return pool.statistics(HOST, port).connect_failures

        assert failures() == 1
        # First round at the first pass: both missing connections, failing together.
        await trio.sleep_until(start + 10.0 - EPS)
        assert failures() == 1
        await trio.sleep_until(start + 10.0 + EPS)
        assert failures() == 3
        # Then one probe at a time, 0.5 s, 1 s, 2 s, ... apart, at most 30 s.
        expected = 3
        for retry_at in (10.5, 11.5, 13.5, 17.5, 25.5, 41.5, 71.5):
            await trio.sleep_until(start + retry_at - EPS)
            assert failures() == expected, retry_at
            expected += 1
            await trio.sleep_until(start + retry_at + EPS)
            assert failures() == expected, retry_at
        refill_logs = [r for r in caplog.records if "refilling" in r.getMessage()]
        assert len(refill_logs) == 8  # one per round
        # The host comes up: the next probe succeeds and fills the whole floor.
        await nursery.start(trio.serve_tcp, echo, port)
        await trio.sleep_until(start + 101.5 + EPS)
        stats = pool.statistics(HOST, port)
        assert (stats.connect_failures, stats.idle_connections) == (expected, 2)
        assert stats.connections_created == 2


# -- monitoring -------------------------------------------------------------------------


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and text in r.getMessage()
    ]


async def test_low_hit_rate_logged_and_rate_limited(
    echo_port: int, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    async with trio_pool.open_pool(health_check_interval=10.0, max_idle_time=1000.0) as pool:
        start = trio.current_time()

        async def misses(n: int) -> None:
            for _ in range(n):
                pool.release(await pool.acquire_new(HOST, echo_port))

        await misses(20)
        await trio.sleep_until(start + 10.0 + EPS)
        [first] = warnings_about(caplog, "hit rate")
        assert first.getMessage() == (
            f"hit rate for {HOST}:{echo_port} (TCP) was 0% over the last interval (20 acquires)"
        )
        for t in (20.0, 30.0, 40.0, 50.0, 60.0):  # low again each interval: rate-limited
            await misses(20)
            await trio.sleep_until(start + t + EPS)
        assert len(warnings_about(caplog, "hit rate")) == 1
        await misses(20)
        await trio.sleep_until(start + 70.0 + EPS)  # a minute after the first
        assert len(warnings_about(caplog, "hit rate")) == 2


async def test_hit_rate_is_judged_on_a_minimum_sample(
    echo_port: int, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A few misses (a first request, a refused port) say nothing about the pool."""
    caplog.set_level(logging.WARNING, LOGGER)
    port = refused_port()
    async with trio_pool.open_pool(health_check_interval=10.0, max_idle_time=1000.0) as pool:
        start = trio.current_time()
        for _ in range(19):  # 19 misses in one interval: below the sample
            pool.release(await pool.acquire_new(HOST, echo_port))
        for _ in range(3):
            with pytest.raises(ConnectError):
                await pool.acquire(HOST, port)
        await trio.sleep_until(start + 10.0 + EPS)
        assert warnings_about(caplog, "hit rate") == []
        # The sample is per interval: 19 more in the next one are still too few.
        for _ in range(19):
            pool.release(await pool.acquire_new(HOST, echo_port))
        await trio.sleep_until(start + 20.0 + EPS)
        assert warnings_about(caplog, "hit rate") == []
        for _ in range(20):
            pool.release(await pool.acquire_new(HOST, echo_port))
        await trio.sleep_until(start + 30.0 + EPS)
        [record] = warnings_about(caplog, "hit rate")
        assert "(20 acquires)" in record.getMessage()


@pytest.mark.parametrize(
    ("key", "text"),
    [
        (PoolKey("127.0.0.1", 80, False, None, True, None), "127.0.0.1:80 (TCP)"),
        (PoolKey("::1", 8080, False, None, True, None), "[::1]:8080 (TCP)"),
        (PoolKey("127.0.0.1", 443, True, "127.0.0.1", True, None), "127.0.0.1:443 (TLS)"),
        (
            PoolKey("127.0.0.1", 443, True, "api.example", False, None),
            "127.0.0.1:443 (TLS, SNI api.example, certificate not verified)",
        ),
        (
            PoolKey("a.example", 443, True, "a.example", True, ssl.create_default_context()),
            "a.example:443 (TLS, own ssl_context)",
        ),
    ],
)
def test_describe_key(key: PoolKey, text: str) -> None:
    assert describe_key(key) == text


async def test_warnings_tell_keys_on_one_port_apart(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Plain and TLS keys to the same host and port log distinct lines, and no line
    repeats the logger's name (``WARNING trio_pool: trio_pool: ...``)."""
    caplog.set_level(logging.WARNING, LOGGER)
    port = refused_port()
    async with trio_pool.open_pool(min_size=1, health_check_interval=10.0) as pool:
        for tls, sni, verify in (
            (False, None, True),
            (True, None, False),
            (True, "b.example", False),
        ):
            with pytest.raises(ConnectError):
                await pool.acquire(HOST, port, tls=tls, sni=sni, verify_cert=verify)
        await trio.sleep(10.0 + EPS)  # the first pass tries to refill each floor
        refills = sorted(r.getMessage() for r in warnings_about(caplog, "refilling"))
    where = f"{HOST}:{port}"
    assert [m.split(" failed")[0] for m in refills] == [
        f"refilling {where} (TCP)",
        f"refilling {where} (TLS, SNI b.example, certificate not verified)",
        f"refilling {where} (TLS, certificate not verified)",
    ]
    assert caplog.records
    assert not any(r.getMessage().startswith("trio_pool") for r in caplog.records)


async def test_busy_host_logged_and_rate_limited(
    echo_port: int, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    async with trio_pool.open_pool(max_size=10, health_check_interval=10.0) as pool:
        start = trio.current_time()
        held = [await pool.acquire(HOST, echo_port) for _ in range(9)]
        await trio.sleep_until(start + 10.0 + EPS)
        assert warnings_about(caplog, "in use") == []  # 90% is not above 90%
        held.append(await pool.acquire(HOST, echo_port))
        await trio.sleep_until(start + 50.0 + EPS)
        [record] = warnings_about(caplog, "in use")
        assert "10 of max_size=10" in record.getMessage()
        await trio.sleep_until(start + 80.0 + EPS)
        assert len(warnings_about(caplog, "in use")) == 2  # 60 s after the first, at 20
        for conn in held:
            pool.release(conn)


# -- supervision ------------------------------------------------------------------------


async def test_failing_pass_is_logged_and_the_task_goes_on(
    echo_port: int,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    calls: list[float] = []
    outcomes = iter([False, False, True, False, False, False, False])  # never 5 in a row
    async with trio_pool.open_pool(health_check_interval=10.0, max_idle_time=25.0) as pool:
        start = trio.current_time()
        real_pass = pool._maintenance.run_pass

        def flaky(now: float, *, check: bool = True) -> None:
            calls.append(now - start)
            if not next(outcomes, True):
                raise RuntimeError("injected failure")
            real_pass(now, check=check)

        monkeypatch.setattr(pool._maintenance, "run_pass", flaky)
        conn = await pool.acquire(HOST, echo_port)
        pool.release(conn)
        await trio.sleep(60.0)
        # The idle connection was still evicted, by a later pass, at its deadline.
        assert conn.is_closed
        assert pool.statistics().connections_evicted == 1
    # Back-off after the k-th failure in a row: 0.1 * 2**k s, then a full pass.
    # Idle deadline at 25.0: a light pass in between the full ones.
    assert calls[:10] == pytest.approx([10.0, 10.2, 10.6, 20.6, 20.8, 21.2, 22.0, 23.6, 25.0, 33.6])
    failures = [r for r in caplog.records if "maintenance pass failed" in r.getMessage()]
    assert len(failures) == 6
    assert "4 in a row" in failures[-1].getMessage()
    assert all(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in failures)
    assert "injected failure" in caplog.text  # the traceback is in the log


async def test_five_failing_passes_in_a_row_propagate_out_of_open_pool(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    body_cancelled = False
    start = trio.current_time()

    def broken(now: float, *, check: bool = True) -> None:
        raise RuntimeError("injected failure")

    pools: list[ConnectionPool] = []

    async def use_pool() -> None:
        nonlocal body_cancelled
        async with trio_pool.open_pool(health_check_interval=10.0) as pool:
            pools.append(pool)
            monkeypatch.setattr(pool._maintenance, "run_pass", broken)
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                body_cancelled = True
                raise

    with pytest.raises(BaseExceptionGroup) as info:
        await use_pool()
    [pool] = pools
    assert info.group_contains(RuntimeError, match="injected failure", depth=None)
    assert body_cancelled
    assert pool.closed
    # 10 s, then back-offs of 0.2, 0.4, 0.8 and 1.6 s.
    assert trio.current_time() - start == pytest.approx(13.0)
    assert len([r for r in caplog.records if "maintenance pass failed" in r.getMessage()]) == 5


# -- statistics and forgotten keys ---------------------------------------------------------


async def test_evicted_counts_idle_timeout_lifetime_and_health(
    nursery: trio.Nursery, echo_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    closing_port = await start_server(nursery, reply_then_close)
    async with trio_pool.open_pool(
        max_idle_time=10.0, max_lifetime=100.0, health_check_interval=5.0
    ) as pool:
        idle = await pool.acquire(HOST, echo_port)
        aged = await pool.acquire(HOST, echo_port)
        dropped = await pool.acquire(HOST, closing_port)
        discarded = await pool.acquire(HOST, echo_port)
        await ping(dropped)
        pool.release(dropped)  # the server closes it while idle: health
        pool.release(idle)  # idle timeout
        pool.discard(discarded)  # the user's choice: closed, not evicted
        await trio.sleep(100.0 + EPS)
        pool.release(aged)  # held past its lifetime
        stats = pool.statistics()
        assert stats.connections_closed == 4
        assert stats.connections_evicted == 3
        assert (dropped.is_closed, idle.is_closed, aged.is_closed) == (True, True, True)


async def test_forgotten_keys_keep_whole_pool_totals(
    nursery: trio.Nursery, echo_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    other_port = await start_server(nursery, echo)
    async with trio_pool.open_pool(max_idle_time=10.0, health_check_interval=5.0) as pool:
        for port in (echo_port, other_port, echo_port):
            pool.release(await pool.acquire(HOST, port))
        context = pool.connection(HOST, other_port)  # entered only after it is forgotten
        before = pool.statistics()
        assert (before.connections_created, before.pool_hits, before.pool_misses) == (2, 1, 2)
        await trio.sleep(30.0)
        assert pool._state.keys == {}
        after = pool.statistics()
        assert after.connections_evicted == after.connections_closed == 2
        assert (after.connections_created, after.pool_hits, after.pool_misses) == (2, 1, 2)
        assert pool.statistics(HOST, echo_port).connections_created == 0  # starts afresh
        async with context as conn:
            await ping(conn)
            assert pool.statistics(HOST, other_port).active_connections == 1
        pool.release(await pool.acquire(HOST, echo_port))
        stats = pool.statistics()
        assert (stats.connections_created, stats.pool_misses, stats.idle_connections) == (4, 4, 2)
        assert invariant_holds(pool)
        assert len(pool._state.keys) == 2
