"""Multiplexed (HTTP/2) connections as the pool core sees them: no protocol, only capacity.

The pool lends such a connection to many requests at once, one *stream* each: a
shared lease. The protocol layer (``trio_pool.http``) supplies the object that knows
the streams (:class:`Multiplexer`); this module imports nothing above the core.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from ._connection import ConnectionKey, ConnectionOwner, ConnectionState, PooledConnection

if TYPE_CHECKING:
    from ._events import Listeners
    from ._records import PoolKey

__all__ = [
    "MultiplexOptions",
    "Multiplexer",
    "OpenMultiplexer",
    "SharedConnection",
    "StreamLease",
]


class StreamLease(Protocol):
    """One reserved stream of a multiplexed connection (``H2StreamSlot``)."""

    @property
    def held(self) -> bool: ...

    def release(self) -> None: ...


class Multiplexer(Protocol):
    """What the pool needs of a multiplexed connection (``H2Connection``): synchronous
    capacity, a synchronous reservation, and a hook it calls when capacity changes."""

    on_capacity_change: Callable[[], None] | None

    @property
    def is_available(self) -> bool: ...

    @property
    def open_streams(self) -> int: ...

    @property
    def is_closed(self) -> bool: ...

    @property
    def is_going_away(self) -> bool: ...

    def reserve_stream_nowait(self) -> StreamLease: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class MultiplexOptions:
    """What the pool tells the protocol about a new multiplexed connection.

    Attributes:
        key: The connection's key (for the events it reports).
        events: The pool's event listeners (read at each event: ``events.emit``).
        ping_interval: ``PoolConfig.h2_ping_interval`` (``None``: no PINGs).
        ping_timeout: ``PoolConfig.h2_ping_timeout``.
    """

    key: PoolKey
    events: Listeners
    ping_interval: float | None
    ping_timeout: float


#: Starts the protocol on a freshly connected stream, its task in the given nursery.
OpenMultiplexer = Callable[
    [trio.SocketStream | trio.SSLStream[trio.SocketStream], trio.Nursery, MultiplexOptions],
    Awaitable[Multiplexer],
]


class SharedConnection(PooledConnection):
    """A pooled connection lent as streams (HTTP/2): its socket belongs to the
    multiplexer's reader task, so its health is the multiplexer's state, never a poll."""

    __slots__ = ("first", "shared")

    def __init__(
        self,
        pool: ConnectionOwner,
        key: ConnectionKey,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        now: float,
        expires_at: float,
        shared: Multiplexer,
    ) -> None:
        super().__init__(pool, key, stream, now, expires_at)
        self._session_fresh = False  # the reader owns the stream: no probing for tickets
        self.shared: Multiplexer = shared
        # The stream reserved for the task whose own connect opened it (no hand-off).
        self.first: StreamLease | None = None

    def _reusable(self) -> bool:
        shared = self.shared
        return not (
            self._broken
            or self._state is ConnectionState.CLOSED
            or shared.is_closed
            or shared.is_going_away
        )
