"""Lifecycle events: what a pool reports to its ``on_event`` hook.

Each event is a small frozen record (a dataclass with slots) naming the key it is about
(:class:`~trio_pool.PoolKey`), the pool's time (:func:`trio.current_time`, seconds) and
a few fields of its own. A pool with no hook builds none of them: every place that
reports one first checks ``if on_event is not None``.

The hook is called synchronously, often from inside the pool's state machine between
two of its bookkeeping steps, so it must not block and must not call back into the
pool. What it raises is logged and swallowed (:func:`guarded`): a broken hook never
breaks the pool.

Events of address resolution and ejection (:class:`Resolved`, :class:`AddressEjected`,
:class:`AddressRestored`) are defined here for the pool's address book; see
:doc:`/events` for when each event is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

if TYPE_CHECKING:
    from ._records import PoolKey

__all__ = [
    "AcquireTimedOut",
    "AddressEjected",
    "AddressRestored",
    "CloseReason",
    "Closed",
    "ConnectDone",
    "ConnectFailed",
    "ConnectStarted",
    "Discarded",
    "EventHook",
    "Listeners",
    "PingAnswered",
    "PingSent",
    "PingTimedOut",
    "PoolEvent",
    "Queued",
    "Released",
    "Resolved",
    "Reused",
    "TLSResumed",
    "Waited",
    "guarded",
]

logger: Final = logging.getLogger("trio_pool")

#: Why a connection was closed (:attr:`Closed.reason`, :attr:`Discarded.reason`):
#:
#: - ``"idle_timeout"``: idle longer than ``max_idle_time``;
#: - ``"lifetime"``: older than ``max_lifetime``;
#: - ``"unhealthy"``: an idle connection's probe found it closed by the peer, or
#:   holding bytes nobody asked for;
#: - ``"unusable"``: given back broken, closed, or with unread bytes;
#: - ``"discarded"``: the borrower called ``discard`` (or ``aclose``, or left a
#:   ``connection()`` block with an exception);
#: - ``"capacity"``: an idle connection closed to make room (``max_total``, or an
#:   ``acquire_new`` on a full key);
#: - ``"pool_closed"``: the pool closed;
#: - ``"lost"``: a multiplexed (HTTP/2) connection failed: the socket broke, the peer
#:   broke the protocol, or it left a PING unanswered (``h2_ping_timeout``);
#: - ``"goaway"``: the peer sent GOAWAY, and the connection's last stream ended;
#: - ``"drained"``: an idle connection to an address that left its host's DNS answer.
CloseReason: TypeAlias = Literal[
    "idle_timeout",
    "lifetime",
    "unhealthy",
    "unusable",
    "discarded",
    "capacity",
    "pool_closed",
    "lost",
    "goaway",
    "drained",
]


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """The base of every event.

    Attributes:
        key: The key the event is about.
        time: When, in the pool's clock (:func:`trio.current_time`), in seconds.
    """

    key: PoolKey
    time: float


# -- connecting -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resolved(PoolEvent):
    """The key's host name was resolved.

    Attributes:
        addresses: The addresses, in the resolver's order (IPv4 and IPv6).
        ttl: How long (seconds) the answer is reused (``dns_ttl``); ``None``: for good.
    """

    addresses: tuple[str, ...]
    ttl: float | None


@dataclass(frozen=True, slots=True)
class ConnectStarted(PoolEvent):
    """A connect started (TCP or Unix socket, proxy tunnel, TLS, HTTP/2 SETTINGS).

    Attributes:
        handoff: Started in the pool's nursery for whichever task gets it (hand-off),
            rather than in the task that needs it (or to fill the warm floor).
    """

    handoff: bool


@dataclass(frozen=True, slots=True)
class ConnectDone(PoolEvent):
    """A connect succeeded (reported just before the connection is recorded and lent).

    Attributes:
        duration: Seconds since its :class:`ConnectStarted`.
        multiplexed: It speaks HTTP/2 (its streams are lent, not the connection).
    """

    duration: float
    multiplexed: bool


@dataclass(frozen=True, slots=True)
class ConnectFailed(PoolEvent):
    """A connect failed or timed out (a cancelled connect reports nothing).

    Attributes:
        duration: Seconds since its :class:`ConnectStarted`.
        error: The :class:`~trio_pool.ConnectError` (or other error) it raised.
        timed_out: It took longer than its connect timeout.
    """

    duration: float
    error: BaseException
    timed_out: bool


@dataclass(frozen=True, slots=True)
class TLSResumed(PoolEvent):
    """A TLS handshake resumed a saved session (no full handshake)."""


# -- acquiring --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reused(PoolEvent):
    """An acquire was served by a pooled connection (a hit): an idle one, one released
    to the waiting task, or a free stream of an HTTP/2 connection.

    Attributes:
        idle_for: Seconds the connection sat idle before (0 for a hand-over, and for a
            stream of a connection that was busy).
        multiplexed: A stream of an HTTP/2 connection.
    """

    idle_for: float
    multiplexed: bool


@dataclass(frozen=True, slots=True)
class Queued(PoolEvent):
    """A task joined the line: its key is at ``max_size`` (or the pool at
    ``max_total``). A miss with room waits for its connect instead (no event: see
    :class:`ConnectStarted`).

    Attributes:
        waiting: Tasks of the key in line, this one included.
    """

    waiting: int


@dataclass(frozen=True, slots=True)
class Waited(PoolEvent):
    """A task that was queued got its turn: a released connection, a stream, or a slot
    to connect in.

    Attributes:
        waited: Seconds it spent in line.
    """

    waited: float


@dataclass(frozen=True, slots=True)
class AcquireTimedOut(PoolEvent):
    """An acquire raised :class:`~trio_pool.PoolExhausted`.

    Attributes:
        waited: Seconds it waited (0 when it failed at once).
        reason: ``"timeout"``: no connection within its timeout; ``"fail_fast"``:
            ``timeout=0`` and nothing free; ``"line_full"``: ``max_waiters`` tasks
            were waiting already.
    """

    waited: float
    reason: Literal["timeout", "fail_fast", "line_full"]


# -- giving back, closing ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Released(PoolEvent):
    """A borrowed connection came back healthy: pooled, or handed to a waiting task.

    Attributes:
        held: Seconds it was borrowed.
    """

    held: float


@dataclass(frozen=True, slots=True)
class Discarded(PoolEvent):
    """A borrowed connection came back and was closed (a :class:`Closed` follows).

    Attributes:
        held: Seconds it was borrowed.
        reason: Why (see :data:`CloseReason`): ``"discarded"``, ``"unusable"``,
            ``"lifetime"`` or ``"pool_closed"``.
    """

    held: float
    reason: CloseReason


@dataclass(frozen=True, slots=True)
class Closed(PoolEvent):
    """A connection was closed and its slot freed.

    Attributes:
        reason: Why (see :data:`CloseReason`).
        age: Seconds since it was opened.
        uses: How many times it was lent (streams, for HTTP/2).
    """

    reason: CloseReason
    age: float
    uses: int


# -- addresses ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddressEjected(PoolEvent):
    """An address of the key's host failed too often in a row and gets no new
    connections for a while.

    Attributes:
        address: The address.
        failures: Consecutive failures that ejected it.
        until: When (pool time) a trial connect may go through again.
    """

    address: str
    failures: int
    until: float


@dataclass(frozen=True, slots=True)
class AddressRestored(PoolEvent):
    """An ejected address answered a trial connect and takes connections again.

    Attributes:
        address: The address.
    """

    address: str


# -- HTTP/2 liveness ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PingSent(PoolEvent):
    """An HTTP/2 connection that received nothing for ``h2_ping_interval`` was sent a
    PING.

    Attributes:
        open_streams: Streams open on it.
    """

    open_streams: int


@dataclass(frozen=True, slots=True)
class PingAnswered(PoolEvent):
    """The peer acknowledged our PING.

    Attributes:
        rtt: Seconds from sending the PING to its ACK.
    """

    rtt: float


@dataclass(frozen=True, slots=True)
class PingTimedOut(PoolEvent):
    """No ACK came within ``h2_ping_timeout``: the connection is closed as lost (a
    :class:`Closed` with reason ``"lost"`` follows once it is recorded).

    Attributes:
        open_streams: Streams open on it, which fail (or are retried if never sent).
    """

    open_streams: int


#: The pool's event hook: called synchronously with each event.
EventHook: TypeAlias = Callable[[PoolEvent], None]


def guarded(hook: EventHook) -> EventHook:
    """``hook``, with whatever :class:`Exception` it raises logged and swallowed."""

    def emit(event: PoolEvent) -> None:
        try:
            hook(event)
        except Exception:
            logger.exception("trio_pool: the on_event hook raised on %r", event)

    return emit


class Listeners:
    """Who hears a pool's events: the configured hook and internal listeners (the
    Prometheus collector), each guarded.

    :attr:`emit` is ``None`` while nobody listens, so a pool without a hook pays one
    ``is not None`` check per place that reports an event, and builds no event.
    """

    __slots__ = ("_listeners", "emit")

    def __init__(self, hook: EventHook | None = None) -> None:
        self._listeners: list[EventHook] = []
        self.emit: EventHook | None = None
        if hook is not None:
            self.add(hook)

    def add(self, listener: EventHook) -> None:
        """Listen from now on (events already reported are not replayed)."""
        self._listeners.append(guarded(listener))
        if len(self._listeners) == 1:
            self.emit = self._listeners[0]
        else:
            self.emit = self._fan_out

    def _fan_out(self, event: PoolEvent) -> None:
        for listener in self._listeners:
            listener(event)
