"""Model-based fuzzing of the pool (issues 7 and 21) with hypothesis stateful testing.

Two models. :class:`StateModel` drives the state machine itself
(:class:`~trio_pool._state.PoolState`) directly, with no sockets, threads or trio run:
fake connections, a float clock, and connects that finish (or fail) whenever a rule
says so, in any order; it checks the counts, the caps, FIFO and that no slot leaks.
:class:`PoolMachine` drives the whole pool through real sockets (what the state machine
cannot see: the I/O layer, cancellation inside ``acquire``, file descriptors).

:class:`PoolMachine` drives one real pool against real
loopback servers: two plain echo servers (two keys) and a server that accepts and never
answers, used with TLS so that a connect (the handshake) stays in flight. The pool is
small (``max_size=2`` per key, ``max_total=3``), so callers wait in line per key and on
the global cap. Rules acquire, release, discard, use, cancel a task mid-wait or
mid-connect, let the peer close an idle connection, advance the clock and close the
pool; after every step the machine checks, against a simple model:

- the statistics invariant ``created - closed == idle + active``;
- per key ``idle + active + connecting <= max_size``, in all ``<= max_total``;
- ``active`` is exactly what the model holds, ``waiting + connecting`` exactly the tasks
  still in ``acquire``;
- nothing is handed out twice, and nothing the peer closed is handed out at all;
- waiters of a key are served in FIFO order;
- at the end every waiter has been served, timed out, or told the pool closed.

Each example runs its own ``trio.run`` in a helper thread (with a
:class:`trio.testing.MockClock` that moves only when a rule says so); rules call into it
with :func:`trio.from_thread.run`, so hypothesis's stateful machinery runs unchanged.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import outcome
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import trio_pool
from trio_pool._connection import PooledConnection
from trio_pool._state import CONNECT, HANDOFF, KeyState, PendingConnect, PoolState, Waiter

from .servers import HOST, open_fds, start_server
from .state_fakes import World, fake_stream, make_key

T = TypeVar("T")

MAX_SIZE = 2
MAX_TOTAL = 3
ACQUIRE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
MAX_IDLE = 60.0
MAX_PENDING = 6
PLAIN_KEYS = ("A", "B")
KEYS = (*PLAIN_KEYS, "S")  # S: TLS to a server that never answers the handshake
# Made once: a default context per pool would load the system CA store every example.
NO_VERIFY = ssl.create_default_context()
NO_VERIFY.check_hostname = False
NO_VERIFY.verify_mode = ssl.CERT_NONE


class TrioThread:
    """One ``trio.run`` in a daemon thread, with a MockClock; call into it from outside."""

    def __init__(self) -> None:
        self.clock = trio.testing.MockClock()
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.nursery: trio.Nursery | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):  # pragma: no cover - the thread did not start
            raise RuntimeError("the trio thread did not start")
        if self.error is not None:  # pragma: no cover
            raise self.error

    def _run(self) -> None:
        try:
            trio.run(self._main, clock=self.clock)
        except BaseException as exc:  # pragma: no cover - reported by stop()
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` in the trio thread and return its result."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def stop(self) -> None:
        def set_stop() -> None:
            assert self._stop is not None
            self._stop.set()

        if self._thread.is_alive():
            trio.from_thread.run_sync(set_stop, trio_token=self._token)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the trio thread did not stop"
        if self.error is not None:
            raise self.error


class PeerServer:
    """An echo server that can close, from its side, the connection of a given client."""

    def __init__(self) -> None:
        self.peers: dict[int, trio.SocketStream] = {}

    async def handler(self, stream: trio.SocketStream) -> None:
        client_port = stream.socket.getpeername()[1]
        self.peers[client_port] = stream
        try:
            async for data in stream:
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.peers.pop(client_port, None)
            await trio.aclose_forcefully(stream)


async def never_answer(stream: trio.SocketStream) -> None:
    try:
        while await stream.receive_some():
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def local_port(conn: trio_pool.PooledConnection) -> int:
    stream = conn.stream
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    assert isinstance(stream, trio.SocketStream)
    return int(stream.socket.getsockname()[1])


@dataclass(eq=False)
class Acquirer:
    """One task in ``pool.acquire``; the model's view of it."""

    number: int
    key: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: bool = False
    conn: trio_pool.PooledConnection | None = None
    error: BaseException | None = None
    cancelled: bool = False
    cancel_requested: bool = False
    harvested: bool = False
    connect_timeout: float | None = None


class PoolMachine(RuleBasedStateMachine):
    #: None: tied connects (each miss connects in its own task); else hand-off connects
    #: in the pool's nursery, at most this many per key (HandoffPoolMachine).
    max_connecting: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.fds_before = open_fds()
        self.trio = TrioThread()
        self.pool: trio_pool.ConnectionPool | None = None
        self.pool_done = threading.Event()
        self.ports: dict[str, int] = {}
        self.servers: dict[str, PeerServer] = {}
        self.acquirers: list[Acquirer] = []
        self.held: dict[trio_pool.PooledConnection, Acquirer] = {}
        self.seen: dict[trio_pool.PooledConnection, None] = {}  # in order first seen
        self.dead: set[trio_pool.PooledConnection] = set()
        self.pool_closed = False
        self.trio.call(self._setup)

    # -- the trio side -------------------------------------------------------------

    async def _setup(self) -> None:
        nursery = self.trio.nursery
        assert nursery is not None
        for key in PLAIN_KEYS:
            self.servers[key] = PeerServer()
            self.ports[key] = await start_server(nursery, self.servers[key].handler)
        self.ports["S"] = await start_server(nursery, never_answer)
        await nursery.start(self._run_pool)

    async def _run_pool(self, task_status: trio.TaskStatus[None]) -> None:
        try:
            async with trio_pool.open_pool(
                max_size=MAX_SIZE,
                max_total=MAX_TOTAL,
                acquire_timeout=ACQUIRE_TIMEOUT,
                connection_timeout=CONNECT_TIMEOUT,
                max_idle_time=MAX_IDLE,
                max_connecting=self.max_connecting,
            ) as pool:
                self.pool = pool
                self.pool_exit = trio.Event()
                task_status.started()
                await self.pool_exit.wait()
        finally:
            self.pool_done.set()

    def _acquire_args(self, key: str) -> tuple[tuple[str, int], dict[str, Any]]:
        if key == "S":
            return (HOST, self.ports["S"]), {"tls": True, "ssl_context": NO_VERIFY}
        return (HOST, self.ports[key]), {}

    async def _acquire_task(self, acquirer: Acquirer) -> None:
        assert self.pool is not None
        args, kwargs = self._acquire_args(acquirer.key)
        if acquirer.connect_timeout is not None:
            kwargs["connect_timeout"] = acquirer.connect_timeout
        try:
            with acquirer.scope:
                acquirer.conn = await self.pool.acquire(*args, **kwargs)
            if acquirer.scope.cancelled_caught:
                acquirer.cancelled = True
        except (trio_pool.PoolError, OSError) as exc:
            acquirer.error = exc
        finally:
            acquirer.done = True

    async def _settle(self) -> None:
        """Wait until every task is blocked and no plain-TCP connect is in flight
        (loopback connects finish at once, but are real I/O)."""
        assert self.pool is not None
        for _ in range(10_000):
            await trio.testing.wait_all_tasks_blocked()
            if all(
                self.pool.statistics(HOST, self.ports[key]).connecting == 0 for key in PLAIN_KEYS
            ):
                return
            await trio.lowlevel.checkpoint()
        raise AssertionError("a loopback connect did not finish")  # pragma: no cover

    async def _start_acquire(self, acquirer: Acquirer) -> None:
        assert self.trio.nursery is not None
        self.trio.nursery.start_soon(self._acquire_task, acquirer)
        await self._settle()

    async def _do(self, fn: Callable[[], object]) -> None:
        fn()
        await self._settle()

    async def _roundtrip(self, conn: trio_pool.PooledConnection) -> bytes:
        await conn.send_all(b"ping")
        received = b""
        while len(received) < 4:
            chunk = await conn.receive_some(4 - len(received))
            if not chunk:
                break
            received += chunk
        return received

    async def _peer_close(self, key: str, port: int) -> None:
        server = self.servers[key]
        for _ in range(1000):
            if port in server.peers:
                break
            await trio.lowlevel.checkpoint()
        await server.peers[port].aclose()
        await self._settle()

    async def _advance(self, seconds: float) -> None:
        self.trio.clock.jump(seconds)
        await self._settle()

    async def _aclose(self) -> None:
        assert self.pool is not None
        await self.pool.aclose()
        await self._settle()

    async def _drain(self) -> None:
        """Give everything back, again and again, and let time pass, until every task
        has left ``acquire``: each is served, times out, or fails to connect in time."""
        assert self.pool is not None
        for _ in range(len(self.acquirers) + 2):
            for acquirer in self.acquirers:
                conn = acquirer.conn
                if conn is not None and conn.state is trio_pool.ConnectionState.IN_USE:
                    self.pool.release(conn)
            await self._settle()
            if all(acquirer.done for acquirer in self.acquirers):
                return
            self.trio.clock.jump(max(ACQUIRE_TIMEOUT, CONNECT_TIMEOUT) + 1)
            await self._settle()

    async def _teardown(self) -> None:
        for acquirer in self.acquirers:  # only if _drain failed
            acquirer.scope.cancel()
        await self._settle()
        assert self.pool is not None
        for acquirer in self.acquirers:
            conn = acquirer.conn
            if conn is not None and conn.state is trio_pool.ConnectionState.IN_USE:
                self.pool.release(conn)
        self.pool_exit.set()
        await trio.testing.wait_all_tasks_blocked()

    # -- rules -------------------------------------------------------------------------

    def held_in_order(self) -> list[trio_pool.PooledConnection]:
        """Held connections in a reproducible order (by acquirer), for hypothesis."""
        return sorted(self.held, key=lambda conn: self.held[conn].number)

    def pending(self) -> list[Acquirer]:
        return [a for a in self.acquirers if not a.done]

    @precondition(lambda self: len(self.pending()) < MAX_PENDING)
    @rule(
        keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3),
        connect_timeout=st.sampled_from([None, None, 1.0]),
    )
    def acquire(self, keys: list[str], connect_timeout: float | None) -> None:
        """One to three tasks start acquiring, one after the other (some with their own
        connect timeout)."""
        for key in keys:
            acquirer = Acquirer(len(self.acquirers), key, connect_timeout=connect_timeout)
            self.acquirers.append(acquirer)
            self.trio.call(self._start_acquire, acquirer)
            if self.pool_closed:
                assert acquirer.done
                assert isinstance(acquirer.error, trio_pool.PoolClosed)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        assert self.pool is not None
        conn = data.draw(st.sampled_from(self.held_in_order()))
        del self.held[conn]
        self.trio.call(self._do, lambda: self.pool.release(conn))
        if self.pool_closed:
            assert conn.is_closed

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def discard(self, data: st.DataObject) -> None:
        assert self.pool is not None
        conn = data.draw(st.sampled_from(self.held_in_order()))
        del self.held[conn]
        self.trio.call(self._do, lambda: self.pool.discard(conn))
        assert conn.is_closed
        with pytest.raises(RuntimeError):
            self.pool.release(conn)  # twice: refused, and nothing changes

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def use(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(self.held_in_order()))
        assert self.trio.call(self._roundtrip, conn) == b"ping"

    @precondition(lambda self: self.pending())
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """Cancel a task waiting in line, or one whose connect (TLS handshake) hangs."""
        acquirer = data.draw(st.sampled_from(self.pending()))
        acquirer.cancel_requested = True
        self.trio.call(self._do, acquirer.scope.cancel)
        assert acquirer.done
        if acquirer.conn is None:
            assert acquirer.cancelled or acquirer.error is not None

    @precondition(
        lambda self: any(
            c.state is trio_pool.ConnectionState.IDLE and c not in self.dead for c in self.seen
        )
    )
    @rule(data=st.data())
    def peer_closes_idle(self, data: st.DataObject) -> None:
        idle = [
            c for c in self.seen if c.state is trio_pool.ConnectionState.IDLE and c not in self.dead
        ]
        conn = data.draw(st.sampled_from(idle))
        key = next(k for k in PLAIN_KEYS if self.ports[k] == conn.port)
        self.dead.add(conn)
        self.trio.call(self._peer_close, key, local_port(conn))

    @rule(seconds=st.sampled_from([0.5, CONNECT_TIMEOUT + 0.1, ACQUIRE_TIMEOUT + 0.1, 100.0]))
    def advance_clock(self, seconds: float) -> None:
        self.trio.call(self._advance, seconds)

    @precondition(lambda self: not self.pool_closed)
    @rule()
    def aclose(self) -> None:
        self.trio.call(self._aclose)
        self.pool_closed = True
        # Every task that was waiting in line is told at once.
        for acquirer in self.pending():
            assert acquirer.key == "S"  # only hanging connects are still in acquire

    # -- checks ------------------------------------------------------------------------

    @invariant()
    def harvest_and_check(self) -> None:
        pool = self.pool
        assert pool is not None
        served_now: list[Acquirer] = []
        for acquirer in self.acquirers:
            if acquirer.done and not acquirer.harvested:
                acquirer.harvested = True
                conn = acquirer.conn
                if conn is not None:
                    served_now.append(acquirer)
                    assert conn not in self.held, "handed out twice"
                    assert conn not in self.dead, "handed out a connection the peer closed"
                    assert conn.state is trio_pool.ConnectionState.IN_USE
                    assert conn.port == self.ports[acquirer.key]
                    self.held[conn] = acquirer
                    self.seen[conn] = None
                else:
                    assert acquirer.cancelled or isinstance(acquirer.error, trio_pool.PoolError), (
                        acquirer.error
                    )
        # FIFO per key: nobody served while an earlier task of its key still waits
        # (a task connecting to the hanging server is not waiting; only S has those).
        for acquirer in served_now:
            if acquirer.key == "S":
                continue
            earlier = [
                a for a in self.acquirers[: acquirer.number] if a.key == acquirer.key and not a.done
            ]
            assert not earlier, f"#{acquirer.number} served before {earlier}"
        for conn in self.held:
            assert conn.state is trio_pool.ConnectionState.IN_USE

        stats = pool.statistics()
        assert stats.connections_created - stats.connections_closed == (
            stats.idle_connections + stats.active_connections
        ), stats
        assert stats.active_connections == len(self.held), stats
        pending = self.pending()
        if self.max_connecting is None:
            assert stats.tasks_waiting + stats.connecting == len(pending), (stats, pending)
        else:  # every task in acquire waits; connects run on their own
            assert stats.tasks_waiting == len(pending), (stats, pending)
        in_key: dict[str, int] = {}
        idle_in_key: dict[str, int] = {}
        waiting_in_key: dict[str, int] = {}
        connecting_in_key: dict[str, int] = {}
        for key in KEYS:
            key_stats = pool.statistics(HOST, self.ports[key])
            in_key[key] = (
                key_stats.idle_connections + key_stats.active_connections + key_stats.connecting
            )
            idle_in_key[key] = key_stats.idle_connections
            waiting_in_key[key] = key_stats.tasks_waiting
            connecting_in_key[key] = key_stats.connecting
            assert in_key[key] <= MAX_SIZE, (key, key_stats)
            if self.max_connecting is not None:
                assert key_stats.connecting <= self.max_connecting, (key, key_stats)
        total = sum(in_key.values())
        assert total <= MAX_TOTAL, stats
        # Liveness: nobody waits in line while the pool could serve them: an idle
        # connection of their key, or room in their key and (after evicting an idle
        # connection of another key, if need be) under max_total.
        for key in KEYS:
            if waiting_in_key[key]:
                assert idle_in_key[key] == 0, f"{key}: waits beside an idle connection"
                assert (
                    in_key[key] == MAX_SIZE
                    or (total == MAX_TOTAL and stats.idle_connections == 0)
                    # hand-off: it waits for a connect of its key
                    or (self.max_connecting is not None and connecting_in_key[key] > 0)
                ), f"{key}: waits with room to connect ({in_key}, {stats})"
        if self.pool_closed:
            assert stats.idle_connections == 0
            assert stats.tasks_waiting == 0

    def teardown(self) -> None:
        try:
            if self.pool is not None:
                self.trio.call(self._drain)
                # Every task got its answer: served, timed out, failed to connect in
                # time, or told the pool closed; only the cancel rule cancels.
                for acquirer in self.acquirers:
                    assert acquirer.done, acquirer
                    assert acquirer.cancelled == acquirer.cancel_requested, acquirer
                self.trio.call(self._teardown)
        finally:
            self.trio.stop()
        assert self.pool_done.is_set()
        assert open_fds() == self.fds_before, "file descriptors leaked"


class HandoffPoolMachine(PoolMachine):
    """The same model with hand-off connects, at most one in flight per key, so tasks
    wait beside a connect that is not theirs, and cancelled owners leave orphans."""

    max_connecting = 1


class DefaultHandoffPoolMachine(PoolMachine):
    """Hand-off with the default ``max_connecting``: the connect budget never binds at
    ``max_size=2``, so every waiter of a key with room has a connect of its own."""

    max_connecting = trio_pool.PoolConfig().max_connecting


@pytest.mark.parametrize("machine", [PoolMachine, HandoffPoolMachine, DefaultHandoffPoolMachine])
def test_pool_state_machine(machine: type[PoolMachine]) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


async def test_fifo_when_a_key_fills_while_its_waiters_wait_on_the_global_cap(
    nursery: trio.Nursery,
) -> None:
    """Found by the state machine: a task of key A waiting on ``max_total`` must not be
    overtaken by a later task of A that arrives once A itself is full."""
    servers = [PeerServer() for _ in range(3)]
    a, b, c = [await start_server(nursery, server.handler) for server in servers]
    async with trio_pool.open_pool(max_size=2, max_total=3, acquire_timeout=None) as pool:
        held_c = await pool.acquire(HOST, c)
        held_a = await pool.acquire(HOST, a)
        held_b = await pool.acquire(HOST, b)
        served: list[str] = []
        conns: list[trio_pool.PooledConnection] = []

        async def waiter(name: str) -> None:
            conns.append(await pool.acquire(HOST, a))
            served.append(name)

        async with trio.open_nursery() as waiters:
            for name in ("first", "second"):  # both wait on the global cap (A has room)
                waiters.start_soon(waiter, name)
                await trio.testing.wait_all_tasks_blocked()
            pool.discard(held_c)  # a global slot frees: "first" connects, A is now full
            await trio.testing.wait_all_tasks_blocked()
            assert served == ["first"]
            waiters.start_soon(waiter, "third")  # arrives after "second", A is full
            await trio.testing.wait_all_tasks_blocked()
            pool.discard(held_a)  # a slot of A frees: "second" has waited longest
            await trio.testing.wait_all_tasks_blocked()
            assert served == ["first", "second"]
            pool.release(conns[0])
        assert served == ["first", "second", "third"]
        for conn in [*conns[1:], held_b]:
            pool.release(conn)


# -- the state machine alone --------------------------------------------------------------


@dataclass(eq=False)
class Task:
    """One acquire, as the state machine's caller sees it."""

    number: int
    state: KeyState
    waiter: Waiter | None = None  # while it waits in line
    connecting: bool = False  # while it connects in its own task (granted CONNECT)
    conn: PooledConnection | None = None
    failed: bool = False


class StateModel(RuleBasedStateMachine):
    """:class:`PoolState` driven directly: two keys, ``max_size=2``, ``max_total=3``."""

    max_connecting: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.pool: PoolState = self.world.state(
            max_size=MAX_SIZE,
            max_total=MAX_TOTAL,
            max_idle_time=MAX_IDLE,
            max_connecting=self.max_connecting,
        )
        self.keys = [self.pool.key_state(make_key(name), 0.0) for name in PLAIN_KEYS]
        self.tasks: list[Task] = []
        self.by_name: dict[str, Task] = {}
        self.held: dict[PooledConnection, Task] = {}
        self.dead: set[PooledConnection] = set()
        self.closed = False

    # -- helpers -----------------------------------------------------------------------

    def _serve(self, task: Task, grant: object) -> None:
        """A task got what it waited for (or what ``take`` returned)."""
        task.waiter = None
        if grant is CONNECT:
            task.connecting = True
        else:
            assert isinstance(grant, PooledConnection)
            assert grant not in self.held, "handed out twice"
            assert grant not in self.dead, "handed out a connection found dead"
            assert grant.state is trio_pool.ConnectionState.IN_USE
            assert grant._key is task.state
            task.conn = grant
            self.held[grant] = task
        if self.max_connecting is None:  # FIFO per key (hand-off connects end in any order)
            earlier = [t for t in self.tasks[: task.number] if t.state is task.state and t.waiter]
            assert not earlier, f"#{task.number} served before {earlier}"

    def _harvest(self) -> None:
        for name, result in self.world.woken:
            task = self.by_name[name]
            if isinstance(result, outcome.Value):
                self._serve(task, result.value)
            else:
                assert isinstance(result.error, trio_pool.PoolError), result.error
                task.waiter = None
                task.failed = True
        self.world.woken.clear()

    def waiting(self) -> list[Task]:
        return [t for t in self.tasks if t.waiter is not None]

    def self_connecting(self) -> list[Task]:
        return [t for t in self.tasks if t.connecting]

    def held_in_order(self) -> list[PooledConnection]:
        return sorted(self.held, key=lambda conn: self.held[conn].number)

    def idle(self) -> list[PooledConnection]:
        return [c for c in self.pool.idle_lru if c not in self.dead]

    # -- rules -------------------------------------------------------------------------

    @precondition(lambda self: not self.closed and len(self.waiting()) < MAX_PENDING)
    @rule(key=st.sampled_from([0, 1]), new=st.booleans())
    def acquire(self, key: int, new: bool) -> None:
        state = self.keys[key]
        task = Task(len(self.tasks), state)
        self.tasks.append(task)
        self.by_name[str(task.number)] = task
        taken = self.pool.take(state, self.world.clock, new=new)
        if taken is None or taken is HANDOFF:
            task.waiter = self.world.wait(
                self.pool, state, str(task.number), handoff=taken is HANDOFF, new=new
            )
        else:
            assert not isinstance(taken, trio_pool.ConnectionState)
            self._serve(task, taken)
        self._harvest()

    @precondition(lambda self: self.self_connecting() or self.world.connects)
    @rule(data=st.data(), ok=st.booleans())
    def finish_connect(self, data: st.DataObject, ok: bool) -> None:
        """A connect ends, in any order: its own task's, or a hand-off connect."""
        choices: list[Task | PendingConnect] = [*self.self_connecting(), *self.world.connects]
        chosen = data.draw(st.sampled_from(choices))
        if isinstance(chosen, Task):
            chosen.connecting = False
            if ok:
                conn = self.pool.connected(chosen.state, fake_stream(), self.world.clock)
                self._serve(chosen, conn)
            else:
                self.pool.connect_failed(chosen.state, failed=True)
                chosen.failed = True
        else:
            self.world.connects.remove(chosen)
            state = self.world.connect_keys.pop(chosen)
            if ok:
                self.pool.connected(state, fake_stream(), self.world.clock, pending=chosen)
            else:
                error = trio_pool.ConnectError("refused")
                self.pool.connect_failed(state, failed=True, error=error, pending=chosen)
        self._harvest()

    @precondition(lambda self: self.held)
    @rule(data=st.data(), discard=st.booleans())
    def give_back(self, data: st.DataObject, discard: bool) -> None:
        conn = data.draw(st.sampled_from(self.held_in_order()))
        del self.held[conn]
        if discard:
            self.pool.discard(conn, self.world.clock)
            assert conn.is_closed
            with pytest.raises(RuntimeError):
                self.pool.release(conn, self.world.clock)  # twice: refused, nothing changes
        else:
            self.pool.release(conn, self.world.clock)
        self._harvest()

    @precondition(lambda self: self.waiting())
    @rule(data=st.data(), timed_out=st.booleans())
    def cancel(self, data: st.DataObject, timed_out: bool) -> None:
        task = data.draw(st.sampled_from(self.waiting()))
        assert task.waiter is not None
        self.pool.cancel_wait(task.waiter, timed_out=timed_out)
        task.waiter = None
        self._harvest()

    @precondition(lambda self: self.idle())
    @rule(data=st.data())
    def peer_closes_idle(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(self.idle()))
        conn._broken = True  # the probe will find it dead
        self.dead.add(conn)

    @rule(seconds=st.sampled_from([0.5, MAX_IDLE, 100.0]), probe=st.booleans())
    def sweep(self, seconds: float, probe: bool) -> None:
        self.world.clock += seconds
        self.pool.sweep(self.world.clock, probe=probe)
        self._harvest()

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        self.pool.close()
        self.closed = True
        self._harvest()
        assert not self.waiting()

    # -- checks ------------------------------------------------------------------------

    @invariant()
    def counts(self) -> None:
        pool = self.pool
        totals = 0
        for state in self.keys:
            assert state.total == len(state.idle) + state.in_use + state.connecting
            assert state.total <= MAX_SIZE, state.total
            assert state.waiting == sum(1 for t in self.waiting() if t.state is state)
            totals += state.total
        assert pool.total == totals <= MAX_TOTAL
        assert len(pool.idle_lru) == sum(len(state.idle) for state in self.keys)
        stats = pool.statistics()
        assert stats.connections_created - stats.connections_closed == (
            stats.idle_connections + stats.active_connections
        ), stats
        assert stats.active_connections == len(self.held), stats
        assert stats.connecting == len(self.self_connecting()) + len(self.world.connects)
        for state in self.keys:  # nobody waits while the pool could serve them
            if not state.waiting:
                continue
            assert not state.idle, "waits beside an idle connection"
            assert (
                state.total == MAX_SIZE
                or (pool.total == MAX_TOTAL and not pool.idle_lru)
                or (self.max_connecting is not None and state.connecting > 0)
                or any(t.waiter is not None and t.waiter.new for t in self.waiting())
            ), f"waits with room to connect ({state.total}, {pool.total})"
        if self.closed:
            assert not pool.idle_lru

    def teardown(self) -> None:
        """Close, let every connect end and give everything back: no slot is left."""
        if not self.closed:
            self.close()
        while self.self_connecting() or self.world.connects:
            self.finish_connect_all()
        for conn in self.held_in_order():
            self.pool.release(conn, self.world.clock)
        self.held.clear()
        self._harvest()
        assert self.pool.total == 0
        assert self.pool.live == {}
        stats = self.pool.statistics()
        assert stats.connections_created == stats.connections_closed, stats

    def finish_connect_all(self) -> None:
        for task in self.self_connecting():
            task.connecting = False
            conn = self.pool.connected(task.state, fake_stream(), self.world.clock)
            self._serve(task, conn)
        for pending in list(self.world.connects):
            self.world.connects.remove(pending)
            state = self.world.connect_keys.pop(pending)
            self.pool.connected(state, fake_stream(), self.world.clock, pending=pending)
        self._harvest()


class HandoffStateModel(StateModel):
    """Hand-off connects, at most one per key in flight: waiters wait beside a connect
    that is not theirs, and cancelled owners leave orphans."""

    max_connecting = 1


class DefaultHandoffStateModel(StateModel):
    max_connecting = trio_pool.PoolConfig().max_connecting


@pytest.mark.parametrize("model", [StateModel, HandoffStateModel, DefaultHandoffStateModel])
def test_state_model(model: type[StateModel]) -> None:
    # Random examples locally (they found the max_total liveness gap that
    # tests/test_state_machine.py::test_a_slot_freed_under_max_total_serves_another_keys_line
    # now guards); derandomized under CI, so a submission's run is reproducible.
    run_state_machine_as_test(
        model,
        settings=settings(
            max_examples=300,
            stateful_step_count=40,
            deadline=None,
            database=None,
            derandomize=os.environ.get("CI") == "true",
        ),
    )
