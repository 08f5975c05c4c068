"""HTTP/2 liveness: PING a connection that went quiet, close it when the PING goes
unanswered (``PoolConfig.h2_ping_interval`` and ``h2_ping_timeout``).

A peer that vanished without a FIN (a host that died, a NAT or load balancer that
dropped the flow) leaves a connection that looks open: nothing arrives, and a request
sent on it waits for its read timeout. Go's HTTP/2 transport finds such connections
with ``ReadIdleTimeout`` and ``PingTimeout``; this module does the same:

* :class:`Liveness` decides, synchronously, with the time passed in: a connection that
  received nothing for ``interval`` seconds is due a PING; a PING not acknowledged
  within ``timeout`` seconds means the peer is gone. Only the ACK of our PING ends the
  wait (as in Go): other frames arriving meanwhile do not, since a peer (or a
  middlebox) can be alive enough to trickle bytes of one stream and still be stuck.
* :class:`Pinger` is the I/O: a task in the connection's nursery that sleeps until
  the next deadline, sends the PING (through the connection's writer) and, on a
  timeout, closes the connection as lost. The reader tells it when bytes arrive and
  when an ACK comes.

What a lost connection's requests get (RFC 9113 gives a client no way to learn which
streams a silent peer processed): a request that had reserved a stream but was not
sent yet gets :class:`~trio_pool.http.RequestNotProcessed` and the HTTP layer retries
it on another connection, whatever its method; a request already sent fails with
:class:`~trio_pool.http.ReadError`, as in Go, whose transport retries only requests
it knows were not processed.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Final, Literal

import h2.exceptions
import trio

from .._events import PingAnswered, PingSent, PingTimedOut
from ._exceptions import ReadError

if TYPE_CHECKING:
    from .._events import Listeners
    from .._records import PoolKey
    from ._http2 import H2Connection

__all__ = ["Liveness", "Pinger"]

_PAYLOAD_SIZE: Final = 8  # a PING carries 8 bytes of opaque data (RFC 9113, 6.7)


class Liveness:
    """When a connection is due a PING, and when it is lost (no I/O, no clock).

    Args:
        interval: Seconds without receiving anything before a PING is due.
        timeout: Seconds a PING may wait for its ACK.
        now: The time the connection opened.
    """

    __slots__ = ("_payload", "_sent", "interval", "last_received", "ping_sent_at", "timeout")

    def __init__(self, interval: float, timeout: float, now: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.last_received = now
        #: When our outstanding PING was sent; ``None``: none outstanding.
        self.ping_sent_at: float | None = None
        self._payload: bytes | None = None
        self._sent = 0

    def received(self, now: float) -> None:
        """Bytes arrived from the peer."""
        self.last_received = now

    def deadline(self) -> float:
        """When :meth:`due` next has something to say."""
        if self.ping_sent_at is not None:
            return self.ping_sent_at + self.timeout
        return self.last_received + self.interval

    def due(self, now: float) -> Literal["ping", "lost"] | None:
        """``"ping"``: quiet for ``interval``, send a PING (:meth:`ping`); ``"lost"``:
        our PING went unanswered for ``timeout``; ``None``: nothing to do yet."""
        if self.ping_sent_at is not None:
            return "lost" if now >= self.ping_sent_at + self.timeout else None
        return "ping" if now >= self.last_received + self.interval else None

    def ping(self, now: float) -> bytes:
        """A PING goes out now: its payload (a counter, so an ACK is matched to it)."""
        self._sent += 1
        self._payload = self._sent.to_bytes(_PAYLOAD_SIZE, "big")
        self.ping_sent_at = now
        return self._payload

    def acked(self, payload: bytes, now: float) -> float | None:
        """A PING ACK arrived: the round trip in seconds if it answers our outstanding
        PING (the connection is quiet from now on again), else ``None``."""
        if self.ping_sent_at is None or payload != self._payload:
            return None
        rtt = now - self.ping_sent_at
        self.ping_sent_at = None
        self._payload = None
        self.last_received = now
        return rtt


class Pinger:
    """The liveness task of one connection, and what its reader tells it.

    Args:
        interval: ``h2_ping_interval``.
        timeout: ``h2_ping_timeout``.
        key: The pool key of the connection, for its events (``None`` outside a pool).
        events: The pool's listeners (``PingSent``, ``PingAnswered``, ``PingTimedOut``).
    """

    __slots__ = ("_scope", "_sleep", "events", "key", "liveness")

    def __init__(
        self,
        interval: float,
        timeout: float,
        *,
        key: PoolKey | None = None,
        events: Listeners | None = None,
    ) -> None:
        self.liveness = Liveness(interval, timeout, trio.current_time())
        self.key = key
        self.events = events
        self._scope = trio.CancelScope()
        self._sleep: trio.CancelScope | None = None  # the task's sleep until the deadline

    def received(self) -> None:
        """The reader received bytes."""
        self.liveness.received(trio.current_time())

    def acked(self, payload: bytes) -> None:
        """The reader got a PING ACK."""
        now = trio.current_time()
        rtt = self.liveness.acked(payload, now)
        if rtt is None:
            return
        if self._sleep is not None:  # sleeping until the PING's timeout: the next PING's time
            self._sleep.deadline = self.liveness.deadline()
        if self.key is not None and self.events is not None:
            emit = self.events.emit
            if emit is not None:
                emit(PingAnswered(self.key, now, rtt))

    def stop(self) -> None:
        """The connection is ending: the task returns (or never starts)."""
        self._scope.cancel()

    async def run(self, conn: H2Connection) -> None:
        """Sleep until the next deadline; PING a quiet connection; close a connection
        whose PING went unanswered (its streams fail, see the module docstring)."""
        liveness = self.liveness
        with self._scope:
            while True:
                with trio.CancelScope(deadline=liveness.deadline()) as self._sleep:
                    await trio.sleep_forever()
                self._sleep = None
                now = trio.current_time()
                due = liveness.due(now)
                if due == "ping":
                    payload = liveness.ping(now)
                    try:
                        conn._h2.ping(payload)
                    except h2.exceptions.ProtocolError:  # pragma: no cover - h2 closed it
                        return
                    conn._kick()
                    self._report(PingSent, now, conn.open_streams)
                elif due == "lost":
                    self._report(PingTimedOut, now, conn.open_streams)
                    message = (
                        f"the server did not answer a PING within {liveness.timeout} s"
                        " (h2_ping_timeout): the HTTP/2 connection is lost"
                    )
                    conn._die(partial(ReadError, message))
                    return

    def _report(self, kind: type[PingSent | PingTimedOut], now: float, open_streams: int) -> None:
        if self.key is not None and self.events is not None:
            emit = self.events.emit
            if emit is not None:
                emit(kind(self.key, now, open_streams))
