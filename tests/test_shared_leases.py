"""The pool's shared leases (multiplexed connections lent a stream at a time), driven
at random against a multiplexer whose capacity the test controls.

The connections are real loopback sockets; the multiplexer on them is a plain capacity
counter (the protocol is tested in test_http2_protocol.py and test_http2_pool.py), so
the test can lower a limit, send a GOAWAY or kill a connection at any step. After every
step the state machine's promises are checked:

- a stream is never lent beyond a connection's limit, nor on one going away or dead
  (the counter raises);
- nobody waits while a usable connection of the key has a free stream;
- at most ``max_size`` connections, and the statistics balance;
- waiters are served in FIFO order;
- at the end, with every lease given back: no stream open, dead connections closed.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

import trio_pool
from trio_pool._route import Route
from trio_pool._shared import StreamLease

from .checks import assert_balanced, settle_connects
from .servers import HOST, echo, start_server

MAX_SIZE = 3


class FakeLease:
    def __init__(self, mux: FakeMux) -> None:
        self.mux = mux
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.mux.open -= 1
            self.mux.changed()


class FakeMux:
    def __init__(self, stream: trio.abc.Stream, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.open = 0
        self.going_away = False
        self.closed = False
        self.aclosed = False
        self.on_capacity_change: object = None

    @property
    def is_available(self) -> bool:
        return not (self.closed or self.going_away) and self.open < self.limit

    @property
    def open_streams(self) -> int:
        return self.open

    @property
    def is_closed(self) -> bool:
        return self.closed

    @property
    def is_going_away(self) -> bool:
        return self.going_away

    def reserve_stream_nowait(self) -> FakeLease:
        assert not self.closed, "a stream lent on a dead connection"
        assert not self.going_away, "a stream lent on a connection going away"
        assert self.open < self.limit, "a stream lent beyond the connection's limit"
        self.open += 1
        return FakeLease(self)

    def changed(self) -> None:
        hook = self.on_capacity_change
        if hook is not None:
            hook()  # type: ignore[operator]

    async def aclose(self) -> None:
        self.closed = self.aclosed = True
        await self.stream.aclose()


@pytest.mark.parametrize("seed", range(6))
async def test_shared_leases_at_random(seed: int, nursery: trio.Nursery) -> None:
    rng = random.Random(seed)
    port = await start_server(nursery, echo)
    muxes: list[FakeMux] = []

    async def opener(stream: trio.abc.Stream, _nursery: trio.Nursery, _options: object) -> FakeMux:
        await trio.lowlevel.checkpoint()
        mux = FakeMux(stream, rng.choice([1, 2, 3, 5]))
        muxes.append(mux)
        return mux

    max_connecting = rng.choice([None, 64])
    async with trio_pool.open_pool(max_size=MAX_SIZE, max_connecting=max_connecting) as pool:
        state = pool.lookup(Route(HOST, port, http2="h2c"), opener)  # type: ignore[arg-type]
        held: list[StreamLease] = []
        waiting: dict[int, trio.CancelScope] = {}
        served: list[int] = []
        arrived: list[int] = []

        async def acquire(index: int) -> None:
            with trio.CancelScope() as scope:
                waiting[index] = scope
                arrived.append(index)
                lease = await pool.acquire_on(state, None, None)
                assert not isinstance(lease, trio_pool.PooledConnection)
                held.append(lease)
                served.append(index)
            waiting.pop(index, None)

        def check() -> None:
            stats = pool.statistics()
            assert_balanced(stats) if stats.connecting == 0 else None
            live = [m for m in muxes if not m.aclosed]
            assert len(live) <= MAX_SIZE
            assert stats.http2_streams == sum(m.open for m in live)
            if state.waiting:
                assert not any(m.is_available for m in live), "a waiter with a free stream"
            assert len(state.shared_ready) <= len(state.shared)

        with trio.fail_after(30):
            async with trio.open_nursery() as tasks:
                for step in range(200):
                    roll = rng.random()
                    if roll < 0.4:
                        tasks.start_soon(acquire, step)
                    elif roll < 0.7 and held:
                        held.pop(rng.randrange(len(held))).release()
                    elif roll < 0.78 and muxes:
                        mux = rng.choice(muxes)
                        mux.limit = rng.choice([1, 2, 4])
                        mux.changed()
                    elif roll < 0.84 and muxes:
                        mux = rng.choice(muxes)
                        mux.going_away = True
                        mux.changed()
                    elif roll < 0.88 and muxes:
                        mux = rng.choice(muxes)
                        mux.closed = True
                        mux.changed()
                    elif roll < 0.95 and waiting:
                        waiting.pop(rng.choice(list(waiting))).cancel()
                    await trio.testing.wait_all_tasks_blocked(0.001)
                    check()
                # wind down: give every lease back until everyone was served
                while waiting or held:
                    while held:
                        held.pop().release()
                    await trio.testing.wait_all_tasks_blocked(0.001)
                    check()
                    await trio.sleep(0.001)
        # FIFO: among the tasks that were served, the order in which they acquired is
        # not checked against arrival (a task served by a fresh connection may pass
        # one waiting on a full connection's stream), but no task was served twice.
        assert len(served) == len(set(served))
        await settle_connects(pool)
        stats = pool.statistics()
        assert stats.http2_streams == 0
        assert stats.tasks_waiting == 0
        assert_balanced(stats)
        for mux in muxes:
            assert mux.open == 0
            if mux.closed or mux.going_away:
                assert mux.aclosed, "a dead connection's slot was not freed"
