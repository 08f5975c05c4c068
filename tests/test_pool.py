"""The core pool (issue 2) against real loopback servers: reuse, health at hand-out,
release and discard, ``connection()``, ``acquire_new``, waiting, prewarm, statistics
and closing."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest
import trio
import trio.testing
import trustme

import trio_pool
from trio_pool import (
    ConnectionPool,
    ConnectionState,
    PoolClosed,
    PooledConnection,
    PoolExhausted,
    PoolStatistics,
)

from .checks import assert_balanced, roundtrip
from .servers import HOST, close_after_reply, echo, reply_then_junk, start_server


class ServerSide:
    """One accepted connection of :class:`Scripted`, waiting for the test's cue."""

    def __init__(self) -> None:
        self.action = ""
        self.go = trio.Event()
        self.done = trio.Event()

    async def act(self, action: str) -> None:
        """Have the server ``close`` this connection or send ``junk`` on it, and wait
        until it has."""
        self.action = action
        self.go.set()
        await self.done.wait()


class Scripted:
    """Echo one message per connection, then close or send junk when the test says so."""

    def __init__(self) -> None:
        self.sides: list[ServerSide] = []

    async def handler(self, stream: trio.SocketStream) -> None:
        side = ServerSide()
        self.sides.append(side)
        try:
            data = await stream.receive_some()
            await stream.send_all(data)
            await side.go.wait()
            if side.action == "close":
                await stream.aclose()
                side.done.set()
            else:
                await stream.send_all(b"JUNK")
                side.done.set()
                await echo(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@pytest.fixture
async def scripted(nursery: trio.Nursery) -> tuple[Scripted, int]:
    server = Scripted()
    return server, await start_server(nursery, server.handler)


async def until_readable(conn: PooledConnection) -> None:
    """Wait until the kernel has something (bytes or EOF) for ``conn``'s socket."""
    assert isinstance(conn.stream, trio.SocketStream)
    await trio.lowlevel.wait_readable(conn.stream.socket)


# -- reuse ---------------------------------------------------------------------------


async def test_second_acquire_is_a_hit_on_the_same_socket(
    echo_port: int, pool: ConnectionPool
) -> None:
    conn = await pool.acquire(HOST, echo_port)
    assert not conn.reused
    assert conn.state.value == "in_use"
    assert (conn.host, conn.port) == (HOST, echo_port)
    assert isinstance(conn, trio.abc.Stream)
    assert isinstance(conn.stream, trio.SocketStream)
    sock = conn.stream.socket
    local = sock.getsockname()
    await roundtrip(conn)
    pool.release(conn)
    assert conn.state is ConnectionState.IDLE
    again = await pool.acquire(HOST, echo_port)
    assert again is conn
    assert again.reused
    assert isinstance(again.stream, trio.SocketStream)
    assert again.stream.socket is sock
    assert sock.getsockname() == local
    await roundtrip(again, b"second")
    pool.release(again)
    stats = pool.statistics()
    assert (stats.pool_hits, stats.pool_misses) == (1, 1)
    assert (stats.connections_created, stats.idle_connections) == (1, 1)
    assert stats.hit_rate == 0.5
    assert_balanced(stats)


async def test_the_lease_tells_one_loan_from_the_next(echo_port: int, pool: ConnectionPool) -> None:
    conn = await pool.acquire(HOST, echo_port)
    first = conn.lease
    assert conn.lease == first  # stable while the loan lasts
    pool.release(conn)
    again = await pool.acquire(HOST, echo_port)
    assert again is conn
    assert again.lease != first
    pool.release(again)


async def test_reuse_is_lifo(echo_port: int, pool: ConnectionPool) -> None:
    conns = [await pool.acquire(HOST, echo_port) for _ in range(3)]
    assert len({id(c) for c in conns}) == 3
    for conn in conns:  # released coldest first: conns[2] is the warmest
        await roundtrip(conn)
        pool.release(conn)
    taken = [await pool.acquire(HOST, echo_port) for _ in range(3)]
    assert taken == conns[::-1]
    assert all(c.reused for c in taken)
    for conn in taken:
        pool.release(conn)
    stats = pool.statistics()
    assert (stats.pool_hits, stats.pool_misses, stats.idle_connections) == (3, 3, 3)


async def test_connection_attributes_follow_the_clock(
    echo_port: int, mock_clock: trio.testing.MockClock, pool: ConnectionPool
) -> None:
    start = trio.current_time()
    conn = await pool.acquire(HOST, echo_port)
    assert conn.created_at == conn.last_used_at == start
    assert (conn.use_count, conn.reused, conn.idle_time) == (1, False, 0.0)
    mock_clock.jump(2.0)
    await roundtrip(conn)
    assert conn.idle_time == 2.0  # since hand-out; using it does not count
    pool.release(conn)
    assert conn.last_used_at == start + 2.0
    assert conn.idle_time == 0.0
    mock_clock.jump(3.0)
    assert conn.idle_time == 3.0
    again = await pool.acquire(HOST, echo_port)
    assert again is conn
    assert (conn.use_count, conn.reused) == (2, True)
    assert conn.created_at == start
    assert conn.last_used_at == start + 5.0
    assert conn.idle_time == 0.0
    pool.release(conn)


# -- health at hand-out -----------------------------------------------------------------


async def test_idle_connection_closed_by_peer_is_never_handed_out(
    scripted: tuple[Scripted, int], pool: ConnectionPool
) -> None:
    server, port = scripted
    conn = await pool.acquire(HOST, port)
    await roundtrip(conn)
    pool.release(conn)
    assert pool.statistics().idle_connections == 1
    await server.sides[0].act("close")
    await until_readable(conn)
    assert conn.state is ConnectionState.IDLE
    assert not conn.validate()
    fresh = await pool.acquire(HOST, port)
    assert fresh is not conn
    assert not fresh.reused
    assert conn.is_closed
    stats = pool.statistics()
    assert (stats.pool_hits, stats.pool_misses) == (0, 2)
    assert (stats.connections_closed, stats.connections_evicted) == (1, 1)
    await roundtrip(fresh)
    pool.release(fresh)
    assert_balanced(pool.statistics())


async def test_idle_connection_with_unread_bytes_is_never_handed_out(
    scripted: tuple[Scripted, int], pool: ConnectionPool
) -> None:
    server, port = scripted
    conn = await pool.acquire(HOST, port)
    await roundtrip(conn)
    pool.release(conn)
    await server.sides[0].act("junk")
    await until_readable(conn)
    assert conn.has_pending_data()
    assert not conn.validate()
    assert not conn.is_closed
    fresh = await pool.acquire(HOST, port)
    assert fresh is not conn
    assert conn.is_closed
    await roundtrip(fresh)  # a clean stream: no JUNK in front of the reply
    pool.release(fresh)
    stats = pool.statistics()
    assert (stats.pool_misses, stats.connections_evicted) == (2, 1)
    assert_balanced(stats)


async def test_acquire_skips_a_dead_idle_connection_for_the_next_one(
    scripted: tuple[Scripted, int], pool: ConnectionPool
) -> None:
    server, port = scripted
    cold = await pool.acquire(HOST, port)
    await roundtrip(cold)
    warm = await pool.acquire(HOST, port)
    await roundtrip(warm)
    pool.release(cold)
    pool.release(warm)  # the warmest: acquire looks at it first
    await server.sides[1].act("close")
    await until_readable(warm)
    got = await pool.acquire(HOST, port)
    assert got is cold
    assert got.reused
    assert warm.is_closed
    stats = pool.statistics()
    assert (stats.pool_hits, stats.pool_misses, stats.idle_connections) == (1, 2, 0)
    pool.release(got)
    assert_balanced(pool.statistics())


async def test_close_after_reply_server_never_gets_its_dead_connection_reused(
    nursery: trio.Nursery, pool: ConnectionPool
) -> None:
    port = await start_server(nursery, close_after_reply)
    for _ in range(5):
        conn = await pool.acquire(HOST, port)
        assert not conn.reused
        await roundtrip(conn)
        pool.release(conn)  # pooled or, if the FIN is in already, closed right here
        assert isinstance(conn.stream, trio.SocketStream)
        if not conn.is_closed:
            await trio.lowlevel.wait_readable(conn.stream.socket)
    stats = pool.statistics()
    assert (stats.pool_hits, stats.pool_misses) == (0, 5)
    assert stats.connections_closed >= 4
    assert_balanced(stats)


async def test_reply_then_junk_server_never_gets_its_dirty_connection_reused(
    nursery: trio.Nursery, pool: ConnectionPool
) -> None:
    port = await start_server(nursery, reply_then_junk)
    conn = await pool.acquire(HOST, port)
    await roundtrip(conn)
    await until_readable(conn)  # the JUNK is in
    assert conn.has_pending_data()
    pool.release(conn)  # unread bytes: closed instead of pooled
    assert conn.is_closed
    stats = pool.statistics()
    assert (stats.idle_connections, stats.connections_closed) == (0, 1)
    fresh = await pool.acquire(HOST, port)
    assert not fresh.reused
    await roundtrip(fresh)
    pool.release(fresh)


async def test_release_closes_a_connection_with_unread_bytes(
    scripted: tuple[Scripted, int], pool: ConnectionPool
) -> None:
    server, port = scripted
    conn = await pool.acquire(HOST, port)
    await roundtrip(conn)
    assert not conn.has_pending_data()
    assert conn.validate()
    await server.sides[0].act("junk")
    await until_readable(conn)
    assert conn.has_pending_data()
    assert not conn.validate()
    pool.release(conn)
    assert conn.is_closed
    assert not conn.validate()
    stats = pool.statistics()
    assert (stats.idle_connections, stats.active_connections) == (0, 0)
    assert stats.connections_closed == 1
    assert_balanced(stats)


async def test_connection_context_exit_still_checks_the_connection(
    scripted: tuple[Scripted, int],
) -> None:
    # connection()'s exit goes straight to the state machine: it must still probe (unread
    # bytes or a closed peer mean closed, never pooled) and forget the leak-tracked borrow.
    server, port = scripted
    async with trio_pool.open_pool(leak_detection_threshold=60) as pool:
        async with pool.connection(HOST, port) as conn:
            await roundtrip(conn)
            await server.sides[0].act("junk")
            await until_readable(conn)
            assert pool._state.borrowed == {conn: None}
        assert conn.is_closed
        assert pool._state.borrowed == {}
        async with pool.connection(HOST, port) as second:
            assert second is not conn
            await roundtrip(second)
            await server.sides[1].act("close")
            await until_readable(second)
        assert second.is_closed
        async with pool.connection(HOST, port) as third:
            await roundtrip(third)
        assert third.state is ConnectionState.IDLE
        stats = pool.statistics()
        assert (stats.idle_connections, stats.connections_closed) == (1, 2)
        assert_balanced(stats)


async def test_dirty_release_serves_the_waiter_a_new_connection(
    scripted: tuple[Scripted, int], nursery: trio.Nursery
) -> None:
    server, port = scripted
    async with trio_pool.open_pool(max_size=1) as pool:
        conn = await pool.acquire(HOST, port)
        await roundtrip(conn)
        got: list[PooledConnection] = []

        async def waiter() -> None:
            got.append(await pool.acquire(HOST, port))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        await server.sides[0].act("junk")
        await until_readable(conn)
        pool.release(conn)
        assert conn.is_closed
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 1
        assert got[0] is not conn
        assert not got[0].reused
        await roundtrip(got[0])
        pool.release(got[0])
        assert_balanced(pool.statistics())


async def test_receive_eof_marks_connection_unusable(
    nursery: trio.Nursery, pool: ConnectionPool
) -> None:
    port = await start_server(nursery, close_after_reply)
    conn = await pool.acquire(HOST, port)
    await roundtrip(conn)
    assert await conn.receive_some() == b""
    pool.release(conn)
    assert conn.is_closed
    assert pool.statistics().idle_connections == 0


# -- release and discard ------------------------------------------------------------------


async def test_double_release_or_discard_raises(echo_port: int, pool: ConnectionPool) -> None:
    conn = await pool.acquire(HOST, echo_port)
    pool.release(conn)
    with pytest.raises(RuntimeError, match="release"):
        pool.release(conn)
    with pytest.raises(RuntimeError, match="discard"):
        pool.discard(conn)
    conn = await pool.acquire(HOST, echo_port)
    pool.discard(conn)
    with pytest.raises(RuntimeError):
        pool.discard(conn)
    with pytest.raises(RuntimeError):
        pool.release(conn)
    stats = pool.statistics()
    assert (stats.connections_created, stats.connections_closed) == (1, 1)
    assert_balanced(stats)


async def test_connection_from_another_pool_is_refused(echo_port: int) -> None:
    async with trio_pool.open_pool() as pool, trio_pool.open_pool() as other:
        conn = await pool.acquire(HOST, echo_port)
        with pytest.raises(RuntimeError, match="another pool"):
            other.release(conn)
        with pytest.raises(RuntimeError, match="another pool"):
            other.discard(conn)
        assert conn.state is ConnectionState.IN_USE
        assert other.statistics() == PoolStatistics()
        await roundtrip(conn)  # still ours, still working
        pool.release(conn)
        assert pool.statistics().idle_connections == 1


async def test_discard_closes_and_counts_at_once(echo_port: int, pool: ConnectionPool) -> None:
    conn = await pool.acquire(HOST, echo_port)
    assert isinstance(conn.stream, trio.SocketStream)
    sock = conn.stream.socket
    pool.discard(conn)  # synchronous: no checkpoint before the checks below
    assert conn.is_closed
    assert conn.state is ConnectionState.CLOSED
    assert sock.fileno() == -1
    stats = pool.statistics()
    assert (stats.connections_closed, stats.active_connections) == (1, 0)
    assert_balanced(stats)


async def test_released_connection_cannot_be_used(echo_port: int, pool: ConnectionPool) -> None:
    conn = await pool.acquire(HOST, echo_port)
    pool.release(conn)
    with pytest.raises(trio.ClosedResourceError):
        await conn.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await conn.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await conn.wait_send_all_might_not_block()
    again = await pool.acquire(HOST, echo_port)
    assert again is conn  # the refused use did not spoil it
    await roundtrip(again)
    pool.discard(again)
    with pytest.raises(trio.ClosedResourceError):
        await again.send_all(b"x")


async def test_aclose_on_the_connection_discards_it(echo_port: int, pool: ConnectionPool) -> None:
    conn = await pool.acquire(HOST, echo_port)
    await conn.aclose()
    assert conn.is_closed
    stats = pool.statistics()
    assert (stats.connections_closed, stats.active_connections, stats.idle_connections) == (
        1,
        0,
        0,
    )
    await conn.aclose()  # no-op the second time
    assert pool.statistics().connections_closed == 1
    async with await pool.acquire(HOST, echo_port) as conn2:  # trio.abc.AsyncResource
        await roundtrip(conn2)
    assert conn2.is_closed


async def test_aclose_after_release_leaves_the_pooled_connection_alone(
    echo_port: int, pool: ConnectionPool
) -> None:
    conn = await pool.acquire(HOST, echo_port)
    pool.release(conn)
    await conn.aclose()
    assert conn.state is ConnectionState.IDLE
    assert await pool.acquire(HOST, echo_port) is conn
    pool.release(conn)


async def test_release_hands_over_to_waiters_in_fifo_order(
    echo_port: int, nursery: trio.Nursery
) -> None:
    async with trio_pool.open_pool(max_size=1) as pool:
        conn = await pool.acquire(HOST, echo_port)
        served: list[tuple[int, PooledConnection]] = []

        async def waiter(i: int) -> None:
            served.append((i, await pool.acquire(HOST, echo_port)))

        for i in range(4):
            nursery.start_soon(waiter, i)
            await trio.testing.wait_all_tasks_blocked()  # pin the order of arrival
        assert pool.statistics().tasks_waiting == 4
        for turn in range(4):
            pool.release(conn)
            # Handed over synchronously: never idle, the waiter holds it already.
            stats = pool.statistics()
            assert (stats.idle_connections, stats.active_connections) == (0, 1)
            assert stats.tasks_waiting == 3 - turn
            await trio.testing.wait_all_tasks_blocked()
            assert [i for i, _ in served] == list(range(turn + 1))
            conn = served[-1][1]
            assert conn.reused
            await roundtrip(conn)
        assert {id(c) for _, c in served} == {id(conn)}
        pool.release(conn)
        stats = pool.statistics()
        assert (stats.connections_created, stats.pool_hits, stats.pool_misses) == (1, 4, 1)
        assert stats.acquire_wait_count == 4
        assert_balanced(stats)


@pytest.mark.parametrize("max_connecting", [None, 4])
async def test_discard_gives_the_waiter_a_connect_slot(
    echo_port: int, nursery: trio.Nursery, max_connecting: int | None
) -> None:
    async with trio_pool.open_pool(max_size=1, max_connecting=max_connecting) as pool:
        conn = await pool.acquire(HOST, echo_port)
        got: list[PooledConnection] = []

        async def waiter() -> None:
            got.append(await pool.acquire(HOST, echo_port))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        pool.discard(conn)
        # Tied: it left the line to connect. Hand-off: it waits for the connect started
        # for it in the pool's nursery.
        assert pool.statistics().tasks_waiting == (0 if max_connecting is None else 1)
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 1
        assert got[0] is not conn
        assert not got[0].reused
        pool.release(got[0])
        stats = pool.statistics()
        assert (stats.connections_created, stats.pool_misses) == (2, 2)
        assert_balanced(stats)


# -- connection() ----------------------------------------------------------------------


async def test_connection_context_releases_on_clean_exit(
    echo_port: int, pool: ConnectionPool
) -> None:
    async with pool.connection(HOST, echo_port) as conn:
        await roundtrip(conn)
        assert pool.statistics().active_connections == 1
    assert conn.state is ConnectionState.IDLE
    async with pool.connection(HOST, echo_port) as again:
        assert again is conn
    stats = pool.statistics()
    assert (stats.idle_connections, stats.pool_hits) == (1, 1)


async def test_connection_context_discards_on_exception(
    echo_port: int, pool: ConnectionPool
) -> None:
    conns: list[PooledConnection] = []

    async def body() -> None:
        async with pool.connection(HOST, echo_port) as conn:
            conns.append(conn)
            await roundtrip(conn)
            raise KeyError("boom")

    with pytest.raises(KeyError):
        await body()
    [conn] = conns
    assert conn.is_closed
    stats = pool.statistics()
    assert (stats.idle_connections, stats.active_connections) == (0, 0)
    assert stats.connections_closed == 1


async def test_connection_context_discards_on_cancellation(
    echo_port: int, pool: ConnectionPool
) -> None:
    with trio.CancelScope() as scope:
        async with pool.connection(HOST, echo_port) as conn:
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert conn.is_closed
    stats = pool.statistics()
    assert (stats.idle_connections, stats.active_connections) == (0, 0)
    assert_balanced(stats)


@pytest.mark.parametrize("raises", [False, True])
async def test_connection_context_exit_after_body_released(
    echo_port: int, raises: bool, pool: ConnectionPool
) -> None:
    try:
        async with pool.connection(HOST, echo_port) as conn:
            pool.release(conn)
            if raises:
                raise ValueError("after release")
    except ValueError:
        assert raises
    assert conn.state is ConnectionState.IDLE
    try:
        async with pool.connection(HOST, echo_port) as conn:
            pool.discard(conn)
            if raises:
                raise ValueError("after discard")
    except ValueError:
        assert raises
    assert conn.is_closed
    stats = pool.statistics()
    assert (stats.connections_closed, stats.idle_connections) == (1, 0)
    assert_balanced(stats)


@pytest.mark.parametrize("raises", [False, True])
async def test_connection_context_leaves_a_re_leased_connection_alone(
    echo_port: int, raises: bool, pool: ConnectionPool
) -> None:
    try:
        async with pool.connection(HOST, echo_port) as conn:
            pool.release(conn)
            someone_else = await pool.acquire(HOST, echo_port)
            assert someone_else is conn  # the same object, leased again
            if raises:
                raise ValueError("exit with an error")
    except ValueError:
        assert raises
    # The context's lease ended with its release: the new holder keeps the connection.
    assert someone_else.state is ConnectionState.IN_USE
    await roundtrip(someone_else)
    pool.release(someone_else)
    stats = pool.statistics()
    assert (stats.idle_connections, stats.connections_closed) == (1, 0)


async def test_connection_context_cannot_be_entered_twice(
    echo_port: int, pool: ConnectionPool
) -> None:
    ctx = pool.connection(HOST, echo_port)
    async with ctx as conn:
        with pytest.raises(RuntimeError, match="entered already"):
            await ctx.__aenter__()
    assert conn.state is ConnectionState.IDLE


# -- acquire_tls and acquire_new --------------------------------------------------------


async def tls_echo(nursery: trio.Nursery, ca: trustme.CA) -> int:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_context)

    async def handler(stream: trio.SocketStream) -> None:
        await echo(trio.SSLStream(stream, server_context, server_side=True))  # type: ignore[arg-type]

    return await start_server(nursery, handler)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_acquire_tls(nursery: trio.Nursery, ca: trustme.CA, pool: ConnectionPool) -> None:
    port = await tls_echo(nursery, ca)
    context = client_context(ca)
    conn = await pool.acquire_tls(HOST, port, ssl_context=context)
    assert conn.is_tls
    assert isinstance(conn.stream, trio.SSLStream)
    await roundtrip(conn)
    pool.release(conn)
    again = await pool.acquire(HOST, port, tls=True, ssl_context=context)
    assert again is conn  # acquire_tls is acquire(tls=True): the same key
    pool.release(again)
    stats = pool.statistics()
    assert (stats.tls_handshakes, stats.pool_hits) == (1, 1)
    conn = await pool.acquire_tls(HOST, port, ssl_context=context)
    pool.discard(conn)  # close_notify goes out in the pool's nursery, later ...
    assert conn.is_closed  # ... but the books say closed at once
    stats = pool.statistics()
    assert (stats.connections_closed, stats.active_connections) == (1, 0)
    assert_balanced(stats)


async def test_acquire_new_opens_a_new_connection_though_one_is_idle(
    echo_port: int, pool: ConnectionPool
) -> None:
    conn = await pool.acquire(HOST, echo_port)
    pool.release(conn)
    new = await pool.acquire_new(HOST, echo_port)
    assert new is not conn
    assert not new.reused
    stats = pool.statistics()
    assert (stats.pool_misses, stats.idle_connections, stats.active_connections) == (2, 1, 1)
    await roundtrip(new)
    pool.release(new)
    assert pool.statistics().idle_connections == 2


async def test_acquire_new_closes_the_coldest_idle_when_full(echo_port: int) -> None:
    async with trio_pool.open_pool(max_size=3) as pool:
        busy = await pool.acquire(HOST, echo_port)
        cold = await pool.acquire(HOST, echo_port)
        warm = await pool.acquire(HOST, echo_port)
        pool.release(cold)
        pool.release(warm)
        new = await pool.acquire_new(HOST, echo_port)
        assert new not in (busy, cold, warm)
        assert cold.is_closed
        assert warm.state is ConnectionState.IDLE
        stats = pool.statistics()
        assert (stats.connections_created, stats.connections_closed) == (4, 1)
        assert (stats.idle_connections, stats.active_connections) == (1, 2)
        assert_balanced(stats)
        for conn in (busy, new):
            pool.release(conn)


async def test_acquire_new_waits_when_all_are_in_use(echo_port: int, nursery: trio.Nursery) -> None:
    async with trio_pool.open_pool(max_size=1) as pool:
        conn = await pool.acquire(HOST, echo_port)
        with pytest.raises(PoolExhausted):
            await pool.acquire_new(HOST, echo_port, timeout=0)
        got: list[PooledConnection] = []

        async def waiter() -> None:
            got.append(await pool.acquire_new(HOST, echo_port))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().tasks_waiting == 1
        pool.release(conn)  # no use to the waiter: closed to make room for its new one
        assert conn.is_closed
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 1
        assert got[0] is not conn
        assert not got[0].reused
        await roundtrip(got[0])
        pool.release(got[0])
        stats = pool.statistics()
        assert (stats.connections_created, stats.connections_closed) == (2, 1)
        assert_balanced(stats)


# -- waiting ---------------------------------------------------------------------------


async def test_timeout_zero_fails_fast(echo_port: int) -> None:
    async with trio_pool.open_pool(max_size=1) as pool:
        conn = await pool.acquire(HOST, echo_port)
        start = trio.current_time()
        with pytest.raises(PoolExhausted) as info:
            await pool.acquire(HOST, echo_port, timeout=0)
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, trio_pool.PoolError)
        with pytest.raises(PoolExhausted):
            async with pool.connection(HOST, echo_port, timeout=0):
                pytest.fail("must not enter")  # pragma: no cover
        stats = pool.statistics()
        assert (stats.tasks_waiting, stats.acquire_timeouts) == (0, 2)
        assert trio.current_time() - start < 5  # no wait at all (loose: real clock)
        pool.release(conn)


async def test_config_acquire_timeout_zero_fails_fast(echo_port: int) -> None:
    async with trio_pool.open_pool(max_size=1, acquire_timeout=0) as pool:
        conn = await pool.acquire(HOST, echo_port)
        with pytest.raises(PoolExhausted):
            await pool.acquire(HOST, echo_port)
        pool.release(conn)
        assert await pool.acquire(HOST, echo_port) is conn
        pool.release(conn)


async def test_wait_times_out_and_leaves_the_line(
    echo_port: int, mock_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with trio_pool.open_pool(max_size=1, acquire_timeout=10.0) as pool:
        conn = await pool.acquire(HOST, echo_port)
        outcomes: list[object] = []

        async def waiter(timeout: float | None) -> None:
            start = trio.current_time()
            try:
                await pool.acquire(HOST, echo_port, timeout=timeout)
            except PoolExhausted:
                outcomes.append(trio.current_time() - start)

        nursery.start_soon(waiter, 2.5)  # explicit timeout
        nursery.start_soon(waiter, None)  # acquire_timeout from the config
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().tasks_waiting == 2
        mock_clock.jump(2.5)
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == [2.5]
        assert pool.statistics().tasks_waiting == 1
        mock_clock.jump(7.5)
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == [2.5, 10.0]
        stats = pool.statistics()
        assert (stats.tasks_waiting, stats.acquire_timeouts) == (0, 2)
        # Nobody is left in line: the release pools the connection.
        pool.release(conn)
        stats = pool.statistics()
        assert (stats.idle_connections, stats.active_connections) == (1, 0)


async def test_acquire_timeout_none_waits_until_release(
    echo_port: int, mock_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with trio_pool.open_pool(max_size=1, acquire_timeout=None) as pool:
        conn = await pool.acquire(HOST, echo_port)
        got: list[PooledConnection] = []

        async def waiter() -> None:
            got.append(await pool.acquire(HOST, echo_port))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(1e6)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        assert pool.statistics().tasks_waiting == 1
        pool.release(conn)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [conn]
        stats = pool.statistics()
        assert (stats.tasks_waiting, stats.acquire_timeouts, stats.acquire_wait_count) == (0, 0, 1)
        assert stats.acquire_wait_seconds == 1e6
        pool.release(conn)


async def test_waiters_of_other_keys_do_not_block(nursery: trio.Nursery) -> None:
    port_a = await start_server(nursery, echo)
    port_b = await start_server(nursery, echo)
    async with trio_pool.open_pool(max_size=1) as pool:
        a = await pool.acquire(HOST, port_a)

        async def waiter() -> None:
            pool.release(await pool.acquire(HOST, port_a))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        b = await pool.acquire(HOST, port_b, timeout=0)  # its own key has room
        assert pool.statistics(HOST, port_a).tasks_waiting == 1
        assert pool.statistics(HOST, port_b).tasks_waiting == 0
        pool.release(b)
        pool.release(a)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().tasks_waiting == 0


# -- prewarm --------------------------------------------------------------------------


async def test_prewarm_count(echo_port: int) -> None:
    async with trio_pool.open_pool(max_size=5) as pool:
        assert await pool.prewarm(HOST, echo_port, count=3) == 3
        stats = pool.statistics()
        assert (stats.idle_connections, stats.connections_created) == (3, 3)
        assert (stats.pool_hits, stats.pool_misses) == (0, 0)
        # tops up to count, never beyond it
        conn = await pool.acquire(HOST, echo_port)
        assert await pool.prewarm(HOST, echo_port, count=3) == 3
        assert pool.statistics().connections_created == 4
        assert await pool.prewarm(HOST, echo_port, count=1) == 3
        assert pool.statistics().connections_created == 4
        pool.release(conn)
        assert_balanced(pool.statistics())


async def test_prewarm_respects_max_size(echo_port: int) -> None:
    async with trio_pool.open_pool(max_size=3) as pool:
        held = [await pool.acquire(HOST, echo_port) for _ in range(2)]
        assert await pool.prewarm(HOST, echo_port, count=3) == 1
        stats = pool.statistics()
        assert (stats.idle_connections, stats.active_connections) == (1, 2)
        for conn in held:
            pool.release(conn)


async def test_prewarm_defaults_to_min_size(echo_port: int) -> None:
    async with trio_pool.open_pool(max_size=4, min_size=2) as pool:
        assert await pool.prewarm(HOST, echo_port) == 2
        assert pool.statistics().idle_connections == 2
    async with trio_pool.open_pool() as pool:
        assert await pool.prewarm(HOST, echo_port) == 0
        assert pool.statistics().connections_created == 0


async def test_prewarm_bad_count(echo_port: int) -> None:
    async with trio_pool.open_pool(max_size=2) as pool:
        with pytest.raises(ValueError, match="count"):
            await pool.prewarm(HOST, echo_port, count=3)
        with pytest.raises(ValueError, match="count"):
            await pool.prewarm(HOST, echo_port, count=-1)
        with pytest.raises(TypeError, match="count"):
            await pool.prewarm(HOST, echo_port, count="2")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="count"):
            await pool.prewarm(HOST, echo_port, count=True)
        assert pool.statistics().connections_created == 0


# -- statistics ------------------------------------------------------------------------


async def test_statistics_fresh_pool(pool: ConnectionPool) -> None:
    stats = pool.statistics()
    assert stats == PoolStatistics()
    assert stats.hit_rate == 0.0
    assert pool.host_statistics() == {}
    with pytest.raises(AttributeError):
        stats.pool_hits = 1  # type: ignore[misc]


async def test_statistics_per_host_port(
    nursery: trio.Nursery, ca: trustme.CA, pool: ConnectionPool
) -> None:
    port_a = await start_server(nursery, echo)
    port_b = await start_server(nursery, echo)
    port_tls = await tls_echo(nursery, ca)
    context_1, context_2 = client_context(ca), client_context(ca)
    for _ in range(2):
        conns = [
            await pool.acquire(HOST, port_a),
            await pool.acquire(HOST, port_a),
            await pool.acquire(HOST, port_b),
            # two keys for one host:port: ssl contexts compare by identity
            await pool.acquire_tls(HOST, port_tls, ssl_context=context_1),
            await pool.acquire_tls(HOST, port_tls, ssl_context=context_2),
        ]
        for conn in conns:
            pool.release(conn)
    a = pool.statistics(HOST, port_a)
    assert (a.connections_created, a.pool_misses, a.pool_hits, a.idle_connections) == (
        2,
        2,
        2,
        2,
    )
    b = pool.statistics(HOST, port_b)
    assert (b.connections_created, b.pool_hits, b.idle_connections) == (1, 1, 1)
    tls = pool.statistics(HOST, port_tls)
    assert (tls.connections_created, tls.pool_hits, tls.tls_handshakes) == (2, 2, 2)
    assert pool.statistics(port=port_b) == b
    whole = pool.statistics()
    assert whole.connections_created == 5
    assert whole.pool_hits == 5
    assert whole.hit_rate == 0.5
    assert pool.statistics(HOST) == whole
    assert pool.statistics("127.0.0.2", port_a) == PoolStatistics()
    by_host = pool.host_statistics()
    assert by_host == {(HOST, port_a): a, (HOST, port_b): b, (HOST, port_tls): tls}
    for stats in (a, b, tls, whole):
        assert_balanced(stats)


async def test_statistics_invariant_through_a_mixed_workload(
    scripted: tuple[Scripted, int], echo_port: int
) -> None:
    server, port = scripted
    async with trio_pool.open_pool(max_size=3) as pool:
        first = await pool.acquire(HOST, port)
        await roundtrip(first)
        assert_balanced(pool.statistics())
        pool.release(first)
        await server.sides[0].act("close")
        await until_readable(first)
        conns = [await pool.acquire(HOST, echo_port) for _ in range(3)]
        assert_balanced(pool.statistics())
        pool.discard(conns[0])
        pool.release(conns[1])
        assert_balanced(pool.statistics())
        second = await pool.acquire(HOST, port)  # skips the dead one
        assert second is not first
        await roundtrip(second)
        pool.release(second)
        pool.release(conns[2])
        stats = pool.statistics()
        assert_balanced(stats)
        assert (stats.idle_connections, stats.active_connections) == (3, 0)
        assert (stats.connections_created, stats.connections_closed) == (5, 2)


# -- closing ---------------------------------------------------------------------------


async def test_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="open_pool"):
        ConnectionPool()  # type: ignore[call-arg]
    async with trio.open_nursery() as nursery:
        with pytest.raises(TypeError, match="open_pool"):
            ConnectionPool(trio_pool.PoolConfig(), nursery)


async def test_aclose_closes_idle_and_is_idempotent(echo_port: int) -> None:
    async with trio_pool.open_pool() as pool:
        conn = await pool.acquire(HOST, echo_port)
        pool.release(conn)
        assert not pool.closed
        await pool.aclose()
        assert pool.closed
        assert conn.is_closed
        stats = pool.statistics()
        assert (stats.idle_connections, stats.connections_closed) == (0, 1)
        await pool.aclose()
        assert pool.statistics() == stats
    assert pool.closed


async def test_aclose_closes_in_use_connections_when_they_come_back(
    echo_port: int, pool: ConnectionPool
) -> None:
    kept = await pool.acquire(HOST, echo_port)
    thrown = await pool.acquire(HOST, echo_port)
    await pool.aclose()
    assert not kept.is_closed
    await roundtrip(kept)  # still the holder's to finish with
    pool.release(kept)
    assert kept.is_closed
    pool.discard(thrown)
    assert thrown.is_closed
    stats = pool.statistics()
    assert (stats.active_connections, stats.idle_connections) == (0, 0)
    assert stats.connections_closed == 2


async def test_aclose_wakes_waiters_with_pool_closed(echo_port: int, nursery: trio.Nursery) -> None:
    async with trio_pool.open_pool(max_size=1, acquire_timeout=None) as pool:
        conn = await pool.acquire(HOST, echo_port)
        errors: list[BaseException] = []

        async def waiter() -> None:
            try:
                await pool.acquire(HOST, echo_port)
            except PoolClosed as exc:
                errors.append(exc)

        for _ in range(3):
            nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        await pool.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert len(errors) == 3
        assert all(isinstance(e, trio.ClosedResourceError) for e in errors)
        assert pool.statistics().tasks_waiting == 0
        pool.release(conn)
        assert conn.is_closed


async def test_acquire_after_close_raises_pool_closed(echo_port: int) -> None:
    async with trio_pool.open_pool() as pool:
        pass
    with pytest.raises(PoolClosed):
        await pool.acquire(HOST, echo_port)
    with pytest.raises(PoolClosed):
        await pool.acquire_new(HOST, echo_port)
    with pytest.raises(PoolClosed):
        async with pool.connection(HOST, echo_port):
            pytest.fail("must not enter")  # pragma: no cover
    stats = pool.statistics()
    assert (stats.connections_created, stats.pool_misses) == (0, 0)


async def test_open_pool_exit_closes_borrowed_connections(
    echo_port: int, nursery: trio.Nursery, ca: trustme.CA
) -> None:
    """Leaving the block closes every connection, borrowed ones too: a later use raises
    trio.ClosedResourceError, and a later release or discard does nothing."""
    tls_port = await tls_echo(nursery, ca)
    async with trio_pool.open_pool() as pool:
        kept = await pool.acquire(HOST, echo_port)
        tls_kept = await pool.acquire(HOST, tls_port, tls=True, ssl_context=client_context(ca))
        await roundtrip(tls_kept)
    for conn in (kept, tls_kept):
        assert conn.is_closed
        with pytest.raises(trio.ClosedResourceError, match="pool was closed"):
            await conn.send_all(b"ping")
        with pytest.raises(trio.ClosedResourceError, match="pool was closed"):
            await conn.receive_some()
        stream = conn.stream
        sock = (
            stream.transport_stream.socket if isinstance(stream, trio.SSLStream) else stream.socket
        )
        assert sock.fileno() == -1  # closed now, not when garbage-collected
        pool.release(conn)  # nothing to give back any more
        pool.discard(conn)
        await conn.aclose()
    stats = pool.statistics()
    assert (stats.connections_closed, stats.active_connections) == (2, 0)
    assert_balanced(pool)


async def test_open_pool_exit_closes_a_connection_another_nursery_still_uses(
    echo_port: int, nursery: trio.Nursery
) -> None:
    """A task of an outer nursery still inside ``async with pool.connection()`` (blocked
    in a read) when the pool's block ends gets ClosedResourceError, and its exit does
    nothing more."""
    errors: list[BaseException] = []

    async def user(task_status: trio.TaskStatus[PooledConnection]) -> None:
        try:
            async with pool.connection(HOST, echo_port) as conn:
                task_status.started(conn)
                await conn.receive_some()  # the echo server sends nothing unasked
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    async with trio_pool.open_pool() as pool:
        conn = await nursery.start(user)
        await trio.testing.wait_all_tasks_blocked()
    await trio.testing.wait_all_tasks_blocked()
    assert len(errors) == 1
    assert conn.is_closed
    stats = pool.statistics()
    assert (stats.connections_closed, stats.active_connections) == (1, 0)


async def test_open_pool_exit_closes_idle_connections(echo_port: int) -> None:
    async with trio_pool.open_pool() as pool:
        conns = [await pool.acquire(HOST, echo_port) for _ in range(3)]
        for conn in conns:
            pool.release(conn)
    assert all(conn.is_closed for conn in conns)
    assert pool.statistics().connections_closed == 3


# -- O(1) claim, for correctness -------------------------------------------------------


@pytest.fixture
def silent_listeners() -> Iterator[list[int]]:
    """Listeners that never accept: the kernel completes the connects into the backlog,
    so thousands of idle client connections cost no server-side descriptor here."""
    socks = []
    for _ in range(20):
        sock = socket.socket()
        sock.bind((HOST, 0))
        sock.listen(256)
        socks.append(sock)
    try:
        yield [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


async def test_hit_among_thousands_of_idle_connections_of_other_keys(
    echo_port: int, silent_listeners: list[int]
) -> None:
    async with trio_pool.open_pool(max_size=100) as pool:
        conn = await pool.acquire(HOST, echo_port)
        pool.release(conn)
        for port in silent_listeners:
            assert await pool.prewarm(HOST, port, count=100) == 100
        assert pool.statistics().idle_connections == 2001
        again = await pool.acquire(HOST, echo_port)
        assert again is conn
        assert again.reused
        await roundtrip(again)
        other = await pool.acquire(HOST, silent_listeners[7])
        assert other.reused
        assert other.port == silent_listeners[7]
        pool.release(other)
        pool.release(again)
        stats = pool.statistics(HOST, echo_port)
        assert (stats.pool_hits, stats.pool_misses, stats.idle_connections) == (1, 1, 1)
        assert pool.statistics(HOST, silent_listeners[7]).idle_connections == 100
        assert_balanced(pool.statistics())
