"""Tracing hooks: httpcore's ``trace`` extension, as the pool's connects report it.

A caller that wants the connect of its own request traced sets :data:`connect_trace`
around the acquire; a connect the pool runs in that task (not a hand-off connect in
the pool's nursery, which serves whichever task gets the connection) then reports
``connection.connect_tcp.*`` and ``connection.start_tls.*`` events to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeAlias, TypeVar

__all__ = ["Trace", "connect_trace", "traced"]

#: An async callback taking an event name (``"connection.connect_tcp.started"``) and
#: its info dict, as httpx's ``trace`` request extension.
Trace: TypeAlias = Callable[[str, dict[str, Any]], Awaitable[None]]

#: The trace of the current task's request, read by the pool's connect.
connect_trace: ContextVar[Trace | None] = ContextVar("trio_pool_connect_trace", default=None)

_T = TypeVar("_T")


async def traced(
    trace: Trace, name: str, info: dict[str, Any], step: Callable[[], Awaitable[_T]]
) -> _T:
    """Run ``step()`` between ``name.started`` and ``name.complete`` (``info`` with
    ``return_value``), or ``name.failed`` (with ``exception``) if it raises an
    :class:`Exception`, as httpcore's ``Trace`` does."""
    await trace(name + ".started", info)
    try:
        result = await step()
    except Exception as exc:
        await trace(name + ".failed", {"exception": exc})
        raise
    await trace(name + ".complete", {"return_value": result})
    return result
