"""Errors: refused and hanging connects, and bad arguments caught before any I/O."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_pool
from trio_pool import (
    ConnectError,
    ConnectionPool,
    ConnectTimeout,
    PoolError,
    PoolExhausted,
    PoolStatistics,
)

from .servers import HOST, open_fds, refused_port, stall, start_server


def test_exception_hierarchy() -> None:
    assert issubclass(trio_pool.PoolExhausted, PoolError)
    assert issubclass(trio_pool.PoolExhausted, TimeoutError)
    assert issubclass(ConnectError, PoolError)
    assert issubclass(ConnectError, OSError)
    assert issubclass(ConnectTimeout, ConnectError)
    assert issubclass(ConnectTimeout, TimeoutError)
    assert issubclass(trio_pool.PoolClosed, PoolError)
    assert issubclass(trio_pool.PoolClosed, trio.ClosedResourceError)
    assert issubclass(PoolError, Exception)


# -- refused --------------------------------------------------------------------------


async def test_refused_connect_raises_connect_error(pool: ConnectionPool) -> None:
    port = refused_port()
    with pytest.raises(ConnectError) as info:
        await pool.acquire(HOST, port)
    assert not isinstance(info.value, ConnectTimeout)
    assert isinstance(info.value.__cause__, OSError)
    assert str(port) in str(info.value)
    stats = pool.statistics()
    assert (stats.connecting, stats.connect_failures, stats.pool_misses) == (0, 1, 1)
    assert (stats.connections_created, stats.active_connections) == (0, 0)
    with pytest.raises(ConnectError):
        async with pool.connection(HOST, port):
            pytest.fail("must not enter")  # pragma: no cover
    assert pool.statistics().connect_failures == 2


async def test_refused_connect_frees_its_slot_for_a_waiter(nursery: trio.Nursery) -> None:
    port = refused_port()
    async with trio_pool.open_pool(max_size=1, acquire_timeout=2.0) as pool:
        failures: list[tuple[str, ConnectError]] = []

        async def attempt(name: str) -> None:
            try:
                await pool.acquire(HOST, port)
            except ConnectError as exc:
                failures.append((name, exc))

        # Started in one batch: whichever runs first connects, the other finds the key
        # full (its slot is reserved from the start of the connect) and waits in line.
        async with trio.open_nursery() as inner:
            inner.start_soon(attempt, "a")
            inner.start_soon(attempt, "b")
        # The waiter was given the freed slot and tried a connect of its own.
        assert sorted(name for name, _ in failures) == ["a", "b"]
        stats = pool.statistics()
        assert (stats.connect_failures, stats.pool_misses, stats.acquire_timeouts) == (2, 2, 0)
        assert stats.acquire_wait_count == 1
        assert (stats.connecting, stats.tasks_waiting, stats.active_connections) == (0, 0, 0)
        assert stats.connections_created == stats.connections_closed == 0


async def test_full_key_slot_is_freed_at_once_by_a_refusal() -> None:
    port = refused_port()
    async with trio_pool.open_pool(max_size=1, acquire_timeout=0) as pool:
        for _ in range(3):  # timeout=0 fails fast only if a slot was still held
            with pytest.raises(ConnectError):
                await pool.acquire(HOST, port)
        stats = pool.statistics()
        assert (stats.connect_failures, stats.acquire_timeouts) == (3, 0)


# -- hanging connects ------------------------------------------------------------------


async def test_hanging_connect_raises_connect_timeout(
    hanging_port: int, mock_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with trio_pool.open_pool(connection_timeout=2.0) as pool:
        outcome: list[tuple[float, BaseException]] = []

        async def attempt() -> None:
            start = trio.current_time()
            try:
                await pool.acquire(HOST, hanging_port)
            except ConnectError as exc:
                outcome.append((trio.current_time() - start, exc))

        nursery.start_soon(attempt)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().connecting == 1
        mock_clock.jump(1.9)
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == []  # still connecting: it really hangs
        mock_clock.jump(0.1)
        await trio.testing.wait_all_tasks_blocked()
        assert len(outcome) == 1
        elapsed, exc = outcome[0]
        assert elapsed == 2.0
        assert isinstance(exc, ConnectTimeout)
        assert isinstance(exc, TimeoutError)
        stats = pool.statistics()
        assert (stats.connecting, stats.connect_failures, stats.connections_created) == (0, 1, 0)


async def test_connect_timeout_frees_the_slot_for_a_waiter(
    hanging_port: int, mock_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with trio_pool.open_pool(
        max_size=1, connection_timeout=1.0, acquire_timeout=None, max_connecting=None
    ) as pool:
        results: list[str] = []

        async def attempt(name: str) -> None:
            try:
                await pool.acquire(HOST, hanging_port)
            except ConnectTimeout:
                results.append(f"{name}: timeout at {trio.current_time()}")

        start = trio.current_time()
        nursery.start_soon(attempt, "first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(attempt, "waiter")
        await trio.testing.wait_all_tasks_blocked()
        stats = pool.statistics()
        assert (stats.connecting, stats.tasks_waiting) == (1, 1)
        mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()
        # The first timed out; its slot went straight to the waiter, now connecting.
        assert results == [f"first: timeout at {start + 1.0}"]
        stats = pool.statistics()
        assert (stats.connecting, stats.tasks_waiting, stats.connect_failures) == (1, 0, 1)
        mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()
        assert results[1] == f"waiter: timeout at {start + 2.0}"
        stats = pool.statistics()
        assert (stats.connecting, stats.connect_failures, stats.acquire_wait_count) == (0, 2, 1)


async def test_hanging_connect_leaves_no_socket_behind(
    hanging_port: int, mock_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    before = open_fds()
    async with trio_pool.open_pool(connection_timeout=1.0) as pool:
        failed = trio.Event()

        async def attempt() -> None:
            with pytest.raises(ConnectTimeout):
                await pool.acquire(HOST, hanging_port)
            failed.set()

        nursery.start_soon(attempt)
        await trio.testing.wait_all_tasks_blocked()
        assert open_fds() == before + 1  # the connecting socket
        mock_clock.jump(1.0)
        await failed.wait()
        assert open_fds() == before


async def test_hanging_tls_handshake_times_out_and_closes_its_socket(
    mock_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    port = await start_server(nursery, stall)  # accepts, never answers the ClientHello
    async with trio_pool.open_pool(connection_timeout=1.0) as pool:
        failed = trio.Event()

        async def attempt() -> None:
            with pytest.raises(ConnectTimeout):
                await pool.acquire_tls(HOST, port)
            failed.set()

        fds_before = open_fds()
        nursery.start_soon(attempt)
        await trio.testing.wait_all_tasks_blocked()
        # client socket + the server's accepted one: the TCP connect is done
        assert open_fds() == fds_before + 2
        assert pool.statistics().connecting == 1
        mock_clock.jump(1.0)
        await failed.wait()
        assert open_fds() == fds_before + 1  # only the stalled server side is left
        stats = pool.statistics()
        assert (stats.connecting, stats.connect_failures, stats.tls_handshakes) == (0, 1, 0)


async def test_connect_timeout_not_counted_as_acquire_timeout(
    hanging_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    # Nothing completes here: the only I/O in flight is a connect that hangs.
    async with trio_pool.open_pool(connection_timeout=3.0, acquire_timeout=0) as pool:
        start = trio.current_time()
        with pytest.raises(ConnectTimeout):
            await pool.acquire(HOST, hanging_port)
        assert trio.current_time() - start == pytest.approx(3.0)
        stats = pool.statistics()
        assert (stats.acquire_timeouts, stats.connect_failures) == (0, 1)
        assert not isinstance(ConnectTimeout("x"), PoolExhausted)


# -- bad arguments, before any I/O ----------------------------------------------------


BAD_HOSTS = [
    ("", ValueError),
    (" ", ValueError),
    (" 127.0.0.1", ValueError),
    ("127.0.0.1 ", ValueError),
    (None, TypeError),
    (b"127.0.0.1", TypeError),
    (127, TypeError),
]
BAD_PORTS = [
    (0, ValueError),
    (65536, ValueError),
    (-1, ValueError),
    (True, TypeError),
    ("80", TypeError),
    (80.0, TypeError),
    (None, TypeError),
]
BAD_TIMEOUTS = [
    (-1, ValueError),
    (-0.5, ValueError),
    (float("nan"), ValueError),
    ("1", TypeError),
    (True, TypeError),
]


def assert_untouched(pool: trio_pool.ConnectionPool) -> None:
    assert pool.statistics() == PoolStatistics()
    assert pool.host_statistics() == {}


@pytest.mark.parametrize(("host", "error"), BAD_HOSTS)
async def test_bad_host(host: object, error: type[Exception], pool: ConnectionPool) -> None:
    with pytest.raises(error, match="host"):
        await pool.acquire(host, 80)  # type: ignore[arg-type]
    with pytest.raises(error, match="host"):
        await pool.acquire_new(host, 80)  # type: ignore[arg-type]
    with pytest.raises(error, match="host"):
        pool.connection(host, 80)  # type: ignore[arg-type]
    with pytest.raises(error, match="host"):
        await pool.prewarm(host, 80, count=1)  # type: ignore[arg-type]
    assert_untouched(pool)


@pytest.mark.parametrize(("port", "error"), BAD_PORTS)
async def test_bad_port(port: object, error: type[Exception], pool: ConnectionPool) -> None:
    with pytest.raises(error, match="port"):
        await pool.acquire(HOST, port)  # type: ignore[arg-type]
    with pytest.raises(error, match="port"):
        await pool.acquire_tls(HOST, port)  # type: ignore[arg-type]
    with pytest.raises(error, match="port"):
        pool.connection(HOST, port)  # type: ignore[arg-type]
    with pytest.raises(error, match="port"):
        await pool.prewarm(HOST, port, count=1)  # type: ignore[arg-type]
    assert_untouched(pool)


@pytest.mark.parametrize(
    ("port", "tls", "verify_cert", "field"),
    [(80.0, False, True, "port"), (80, 0, True, "tls"), (80, True, 1, "verify_cert")],
)
async def test_values_equal_to_a_cached_key_are_still_type_checked(
    port: object, tls: object, verify_cert: object, field: str, pool: ConnectionPool
) -> None:
    # 80.0 == 80 and 0 == False: the key cache must not let them past the type checks.
    pool.connection(HOST, 80)  # caches the plain key for port 80
    pool.connection(HOST, 80, tls=True)  # and the TLS one
    with pytest.raises(TypeError, match=field):
        pool.connection(HOST, port, tls=tls, verify_cert=verify_cert)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=field):
        await pool.acquire(HOST, port, tls=tls, verify_cert=verify_cert)  # type: ignore[arg-type]


@pytest.mark.parametrize(("timeout", "error"), BAD_TIMEOUTS)
async def test_bad_timeout(timeout: object, error: type[Exception], pool: ConnectionPool) -> None:
    port = refused_port()  # never reached
    with pytest.raises(error, match="timeout"):
        await pool.acquire(HOST, port, timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(error, match="timeout"):
        await pool.acquire_new(HOST, port, timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(error, match="timeout"):
        pool.connection(HOST, port, timeout=timeout)  # type: ignore[arg-type]
    assert_untouched(pool)


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"tls": 1}, TypeError, "tls"),
        ({"verify_cert": "yes"}, TypeError, "verify_cert"),
        ({"tls": True, "sni": ""}, ValueError, "sni"),
        ({"tls": True, "sni": 5}, TypeError, "sni"),
        ({"tls": True, "ssl_context": object()}, TypeError, "ssl_context"),
    ],
)
async def test_bad_tls_arguments(
    kwargs: dict[str, object], error: type[Exception], field: str, pool: ConnectionPool
) -> None:
    with pytest.raises(error, match=field):
        await pool.acquire(HOST, refused_port(), **kwargs)  # type: ignore[arg-type]
    assert_untouched(pool)


async def test_bad_arguments_do_not_checkpoint(pool: ConnectionPool) -> None:
    """Rejected synchronously: even a cancelled task gets the ValueError, not Cancelled."""
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(ValueError, match="port"):
            await pool.acquire(HOST, 0)
    assert_untouched(pool)


# -- errors users can catch ---------------------------------------------------------------


async def test_refused_connect_message_names_the_root_cause(pool: ConnectionPool) -> None:
    port = refused_port()
    with pytest.raises(ConnectError, match="Connection refused") as info:
        await pool.acquire(HOST, port)
    assert f"{HOST}:{port}" in str(info.value)
    # The single attempt's own error is chained, not trio's "all attempts failed"
    # wrapper around a group of one: a traceback shows the cause once.
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


async def test_exception_in_the_body_propagates_as_itself() -> None:
    port = refused_port()

    async def run() -> None:
        async with trio_pool.open_pool() as pool:
            await pool.acquire(HOST, port)

    with pytest.raises(ConnectError, match="Connection refused") as info:
        await run()
    assert type(info.value) is ConnectError
    assert not isinstance(info.value.__context__, BaseExceptionGroup)

    async def mine() -> None:
        async with trio_pool.open_pool():
            raise KeyError("mine")

    with pytest.raises(KeyError):
        await mine()


async def test_failure_of_the_pools_own_work_still_surfaces(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("maintenance is broken")

    async def run() -> None:
        async with trio_pool.open_pool(health_check_interval=1.0) as pool:
            monkeypatch.setattr(pool._maintenance, "run_pass", broken)
            await trio.sleep(100)

    with pytest.raises(BaseExceptionGroup) as info:
        await run()
    assert info.group_contains(RuntimeError, match="maintenance is broken")


class _NoDNS(trio.abc.HostnameResolver):
    async def getaddrinfo(self, *args: object, **kwargs: object) -> list[object]:
        raise AssertionError("no DNS lookup may happen")  # pragma: no cover

    async def getnameinfo(self, *args: object) -> tuple[str, str]:  # pragma: no cover
        raise AssertionError("no DNS lookup may happen")


@pytest.mark.parametrize("host", ["http://127.0.0.1", "https://example.test/path", "a/b"])
async def test_url_instead_of_host_is_a_value_error_before_dns(host: str) -> None:
    trio.socket.set_custom_hostname_resolver(_NoDNS())
    try:
        async with trio_pool.open_pool() as pool:
            with pytest.raises(ValueError, match="not a URL"):
                await pool.acquire(host, 8080)
            with pytest.raises(ValueError, match="host"):
                pool.connection(host, 8080)
            assert_untouched(pool)
    finally:
        trio.socket.set_custom_hostname_resolver(None)


@pytest.mark.parametrize(
    ("host", "hint"),
    [
        ("127.0.0.1:8080", "port separately"),
        ("localhost:80", "port separately"),
        ("[::1]:8080", "port separately"),
        ("[::1]", "without brackets"),
        ("1:2:3", "port separately"),
    ],
)
async def test_host_with_a_port_is_a_value_error_before_dns(host: str, hint: str) -> None:
    """A ``host:port`` (or a bracketed IPv6 literal) never reaches the resolver."""
    trio.socket.set_custom_hostname_resolver(_NoDNS())
    try:
        async with trio_pool.open_pool() as pool:
            with pytest.raises(ValueError, match="host") as info:
                await pool.acquire(host, 8080)
            assert hint in str(info.value)
            with pytest.raises(ValueError, match=hint):
                await pool.acquire_new(host, 8080, tls=True)
            with pytest.raises(ValueError, match=hint):
                pool.connection(host, 8080)
            with pytest.raises(ValueError, match=hint):
                await pool.prewarm(host, 8080, count=1)
            assert_untouched(pool)
    finally:
        trio.socket.set_custom_hostname_resolver(None)


@pytest.mark.parametrize("host", ["::1", "fe80::1%lo", "::ffff:127.0.0.1"])
async def test_ipv6_literal_host_is_accepted(host: str, pool: ConnectionPool) -> None:
    pool.connection(host, 8080)
    pool.connection(host, 8443, tls=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ssl_context": "client_ctx"},
        {"sni": "api.example.test"},
        {"verify_cert": False},
        {"sni": "api.example.test", "ssl_context": "client_ctx"},
    ],
)
async def test_tls_arguments_without_tls_are_a_value_error(
    kwargs: dict[str, object], client_ctx: object, echo_port: int, pool: ConnectionPool
) -> None:
    """TLS settings with ``tls=False`` meant TLS: never a silent plain-TCP connection."""
    kwargs = {k: client_ctx if v == "client_ctx" else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match="tls=True") as info:
        await pool.acquire(HOST, echo_port, **kwargs)  # type: ignore[arg-type]
    assert next(iter(kwargs)) in str(info.value)
    with pytest.raises(ValueError, match="tls=True"):
        await pool.acquire_new(HOST, echo_port, tls=False, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tls=True"):
        pool.connection(HOST, echo_port, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tls=True"):
        await pool.prewarm(HOST, echo_port, count=1, **kwargs)  # type: ignore[arg-type]
    assert_untouched(pool)
    # With tls=True they are fine (no I/O here), and the defaults need no TLS.
    pool.connection(HOST, echo_port, tls=True, **kwargs)  # type: ignore[arg-type]
    pool.connection(HOST, echo_port, sni=None, verify_cert=True, ssl_context=None)


async def test_release_and_discard_check_their_argument(pool: ConnectionPool) -> None:
    with pytest.raises(TypeError, match="PooledConnection"):
        pool.release(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="PooledConnection"):
        pool.discard("x")  # type: ignore[arg-type]
    assert_untouched(pool)


@pytest.mark.parametrize(
    ("host", "port", "field"), [("127.0.0.1", "8080", "port"), (8080, None, "host")]
)
async def test_statistics_checks_its_arguments(
    host: object, port: object, field: str, pool: ConnectionPool
) -> None:
    with pytest.raises(TypeError, match=field):
        pool.statistics(host, port)  # type: ignore[arg-type]


async def test_prewarm_after_close_raises_pool_closed(echo_port: int, pool: ConnectionPool) -> None:
    await pool.aclose()
    with pytest.raises(trio_pool.PoolClosed):
        await pool.prewarm(HOST, echo_port, count=1)
    assert pool.statistics().connections_created == 0


async def test_release_after_the_user_closed_the_connection(
    echo_port: int, pool: ConnectionPool
) -> None:
    # Its stream closed by hand: release closes it, frees its slot, never pools it.
    conn = await pool.acquire(HOST, echo_port)
    await conn.stream.aclose()
    pool.release(conn)
    stats = pool.statistics()
    assert conn.is_closed
    assert (stats.idle_connections, stats.connections_closed) == (0, 1)
    # Closed with conn.aclose() (a discard): release and discard after it do nothing.
    conn = await pool.acquire(HOST, echo_port)
    await conn.aclose()
    pool.release(conn)
    pool.discard(conn)
    stats = pool.statistics()
    assert (stats.idle_connections, stats.connections_closed) == (0, 2)
    # A second release of a released connection is still an error.
    conn = await pool.acquire(HOST, echo_port)
    pool.release(conn)
    with pytest.raises(RuntimeError):
        pool.release(conn)


# -- forgetting ``async with`` -----------------------------------------------------------


async def test_open_pool_without_async_with_says_what_to_write() -> None:
    with pytest.raises(TypeError, match=r"async with trio_pool\.open_pool\("):
        await trio_pool.open_pool()  # type: ignore[misc]
    opener = trio_pool.open_pool()
    with pytest.raises(AttributeError, match=r"async with trio_pool\.open_pool\(.*\) as pool"):
        opener.acquire  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(TypeError, match=r"async with trio_pool\.open_pool\("), opener:  # type: ignore[attr-defined]
        pytest.fail("must not enter")  # pragma: no cover
    # Not an attribute of a pool either: the usual message.
    with pytest.raises(AttributeError, match="no attribute 'nonsense'") as info:
        opener.nonsense  # type: ignore[attr-defined]  # noqa: B018
    assert "async with" not in str(info.value)
    async with opener as pool:  # still usable the right way
        assert isinstance(pool, trio_pool.ConnectionPool)


async def test_connection_without_async_with_says_what_to_write(
    echo_port: int, pool: ConnectionPool
) -> None:
    with pytest.raises(TypeError, match=r"async with pool\.connection\(.*\) as conn"):
        await pool.connection(HOST, echo_port)  # type: ignore[misc]
    context = pool.connection(HOST, echo_port)
    with pytest.raises(AttributeError, match=r"async with pool\.connection\(.*\) as conn"):
        await context.send_all(b"x")  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match=r"async with pool\.connection\("):
        context.stream  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(TypeError, match=r"async with pool\.connection\("), context:  # type: ignore[attr-defined]
        pytest.fail("must not enter")  # pragma: no cover
    assert pool.statistics() == PoolStatistics()  # nothing borrowed, nothing opened
    async with context as conn:  # still usable the right way
        await conn.send_all(b"x")
        assert await conn.receive_some() == b"x"
