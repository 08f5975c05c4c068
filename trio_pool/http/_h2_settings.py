"""The settings of an HTTP/2 connection: our limits, checked before any I/O, and h2's
state machine configured with them (our SETTINGS, and which of h2's per-request
checks are ours instead)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import h2.config
import h2.connection
import h2.settings

from ._h2_adapter import new_h2_connection
from ._h2_hpack import CachingDecoder, CachingEncoder

__all__ = ["DEFAULT_WINDOW", "MAX_WINDOW", "check_limits", "new_state_machine"]

MAX_WINDOW: Final = 2**31 - 1
DEFAULT_WINDOW: Final = 65535


def check_limits(max_concurrent_streams: object, stream_window: object) -> None:
    """Raise :class:`ValueError` naming the bad one of our limits."""
    if (
        not isinstance(max_concurrent_streams, int)
        or isinstance(max_concurrent_streams, bool)
        or max_concurrent_streams < 1
    ):
        raise ValueError(
            f"max_concurrent_streams must be an int >= 1, got {max_concurrent_streams!r}"
        )
    if (
        not isinstance(stream_window, int)
        or isinstance(stream_window, bool)
        or not DEFAULT_WINDOW <= stream_window <= MAX_WINDOW
    ):
        raise ValueError(
            f"stream_window must be an int in [65535, 2**31 - 1], got {stream_window!r}"
        )


def new_state_machine(
    max_concurrent_streams: int, stream_window: int, count_open: Callable[[], int]
) -> h2.connection.H2Connection:
    """h2's client state machine with our SETTINGS (no push, our stream limit and
    window); ``count_open`` answers how many streams we have open."""
    # request_headers builds every block valid and normalized: h2 needn't redo it.
    # Received blocks are checked by _header_problem instead of h2, which would fail
    # the whole connection for one malformed response.
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    state = new_h2_connection(config, count_open)
    state.encoder = CachingEncoder()  # repeated request heads encoded once
    state.decoder = CachingDecoder.replacing(state.decoder)  # repeated response heads
    state.local_settings = h2.settings.Settings(
        client=True,
        initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
        },
    )
    return state
