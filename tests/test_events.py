"""Lifecycle events (issue 23, item 4): the ``on_event`` hook, against real loopback
servers, and the state machine's events driven directly (no sockets)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio
import trustme

import trio_pool
from trio_pool import (
    AcquireTimedOut,
    Closed,
    ConnectDone,
    ConnectError,
    ConnectFailed,
    ConnectStarted,
    Discarded,
    PoolEvent,
    PoolExhausted,
    Queued,
    Released,
    Reused,
    TLSResumed,
    Waited,
)
from trio_pool._events import Listeners

from .checks import Recorder
from .servers import HOST, echo, refused_port
from .state_fakes import World, fake_stream, make_key


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def recorded_pool(recorder: Recorder) -> AsyncIterator[trio_pool.ConnectionPool]:
    """A pool of at most one connection per key whose events go to ``recorder``."""
    async with trio_pool.open_pool(max_size=1, on_event=recorder) as pool:
        yield pool


# -- through a pool ------------------------------------------------------------------------


async def test_connect_reuse_release_discard(
    recorded_pool: trio_pool.ConnectionPool, recorder: Recorder, echo_port: int
) -> None:
    pool = recorded_pool
    conn = await pool.acquire(HOST, echo_port)
    assert recorder.take() == ["ConnectStarted", "ConnectDone"]
    pool.release(conn)
    assert recorder.kinds() == ["Released"]
    (released,) = recorder.events
    assert isinstance(released, Released)
    assert (released.key.host, released.key.port) == (HOST, echo_port)
    assert released.held >= 0
    recorder.take()
    conn = await pool.acquire(HOST, echo_port)
    (reused,) = recorder.events
    assert isinstance(reused, Reused)
    assert (reused.key, reused.multiplexed) == (released.key, False)
    assert reused.idle_for >= 0
    recorder.take()
    pool.discard(conn)
    discarded, closed = recorder.events
    assert isinstance(discarded, Discarded)
    assert discarded.reason == "discarded"
    assert isinstance(closed, Closed)
    assert (closed.reason, closed.uses) == ("discarded", 2)
    assert closed.age >= 0
    assert closed.time >= reused.time


async def test_handoff_connect_is_reported_as_such(
    recorded_pool: trio_pool.ConnectionPool, recorder: Recorder, echo_port: int
) -> None:
    conn = await recorded_pool.acquire(HOST, echo_port)
    started, done = recorder.events
    assert isinstance(started, ConnectStarted)
    assert started.handoff  # the default pool hands connects off to its nursery
    assert isinstance(done, ConnectDone)
    assert done.duration >= 0
    assert not done.multiplexed
    recorded_pool.release(conn)


async def test_queued_waited_and_handed_over(
    recorded_pool: trio_pool.ConnectionPool, recorder: Recorder, echo_port: int
) -> None:
    pool = recorded_pool
    conn = await pool.acquire(HOST, echo_port)
    recorder.take()
    async with trio.open_nursery() as nursery:

        async def second() -> None:
            pool.release(await pool.acquire(HOST, echo_port))

        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        (queued,) = recorder.events
        assert isinstance(queued, Queued)
        assert queued.waiting == 1
        await trio.sleep(0.01)
        pool.release(conn)
    assert recorder.kinds() == ["Queued", "Released", "Waited", "Reused", "Released"]
    waited = recorder.of(Waited)[0]
    assert isinstance(waited, Waited)
    assert waited.waited >= 0.01
    reused = recorder.of(Reused)[0]
    assert isinstance(reused, Reused)
    assert reused.idle_for == 0.0  # handed over, never idle


async def test_acquire_timeouts_say_why(echo_port: int, recorder: Recorder) -> None:
    async with trio_pool.open_pool(max_size=1, max_waiters=1, on_event=recorder) as pool:
        conn = await pool.acquire(HOST, echo_port)
        recorder.take()
        with pytest.raises(PoolExhausted):
            await pool.acquire(HOST, echo_port, timeout=0)
        with pytest.raises(PoolExhausted):
            await pool.acquire(HOST, echo_port, timeout=0.02)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(pool.acquire, HOST, echo_port, timeout=5))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(PoolExhausted):
                await pool.acquire(HOST, echo_port)
            nursery.cancel_scope.cancel()
        pool.release(conn)
    timeouts = recorder.of(AcquireTimedOut)
    reasons = [event.reason for event in timeouts]  # type: ignore[attr-defined]
    assert reasons == ["fail_fast", "timeout", "line_full"]
    assert timeouts[1].waited >= 0.02  # type: ignore[attr-defined]
    assert timeouts[0].waited == timeouts[2].waited == 0.0  # type: ignore[attr-defined]
    stats = pool.statistics()
    assert len(timeouts) == stats.acquire_timeouts + stats.waiters_rejected


def stats_agree(recorder: Recorder, pool: trio_pool.ConnectionPool) -> bool:
    """The events and the statistics count the same connects, reuses and closes."""
    stats = pool.statistics()
    return (
        len(recorder.of(ConnectDone)) == stats.connections_created
        and len(recorder.of(Closed)) == stats.connections_closed
        and len(recorder.of(AcquireTimedOut)) == stats.acquire_timeouts + stats.waiters_rejected
    )


async def test_connect_failures(recorder: Recorder, echo_port: int) -> None:
    async with trio_pool.open_pool(on_event=recorder) as pool:
        with pytest.raises(ConnectError):
            await pool.acquire(HOST, refused_port())
        with pytest.raises(trio_pool.ConnectTimeout):
            await pool.acquire(HOST, echo_port, connect_timeout=0)
    refused, timed_out = recorder.of(ConnectFailed)
    assert isinstance(refused, ConnectFailed)
    assert isinstance(refused.error, ConnectError)
    assert not refused.timed_out
    assert isinstance(timed_out, ConnectFailed)
    assert timed_out.timed_out
    assert isinstance(timed_out.error, trio_pool.ConnectTimeout)
    assert len(recorder.of(ConnectStarted)) == 2


async def test_close_reasons(recorder: Recorder, echo_port: int) -> None:
    async with trio_pool.open_pool(
        max_idle_time=0.05, health_check_interval=10, on_event=recorder
    ) as pool:
        pool.release(await pool.acquire(HOST, echo_port))
        with trio.fail_after(10):
            while not recorder.of(Closed):  # noqa: ASYNC110 - set by the maintenance task
                await trio.sleep(0.01)
        conn = await pool.acquire(HOST, echo_port)
        conn._broken = True  # as after a failed read
        pool.release(conn)
        pool.release(await pool.acquire(HOST, echo_port))
        assert stats_agree(recorder, pool)
    reasons = [event.reason for event in recorder.of(Closed)]  # type: ignore[attr-defined]
    assert reasons == ["idle_timeout", "unusable", "pool_closed"]
    (discarded,) = recorder.of(Discarded)
    assert discarded.reason == "unusable"  # type: ignore[attr-defined]


async def test_tls_resumption_reported(
    nursery: trio.Nursery, ca: trustme.CA, client_ctx: ssl.SSLContext, recorder: Recorder
) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_ctx)
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # resumable right after the handshake
    listeners = await nursery.start(
        partial(trio.serve_ssl_over_tcp, echo, 0, server_ctx, host=HOST)
    )
    port = listeners[0].transport_listener.socket.getsockname()[1]
    async with trio_pool.open_pool(on_event=recorder) as pool:
        first = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
        second = await pool.acquire_tls(HOST, port, ssl_context=client_ctx)
        assert second.session_reused
        pool.release(first)
        pool.release(second)
        assert pool.statistics().tls_resumptions == 1
    (resumed,) = recorder.of(TLSResumed)
    assert (resumed.key.host, resumed.key.port, resumed.key.tls) == (HOST, port, True)


async def test_a_raising_hook_is_logged_and_swallowed(
    echo_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: PoolEvent) -> None:
        raise RuntimeError("hook bug")

    with caplog.at_level(logging.ERROR, logger="trio_pool"):
        async with trio_pool.open_pool(on_event=broken) as pool:
            for _ in range(3):
                pool.release(await pool.acquire(HOST, echo_port))
            assert pool.statistics().pool_hits == 2
    assert "the on_event hook raised" in caplog.text
    assert "hook bug" in caplog.text


async def test_no_hook_no_listener(echo_port: int) -> None:
    async with trio_pool.open_pool() as pool:
        assert pool._state.on_event is None  # nothing is built, one check per event
        pool.release(await pool.acquire(HOST, echo_port))
        seen: list[PoolEvent] = []
        pool.listen(seen.append)
        assert pool._state.on_event is not None
        pool.release(await pool.acquire(HOST, echo_port))
    assert [type(event) for event in seen][:2] == [Reused, Released]


def test_on_event_checked() -> None:
    with pytest.raises(TypeError, match="on_event must be a callable"):
        trio_pool.PoolConfig(on_event=42)  # type: ignore[arg-type]


def test_listeners_fan_out_each_guarded(caplog: pytest.LogCaptureFixture) -> None:
    heard: list[str] = []

    def first(event: PoolEvent) -> None:
        heard.append("first")
        raise ValueError("first is broken")

    listeners = Listeners()
    assert listeners.emit is None
    listeners.add(first)
    listeners.add(lambda event: heard.append("second"))
    assert listeners.emit is not None
    with caplog.at_level(logging.ERROR, logger="trio_pool"):
        listeners.emit(Released(make_key("a"), 0.0, 1.0))
    assert heard == ["first", "second"]
    assert "first is broken" in caplog.text


# -- the state machine, directly -------------------------------------------------------------


def test_state_machine_reports_with_the_time_it_is_given() -> None:
    world = World()
    pool = world.state(max_connecting=None, max_idle_time=10.0)
    events: list[PoolEvent] = []
    pool.on_event = events.append
    state = pool.key_state(make_key("a"), world.clock)
    pool.take(state, 0.0)
    conn = pool.connected(state, fake_stream(), 0.0)
    pool.release(conn, 1.0)
    assert pool.take(state, 3.0) is conn
    pool.release(conn, 4.0)
    world.clock = 20.0
    assert pool.sweep(20.0, probe=False) == 1
    assert events == [
        Released(state.key, 1.0, 1.0),
        Reused(state.key, 3.0, 2.0, False),
        Released(state.key, 4.0, 1.0),
        Closed(state.key, 20.0, "idle_timeout", 20.0, 2),
    ]


def test_state_machine_close_reasons_for_lifetime_and_capacity() -> None:
    world = World()
    pool = world.state(max_connecting=None, max_lifetime=5.0, max_total=1)
    events: list[PoolEvent] = []
    pool.on_event = events.append
    a = pool.key_state(make_key("a"), 0.0)
    b = pool.key_state(make_key("b"), 0.0)
    pool.take(a, 0.0)
    conn = pool.connected(a, fake_stream(), 0.0)
    pool.release(conn, 1.0)
    pool.take(b, 2.0)  # max_total: a's idle connection makes room
    (_, closed) = events
    assert isinstance(closed, Closed)
    assert closed.reason == "capacity"
    conn = pool.connected(b, fake_stream(), 2.0)
    events.clear()
    world.clock = 9.0
    pool.release(conn, 9.0)  # past its lifetime (5 s less up to 2.5 %)
    assert [(type(e).__name__, getattr(e, "reason", None)) for e in events] == [
        ("Discarded", "lifetime"),
        ("Closed", "lifetime"),
    ]
