"""httpx over trio_pool's PoolTransport, against nginx and h11 test servers."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import h11
import httpx
import pytest
import trio

import trio_pool
from trio_pool.httpx import PoolTransport

from .checks import assert_settled
from .nginx import BIG_SIZE, TEXT, Nginx, open_nginx
from .servers import open_fds
from .test_http import answer_first_only, ok, send_response, start_h11


@pytest.fixture
async def nginx(tmp_path: Path) -> AsyncIterator[Nginx]:
    async with open_nginx(tmp_path) as server:
        yield server


def test_import_trio_pool_does_not_import_httpx() -> None:
    code = (
        "import sys, trio_pool, trio_pool.http\n"
        "assert 'httpx' not in sys.modules, 'httpx imported'\n"
        "import trio_pool.httpx\n"
        "assert 'httpx' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.nginx
async def test_httpx_against_nginx(nginx: Nginx) -> None:
    async with (
        trio_pool.open_pool() as pool,
        httpx.AsyncClient(transport=PoolTransport(pool)) as client,
    ):
        r = await client.get(nginx.url("/"))
        assert (r.status_code, r.content, r.http_version) == (200, b"ok", "HTTP/1.1")
        r = await client.get(nginx.url("/text"), params={"q": "1"})
        assert r.text == TEXT.decode()
        assert r.headers["content-type"] == "text/plain"
        r = await client.post(nginx.url("/"), content=b"x" * 5000)
        assert r.status_code == 200
        async with client.stream("GET", nginx.url("/big")) as r:
            total = 0
            async for chunk in r.aiter_bytes():
                total += len(chunk)
        assert total == BIG_SIZE
        stats = pool.statistics()
        assert (stats.connections_created, stats.pool_hits) == (1, 3)
        # Not read to the end: discarded.
        async with client.stream("GET", nginx.url("/big")) as r:
            assert r.status_code == 200
        stats = pool.statistics()
        assert (stats.connections_closed, stats.idle_connections) == (1, 0)
        r = await client.get(nginx.url("/close"))
        assert r.headers["connection"] == "close"
        assert pool.statistics().idle_connections == 0
        assert_settled(pool)


@pytest.mark.nginx
async def test_httpx_users_with_pauses_beyond_keepalive(nginx: Nginx) -> None:
    rng = random.Random(7)
    errors: list[BaseException] = []
    done = 0
    fds_before = open_fds()

    async def user(client: httpx.AsyncClient, pauses: set[int]) -> None:
        nonlocal done
        for i in range(30):
            await trio.sleep(rng.uniform(1.1, 1.3) if i in pauses else rng.uniform(0, 0.01))
            try:
                r = await client.get(nginx.url(rng.choice(["/", "/text", "/big"])))
                assert r.status_code == 200
                done += 1
            except Exception as exc:  # collected: the assertion below shows them all
                errors.append(exc)

    async with (
        trio_pool.open_pool(max_size=8) as pool,
        httpx.AsyncClient(transport=PoolTransport(pool)) as client,
    ):
        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(user, client, {9 + n % 4, 20})
        assert errors == []
        assert done == 240
        stats = pool.statistics()
        assert stats.pool_hits > 0
        assert stats.connections_created <= 240 // 3
        assert_settled(pool)
    assert open_fds() <= fds_before


async def test_httpx_retry_and_no_retry(nursery: trio.Nursery) -> None:
    server = await start_h11(nursery, answer_first_only)
    async with (
        trio_pool.open_pool() as pool,
        httpx.AsyncClient(transport=PoolTransport(pool)) as client,
    ):
        assert (await client.get(server.url())).content == b"hi"
        assert (await client.get(server.url())).content == b"hi"  # retried once
        assert server.connections == 2
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(server.url(), content=b"data")
        assert server.connections == 2
        assert_settled(pool)


async def test_httpx_error_mapping(nursery: trio.Nursery) -> None:
    async def junk(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
        return False

    async def stall(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    junk_server = await start_h11(nursery, junk)
    stall_server = await start_h11(nursery, stall)
    from .servers import refused_port

    async with (
        trio_pool.open_pool(max_size=1) as pool,
        httpx.AsyncClient(transport=PoolTransport(pool), timeout=0.2) as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(junk_server.url())
        with pytest.raises(httpx.ReadTimeout):
            await client.get(stall_server.url())
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{refused_port()}/")
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("ftp://127.0.0.1/")
        assert_settled(pool)


async def test_httpx_pool_timeout(nursery: trio.Nursery) -> None:
    server = await start_h11(nursery, ok)
    async with (
        trio_pool.open_pool(max_size=1) as pool,
        httpx.AsyncClient(transport=PoolTransport(pool), timeout=0.2) as client,
    ):
        async with client.stream("GET", server.url()):
            with pytest.raises(httpx.PoolTimeout):
                await client.get(server.url())
        assert (await client.get(server.url())).content == b"hi"


async def test_httpx_cancel_mid_body_discards(nursery: trio.Nursery) -> None:
    async def half(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        while await stream.receive_some():
            pass  # pragma: no cover
        return False

    server = await start_h11(nursery, half)
    async with (
        trio_pool.open_pool() as pool,
        httpx.AsyncClient(transport=PoolTransport(pool)) as client,
    ):
        with trio.move_on_after(0.2) as scope:
            await client.get(server.url())
        assert scope.cancelled_caught
        assert_settled(pool)
        assert pool.statistics().connections_closed == 1


async def test_httpx_chunked_and_headers(nursery: trio.Nursery) -> None:
    seen: list[h11.Request] = []

    async def respond(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        seen.append(req)
        await send_response(
            stream,
            conn,
            body=b"chunked body",
            headers=[(b"Transfer-Encoding", b"chunked"), (b"X-Case", b"Kept")],
        )
        return True

    server = await start_h11(nursery, respond)
    async with (
        trio_pool.open_pool() as pool,
        httpx.AsyncClient(transport=PoolTransport(pool)) as client,
    ):

        async def body() -> AsyncIterator[bytes]:
            yield b"streamed "
            yield b"upload"

        r = await client.put(server.url("/p?x=1"), content=body(), headers={"X-Mine": "yes"})
        assert r.content == b"chunked body"
        assert r.headers["x-case"] == "Kept"
        request = seen[0]
        assert (request.method, request.target) == (b"PUT", b"/p?x=1")
        assert dict(request.headers)[b"x-mine"] == b"yes"
        assert pool.statistics().idle_connections == 1


async def test_httpx_heads_built_once_are_still_checked(nursery: trio.Nursery) -> None:
    """The transport builds the h11 head of a repeated request once: a head h11 refuses
    (CR/LF in a header value) is refused every time, never kept, and the same headers
    with another body length have their framing checked again."""
    seen: list[h11.Request] = []

    async def respond(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        seen.append(req)
        await send_response(stream, conn)
        return True

    server = await start_h11(nursery, respond)
    async with (
        trio_pool.open_pool() as pool,
        httpx.AsyncClient(transport=PoolTransport(pool)) as client,
    ):
        for _ in range(2):
            assert (await client.get(server.url(), headers={"X-A": "1"})).content == b"hi"
        for _ in range(2):
            with pytest.raises(httpx.LocalProtocolError, match="'X-A' header") as info:
                await client.get(server.url(), headers={"X-A": "1\r\nX-B: 2"})
            assert "X-B" not in str(info.value)
        headers = {"Content-Length": "3"}
        assert (await client.post(server.url(), content=b"abc", headers=headers)).content
        request = client.build_request("POST", server.url(), content=b"abcd", headers=headers)
        assert request.headers["Content-Length"] == "3"
        with pytest.raises(httpx.LocalProtocolError, match="Content-Length: 3"):
            await client.send(request)
        assert [r.method for r in seen] == [b"GET", b"GET", b"POST"]
        assert all(dict(r.headers).get(b"x-b") is None for r in seen)
        assert_settled(pool)


async def test_httpx_timeout_extension_made_once_still_checked(nursery: trio.Nursery) -> None:
    """The timeout extension's Timeout is made once per set of values: a value of
    another type that compares equal (``True`` after ``1``) is still refused."""
    server = await start_h11(nursery, ok)
    async with (
        trio_pool.open_pool() as pool,
        httpx.AsyncClient(transport=PoolTransport(pool)) as client,
    ):
        for value in (1, 1):
            timeout = {"connect": value, "read": 1.0, "write": 1.0, "pool": 1.0}
            response = await client.get(server.url(), extensions={"timeout": timeout})
            assert response.content == b"hi"
        for value in (True, [1.0], -1.0, float("nan")):
            timeout = {"connect": value, "read": 1.0, "write": 1.0, "pool": 1.0}
            with pytest.raises(httpx.LocalProtocolError, match="bad timeout extension: connect"):
                await client.get(server.url(), extensions={"timeout": timeout})
        assert_settled(pool)
