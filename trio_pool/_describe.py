"""Text for log lines: a pool key in full, and the stack of the code that called the pool."""

from __future__ import annotations

import os
import sys
import traceback
from types import FrameType
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from ._state import PoolKey

__all__ = ["caller_stack", "describe_key"]

# Frames from these directories are not the user's: trio_pool's own (the innermost
# frames of an acquire) and trio's (its run loop, the outermost frames of every task).
_TRIO_POOL_DIR: Final = os.path.dirname(os.path.abspath(__file__)) + os.sep
_TRIO_DIR: Final = os.path.dirname(os.path.abspath(trio.__file__)) + os.sep


def describe_key(key: PoolKey) -> str:
    """A pool key as log lines show it, every part that splits keys included.

    ``127.0.0.1:8080 (TCP)``; ``127.0.0.1:8443 (TLS)``; with the optional parts
    ``example.com:443 (TLS, SNI api.example.com, certificate not verified, own
    ssl_context)``. An IPv6 address is bracketed: ``[::1]:8080 (TCP)``.
    """
    host = f"[{key.host}]" if ":" in key.host else key.host
    parts = ["TLS" if key.tls else "TCP"]
    if key.tls:
        if key.server_hostname is not None and key.server_hostname != key.host:
            parts.append(f"SNI {key.server_hostname}")
        if not key.verify_cert:
            parts.append("certificate not verified")
        if key.ssl_context is not None:
            parts.append("own ssl_context")
    if key.proxy is not None:
        parts.append(f"{'forwarded to' if key.forward else 'via'} proxy {key.proxy.url}")
    if key.uds is not None:
        parts.append(f"over unix socket {key.uds!r}")
    if key.http:
        parts.append("HTTP clients")
    return f"{host}:{key.port} ({', '.join(parts)})"


def caller_stack(limit: int = 12) -> str:
    """The calling task's stack, formatted, from the user's code that called into trio_pool.

    The innermost trio_pool frames (the acquire itself) are left out, and the stack stops
    before trio's run loop, which starts every task. Frames of other libraries between
    the two (an HTTP client calling the pool, a test runner) stay: they are how the user's
    code got there. At most ``limit`` frames, the innermost ones, outermost first.
    """
    frames: list[traceback.FrameSummary] = []
    frame: FrameType | None = sys._getframe(1)
    # Skip trio_pool's frames at the inner end.
    while frame is not None and frame.f_code.co_filename.startswith(_TRIO_POOL_DIR):
        frame = frame.f_back
    while frame is not None and len(frames) < limit:
        filename = frame.f_code.co_filename
        if filename.startswith(_TRIO_DIR):
            break
        frames.append(traceback.FrameSummary(filename, frame.f_lineno or 0, frame.f_code.co_name))
        frame = frame.f_back
    frames.reverse()
    return "".join(traceback.StackSummary.from_list(frames).format())
