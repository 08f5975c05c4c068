"""Request bodies streamed from an async iterable, the same on HTTP/1.1 and HTTP/2:
each piece as bytes, and the iterator closed when the request leaves it early."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Final, TypeAlias

import trio

__all__ = ["Body", "chunk_bytes", "close_iterator"]

#: A prepared body: the bytes, or the async iterable to stream.
Body: TypeAlias = bytes | AsyncIterable[object]

_CLOSE_TIMEOUT: Final = 1.0


def chunk_bytes(chunk: object) -> bytes:
    """One piece of a streamed body as bytes (a buffer is sent as its bytes).

    Raises:
        TypeError: Not bytes, bytearray or memoryview (the message names ``content``).
    """
    if type(chunk) is bytes:
        return chunk
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        try:
            return bytes(chunk)
        except ValueError as exc:
            raise ValueError(f"content yielded a buffer that cannot be read: {exc}") from None
    raise TypeError(
        f"content must yield bytes, bytearray or memoryview, not {type(chunk).__name__}"
    )


async def close_iterator(iterator: AsyncIterator[object]) -> None:
    """Close a body's iterator left before its end (an async generator would otherwise
    be finalized whenever it is collected), shielded, for a second at most. Its own
    errors are dropped: the request's error (or its early answer) is what counts."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + _CLOSE_TIMEOUT
        try:
            await aclose()
        except Exception:  # secondary to the error being raised
            pass
