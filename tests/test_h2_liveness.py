"""HTTP/2 liveness (issue 23, item 3): ``h2_ping_interval`` and ``h2_ping_timeout``.

The timing decisions are :class:`~trio_pool.http._h2_liveness.Liveness`'s, driven
directly with the time passed in; the rest runs against a raw h2 server on 127.0.0.1
whose connection can go silent (``frozen``: it reads, and sends nothing, not even the
PING ACKs h2 queues), as a peer that vanished without a FIN does.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

import trio_pool
from trio_pool import (
    Closed,
    ConnectDone,
    PingAnswered,
    PingSent,
    PingTimedOut,
    Reused,
)
from trio_pool.http import HTTPClient, ReadError, RequestNotProcessed
from trio_pool.http._h2_client import open_h2
from trio_pool.http._h2_liveness import Liveness, Pinger

from .checks import Recorder
from .h2servers import H2Server, ServerStream
from .servers import HOST

# -- the decisions, without sockets ----------------------------------------------------------


def test_a_quiet_connection_is_due_a_ping_then_lost() -> None:
    liveness = Liveness(interval=10.0, timeout=3.0, now=100.0)
    assert liveness.deadline() == 110.0
    assert liveness.due(109.9) is None
    liveness.received(105.0)  # anything received starts the quiet period again
    assert liveness.deadline() == 115.0
    assert liveness.due(114.0) is None
    assert liveness.due(115.0) == "ping"
    payload = liveness.ping(115.0)
    assert len(payload) == 8
    assert liveness.deadline() == 118.0
    liveness.received(116.0)  # only the ACK ends the wait
    assert liveness.due(117.9) is None
    assert liveness.due(118.0) == "lost"


def test_an_ack_ends_the_wait_and_gives_the_round_trip() -> None:
    liveness = Liveness(interval=10.0, timeout=3.0, now=0.0)
    first = liveness.ping(10.0)
    assert liveness.acked(b"\xff" * 8, 10.5) is None  # not ours
    assert liveness.acked(first, 10.25) == 0.25
    assert liveness.ping_sent_at is None
    assert liveness.deadline() == 20.25  # the ACK is something received
    assert liveness.acked(first, 11.0) is None  # answered already
    second = liveness.ping(20.25)
    assert second != first
    assert liveness.acked(first, 21.0) is None  # a late ACK of the first one
    assert liveness.due(23.25) == "lost"


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="h2_ping_interval must be > 0"):
        trio_pool.PoolConfig(h2_ping_interval=0)
    with pytest.raises(TypeError, match="h2_ping_timeout must be a number"):
        trio_pool.PoolConfig(h2_ping_timeout=None)  # type: ignore[arg-type]
    assert trio_pool.PoolConfig().h2_ping_interval is None  # off by default


# -- against a raw h2 server ---------------------------------------------------------------


def never_answer() -> Callable[[ServerStream], object]:
    async def hold(stream: ServerStream) -> None:
        await trio.sleep_forever()

    return hold


async def until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - state of the connection and server
            await trio.sleep(0.01)


@pytest.fixture
async def server(nursery: trio.Nursery) -> tuple[H2Server, int]:
    h2_server = H2Server(routes={"/hold": never_answer()})
    return h2_server, await h2_server.start(nursery)


async def test_an_unanswered_ping_closes_the_connection(
    server: tuple[H2Server, int],
) -> None:
    h2_server, port = server
    recorder = Recorder()
    async with trio_pool.open_pool(
        h2_ping_interval=0.1, h2_ping_timeout=0.3, on_event=recorder
    ) as pool:
        client = HTTPClient(pool, http2="prior-knowledge")
        assert (await client.request("GET", f"http://{HOST}:{port}/")).status == 200
        failed: list[BaseException] = []

        async def held() -> None:
            try:
                await client.request("GET", f"http://{HOST}:{port}/hold")
            except ReadError as exc:
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(held)
            await until(lambda: h2_server.open == 1)
            h2_server.connections[0].frozen = True
        (error,) = failed  # sent, so never retried: a read error
        assert "did not answer a PING" in str(error)
        (timed_out,) = recorder.of(PingTimedOut)
        assert timed_out.open_streams == 1  # type: ignore[attr-defined]
        sent = recorder.of(PingSent)[-1]
        assert 0.3 <= timed_out.time - sent.time < 5
        await until(lambda: bool(recorder.of(Closed)))
        (closed,) = recorder.of(Closed)
        assert closed.reason == "lost"  # type: ignore[attr-defined]
        # The next request gets a new connection.
        assert (await client.request("GET", f"http://{HOST}:{port}/")).status == 200
        assert len(h2_server.connections) == 2
        assert pool.statistics().http2_connections == 1


async def test_answered_pings_keep_the_connection(server: tuple[H2Server, int]) -> None:
    h2_server, port = server
    recorder = Recorder()
    async with trio_pool.open_pool(
        h2_ping_interval=0.05, h2_ping_timeout=5, on_event=recorder
    ) as pool:
        client = HTTPClient(pool, http2="prior-knowledge")
        assert (await client.request("GET", f"http://{HOST}:{port}/")).status == 200
        await until(lambda: len(recorder.of(PingAnswered)) >= 3)
        assert (await client.request("GET", f"http://{HOST}:{port}/")).status == 200
        assert len(h2_server.connections) == 1
        stats = pool.statistics()
        assert (stats.connections_closed, stats.http2_connections) == (0, 1)
    answered = recorder.of(PingAnswered)
    assert all(event.rtt >= 0 for event in answered)  # type: ignore[attr-defined]
    (done,) = recorder.of(ConnectDone)
    assert done.multiplexed  # type: ignore[attr-defined]
    (reused,) = recorder.of(Reused)  # the second request: a stream of the same connection
    assert reused.multiplexed  # type: ignore[attr-defined]
    assert reused.idle_for > 0  # type: ignore[attr-defined]
    assert len(recorder.of(PingSent)) >= len(answered)
    assert not recorder.of(PingTimedOut)


async def test_a_stream_reserved_and_not_sent_is_not_processed(
    server: tuple[H2Server, int], nursery: trio.Nursery
) -> None:
    """On a lost connection a request already sent fails with ReadError; one that had
    only reserved its stream gets RequestNotProcessed, which the HTTP layer retries."""
    h2_server, port = server
    tcp = await trio.open_tcp_stream(HOST, port)
    conn = await open_h2(tcp, nursery, Pinger(0.05, 0.2))
    failed: list[BaseException] = []

    async def held() -> None:
        try:
            await conn.request("GET", "/hold", f"{HOST}:{port}", b"http")
        except ReadError as exc:
            failed.append(exc)

    async with trio.open_nursery() as inner:
        inner.start_soon(held)
        await until(lambda: h2_server.open == 1)
        slot = conn.reserve_stream_nowait()
        h2_server.connections[0].frozen = True
        await until(lambda: conn.is_closed)
    assert len(failed) == 1
    with pytest.raises(RequestNotProcessed):
        await conn.start_request("GET", "/", f"{HOST}:{port}", b"http", slot=slot)
    await conn.aclose()


async def test_no_pings_by_default(server: tuple[H2Server, int]) -> None:
    _, port = server
    recorder = Recorder()
    async with trio_pool.open_pool(on_event=recorder) as pool:
        client = HTTPClient(pool, http2="prior-knowledge")
        assert (await client.request("GET", f"http://{HOST}:{port}/")).status == 200
        (conn,) = pool._state.live
        assert conn.shared._pinger is None  # type: ignore[attr-defined]
    assert not recorder.of(PingSent)


async def test_goaway_closes_with_its_reason(server: tuple[H2Server, int]) -> None:
    h2_server, port = server
    recorder = Recorder()
    async with trio_pool.open_pool(on_event=recorder) as pool:
        client = HTTPClient(pool, http2="prior-knowledge")
        assert (await client.request("GET", f"http://{HOST}:{port}/")).status == 200
        await h2_server.connections[0].goaway(last_stream_id=1)
        await until(lambda: bool(recorder.of(Closed)))
    (closed,) = recorder.of(Closed)
    assert closed.reason == "goaway"  # type: ignore[attr-defined]
    assert closed.uses == 1  # type: ignore[attr-defined]
