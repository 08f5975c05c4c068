"""The pool's state machine driven directly, h11-style (issue 21): no sockets, no
threads, no trio run (except where KeyboardInterrupt protection is observed).

Each test builds a :class:`~trio_pool._state.PoolState` in a :class:`World` (a float
clock, fake connections, and a record of every wake-up, close and connect start), calls
the methods the I/O layer calls, and checks what the state decided.
"""

from __future__ import annotations

import pytest
import trio

from trio_pool import ConnectError, ConnectionState, PoolClosed
from trio_pool._connection import PooledConnection
from trio_pool._state import CONNECT, HANDOFF, KeyState, PoolState

from .state_fakes import FakeLease, FakeMultiplexer, FakeShared, World, fake_stream, make_key

IN_USE = ConnectionState.IN_USE
IDLE = ConnectionState.IDLE
CLOSED = ConnectionState.CLOSED


@pytest.fixture
def world() -> World:
    return World()


def open_one(world: World, pool: PoolState, state: KeyState) -> PooledConnection:
    """A miss that connects in its own task (no hand-off): the connection, in use."""
    assert pool.take(state, world.clock) is CONNECT
    return pool.connected(state, fake_stream(), world.clock)


def test_hit_after_release(world: World) -> None:
    pool = world.state(max_connecting=None)
    state = pool.key_state(make_key("a"), world.clock)
    conn = open_one(world, pool, state)
    assert conn.state is IN_USE
    assert not conn.reused
    world.clock = 1.0
    pool.release(conn, world.clock)
    assert conn.state is IDLE
    assert pool.take(state, 2.0) is conn
    assert conn.reused
    assert conn.use_count == 2
    assert conn.acquired_at == 2.0
    stats = pool.statistics()
    assert (stats.pool_hits, stats.pool_misses, stats.active_connections) == (1, 1, 1)
    assert world.woken == []
    assert world.closed == []


def test_release_of_a_broken_connection_closes_it(world: World) -> None:
    pool = world.state(max_connecting=None)
    state = pool.key_state(make_key("a"), world.clock)
    conn = open_one(world, pool, state)
    conn._broken = True
    pool.release(conn, world.clock)
    assert world.closed == [conn]
    assert pool.total == 0
    with pytest.raises(RuntimeError, match="closed"):
        pool.release(conn, world.clock)


def test_miss_with_handoff_starts_a_connect_for_the_waiter(world: World) -> None:
    pool = world.state()  # hand-off on (max_connecting=64)
    state = pool.key_state(make_key("a"), world.clock)
    assert pool.take(state, world.clock) is HANDOFF
    waiter = world.wait(pool, state, "t1", handoff=True)
    (pending,) = world.connects
    assert pending.owner is waiter
    assert state.connecting == 1
    assert pool.total == 1
    world.clock = 0.5
    conn = pool.connected(state, fake_stream(), world.clock, pending=pending)
    assert world.take_woken() == [("t1", conn)]
    assert conn.state is IN_USE
    assert state.waiting == 0
    assert state.misses == 1


def test_waiter_in_line_gets_the_released_connection(world: World) -> None:
    pool = world.state(max_size=1, max_connecting=None)
    state = pool.key_state(make_key("a"), world.clock)
    conn = open_one(world, pool, state)
    assert pool.take(state, world.clock) is None  # full: wait in line
    world.wait(pool, state, "t1", handoff=False)
    world.wait(pool, state, "t2", handoff=False)
    assert state.line == 2
    world.clock = 3.0
    pool.release(conn, world.clock)
    assert world.take_woken() == [("t1", conn)]  # FIFO: the first in line
    assert conn.reused
    assert conn.state is IN_USE
    stats = pool.statistics()
    assert (stats.pool_hits, stats.acquire_wait_count, stats.acquire_wait_seconds) == (1, 1, 3.0)
    assert state.line == 1
    assert stats.tasks_waiting == 1


def test_connect_failure_goes_to_the_whole_line(world: World) -> None:
    pool = world.state(max_connecting=1)  # one connect in flight: the others wait on it
    state = pool.key_state(make_key("a"), world.clock)
    for name in ("t1", "t2"):
        assert pool.take(state, world.clock) is HANDOFF
        world.wait(pool, state, name, handoff=True)
    (pending,) = world.connects
    error = ConnectError("refused")
    pool.connect_failed(state, failed=True, error=error, pending=pending)
    woken = world.take_woken()
    assert [task for task, _ in woken] == ["t1", "t2"]
    assert woken[0][1] is error
    copied = woken[1][1]
    assert type(copied) is ConnectError
    assert copied is not error
    stats = pool.statistics()
    assert (stats.connect_failures, stats.pool_misses, stats.tasks_waiting) == (1, 2, 0)
    assert pool.total == 0


def test_cancel_while_queued_leaves_no_trace(world: World) -> None:
    pool = world.state(max_size=1, max_connecting=None)
    state = pool.key_state(make_key("a"), world.clock)
    conn = open_one(world, pool, state)
    waiter = world.wait(pool, state, "t1", handoff=False)
    pool.cancel_wait(waiter, timed_out=True)
    assert (state.waiting, state.line, state.acquire_timeouts) == (0, 0, 1)
    pool.release(conn, world.clock)
    assert world.woken == []
    assert conn.state is IDLE


def test_cancelled_owner_leaves_its_connect_to_the_next_waiter(world: World) -> None:
    pool = world.state(max_connecting=1)
    state = pool.key_state(make_key("a"), world.clock)
    first = world.wait(pool, state, "t1", handoff=True)
    second = world.wait(pool, state, "t2", handoff=True)
    (pending,) = world.connects
    pool.cancel_wait(first, timed_out=False)
    assert pending.owner is second
    conn = pool.connected(state, fake_stream(), world.clock, pending=pending)
    assert world.take_woken() == [("t2", conn)]


def test_max_total_across_keys(world: World) -> None:
    pool = world.state(max_size=2, max_total=2, max_connecting=None)
    a = pool.key_state(make_key("a"), world.clock)
    b = pool.key_state(make_key("b"), world.clock)
    a1, a2 = open_one(world, pool, a), open_one(world, pool, a)
    pool.release(a1, world.clock)
    # B has room but the pool is full: A's idle connection makes room.
    assert pool.take(b, world.clock) is CONNECT
    assert world.closed == [a1]
    assert pool.total == 2
    b1 = pool.connected(b, fake_stream(), world.clock)
    assert pool.take(b, world.clock) is None  # nothing idle anywhere: wait on the pool
    world.wait(pool, b, "tb", handoff=False)
    assert len(pool.global_waiters) == 1
    pool.release(a2, world.clock)
    # Nobody of A waits: a2 makes room for B's waiter, which connects in its slot.
    assert world.take_woken() == [("tb", CONNECT)]
    assert world.closed == [a1, a2]
    assert pool.total == 2
    assert b.connecting == 1
    pool.release(b1, world.clock)
    stats = pool.statistics()
    assert stats.connections_created - stats.connections_closed == (
        stats.idle_connections + stats.active_connections
    )


def test_sweep_closes_what_went_stale(world: World) -> None:
    pool = world.state(max_idle_time=10.0, max_connecting=None)
    state = pool.key_state(make_key("a"), world.clock)
    conn = open_one(world, pool, state)
    pool.wake_at = float("inf")  # the maintenance task sleeps: a deadline wakes it
    pool.release(conn, world.clock)
    assert world.wake_by == [10.0]
    assert pool.next_idle_deadline() == 10.0
    assert pool.sweep(9.9) == 0
    assert pool.sweep(10.0) == 1
    assert world.closed == [conn]
    assert pool.statistics().connections_evicted == 1
    assert pool.next_idle_deadline() == float("inf")


def test_sweep_keeps_the_warm_floor(world: World) -> None:
    pool = world.state(max_idle_time=10.0, min_size=1, max_connecting=None)
    state = pool.key_state(make_key("a"), world.clock)
    conns = [open_one(world, pool, state) for _ in range(2)]
    for conn in conns:
        pool.release(conn, world.clock)
    assert pool.sweep(100.0) == 1  # the coldest goes, one stays warm
    assert world.closed == [conns[0]]
    assert len(state.idle) == 1


def test_close_fails_every_waiter(world: World) -> None:
    pool = world.state(max_size=1, max_connecting=None)
    state = pool.key_state(make_key("a"), world.clock)
    conn = open_one(world, pool, state)
    world.wait(pool, state, "t1", handoff=False)
    pool.close()
    ((task, error),) = world.take_woken()
    assert task == "t1"
    assert isinstance(error, PoolClosed)
    pool.release(conn, world.clock)
    assert world.closed == [conn]
    with pytest.raises(PoolClosed):
        pool.take(state, world.clock)


def test_http2_streams_are_counted_and_lent(world: World) -> None:
    pool = world.state(max_size=1, max_connecting=None)
    state = pool.key_state(make_key("a", http2="h2c"), world.clock)
    assert pool.take(state, world.clock) is CONNECT
    mux = FakeMultiplexer(max_streams=2)
    conn = pool.connected(state, fake_stream(), world.clock, shared=mux)
    assert isinstance(conn, FakeShared)
    first = conn.first
    assert isinstance(first, FakeLease)
    assert mux.open_streams == 1
    second = pool.take(state, world.clock)  # a stream of the same connection: a hit
    assert isinstance(second, FakeLease)
    assert mux.open_streams == 2
    assert pool.take(state, world.clock) is None  # every stream taken, the key full
    world.wait(pool, state, "t1", handoff=False)
    stats = pool.statistics()
    assert (stats.http2_connections, stats.http2_streams, stats.active_connections) == (1, 2, 1)
    first.release()  # the stream ends: the waiter gets it
    ((task, third),) = world.take_woken()
    assert task == "t1"
    assert isinstance(third, FakeLease)
    assert mux.open_streams == 2
    second.release()
    third.release()
    assert conn.state is IDLE
    assert pool.statistics().idle_connections == 1
    assert (pool.statistics().pool_hits, pool.statistics().pool_misses) == (2, 1)
    mux.is_going_away = True  # GOAWAY: never a new stream, and closed with none open
    mux.changed()
    assert world.closed == [conn]
    assert pool.total == 0


async def test_mutating_methods_run_protected_from_keyboard_interrupt(world: World) -> None:
    """A count and its set change together: Ctrl-C lands before or after, never between.
    Observed from inside every hook the state machine calls, in a trio run (where plain
    code is not protected)."""
    assert not trio.lowlevel.currently_ki_protected()
    step = ""
    seen: list[tuple[str, str, bool]] = []

    def observe(hook: str) -> None:
        seen.append((step, hook, trio.lowlevel.currently_ki_protected()))

    world.observe = observe
    pool = world.state(max_size=2, max_connecting=1)
    a = pool.key_state(make_key("a"), world.clock)
    step = "enqueue"
    world.wait(pool, a, "t1", handoff=True)
    step = "connected"
    conn = pool.connected(a, fake_stream(), world.clock, pending=world.connects.pop())
    world.wait(pool, a, "t2", handoff=True)
    step = "connect_failed"
    pool.connect_failed(a, failed=True, error=ConnectError("x"), pending=world.connects.pop())
    step = "release"
    world.wait(pool, a, "t3", handoff=True)
    pool.release(conn, world.clock)  # handed over to t3
    step = "discard"
    pool.discard(conn, world.clock)
    world.connects.clear()
    step = ""
    pool2 = world.state(max_size=1, max_connecting=None)
    b = pool2.key_state(make_key("b"), world.clock)
    conn = open_one(world, pool2, b)
    pool2.release(conn, world.clock)
    conn._broken = True
    step = "take"
    assert pool2.take(b, world.clock) is CONNECT  # the dead idle one is closed first
    step = ""
    conn = pool2.connected(b, fake_stream(), world.clock)
    pool2.release(conn, world.clock)
    step = "sweep"
    pool2.sweep(1000.0)
    step = ""
    pool3 = world.state(max_size=1, max_connecting=None)
    h = pool3.key_state(make_key("h", http2="h2c"), world.clock)
    assert pool3.take(h, world.clock) is CONNECT
    mux = FakeMultiplexer(max_streams=1)
    shared = pool3.connected(h, fake_stream(), world.clock, shared=mux)
    world.wait(pool3, h, "t4", handoff=False)
    step = "_capacity_changed"
    assert isinstance(shared, FakeShared)
    assert shared.first is not None
    shared.first.release()  # the multiplexer's hook
    step = ""
    world.wait(pool3, h, "t5", handoff=False)
    step = "close"
    pool3.close()
    unprotected = [entry for entry in seen if not entry[2]]
    assert not unprotected
    assert {entry[0] for entry in seen} >= {
        "enqueue",
        "connected",
        "connect_failed",
        "release",
        "discard",
        "take",
        "sweep",
        "_capacity_changed",
        "close",
    }, seen


def test_a_slot_freed_under_max_total_serves_another_keys_line(world: World) -> None:
    """A waiter kept in its key's line (its key had a connect in flight when it came)
    and then held there by ``max_total`` gets a connect when another key frees a slot
    of the pool: the case the state model found with a random seed (it waited with room
    to connect until a release of its own key)."""
    pool = world.state(max_size=2, max_total=2, max_connecting=1)
    a = pool.key_state(make_key("a"), world.clock)
    b = pool.key_state(make_key("b"), world.clock)
    assert pool.take(a, world.clock) is HANDOFF
    world.wait(pool, a, "ta", handoff=True)
    assert pool.take(b, world.clock) is HANDOFF
    world.wait(pool, b, "tb1", handoff=True)
    pending_a, pending_b = world.connects
    assert pool.take(b, world.clock) is None  # the pool is full
    tb2 = world.wait(pool, b, "tb2", handoff=False)
    assert tb2.queue is b.waiters  # B's connect in flight may serve it
    a1 = pool.connected(a, fake_stream(), world.clock, pending=pending_a)
    b1 = pool.connected(b, fake_stream(), world.clock, pending=pending_b)
    assert world.take_woken() == [("ta", a1), ("tb1", b1)]
    assert tb2.owns is None  # the pool is full, nothing idle: no connect for it yet
    pool.discard(a1, world.clock)
    # A's slot is free: B's waiter gets a connect in it now, not at B's next release.
    assert tb2.owns is not None
    assert world.connects[-1] is tb2.owns
    assert (b.connecting, pool.total) == (1, 2)
