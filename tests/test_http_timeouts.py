"""Timeouts by phase (issue 12, defects 5, 6 and 10; issue 16 item 2).

httpx's four limits, honoured separately as httpcore does: ``pool`` (the wait for a
connection from the pool), ``connect`` (TCP connect plus TLS handshake), ``write`` (each
write), ``read`` (each read). Every timeout error names its phase and the limit that
fired; the pool counts the waits of HTTP requests in its statistics.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_pool

from .checks import assert_settled
from .servers import HOST, stall, start_server

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
    nursery: trio.Nursery,
) -> None:
    port = await start_server(nursery, stall)
    async with trio_pool.open_pool() as pool:
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
async def test_acquire_connect_timeout_is_checked(value: object, error: type[Exception]) -> None:
    async with trio_pool.open_pool() as pool:
        with pytest.raises(error, match="connect_timeout"):
            await pool.acquire(HOST, 80, connect_timeout=value)  # type: ignore[arg-type]
        with pytest.raises(error, match="connect_timeout"):
            await pool.acquire_tls(HOST, 80, connect_timeout=value)  # type: ignore[arg-type]
        with pytest.raises(error, match="connect_timeout"):
            await pool.acquire_new(HOST, 80, connect_timeout=value)  # type: ignore[arg-type]
        with pytest.raises(error, match="connect_timeout"):
            pool.connection(HOST, 80, connect_timeout=value)  # type: ignore[arg-type]
        assert pool.statistics().connections_created == 0
