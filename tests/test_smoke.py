"""The quick start of the API, end to end over a real loopback socket."""

from __future__ import annotations

import trio_pool

HOST = "127.0.0.1"


async def test_acquire_release_reuse(echo_port: int) -> None:
    async with trio_pool.open_pool(max_size=2) as pool:
        conn = await pool.acquire(HOST, echo_port)
        await conn.send_all(b"ping")
        assert await conn.receive_some() == b"ping"
        assert not conn.reused
        pool.release(conn)
        again = await pool.acquire(HOST, echo_port)
        assert again is conn
        assert again.reused
        assert again.stream.socket.fileno() == conn.stream.socket.fileno()
        pool.release(again)
        stats = pool.statistics()
        assert (stats.pool_hits, stats.pool_misses) == (1, 1)
        assert stats.idle_connections == 1
