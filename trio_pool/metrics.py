"""Prometheus metrics for a pool: :class:`PrometheusCollector`.

Needs the ``prometheus`` extra (``pip install trio-pool[prometheus]``); prometheus_client
is imported only when a collector is made or scraped, never by ``import trio_pool``.

Usage::

    from prometheus_client import REGISTRY
    from trio_pool.metrics import PrometheusCollector

    async with trio_pool.open_pool() as pool:
        REGISTRY.register(PrometheusCollector(pool))
        ...

Every scrape reads :meth:`~trio_pool.ConnectionPool.host_statistics` once, so all the
numbers of one scrape are from the same instant and come from the same counters as
:meth:`~trio_pool.ConnectionPool.statistics`. Each series is labelled with ``host`` and
``port`` (all the keys of one ``host:port``, plain and TLS, together).

Metrics (with the default ``namespace="trio_pool"``):

========================================== ========= ==============================================
name                                       type      meaning
========================================== ========= ==============================================
``trio_pool_connections_created_total``    counter   connections opened
``trio_pool_connections_closed_total``     counter   connections closed, for any reason
``trio_pool_connections_evicted_total``    counter   of those, closed by the pool itself
``trio_pool_hits_total``                   counter   acquires served by a pooled connection
``trio_pool_misses_total``                 counter   acquires that opened a connection
``trio_pool_connect_failures_total``       counter   connects that failed or timed out
``trio_pool_acquire_timeouts_total``       counter   acquires that raised ``PoolExhausted``
``trio_pool_waiters_rejected_total``       counter   acquires refused: ``max_waiters`` reached
``trio_pool_tls_handshakes_total``         counter   TLS handshakes completed
``trio_pool_tls_resumptions_total``        counter   of those, resumed sessions
``trio_pool_idle_connections``             gauge     connections idle in the pool
``trio_pool_active_connections``           gauge     connections in use
``trio_pool_waiting_tasks``                gauge     tasks waiting for a connection
``trio_pool_connecting``                   gauge     connects in flight
``trio_pool_http2_connections``            gauge     open HTTP/2 (multiplexed) connections
``trio_pool_http2_streams``                gauge     HTTP/2 streams in flight
``trio_pool_address_connections``          gauge     connections per address of a host name
                                                     (label ``address``: ``ip:port``)
``trio_pool_acquire_wait_seconds``         histogram time a served acquire waited in line
========================================== ========= ==============================================

The histogram counts only acquires that had to wait (the pool was at ``max_size`` or
``max_total``) and were served, from the moment the collector was made; acquires served at
once take no time in line and are not observed. Its ``_count`` and ``_sum`` equal the
growth of :attr:`~trio_pool.PoolStatistics.acquire_wait_count` and
:attr:`~trio_pool.PoolStatistics.acquire_wait_seconds` since then.

A host whose state the pool dropped (unused for ``max_idle_time`` with ``min_size=0``)
stops being exported; if it comes back its counters start again from zero, which
Prometheus treats as a counter reset.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Final

from ._events import PoolEvent, Waited
from ._pool import ConnectionPool
from ._stats import PoolStatistics

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["DEFAULT_BUCKETS", "PrometheusCollector"]

#: Upper bounds (seconds) of the acquire-wait histogram's buckets, ``+Inf`` added.
DEFAULT_BUCKETS: Final = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

_LABELS: Final = ("host", "port")

# (metric suffix, PoolStatistics field, help)
_COUNTERS: Final = (
    ("connections_created", "connections_created", "Connections opened."),
    ("connections_closed", "connections_closed", "Connections closed, for any reason."),
    (
        "connections_evicted",
        "connections_evicted",
        "Connections closed by the pool itself (idle timeout, lifetime, health, cap).",
    ),
    ("hits", "pool_hits", "Acquires served by a pooled connection."),
    ("misses", "pool_misses", "Acquires that opened a new connection."),
    ("connect_failures", "connect_failures", "Connects that failed or timed out."),
    ("acquire_timeouts", "acquire_timeouts", "Acquires that raised PoolExhausted."),
    (
        "waiters_rejected",
        "waiters_rejected",
        "Acquires refused at once because max_waiters tasks were waiting.",
    ),
    ("tls_handshakes", "tls_handshakes", "TLS handshakes completed."),
    ("tls_resumptions", "tls_resumptions", "TLS handshakes that resumed a saved session."),
)
_GAUGES: Final = (
    ("idle_connections", "idle_connections", "Connections idle in the pool."),
    ("active_connections", "active_connections", "Connections handed out and not returned."),
    ("waiting_tasks", "tasks_waiting", "Tasks waiting for a connection."),
    ("connecting", "connecting", "Connects in flight."),
    ("http2_connections", "http2_connections", "Open HTTP/2 (multiplexed) connections."),
    ("http2_streams", "http2_streams", "HTTP/2 streams in flight."),
)


def _import_core() -> Any:
    try:
        from prometheus_client import core
    except ImportError as exc:
        raise ImportError(
            "trio_pool.metrics needs prometheus_client: pip install 'trio-pool[prometheus]'"
        ) from exc
    return core


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))


class _WaitHistogram:
    """Bucket counts and sum of the waits of one ``(host, port)``."""

    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size  # per bucket, not cumulative; the last one is +Inf
        self.total = 0.0


class PrometheusCollector:
    """A Prometheus collector exporting one pool's per-host statistics.

    Register it with a :class:`prometheus_client.CollectorRegistry` (or the default
    ``prometheus_client.REGISTRY``). It keeps no copy of the pool's counters: each
    scrape reads them; only the acquire-wait histogram's buckets are its own.

    Args:
        pool: The pool to export.
        namespace: Prefix of every metric name. Give each pool registered in the same
            registry its own.
        buckets: Upper bounds in seconds of the acquire-wait histogram's buckets,
            ascending (``+Inf`` is always added).

    Raises:
        TypeError: ``pool`` is not a :class:`~trio_pool.ConnectionPool`.
        ValueError: ``namespace`` is empty, or ``buckets`` is empty or not ascending.
        ImportError: prometheus_client is not installed.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        namespace: str = "trio_pool",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        if not isinstance(pool, ConnectionPool):
            raise TypeError(f"pool must be a trio_pool.ConnectionPool, not {type(pool).__name__}")
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"namespace must be a non-empty str, got {namespace!r}")
        bounds = [float(b) for b in buckets if b != math.inf]
        if not bounds or any(a >= b for a, b in pairwise(bounds)):
            raise ValueError(f"buckets must be ascending and not empty, got {buckets!r}")
        _import_core()
        self._pool = pool
        self._namespace = namespace
        self._bounds = bounds
        self._waits: dict[tuple[str, int], _WaitHistogram] = {}
        pool.listen(self._observe)

    def _observe(self, event: PoolEvent) -> None:
        """The pool's event listener: a :class:`~trio_pool.Waited` (a task that waited
        in line got its turn) is observed in the acquire-wait histogram."""
        if type(event) is not Waited:
            return
        key = event.key
        seconds = event.waited
        histogram = self._waits.get((key.host, key.port))
        if histogram is None:
            histogram = self._waits[(key.host, key.port)] = _WaitHistogram(len(self._bounds) + 1)
        histogram.counts[bisect_left(self._bounds, seconds)] += 1
        histogram.total += seconds

    def describe(self) -> list[Metric]:
        """The metric families without samples (lets a registry check for clashes)."""
        return list(self._families({}, scrape=False))

    def collect(self) -> list[Metric]:
        """The metric families with one sample per ``host:port`` (read in one pass)."""
        return list(self._families(self._pool.host_statistics(), scrape=True))

    def _families(
        self, by_host: dict[tuple[str, int], PoolStatistics], *, scrape: bool
    ) -> Iterator[Metric]:
        core = _import_core()
        prefix = self._namespace + "_"
        labelled = [((host, str(port)), stats) for (host, port), stats in by_host.items()]
        for suffix, field, documentation in _COUNTERS:
            counter = core.CounterMetricFamily(prefix + suffix, documentation, labels=_LABELS)
            for labels, stats in labelled:
                counter.add_metric(labels, getattr(stats, field))
            yield counter
        for suffix, field, documentation in _GAUGES:
            gauge = core.GaugeMetricFamily(prefix + suffix, documentation, labels=_LABELS)
            for labels, stats in labelled:
                gauge.add_metric(labels, getattr(stats, field))
            yield gauge
        per_address = core.GaugeMetricFamily(
            prefix + "address_connections",
            "Connections open or connecting per address of a host name the pool resolves.",
            labels=(*_LABELS, "address"),
        )
        for labels, stats in labelled:
            for address, count in stats.address_connections:
                per_address.add_metric((*labels, address), count)
        yield per_address
        histogram = core.HistogramMetricFamily(
            prefix + "acquire_wait_seconds",
            "Seconds a served acquire waited in line for a connection.",
            labels=_LABELS,
        )
        if scrape:  # every host the pool holds, and every one that ever waited
            no_waits = _WaitHistogram(len(self._bounds) + 1)
            for host, port in sorted(by_host.keys() | self._waits.keys()):
                waits = self._waits.get((host, port), no_waits)
                cumulative = 0
                buckets: list[tuple[str, float]] = []
                for bound, count in zip([*self._bounds, math.inf], waits.counts, strict=True):
                    cumulative += count
                    buckets.append((_bucket_label(bound), cumulative))
                histogram.add_metric((host, str(port)), buckets, waits.total)
        yield histogram
