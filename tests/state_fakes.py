"""Plain stand-ins for driving :class:`trio_pool._state.PoolState` directly, h11-style.

No sockets, no threads, no trio run: a connection is a :class:`FakeConnection` whose
health is a flag, a multiplexed one a :class:`FakeShared` over a :class:`FakeMultiplexer`
that counts streams, the clock is a float, and every hook the state machine calls (wake a
task, close a connection, start a connect, wake the maintenance task) is recorded in a
:class:`World`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import outcome

from trio_pool import PoolConfig
from trio_pool._connection import ConnectionKey, ConnectionOwner, ConnectionState, PooledConnection
from trio_pool._shared import Multiplexer, SharedConnection
from trio_pool._state import Grant, KeyState, PendingConnect, PoolKey, PoolState, Waiter


class FakeConnection(PooledConnection):
    """A pooled connection with no socket: healthy until ``_broken`` is set."""

    def __init__(
        self,
        pool: ConnectionOwner,
        key: ConnectionKey,
        stream: Any,
        now: float,
        expires_at: float,
    ) -> None:
        self._pool = pool
        self._key = key
        self.stream = stream
        self.host = key.key.host
        self.port = key.key.port
        self.created_at = self.last_used_at = self.acquired_at = now
        self.acquired_by = None
        self.use_count = 0
        self.reused = False
        self._lease = 0
        self._state = ConnectionState.IN_USE
        self._broken = False
        self._closed_by_user = False
        self._expires_at = expires_at
        self.session_reused = False
        self._session_fresh = False
        self._unread = b""
        self._address = None
        self._unproven = None

    def _reusable(self) -> bool:
        return not self._broken and self._state is not ConnectionState.CLOSED


class FakeShared(SharedConnection):
    """A multiplexed connection with no socket: its health is its multiplexer's."""

    def __init__(
        self,
        pool: ConnectionOwner,
        key: ConnectionKey,
        stream: Any,
        now: float,
        expires_at: float,
        shared: Multiplexer,
    ) -> None:
        FakeConnection.__init__(self, pool, key, stream, now, expires_at)  # type: ignore[arg-type]
        self.shared = shared
        self.first = None


class FakeLease:
    """One stream of a :class:`FakeMultiplexer`."""

    def __init__(self, mux: FakeMultiplexer) -> None:
        self.mux = mux
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.mux.open_streams -= 1
            self.mux.changed()


class FakeMultiplexer:
    """Stream capacity of an HTTP/2 connection, as the state machine sees it."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.open_streams = 0
        self.is_closed = False
        self.is_going_away = False
        self.on_capacity_change: Any = None

    @property
    def is_available(self) -> bool:
        return not (self.is_closed or self.is_going_away) and self.open_streams < self.max_streams

    def reserve_stream_nowait(self) -> FakeLease:
        assert self.is_available
        self.open_streams += 1
        return FakeLease(self)

    def changed(self) -> None:
        if self.on_capacity_change is not None:
            self.on_capacity_change()

    async def aclose(self) -> None:  # pragma: no cover - the state never awaits
        self.is_closed = True


class FakePool:
    """What a connection needs of its pool (:class:`ConnectionOwner`)."""

    closed = False

    def discard(self, conn: PooledConnection) -> None:  # pragma: no cover - not used
        raise AssertionError("the state machine never calls the pool back")


@dataclass
class World:
    """The state machine's surroundings: a clock, and a record of every hook call."""

    clock: float = 0.0
    #: The token the next ``enqueue`` takes for the waiting task (its name).
    current: str = ""
    woken: list[tuple[str, outcome.Outcome[Grant]]] = field(default_factory=list)
    closed: list[PooledConnection] = field(default_factory=list)
    connects: list[PendingConnect] = field(default_factory=list)
    #: The key state of every hand-off connect started.
    connect_keys: dict[PendingConnect, KeyState] = field(default_factory=dict)
    wake_by: list[float] = field(default_factory=list)
    pool: FakePool = field(default_factory=FakePool)
    #: Called with the hook's name at every hook call (to observe from inside).
    observe: Callable[[str], None] = lambda hook: None

    def state(self, **config: Any) -> PoolState:
        """A :class:`PoolState` wired to this world."""

        def wake(task: str, result: outcome.Outcome[Grant]) -> None:
            self.observe("wake")
            self.woken.append((task, result))

        def close(conn: PooledConnection) -> None:
            self.observe("close")
            self.closed.append(conn)

        def current_task() -> str:
            self.observe("current_task")
            return self.current

        def start_connect(state: KeyState, pending: PendingConnect) -> None:
            self.observe("start_connect")
            self.connects.append(pending)
            self.connect_keys[pending] = state

        return PoolState(
            self.pool,
            PoolConfig(**config),
            close,
            now=lambda: self.clock,
            current_task=current_task,
            wake=wake,
            wake_by=self.wake_by.append,
            start_connect=start_connect,
            connection_type=FakeConnection,
            shared_type=FakeShared,
        )

    def wait(
        self, pool: PoolState, state: KeyState, name: str, *, handoff: bool, new: bool = False
    ) -> Waiter:
        """Task ``name`` waits in line on ``state`` (after ``take`` sent it there)."""
        waiter = Waiter(state, self.clock, new, handoff=handoff)
        self.current = name
        pool.enqueue(waiter, self.clock)
        return waiter

    def take_woken(self) -> list[tuple[str, Any]]:
        """The wake-ups so far, as (task, value or exception), and forget them."""
        woken = [
            (task, result.value if isinstance(result, outcome.Value) else result.error)  # type: ignore[attr-defined]
            for task, result in self.woken
        ]
        self.woken.clear()
        return woken


def fake_stream() -> Any:
    """What the I/O layer would pass as the connected stream (never read here)."""
    return object()


def make_key(name: str, *, http2: str | None = None) -> PoolKey:
    """A plain key to host ``name`` (no socket is ever opened to it)."""
    return PoolKey(name, 80, False, None, True, None, http2=http2)
