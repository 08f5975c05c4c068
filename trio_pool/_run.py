"""The trio run a pool belongs to: the check, and its error for a call from elsewhere."""

from __future__ import annotations

from typing import Final

import trio

__all__ = ["check_run"]

_current_trio_token: Final = trio.lowlevel.current_trio_token


def foreign(token: trio.lowlevel.TrioToken | None) -> RuntimeError:
    """The error for a call from outside the pool's run: ``token`` is the caller's
    run's (``None``: no trio run at all, asyncio say)."""
    if token is None:
        return RuntimeError(
            "trio_pool needs trio: this pool was used outside trio.run() (from"
            " asyncio, or anyio's asyncio backend?). Run it under trio: trio.run(),"
            " or anyio.run(..., backend='trio')"
        )
    return RuntimeError(
        "this pool belongs to the trio.run() (and thread) that opened it, and was"
        " used from another trio.run() or thread: open a pool in each trio.run()"
    )


def check_run(own: trio.lowlevel.TrioToken) -> None:
    """Raise :func:`foreign`'s error unless called from the run whose token is ``own``.

    :func:`trio.lowlevel.current_trio_token` costs ~0.15 µs, 2% of a pooled acquire and
    release (~8 µs), so the acquire paths only compare the thread (``if _get_ident() !=
    pool._thread: pool._check_run()``, ~0.05 µs) and come here when it differs: another
    thread (another run, asyncio, no loop), or the pool's block has ended (then another
    run of this thread, or none). Another run in the same thread while the pool's block
    is open cannot exist: trio runs do not nest. Key lookups (new keys) and the slower
    entry points call it directly. ``release`` and ``discard`` do not check: a
    connection comes only from a checked acquire.
    """
    try:
        token: trio.lowlevel.TrioToken | None = _current_trio_token()
    except RuntimeError:
        token = None
    if token is not own:
        raise foreign(token)
