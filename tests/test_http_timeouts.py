"""Timeouts by phase (issue 12, defects 5, 6 and 10; issue 16 item 2).

httpx's four limits, honoured separately as httpcore does: ``pool`` (the wait for a
connection from the pool), ``connect`` (TCP connect plus TLS handshake), ``write`` (each
write), ``read`` (each read). Every timeout error names its phase and the limit that
fired; the pool counts the waits of HTTP requests in its statistics.
"""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing

import trio_pool
from trio_pool import ConnectionPool
from trio_pool.http import (
    DEFAULT_TIMEOUT,
    USE_CLIENT_DEFAULT,
    HTTPClient,
    PoolTimeout,
    ReadTimeout,
    Timeout,
    WriteTimeout,
)
from trio_pool.httpx import PoolTransport

from .checks import assert_settled
from .servers import HOST, refused_port, stall, start_server

pytestmark = pytest.mark.filterwarnings("error")


# -- the pool's connect_timeout (the core part) ----------------------------------------------


async def test_acquire_connect_timeout_overrides_connection_timeout(hanging_port: int) -> None:
    async with trio_pool.open_pool(connection_timeout=30) as pool:
        start = trio.current_time()
        with pytest.raises(trio_pool.ConnectTimeout, match=r"0\.2 s \(connect timeout"):
            await pool.acquire(HOST, hanging_port, connect_timeout=0.2)
        assert trio.current_time() - start < 10
        with pytest.raises(trio_pool.ConnectTimeout, match=r"0\.2 s"):
            await pool.acquire_new(HOST, hanging_port, connect_timeout=0.2)
        with pytest.raises(trio_pool.ConnectTimeout, match=r"0\.2 s"):
            async with pool.connection(HOST, hanging_port, connect_timeout=0.2):
                pass  # pragma: no cover
        stats = pool.statistics()
        assert (stats.acquire_timeouts, stats.connect_failures) == (0, 3)
        assert_settled(pool)


async def test_acquire_connect_timeout_zero_only_takes_idle_connections(
    nursery: trio.Nursery, pool: ConnectionPool
) -> None:
    port = await start_server(nursery, stall)
    with pytest.raises(trio_pool.ConnectTimeout, match="0 s"):
        await pool.acquire(HOST, port, connect_timeout=0)
    conn = await pool.acquire(HOST, port)
    pool.release(conn)
    assert await pool.acquire(HOST, port, connect_timeout=0) is conn
    pool.release(conn)


@pytest.mark.parametrize(
    ("value", "error"),
    [("1", TypeError), (True, TypeError), (-1, ValueError), (float("nan"), ValueError)],
)
async def test_acquire_connect_timeout_is_checked(
    value: object, error: type[Exception], pool: ConnectionPool
) -> None:
    with pytest.raises(error, match="connect_timeout"):
        await pool.acquire(HOST, 80, connect_timeout=value)  # type: ignore[arg-type]
    with pytest.raises(error, match="connect_timeout"):
        await pool.acquire_tls(HOST, 80, connect_timeout=value)  # type: ignore[arg-type]
    with pytest.raises(error, match="connect_timeout"):
        await pool.acquire_new(HOST, 80, connect_timeout=value)  # type: ignore[arg-type]
    with pytest.raises(error, match="connect_timeout"):
        pool.connection(HOST, 80, connect_timeout=value)  # type: ignore[arg-type]
    assert pool.statistics().connections_created == 0


# -- HTTP: every phase through HTTPClient and httpx ----------------------------------------------


async def read_head_then_stall(stream: trio.SocketStream) -> None:
    """Read the request head, never answer, never read more (uploads fill the buffers)."""
    await stream.receive_some()
    await trio.sleep_forever()


async def head_then_stall(stream: trio.SocketStream) -> None:
    """Read a request, send the head and 3 bytes of a 10-byte body, then stall."""
    await stream.receive_some()
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    await trio.sleep_forever()


async def answer_ok(stream: trio.SocketStream) -> None:
    try:
        async for _ in stream:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except trio.BrokenResourceError:
        pass


async def test_stalled_tcp_connect_is_connect_timeout(hanging_port: int) -> None:
    async with trio_pool.open_pool(connection_timeout=30) as pool:
        client = HTTPClient(pool, timeout=0.3)
        with pytest.raises(
            trio_pool.ConnectTimeout, match=r"0\.3 s \(connect timeout, during the TCP"
        ):
            await client.request("GET", f"http://{HOST}:{hanging_port}/")
        with pytest.raises(trio_pool.ConnectTimeout, match=r"0\.2 s"):
            await client.request(
                "GET", f"http://{HOST}:{hanging_port}/", timeout=Timeout(5, connect=0.2)
            )
        transport = PoolTransport(pool)
        async with httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(5, connect=0.2)
        ) as hx:
            with pytest.raises(httpx.ConnectTimeout, match=r"0\.2 s \(connect timeout"):
                await hx.get(f"http://{HOST}:{hanging_port}/")
        stats = pool.statistics()
        assert (stats.acquire_timeouts, stats.connect_failures) == (0, 3)
        assert_settled(pool)


async def test_stalled_tls_handshake_is_connect_timeout(nursery: trio.Nursery) -> None:
    port = await start_server(nursery, stall)
    url = f"https://{HOST}:{port}/"
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, timeout=Timeout(5, connect=0.3))
        with pytest.raises(
            trio_pool.ConnectTimeout, match=r"0\.3 s \(connect timeout, during the TLS"
        ):
            await client.request("GET", url)
        async with httpx.AsyncClient(
            transport=PoolTransport(pool), timeout=httpx.Timeout(5, connect=0.3)
        ) as hx:
            with pytest.raises(httpx.ConnectTimeout, match="TLS handshake"):
                await hx.get(url)
        assert pool.statistics().acquire_timeouts == 0
        assert_settled(pool)


async def test_read_timeouts_name_their_own_limit(nursery: trio.Nursery) -> None:
    stalled = await start_server(nursery, read_head_then_stall)
    half = await start_server(nursery, head_then_stall)
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, timeout=Timeout(5, read=0.25))
        with pytest.raises(
            ReadTimeout, match=r"0\.25 s \(read timeout, waiting for the response head"
        ):
            await client.request("GET", f"http://{HOST}:{stalled}/")
        with pytest.raises(ReadTimeout, match=r"0\.25 s \(read timeout, reading the body"):
            await client.request("GET", f"http://{HOST}:{half}/")
        async with client.stream("GET", f"http://{HOST}:{half}/") as r:
            chunks = r.aiter_bytes()
            assert await chunks.__anext__() == b"abc"
            with pytest.raises(ReadTimeout, match=r"0\.25 s \(read timeout, reading the body"):
                await chunks.__anext__()
        async with httpx.AsyncClient(
            transport=PoolTransport(pool), timeout=httpx.Timeout(5, read=0.25)
        ) as hx:
            with pytest.raises(httpx.ReadTimeout, match=r"within 0\.25 s \(read timeout"):
                await hx.get(f"http://{HOST}:{stalled}/")
            with pytest.raises(
                httpx.ReadTimeout, match=r"0\.25 s \(read timeout, reading the body"
            ):
                await hx.get(f"http://{HOST}:{half}/")
        assert_settled(pool)


async def test_write_timeout_names_its_limit(nursery: trio.Nursery) -> None:
    port = await start_server(nursery, read_head_then_stall)
    url = f"http://{HOST}:{port}/"
    upload = b"x" * (32 * 1024 * 1024)  # more than the socket buffers take
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, timeout=Timeout(30, write=0.3))
        with pytest.raises(WriteTimeout, match=r"0\.3 s \(write timeout\)"):
            await client.request("POST", url, content=upload)
        async with httpx.AsyncClient(
            transport=PoolTransport(pool), timeout=httpx.Timeout(30, write=0.3)
        ) as hx:
            with pytest.raises(httpx.WriteTimeout, match=r"0\.3 s \(write timeout\)"):
                await hx.post(url, content=upload)
        stats = pool.statistics()
        assert (stats.idle_connections, stats.connections_closed) == (0, 2)
        assert_settled(pool)


async def test_pool_timeout_is_its_own_limit_and_counted(nursery: trio.Nursery) -> None:
    port = await start_server(nursery, answer_ok)
    url = f"http://{HOST}:{port}/"
    # max_total: a raw borrower's connection is of another key than the client's.
    async with trio_pool.open_pool(max_size=1, max_total=1) as pool:
        held = await pool.acquire(HOST, port)
        client = HTTPClient(pool, timeout=Timeout(10, pool=0.3))
        start = trio.current_time()
        with pytest.raises(PoolTimeout, match=r"0\.3 s \(pool timeout\)") as info:
            await client.request("GET", url)
        assert isinstance(info.value, trio_pool.PoolExhausted)
        assert trio.current_time() - start < 5  # not pool + connect + write
        assert pool.statistics().acquire_timeouts == 1
        async with httpx.AsyncClient(
            transport=PoolTransport(pool), timeout=httpx.Timeout(10, pool=0.3)
        ) as hx:
            start = trio.current_time()
            with pytest.raises(httpx.PoolTimeout, match=r"0\.3 s \(pool timeout\)"):
                await hx.get(url)
            assert trio.current_time() - start < 5
        assert pool.statistics().acquire_timeouts == 2
        # A wait that is served is counted too.
        async with trio.open_nursery() as inner:
            inner.start_soon(client.request, "GET", url)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.statistics().tasks_waiting == 1
            pool.release(held)
        stats = pool.statistics()
        assert (stats.acquire_wait_count, stats.acquire_timeouts) == (1, 2)
        assert_settled(pool)


# -- timeout=0 means what acquire(timeout=0) means ------------------------------------------


async def test_zero_pool_limit_fails_fast_like_acquire(nursery: trio.Nursery) -> None:
    port = await start_server(nursery, answer_ok)
    url = f"http://{HOST}:{port}/"
    # max_total: a raw borrower's connection is of another key than the client's.
    async with trio_pool.open_pool(max_size=1, max_total=1) as pool:
        client = HTTPClient(pool, timeout=Timeout(5, pool=0))
        assert (await client.request("GET", url)).content == b"ok"  # a connect: no wait
        assert (await client.request("GET", url)).content == b"ok"  # idle: no wait
        held = await pool.acquire(HOST, port)
        with pytest.raises(trio_pool.PoolExhausted) as from_pool:
            await pool.acquire(HOST, port, timeout=0)
        with pytest.raises(PoolTimeout) as from_http:
            await client.request("GET", url)
        assert str(from_pool.value) in str(from_http.value)
        pool.release(held)
        assert pool.statistics().acquire_timeouts == 2


async def test_zero_timeout_is_accepted_and_means_no_waiting(
    nursery: trio.Nursery, client: HTTPClient, pool: ConnectionPool
) -> None:
    port = await start_server(nursery, answer_ok)
    url = f"http://{HOST}:{port}/"
    await client.request("GET", url)
    # Every phase without waiting: the response cannot be there yet.
    with pytest.raises(ReadTimeout, match=r"0\.0 s \(read timeout"):
        await client.request("GET", url, timeout=0)
    with pytest.raises(trio_pool.ConnectTimeout, match=r"0\.0 s"):
        await HTTPClient(pool, timeout=0).request("GET", f"http://{HOST}:{refused_port()}/")
    assert HTTPClient(pool, timeout=0).stream("GET", url) is not None
    assert_settled(pool)


# -- issue 16 item 2: a finite default ---------------------------------------------------------


async def test_default_timeout_is_five_seconds(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    client: HTTPClient,
    pool: ConnectionPool,
) -> None:
    port = await start_server(nursery, read_head_then_stall)
    url = f"http://{HOST}:{port}/"
    assert DEFAULT_TIMEOUT == 5.0
    start = trio.current_time()
    with pytest.raises(ReadTimeout, match=r"5\.0 s"):
        await client.request("GET", url)
    assert trio.current_time() - start == pytest.approx(5.0)
    # None: no limit of the client's own.
    with trio.move_on_after(1000) as scope:
        await HTTPClient(pool, timeout=None).request("GET", url)
    assert scope.cancelled_caught
    with trio.move_on_after(1000) as scope:
        await client.request("GET", url, timeout=None)
    assert scope.cancelled_caught


# -- the Timeout type ------------------------------------------------------------------------


def test_timeout_object() -> None:
    assert Timeout(3) == Timeout(3.0, connect=3, read=3, write=3, pool=3)
    limits = Timeout(5, read=None, pool=0)
    assert (limits.connect, limits.read, limits.write, limits.pool) == (5.0, None, 5.0, 0.0)
    assert Timeout() == Timeout(DEFAULT_TIMEOUT)
    assert repr(Timeout(2)) == "Timeout(timeout=2.0)"
    assert "read=None" in repr(limits)
    assert len({Timeout(1), Timeout(1.0)}) == 1
    with pytest.raises(AttributeError):
        limits.read = 1  # type: ignore[misc]
    assert repr(USE_CLIENT_DEFAULT) == "USE_CLIENT_DEFAULT"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("5", TypeError),
        (True, TypeError),
        (-1, ValueError),
        (float("nan"), ValueError),
        ([], TypeError),
    ],
)
async def test_bad_timeouts_fail_before_io(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="timeout"):
        Timeout(value)  # type: ignore[arg-type]
    with pytest.raises(error, match="read"):
        Timeout(read=value)  # type: ignore[arg-type]
    async with trio_pool.open_pool() as pool:
        with pytest.raises(error, match="timeout"):
            HTTPClient(pool, timeout=value)  # type: ignore[arg-type]
        client = HTTPClient(pool)
        with pytest.raises(error, match="timeout"):
            await client.request("GET", "http://127.0.0.1:9/", timeout=value)  # type: ignore[arg-type]
        with pytest.raises(error, match="timeout"):
            client.stream("GET", "http://127.0.0.1:9/", timeout=value)  # type: ignore[arg-type]
        assert pool.statistics().connections_created == 0
