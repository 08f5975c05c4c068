"""Connect hand-off (issue 13): a miss is served by whichever comes first, a connection
released for its key or a connect running in the pool's nursery.

Connects are made slow on purpose with a TLS server whose handshakes wait at a gate the
test opens: until then every new connection is "in flight", and the test decides what
finishes first. No timing is asserted; only who got what.
"""

from __future__ import annotations

import ssl
import traceback
from functools import partial

import pytest
import trio
import trio.testing
import trustme

import trio_pool
from trio_pool import (
    ConnectError,
    ConnectionPool,
    ConnectTimeout,
    PooledConnection,
    PoolExhausted,
    ProxyError,
)

from .checks import assert_settled, roundtrip
from .servers import HOST, open_fds, refused_port, start_server
from .test_proxy_faults import fake_http_proxy


class GatedTLSServer:
    """A TLS echo server whose handshakes wait until :attr:`gate` is set."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.gate = trio.Event()
        self.accepted = 0

    def close_gate(self) -> None:
        self.gate = trio.Event()

    async def serve(self, tcp: trio.SocketStream) -> None:
        self.accepted += 1
        await self.gate.wait()
        stream = trio.SSLStream(tcp, self.context, server_side=True)
        try:
            await stream.do_handshake()
            async for data in stream:
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


@pytest.fixture
async def gated(nursery: trio.Nursery, ca: trustme.CA) -> tuple[GatedTLSServer, int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)
    server = GatedTLSServer(context)
    server.gate.set()
    return server, await start_server(nursery, server.serve)


async def acquirers(
    pool: trio_pool.ConnectionPool,
    port: int,
    ctx: ssl.SSLContext,
    nursery: trio.Nursery,
    names: list[str],
    **kwargs: object,
) -> tuple[dict[str, PooledConnection], dict[str, BaseException], dict[str, trio.CancelScope]]:
    """Start one acquiring task per name, in order; return once all are parked."""
    got: dict[str, PooledConnection] = {}
    errors: dict[str, BaseException] = {}
    scopes: dict[str, trio.CancelScope] = {}

    async def one(name: str) -> None:
        with trio.CancelScope() as scopes[name]:
            try:
                got[name] = await pool.acquire_tls(HOST, port, ssl_context=ctx, **kwargs)  # type: ignore[arg-type]
            except (trio_pool.PoolError, OSError) as exc:
                errors[name] = exc

    for name in names:
        nursery.start_soon(one, name)
        await trio.testing.wait_all_tasks_blocked()
    return got, errors, scopes


async def until(predicate: partial[bool] | object, what: str) -> None:
    """Wait (bounded, real time) for a hand-off connect to land."""
    for _ in range(2000):
        if callable(predicate) and predicate():
            return
        await trio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")  # pragma: no cover


async def test_released_connections_serve_a_spike_before_its_connects(
    gated: tuple[GatedTLSServer, int], client_ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    server, port = gated
    async with trio_pool.open_pool(max_size=20, max_connecting=2, acquire_timeout=None) as pool:
        warm = [await pool.acquire_tls(HOST, port, ssl_context=client_ctx) for _ in range(2)]
        server.close_gate()  # from now on, connects hang until the test opens it
        names = [f"t{i}" for i in range(8)]
        got, errors, _ = await acquirers(pool, port, client_ctx, nursery, names)
        stats = pool.statistics()
        assert (stats.tasks_waiting, stats.connecting) == (8, 2)  # bounded: 2, not 8
        served: list[str] = []
        for conn in warm:
            pool.release(conn)
        # Each served task gives its (warm) connection back: the line drains through
        # the two warm connections while both connects are still in flight.
        for _ in range(20):
            await trio.testing.wait_all_tasks_blocked()
            for name in names:
                if name in got and name not in served:
                    served.append(name)
                    assert got[name] in warm
                    await roundtrip(got[name])
                    pool.release(got[name])
            if len(served) == len(names):
                break
        assert served == names  # FIFO, all by released connections
        assert not errors
        stats = pool.statistics()
        # Served by pooled connections: hits (a connect was started, but not needed).
        assert (stats.pool_hits, stats.pool_misses) == (8, 2)
        assert (stats.tasks_waiting, stats.connecting, stats.idle_connections) == (0, 2, 2)
        server.gate.set()  # the connects finish: not wasted, pooled
        await until(lambda: pool.statistics().connecting == 0, "the connects")
        stats = pool.statistics()
        assert (stats.idle_connections, stats.connections_created) == (4, 4)
        assert_settled(stats)


async def test_connect_of_a_cancelled_requester_serves_the_next_waiter(
    gated: tuple[GatedTLSServer, int], client_ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    server, port = gated
    server.close_gate()
    async with trio_pool.open_pool(max_connecting=1, acquire_timeout=None) as pool:
        got, errors, scopes = await acquirers(pool, port, client_ctx, nursery, ["a", "b"])
        assert not errors
        assert pool.statistics().connecting == 1  # one connect, started for "a"
        scopes["a"].cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().connecting == 1  # it goes on, now for "b"
        server.gate.set()
        await until(lambda: "b" in got, "b served")
        assert not got["b"].reused
        await roundtrip(got["b"])
        pool.release(got["b"])
        stats = pool.statistics()
        assert (stats.connections_created, stats.connect_failures, server.accepted) == (1, 0, 1)
        assert_settled(stats)


async def test_connect_nobody_waits_for_goes_to_idle(
    gated: tuple[GatedTLSServer, int],
    client_ctx: ssl.SSLContext,
    nursery: trio.Nursery,
    pool: ConnectionPool,
) -> None:
    server, port = gated
    server.close_gate()
    _, _, scopes = await acquirers(pool, port, client_ctx, nursery, ["a"])
    scopes["a"].cancel()
    await trio.testing.wait_all_tasks_blocked()
    server.gate.set()
    await until(lambda: pool.statistics().connecting == 0, "the connect")
    stats = pool.statistics()
    assert (stats.idle_connections, stats.active_connections, stats.tasks_waiting) == (1, 0, 0)
    conn = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
    assert conn.reused  # the orphaned connect's connection, now a hit
    pool.release(conn)


async def test_refusing_host_fails_every_waiter_with_one_connect() -> None:
    port = refused_port()
    async with trio_pool.open_pool(max_connecting=1, acquire_timeout=None) as pool:
        errors: list[BaseException] = []

        async def one() -> None:
            try:
                await pool.acquire(HOST, port)
            except ConnectError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
        assert len(errors) == 5
        assert all("Connection refused" in str(exc) for exc in errors)
        assert len({id(exc) for exc in errors}) == 5  # each task raises its own object
        assert all(isinstance(exc.__cause__, OSError) for exc in errors)
        stats = pool.statistics()
        assert stats.connect_failures == 1  # the host was tried once, not five times
        assert (stats.tasks_waiting, stats.connecting, stats.pool_misses) == (0, 0, 5)


async def test_per_acquire_connect_timeout_reaches_its_requester(
    hanging_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio_pool.open_pool(connection_timeout=10.0, acquire_timeout=1.0) as pool:
        start = trio.current_time()
        with pytest.raises(ConnectTimeout, match=r"2\.0 s"):
            # The acquire timeout (1 s) does not cut a wait for the task's own connect.
            await pool.acquire(HOST, hanging_port, connect_timeout=2.0)
        assert trio.current_time() == start + 2.0
        stats = pool.statistics()
        assert (stats.connect_failures, stats.acquire_timeouts, stats.connecting) == (1, 0, 0)


async def test_connect_timeout_of_a_gone_requester_reaches_the_next(
    hanging_port: int, mock_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with trio_pool.open_pool(max_connecting=1, acquire_timeout=None) as pool:
        results: dict[str, str] = {}
        scopes: dict[str, trio.CancelScope] = {}

        async def one(name: str, **kwargs: float) -> None:
            with trio.CancelScope() as scopes[name]:
                try:
                    await pool.acquire(HOST, hanging_port, **kwargs)
                except ConnectTimeout as exc:
                    results[name] = f"{exc} at {trio.current_time()}"

        start = trio.current_time()
        nursery.start_soon(partial(one, "a", connect_timeout=1.0))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(one, "b")
        await trio.testing.wait_all_tasks_blocked()
        scopes["a"].cancel()
        mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()
        # "a"'s connect, with "a"'s 1 s, was "b"'s hope; but "b" never fails on a limit
        # shorter than its own (connection_timeout, 5 s): it connects on its own now.
        assert results == {}
        assert pool.statistics().connecting == 1
        mock_clock.jump(5.0)
        await trio.testing.wait_all_tasks_blocked()
        assert list(results) == ["b"]
        assert "longer than 5.0 s" in results["b"]
        assert results["b"].endswith(f"at {start + 6.0}")
        assert_settled(pool.statistics())


async def test_a_waiter_never_fails_on_a_connect_limit_shorter_than_its_own(
    gated: tuple[GatedTLSServer, int], client_ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    server, port = gated
    server.close_gate()
    async with trio_pool.open_pool(max_connecting=1, acquire_timeout=None) as pool:
        got: dict[str, PooledConnection] = {}
        errors: dict[str, BaseException] = {}

        async def one(name: str, limit: float) -> None:
            try:
                got[name] = await pool.acquire_tls(
                    HOST, port, ssl_context=client_ctx, connect_timeout=limit
                )
            except ConnectError as exc:
                errors[name] = exc

        async with trio.open_nursery() as tasks:
            tasks.start_soon(one, "short", 0.2)
            await trio.testing.wait_all_tasks_blocked()
            tasks.start_soon(one, "long", 10.0)  # waits for "short"'s connect (max 1)
            await until(lambda: "short" in errors, "the short connect to time out")
            assert isinstance(errors["short"], ConnectTimeout)
            # "long" did not fail with it: it started a connect of its own.
            assert list(errors) == ["short"]
            assert pool.statistics().connecting == 1
            await until(lambda: server.accepted == 2, "the second connect")
            server.gate.set()
        assert list(got) == ["long"]
        await roundtrip(got["long"])
        pool.release(got["long"])
        stats = pool.statistics()
        assert (stats.connect_failures, stats.connections_created) == (1, 1)
        assert_settled(stats)


async def test_every_waiter_gets_the_connect_error_with_its_type_and_attributes(
    nursery: trio.Nursery,
) -> None:
    answer_now = trio.Event()

    async def refuse(stream: trio.SocketStream, head: bytes) -> None:
        await answer_now.wait()
        await stream.send_all(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b'Proxy-Authenticate: Basic realm="corp"\r\nContent-Length: 0\r\n\r\n'
        )

    proxy, heads = await fake_http_proxy(nursery, refuse, "http://user:s3cr3t@{host}:{port}")
    async with trio_pool.open_pool(max_connecting=1, acquire_timeout=None) as pool:
        errors: list[ProxyError] = []

        async def one() -> None:
            try:
                await pool.acquire("origin.test", 443, tls=True, proxy=proxy)
            except ProxyError as exc:
                exc.add_note("seen by one waiter")  # (notes are per waiter, too)
                errors.append(exc)

        async with trio.open_nursery() as tasks:
            for _ in range(8):
                tasks.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            answer_now.set()
        assert len(heads) == 1  # one connect for all eight
        assert len(errors) == 8
        assert len({id(exc) for exc in errors}) == 8  # each task raises its own object
        assert {(type(exc), exc.status, exc.proxy, str(exc)) for exc in errors} == {
            (ProxyError, 407, proxy.url, str(errors[0]))
        }
        assert all(exc.__notes__ == ["seen by one waiter"] for exc in errors)
        for exc in errors:  # a traceback of its own task: one acquire in it, not eight
            frames = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
            assert frames.count("acquire") == 1, frames
        assert_settled(pool)


async def test_hand_off_connect_outliving_its_task_leaks_nothing(
    hanging_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    fds_before = open_fds()
    async with trio_pool.open_pool(connection_timeout=3.0) as pool:
        with trio.move_on_after(0.5) as scope:
            await pool.acquire(HOST, hanging_port)
        assert scope.cancelled_caught
        stats = pool.statistics()
        assert (stats.connecting, stats.tasks_waiting) == (1, 0)  # it goes on ...
        await trio.sleep(3.0)
        stats = pool.statistics()  # ... until connection_timeout, then it is gone
        assert (stats.connecting, stats.connect_failures) == (0, 1)
        assert_settled(stats)
    assert open_fds() == fds_before


async def test_closing_the_pool_ends_hand_off_connects_and_their_waiters(
    gated: tuple[GatedTLSServer, int], client_ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    server, port = gated
    server.close_gate()
    fds_before = open_fds()
    async with trio_pool.open_pool() as pool:
        got, errors, _ = await acquirers(pool, port, client_ctx, nursery, ["a", "b"])
        assert pool.statistics().connecting == 2
        await pool.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert {type(e) for e in errors.values()} == {trio_pool.PoolClosed}
        assert not got
        stats = pool.statistics()
        assert (stats.connecting, stats.tasks_waiting, stats.connect_failures) == (0, 0, 0)
    server.gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert open_fds() <= fds_before


@pytest.mark.parametrize(("max_connecting", "connecting", "waiting"), [(3, 3, 6), (None, 6, 0)])
async def test_max_connecting_bounds_connects_per_key(
    gated: tuple[GatedTLSServer, int],
    client_ctx: ssl.SSLContext,
    nursery: trio.Nursery,
    max_connecting: int | None,
    connecting: int,
    waiting: int,
) -> None:
    server, port = gated
    server.close_gate()
    async with trio_pool.open_pool(max_connecting=max_connecting, acquire_timeout=None) as pool:
        got, _, _ = await acquirers(pool, port, client_ctx, nursery, [f"t{i}" for i in range(6)])
        stats = pool.statistics()
        # None: tied connects, one per miss, each in its own task (not waiting in line).
        assert (stats.connecting, stats.tasks_waiting) == (connecting, waiting)
        server.gate.set()
        peak = 0

        def all_served() -> bool:
            nonlocal peak
            peak = max(peak, pool.statistics().connecting)
            return len(got) == 6

        await until(all_served, "every task served")  # connects keep coming, never > bound
        assert peak <= connecting
        for conn in got.values():
            pool.release(conn)
        await until(lambda: pool.statistics().connecting == 0, "the last connects")
        assert pool.statistics().connections_created <= 6


async def test_fail_fast_miss_connects_in_its_own_task(
    gated: tuple[GatedTLSServer, int],
    client_ctx: ssl.SSLContext,
    nursery: trio.Nursery,
    pool: ConnectionPool,
) -> None:
    server, port = gated
    server.close_gate()
    got, _, _ = await acquirers(pool, port, client_ctx, nursery, ["a"], timeout=0)
    stats = pool.statistics()
    assert (stats.connecting, stats.tasks_waiting) == (1, 0)
    server.gate.set()
    await until(lambda: "a" in got, "the connect")
    pool.release(got["a"])


async def test_max_waiters_rejects_at_once_when_the_line_is_full(
    echo_port: int, nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    async with trio_pool.open_pool(max_size=1, max_waiters=2, acquire_timeout=None) as pool:
        held = await pool.acquire(HOST, echo_port)
        got: list[PooledConnection] = []

        async def wait_in_line() -> None:
            got.append(await pool.acquire(HOST, echo_port))

        for _ in range(2):
            nursery.start_soon(wait_in_line)
            await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(PoolExhausted, match=r"line .* is full.*max_waiters=2"):
            await pool.acquire(HOST, echo_port)
        assert trio.current_time() == start  # at once, not a timeout
        stats = pool.statistics()
        assert (stats.tasks_waiting, stats.waiters_rejected, stats.acquire_timeouts) == (2, 1, 0)
        assert pool.statistics(HOST, echo_port).waiters_rejected == 1
        pool.release(held)
        await trio.testing.wait_all_tasks_blocked()
        pool.release(got[0])
        await trio.testing.wait_all_tasks_blocked()
        pool.release(got[1])
        assert len(got) == 2
        assert_settled(pool.statistics())


async def test_max_waiters_does_not_count_misses_waiting_for_their_connect(
    gated: tuple[GatedTLSServer, int], client_ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    server, port = gated
    server.close_gate()
    async with trio_pool.open_pool(max_waiters=0, max_connecting=1) as pool:
        got, errors, _ = await acquirers(pool, port, client_ctx, nursery, ["a", "b", "c"])
        assert not errors  # the key has room: they are connecting, not in line
        assert pool.statistics().waiters_rejected == 0
        server.gate.set()
        await until(lambda: len(got) == 3, "every task served")
        for conn in got.values():
            pool.release(conn)


async def test_connects_in_flight_grow_with_the_keys_connections(
    gated: tuple[GatedTLSServer, int], client_ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    """Default max_connecting (64): a cold key starts MIN_CONNECTING connects, a key with
    n open connections up to n (a warm key meets a spike mostly with its own)."""
    from trio_pool._state import MIN_CONNECTING

    server, port = gated
    async with trio_pool.open_pool(acquire_timeout=None) as pool:
        warm = [await pool.acquire_tls(HOST, port, ssl_context=client_ctx) for _ in range(6)]
        server.close_gate()
        got, errors, _ = await acquirers(
            pool, port, client_ctx, nursery, [f"t{i}" for i in range(10)]
        )
        stats = pool.statistics()
        assert (stats.connecting, stats.tasks_waiting) == (6, 10)  # as many as it has open
        for conn in warm:
            pool.discard(conn)  # the key has no open connection left ...
        late, _, _ = await acquirers(pool, port, client_ctx, nursery, ["late"])
        assert pool.statistics().connecting == 6  # ... and keeps what was started
        server.gate.set()
        await until(lambda: len(got) == 10 and "late" in late, "every task served")
        assert not errors
        for conn in [*got.values(), *late.values()]:
            pool.release(conn)
        await until(lambda: pool.statistics().connecting == 0, "the last connects")
    assert MIN_CONNECTING == 4


async def test_cold_key_starts_min_connecting_connects(
    gated: tuple[GatedTLSServer, int], client_ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    server, port = gated
    server.close_gate()
    async with trio_pool.open_pool(acquire_timeout=None) as pool:
        got, _, _ = await acquirers(pool, port, client_ctx, nursery, [f"t{i}" for i in range(10)])
        assert pool.statistics().connecting == 4
        server.gate.set()
        # Each connect that lands lets the key have more in flight (slow start).
        await until(lambda: len(got) == 10, "every task served")
        for conn in got.values():
            pool.release(conn)
        await until(lambda: pool.statistics().connecting == 0, "the last connects")
        assert pool.statistics().connections_created <= 10


async def test_hand_off_connect_falls_back_to_the_pools_nursery(
    hanging_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    """If the maintenance task died with its nursery (five failing passes), connects
    still run (in the pool's own nursery) and still reach their requesters."""
    async with trio.open_nursery() as gone:
        pass
    async with trio_pool.open_pool(connection_timeout=1.0) as pool:
        pool._connector.background = gone  # closed to new tasks, as after a fatal maintenance error
        with pytest.raises(ConnectTimeout):
            await pool.acquire(HOST, hanging_port)
        assert_settled(pool.statistics())
