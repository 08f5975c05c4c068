"""Pool configuration: :class:`PoolConfig`, its presets and a sizing helper."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from ._events import EventHook
from ._util import check_int, check_timeout

__all__ = ["PoolConfig", "recommended_max_size"]


def _check_positive_time(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value > 0 or math.isnan(value):
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")


@dataclass(frozen=True)
class PoolConfig:
    """How a :class:`~trio_pool.ConnectionPool` sizes, times out and maintains connections.

    All times are seconds as ``float`` (trio's unit), measured with
    :func:`trio.current_time` so :class:`trio.testing.MockClock` drives them in tests.

    Args:
        max_size: Most connections per host key, idle and in use together.
        min_size: Connections kept open per host key once it has been used or prewarmed.
        max_idle_time: An idle connection older than this is closed.
        connection_timeout: Limit for TCP connect plus TLS handshake.
        health_check_interval: How often the maintenance task checks idle connections.
        acquire_timeout: Default wait for a connection when the host is at ``max_size``;
            ``0`` fails fast and ``None`` waits forever.
        max_lifetime: A connection older than this (less a random 0-2.5% jitter) is closed
            when next released or found idle. ``None``: no limit.
        max_total: Most connections across all hosts. ``None``: no global cap.
        leak_detection_threshold: Log a warning, with where it was acquired, for a
            connection held longer than this. ``None``: off.
        max_connecting: Most hand-off connects in flight per host key. A miss with room
            starts a connect in the pool's nursery and is served by whichever comes
            first, a released connection or a connect; unneeded connects go to the next
            waiter or to idle. Below this cap a key has at most as many connects in
            flight as it has open connections (at least 4). ``None``: no hand-off,
            every miss opens its own connection and waits for it (tied connects).
        max_waiters: Most tasks waiting in line per host key for a full key (or pool);
            one more gets :class:`~trio_pool.PoolExhausted` at once. ``None``: no limit.
        on_event: Called with each lifecycle event (:class:`~trio_pool.PoolEvent`:
            connects, reuse, waits, closes, HTTP/2 pings; see :doc:`/events`).
            Synchronous and called from inside the pool's bookkeeping: it must not
            block or call into the pool; what it raises is logged and swallowed.
            ``None`` (the default): no event is built at all.
        h2_ping_interval: Send a PING on an HTTP/2 connection that received nothing
            for this long. ``None`` (the default): never; servers such as gRPC's
            answer pings they find too frequent with GOAWAY (``ENHANCE_YOUR_CALM``).
        h2_ping_timeout: Close an HTTP/2 connection whose PING is not acknowledged
            within this long (Go's ``http2.Transport.PingTimeout`` default). Requests
            it never sent are retried on another connection; those sent fail with
            :class:`~trio_pool.http.ReadError`.
        dns_ttl: How long the pool reuses the addresses a host name resolved to
            (direct TCP routes to a host name; see :doc:`upstreams`). ``0``: resolve
            for every connect; ``None``: resolve once. Default 10 s, aiohttp's
            ``ttl_dns_cache``: a replica that leaves DNS stops getting connections
            within seconds, for one lookup per host per 10 s.
        eject_after: Consecutive failures (refused or timed-out connect, failed TLS
            handshake, reset before the first response byte) that eject an address
            from the rotation for ``eject_for``. Default 5, as Envoy's outlier
            detection (``consecutive_5xx``). ``None``: never eject.
        eject_for: Seconds an ejected address gets no new connection; doubled on each
            ejection that follows a failed trial, up to ten times this. Default 5 s:
            a restarting server is tried again within seconds, while a dead one costs
            one dial per backoff instead of one per request.

    Raises:
        ValueError: A field is out of range; the message names it.
        TypeError: A field has the wrong type.
    """

    max_size: int = 100
    min_size: int = 0
    max_idle_time: float = 90.0
    connection_timeout: float = 5.0
    health_check_interval: float = 30.0
    acquire_timeout: float | None = 30.0
    max_lifetime: float | None = None
    max_total: int | None = None
    leak_detection_threshold: float | None = None
    max_connecting: int | None = 64
    max_waiters: int | None = None
    on_event: EventHook | None = None
    h2_ping_interval: float | None = None
    h2_ping_timeout: float = 15.0
    dns_ttl: float | None = 10.0
    eject_after: int | None = 5
    eject_for: float = 5.0

    # Where fields' values came from, for messages (a preset, PoolConfig's defaults);
    # set on the instance by _with_origins, not a field: it takes no part in equality.
    _origins: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        if check_int("max_size", self.max_size) < 1:
            raise ValueError(f"max_size must be >= 1, got {self.max_size!r}")
        if not 0 <= check_int("min_size", self.min_size) <= self.max_size:
            raise ValueError(
                f"min_size must be between 0 and max_size ({self.max_size}), got {self.min_size!r}"
            )
        _check_positive_time("max_idle_time", self.max_idle_time)
        _check_positive_time("connection_timeout", self.connection_timeout)
        _check_positive_time("health_check_interval", self.health_check_interval)
        check_timeout("acquire_timeout", self.acquire_timeout)
        _check_positive_time("max_lifetime", self.max_lifetime, allow_none=True)
        if self.max_total is not None and check_int("max_total", self.max_total) < 1:
            raise ValueError(f"max_total must be >= 1 or None, got {self.max_total!r}")
        _check_positive_time(
            "leak_detection_threshold", self.leak_detection_threshold, allow_none=True
        )
        if self.max_connecting is not None and check_int("max_connecting", self.max_connecting) < 1:
            raise ValueError(f"max_connecting must be >= 1 or None, got {self.max_connecting!r}")
        if self.max_waiters is not None and check_int("max_waiters", self.max_waiters) < 0:
            raise ValueError(f"max_waiters must be >= 0 or None, got {self.max_waiters!r}")
        if self.on_event is not None and not callable(self.on_event):
            raise TypeError(
                f"on_event must be a callable or None, not {type(self.on_event).__name__}"
            )
        _check_positive_time("h2_ping_interval", self.h2_ping_interval, allow_none=True)
        _check_positive_time("h2_ping_timeout", self.h2_ping_timeout)
        if self.dns_ttl is not None:
            check_timeout("dns_ttl", self.dns_ttl)
        if self.eject_after is not None and check_int("eject_after", self.eject_after) < 1:
            raise ValueError(f"eject_after must be >= 1 or None, got {self.eject_after!r}")
        _check_positive_time("eject_for", self.eject_for)

    def replace(self, **overrides: Any) -> PoolConfig:
        """Return a copy with some fields changed (validated again).

        Raises:
            TypeError: An override names no field of :class:`PoolConfig`.
            ValueError: The combined values are invalid. When the check involves a
                value kept from this config (``max_size=5`` against a preset's
                ``min_size=50``), the message says which value came from where.
        """
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown PoolConfig field(s): {', '.join(unknown)}")
        try:
            changed = replace(self, **overrides)
        except ValueError as exc:
            explained = self._explain(str(exc), overrides)
            if explained is None:
                raise
            raise ValueError(explained) from exc
        kept = {name: origin for name, origin in self._origins.items() if name not in overrides}
        return _with_origins(changed, kept)

    def _explain(self, message: str, overrides: Mapping[str, Any]) -> str | None:
        """``message`` with where its values came from, or ``None`` if it names no
        value kept from this config (the caller's values alone are at fault)."""
        named = [name for name in _FIELD_NAMES if re.search(rf"\b{name}\b", message)]
        kept = [name for name in named if name not in overrides]
        if not kept:
            return None
        sources = [
            f"{name}={getattr(self, name)!r} from {self._origins.get(name, 'the config')}"
            for name in kept
        ] + [
            f"{name}={overrides[name]!r} from the keyword argument"
            for name in named
            if name in overrides
        ]
        return f"{message} ({', '.join(sources)}; override {' and '.join(kept)} as well)"

    @classmethod
    def high_traffic(cls, **overrides: Any) -> PoolConfig:
        """Many concurrent requests to few hosts: 500 / 50 warm / 120 s idle / 3 s connect."""
        return _preset(
            cls,
            "high_traffic",
            {"max_size": 500, "min_size": 50, "max_idle_time": 120.0, "connection_timeout": 3.0},
            overrides,
        )

    @classmethod
    def low_latency(cls, **overrides: Any) -> PoolConfig:
        """Fail and recover fast: 200 / 20 warm / 60 s idle / 1 s connect, checks every 10 s."""
        return _preset(
            cls,
            "low_latency",
            {
                "max_size": 200,
                "min_size": 20,
                "max_idle_time": 60.0,
                "connection_timeout": 1.0,
                "health_check_interval": 10.0,
            },
            overrides,
        )

    @classmethod
    def resource_constrained(cls, **overrides: Any) -> PoolConfig:
        """Few sockets: 20 / none warm / 30 s idle / 10 s connect."""
        return _preset(
            cls,
            "resource_constrained",
            {"max_size": 20, "min_size": 0, "max_idle_time": 30.0, "connection_timeout": 10.0},
            overrides,
        )


def _with_origins(config: PoolConfig, origins: Mapping[str, str]) -> PoolConfig:
    """``config``, noting where its values came from (see :meth:`PoolConfig.replace`)."""
    if origins:
        object.__setattr__(config, "_origins", dict(origins))
    return config


def default_config() -> PoolConfig:
    """``PoolConfig()``, its values known as PoolConfig's defaults (``open_pool``'s)."""
    return _with_origins(PoolConfig(), dict.fromkeys(_FIELD_NAMES, "PoolConfig's defaults"))


def _preset(
    cls: type[PoolConfig], name: str, values: dict[str, Any], overrides: dict[str, Any]
) -> PoolConfig:
    """The preset ``values`` with ``overrides`` applied.

    A ``ValueError`` that involves a value the preset chose, not the caller (say
    ``low_latency(max_size=5)`` against the preset's ``min_size=20``), says which values
    came from the preset and which from the keywords, so the caller knows what to
    override too.

    Raises:
        TypeError: An override names no field of :class:`PoolConfig`.
        ValueError: The combined values are invalid.
    """
    origins = dict.fromkeys(_FIELD_NAMES, "PoolConfig's defaults")
    origins.update(dict.fromkeys(values, f"the PoolConfig.{name}() preset"))
    return _with_origins(cls(**values), origins).replace(**overrides)


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(PoolConfig))


def recommended_max_size(peak_rps: float, avg_response_time: float) -> int:
    """Size a host's pool by Little's law: connections in use = arrival rate x time held.

    Args:
        peak_rps: Peak requests per second to one host.
        avg_response_time: Average seconds a request holds its connection.

    Returns:
        ``ceil(peak_rps * avg_response_time)``, at least 1.

    Raises:
        ValueError: A negative or non-finite argument (the message names it).
    """
    for name, value in (("peak_rps", peak_rps), ("avg_response_time", avg_response_time)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, not {type(value).__name__}")
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    # round first so float noise (1000 * 0.1 == 100.00000000000001) does not add one
    return max(1, math.ceil(round(peak_rps * avg_response_time, 9)))
