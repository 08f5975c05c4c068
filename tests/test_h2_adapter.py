"""The h2 workarounds of :mod:`trio_pool.http._h2_adapter`, sans-IO against h2 itself:
these fail loudly when h2 changes what the adapter relies on (or fixes what it works
around), so the version range in ``pyproject.toml`` is moved knowingly."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from trio_pool.http._h2_adapter import new_h2_connection

REQUEST = [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "a")]


def _config(client: bool) -> h2.config.H2Configuration:
    return h2.config.H2Configuration(client_side=client, header_encoding="utf-8")


def _pair(client: h2.connection.H2Connection) -> h2.connection.H2Connection:
    """A server for ``client``, both past the preface and SETTINGS."""
    server = h2.connection.H2Connection(_config(False))
    server.initiate_connection()
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return server


def _goaway_then_answer(client: h2.connection.H2Connection) -> list[h2.events.Event]:
    """Stream 1 sent; the server sends GOAWAY(last_stream_id=1), then answers stream 1."""
    server = _pair(client)
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.data_to_send()  # (its window updates)
    server.send_headers(1, [(":status", "200")])
    server.send_data(1, b"ok", end_stream=True)
    answer = server.data_to_send()
    server.close_connection(last_stream_id=1)
    return client.receive_data(server.data_to_send() + answer)


def test_h2_version_in_the_pinned_range() -> None:
    major, minor = (int(part) for part in h2.__version__.split(".")[:2])
    assert (4, 1) <= (major, minor) < (5, 0)


def test_plain_h2_still_drops_frames_after_goaway() -> None:
    """Why the adapter exists: h2 closes its state machine on GOAWAY and rejects the
    answer of a stream below ``last_stream_id``. If this fails, h2 fixed it: drop
    ``_StateMachine``."""
    with pytest.raises(h2.exceptions.ProtocolError):
        _goaway_then_answer(h2.connection.H2Connection(_config(True)))


def test_adapter_finishes_streams_below_goaway() -> None:
    events = _goaway_then_answer(new_h2_connection(_config(True), lambda: 0))
    kinds = [type(event) for event in events]
    assert h2.events.ConnectionTerminated in kinds
    assert h2.events.ResponseReceived in kinds
    assert h2.events.StreamEnded in kinds


def test_adapter_counts_open_streams_with_our_count() -> None:
    """h2 asks ``open_outbound_streams`` per new stream; the adapter answers with our
    count, and h2's own scan (its property, which the adapter calls when it prunes)
    agrees once streams closed."""
    ours = [0]
    client = new_h2_connection(_config(True), lambda: ours[0])
    server = _pair(client)
    for stream_id in (1, 3, 5):
        client.send_headers(stream_id, REQUEST, end_stream=True)
        ours[0] += 1
    assert client.open_outbound_streams == 3
    server.receive_data(client.data_to_send())
    for stream_id in (1, 3, 5):
        server.send_headers(stream_id, [(":status", "204")], end_stream=True)
    client.receive_data(server.data_to_send())
    ours[0] = 0
    assert client.open_outbound_streams == 0
    # h2's own count (its public property, the scan the adapter falls back on) agrees,
    # and forgets the closed streams.
    assert h2.connection.H2Connection.open_outbound_streams.fget(client) == 0
    assert not client.streams
    # h2 still enforces the peer's limit through the property the adapter replaces.
    ours[0] = client.remote_settings.max_concurrent_streams
    with pytest.raises(h2.exceptions.TooManyStreamsError):
        client.send_headers(7, REQUEST, end_stream=True)
