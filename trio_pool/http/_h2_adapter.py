"""The one place trio_pool leans on h2 beyond its public API (h2 4.1 to 4.x: the
range is pinned in ``pyproject.toml``; ``tests/test_h2_adapter.py`` fails loudly when
h2's behaviour changes).

Two changes to :class:`h2.connection.H2Connection`, for what h2 offers no public way
to do:

* a GOAWAY received does not close the connection's state machine, so the streams at
  or below ``last_stream_id`` still finish (:class:`_StateMachine`);
* the count of open outbound streams comes from our own O(1) count, h2's O(streams)
  scan (its own ``open_outbound_streams``, reached through ``super()``) running only
  to forget closed streams, amortized (:class:`_H2`).

Both use public names only (a subclass, ``state_machine``, the property).
"""

from __future__ import annotations

from collections.abc import Callable

import h2.config
import h2.connection
import h2.events

__all__ = ["new_h2_connection"]


def new_h2_connection(
    config: h2.config.H2Configuration, count_open: Callable[[], int]
) -> h2.connection.H2Connection:
    """An h2 client connection with both changes; ``count_open`` answers how many
    streams we have open."""
    connection = _H2(config=config)
    connection.count_open = count_open
    connection.state_machine = _StateMachine()
    return connection


class _H2(h2.connection.H2Connection):
    """h2's connection, counting the open streams in O(1) (amortized).

    h2 reads ``open_outbound_streams`` on every new stream, and computes it by scanning
    every stream it holds (which also forgets the closed ones): O(open streams) per
    request. Our own count of open streams (``H2Connection._streams``,
    registered right after HEADERS and unregistered when the stream closes) answers
    instead, and the scan runs only when h2 holds twice as many streams as after the
    last one, plus 64, to forget closed streams in amortized O(1).
    """

    count_open: Callable[[], int] | None = None
    _scan_at = 64

    @property
    def open_outbound_streams(self) -> int:
        count_open = self.count_open
        if count_open is None or len(self.streams) >= self._scan_at:
            count: int = super().open_outbound_streams  # h2's scan, forgetting closed streams
            self._scan_at = 2 * len(self.streams) + 64
            return count
        return count_open()


class _StateMachine(h2.connection.H2ConnectionStateMachine):
    """h2's connection state machine, except that a GOAWAY received does not close it.

    h2 goes to CLOSED on GOAWAY and then rejects every later frame, even those of the
    streams at or below ``last_stream_id`` that the server still finishes (in the same
    read, often). We keep receiving; that no new stream opens is ours to enforce
    (:attr:`H2Connection.is_available`).
    """

    def process_input(self, input_: h2.connection.ConnectionInputs) -> list[h2.events.Event]:
        if input_ is h2.connection.ConnectionInputs.RECV_GOAWAY and self.state in (
            h2.connection.ConnectionState.IDLE,
            h2.connection.ConnectionState.CLIENT_OPEN,
        ):
            return []
        return super().process_input(input_)
