"""Per-phase limits of a request: :class:`Timeout`, as ``httpx.Timeout`` has them."""

from __future__ import annotations

import math
from typing import Final

__all__ = [
    "DEFAULT_TIMEOUT",
    "USE_CLIENT_DEFAULT",
    "Timeout",
    "UseClientDefault",
    "phase_timeout",
    "to_timeout",
]

#: The default ``timeout`` of :class:`~trio_pool.http.HTTPClient`, in seconds (httpx's).
DEFAULT_TIMEOUT: Final = 5.0


class UseClientDefault:
    """The type of :data:`USE_CLIENT_DEFAULT`: "the client's ``timeout``"."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


#: The default ``timeout`` of a request: the client's. (``None`` means no limit.)
USE_CLIENT_DEFAULT: Final = UseClientDefault()


class _Unset:
    __slots__ = ()


_UNSET: Final = _Unset()


def _check(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if not value >= 0 or math.isnan(value):
        raise ValueError(f"{name} must be >= 0 seconds or None, got {value!r}")
    return float(value)


class Timeout:
    """How long each phase of a request may take, in seconds.

    The phases are httpx's and httpcore's, each limited on its own, and the limits
    of writes and reads are per operation, the same on HTTP/1.1 and HTTP/2:

    - ``pool``: waiting for a connection from the pool when its key (or the pool) is
      full. ``None``: the pool's ``acquire_timeout`` applies.
    - ``connect``: opening a new connection, TCP connect plus TLS handshake.
      ``None``: the pool's ``connection_timeout`` applies.
    - ``write``: each wait while sending the request: for the socket to take the next
      write (at most 64 KiB: the head, a piece of the body) and, over HTTP/2, for the
      server's flow-control window. A steady upload, however long, is never cut
      off; one the server stops taking is (:class:`WriteTimeout`). The time a
      streamed body's iterable takes to produce a piece is not limited. ``None``: no
      limit.
    - ``read``: each read from the connection: the wait for the response head,
      counted from when the request is sent (never the write limit added), then
      each wait for a piece of the body. ``None``: no limit.

    ``0`` means "no waiting" in every phase, as ``ConnectionPool.acquire(timeout=0)``
    has it for the pool: ``pool=0`` fails at once when no connection is free,
    ``connect=0`` lets only an idle connection serve the request, ``write=0`` /
    ``read=0`` fail as soon as a write or read would have to wait. So a single ``0``
    lets hardly any request through (its response cannot be there yet); per phase,
    ``Timeout(5.0, pool=0)`` is the fail-fast setting.

    Args:
        timeout: The limit of every phase not given by name.
        connect: The connect limit.
        read: The read limit.
        write: The write limit.
        pool: The pool wait limit.

    Raises:
        TypeError: A limit that is not a number or ``None``.
        ValueError: A negative or NaN limit.
    """

    __slots__ = ("connect", "pool", "read", "write")

    connect: float | None
    read: float | None
    write: float | None
    pool: float | None

    def __init__(
        self,
        timeout: float | None = DEFAULT_TIMEOUT,
        *,
        connect: float | _Unset | None = _UNSET,
        read: float | _Unset | None = _UNSET,
        write: float | _Unset | None = _UNSET,
        pool: float | _Unset | None = _UNSET,
    ) -> None:
        default = _check("timeout", timeout)
        phases = {"connect": connect, "read": read, "write": write, "pool": pool}
        for name, value in phases.items():
            object.__setattr__(
                self, name, default if isinstance(value, _Unset) else _check(name, value)
            )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Timeout is immutable: make a new one")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Timeout):
            return NotImplemented
        return self._as_tuple() == other._as_tuple()

    def __hash__(self) -> int:
        return hash(self._as_tuple())

    def _as_tuple(self) -> tuple[float | None, float | None, float | None, float | None]:
        return (self.connect, self.read, self.write, self.pool)

    def __repr__(self) -> str:
        values = self._as_tuple()
        if len(set(values)) == 1:
            return f"Timeout(timeout={values[0]})"
        return (
            f"Timeout(connect={self.connect}, read={self.read}, write={self.write},"
            f" pool={self.pool})"
        )


NO_LIMIT: Final = Timeout(None)
_BY_NUMBER: dict[float, Timeout] = {}


def to_timeout(value: object, name: str = "timeout") -> Timeout:
    """``value`` (a :class:`Timeout`, a number of seconds for every phase, or ``None``
    for no limits) as a :class:`Timeout`.

    Raises:
        TypeError: Not one of those.
        ValueError: A negative or NaN number.
    """
    if isinstance(value, Timeout):
        return value
    if value is None:
        return NO_LIMIT
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds, a Timeout or None, not {type(value).__name__}"
        )
    seconds = _check(name, value)
    assert seconds is not None
    timeout = _BY_NUMBER.get(seconds)
    if timeout is None:
        if len(_BY_NUMBER) >= 64:
            _BY_NUMBER.clear()
        timeout = _BY_NUMBER[seconds] = Timeout(seconds)
    return timeout


_BY_PHASES: dict[tuple[object, ...], Timeout] = {}


def phase_timeout(connect: object, read: object, write: object, pool: object) -> Timeout:
    """``Timeout(None, connect=..., read=..., write=..., pool=...)``, made once for the
    same four values (of the same types: ``True`` is refused where ``1`` is not), as
    httpx's ``timeout`` extension gives them with every request.

    Raises:
        TypeError: A limit that is not a number or ``None``.
        ValueError: A negative or NaN limit.
    """
    key = (connect, read, write, pool, type(connect), type(read), type(write), type(pool))
    try:
        timeout = _BY_PHASES.get(key)
    except TypeError:  # unhashable: not a number, refused below with its name
        timeout = None
    if timeout is None:
        timeout = Timeout(None, connect=connect, read=read, write=write, pool=pool)  # type: ignore[arg-type]
        if len(_BY_PHASES) >= 64:
            _BY_PHASES.clear()
        _BY_PHASES[key] = timeout
    return timeout
