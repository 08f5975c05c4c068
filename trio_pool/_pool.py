"""The pool's I/O layer: acquire, connect, close, and the maintenance task.

Every decision is taken by :class:`~trio_pool._state.PoolState` in synchronous code;
this module only waits, connects and closes around those decisions.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import ssl
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Final, cast

import trio

from ._config import PoolConfig, default_config
from ._connection import ConnectionState, PooledConnection, _socket_of
from ._describe import caller_stack, describe_key
from ._exceptions import ConnectError, ConnectTimeout, PoolClosed, PoolExhausted
from ._proxy import Proxy
from ._redact import redact_url
from ._shared import Multiplexer, OpenMultiplexer, SharedConnection, StreamLease
from ._state import (
    CONNECT,
    HANDOFF,
    Grant,
    KeyState,
    PendingConnect,
    PoolKey,
    PoolState,
    Taken,
    Waiter,
)
from ._stats import PoolStatistics
from ._tls import close_tls, default_context
from ._trace import Trace, connect_trace, traced
from ._tunnel import Phase, open_transport, route_of
from ._util import AsyncWithOnly, NoPublicConstructor, check_int, check_timeout

__all__ = ["ConnectionPool", "open_pool"]

logger: Final = logging.getLogger("trio_pool")

IN_USE: Final = ConnectionState.IN_USE
IDLE: Final = ConnectionState.IDLE
CLOSED: Final = ConnectionState.CLOSED
# The two halves of a checkpoint, bound once for the hot path (see ConnectionPool._acquire).
_checkpoint_if_cancelled: Final = trio.lowlevel.checkpoint_if_cancelled
_cancel_shielded_checkpoint: Final = trio.lowlevel.cancel_shielded_checkpoint
_current_task: Final = trio.lowlevel.current_task
_current_trio_token: Final = trio.lowlevel.current_trio_token
_get_ident: Final = threading.get_ident
_new_context: Final = object.__new__
# trio counts each task's schedule points in a private attribute; without it (a future
# trio), the probe at hand-out always runs (see ConnectionPool._vouch).
_COUNTS_STEPS: Final = hasattr(trio.lowlevel.Task, "_schedule_points")
_TLS_CLOSE_TIMEOUT: Final = 0.5
_MAX_PASS_FAILURES: Final = 5
_MAX_REFILL_BACKOFF: Final = 30.0
_WARNING_KINDS: Final = ("hit_rate", "busy")
# Callers' contexts that offered h2 for a key of any pool: set back to http/1.1 before
# each handshake of a key that does not multiplex.
_ALPN_SET: Final[weakref.WeakSet[ssl.SSLContext]] = weakref.WeakSet()
_MIN_HIT_RATE_SAMPLE: Final = 20  # acquires in an interval before its hit rate is judged


def _is_cancellation(exc: BaseException) -> bool:
    """Cancelled, or a group of nothing but Cancelled (happy eyeballs raises those)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def _single_attempt(exc: OSError) -> OSError:
    """The error to chain for a failed connect: when :func:`trio.open_tcp_stream` made a
    single attempt, that attempt's own error ("Connection refused") rather than its
    "all attempts failed" wrapper around a group of one, so a traceback shows the cause
    once."""
    group = exc.__cause__
    if isinstance(group, ExceptionGroup) and len(group.exceptions) == 1:
        (attempt,) = group.exceptions
        if isinstance(attempt, OSError):
            return attempt
    return exc


def _root_causes(exc: BaseException) -> str:
    """What an ``OSError`` from :func:`trio.open_tcp_stream` really says: the errors of
    its attempts (held in ``__cause__``, an exception group), ``strerror`` first, so a
    message reads "Connection refused" rather than "all attempts to connect failed"."""
    reasons: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 64:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
            continue
        if current.__cause__ is not None:
            todo.append(current.__cause__)
            continue
        if isinstance(current, OSError) and current.errno is not None:
            reason = os.strerror(current.errno)
            if current.errno < 0 or reason.startswith("Unknown error"):
                reason = str(current)
        else:
            reason = str(current) or type(current).__name__
        if reason not in reasons:
            reasons.append(reason)
    return "; ".join(reasons) or str(exc)


def make_key(
    host: object,
    port: object,
    tls: object,
    sni: object,
    verify_cert: object,
    ssl_context: object,
    proxy: object = None,
    uds: object = None,
    forward: object = False,
) -> PoolKey:
    """Validate acquire arguments and build their :class:`PoolKey`.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range (the message names it).
    """
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if not host or host != host.strip():
        raise ValueError(f"host must be a non-empty name or address, got {redact_url(host)!r}")
    if "://" in host or "/" in host:
        raise ValueError(
            f"host must be a host name or address, not a URL: got {redact_url(host)!r}"
            " (pass the URL's host and port separately)"
        )
    if ":" in host:
        _check_colon_host(host)
    port = check_int("port", port)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port!r}")
    if not isinstance(tls, bool):
        raise TypeError(f"tls must be a bool, not {type(tls).__name__}")
    if not isinstance(verify_cert, bool):
        raise TypeError(f"verify_cert must be a bool, not {type(verify_cert).__name__}")
    if sni is not None:
        if not isinstance(sni, str):
            raise TypeError(f"sni must be a str or None, not {type(sni).__name__}")
        if not sni:
            raise ValueError(f"sni must be a non-empty str or None, got {sni!r}")
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError(f"ssl_context must be an ssl.SSLContext, not {type(ssl_context).__name__}")
    if tls and ssl_context is not None and not verify_cert:
        # The context's own verify_mode/check_hostname decide; a flag it would silently
        # ignore is an error, not a way to turn checks off.
        raise ValueError(
            "verify_cert=False cannot be combined with ssl_context: configure the"
            " context instead (check_hostname=False, verify_mode=ssl.CERT_NONE)"
        )
    if not tls:
        # TLS settings without tls=True meant TLS: never a silent plain connection.
        tls_settings = (
            ("sni", sni is not None),
            ("verify_cert=False", not verify_cert),
            ("ssl_context", ssl_context is not None),
        )
        given = [name for name, set_ in tls_settings if set_]
        if given:
            raise ValueError(
                f"{', '.join(given)} given without tls=True: pass tls=True for a TLS"
                " connection (these settings mean nothing on plain TCP)"
            )
    route = _check_route(host, port, tls, proxy, uds, forward)
    if not tls:
        # Plain TCP: the TLS arguments mean nothing, and must not split the key.
        return PoolKey(host, port, False, None, True, None, *route)
    return PoolKey(
        host,
        port,
        True,
        sni if sni is not None else host,
        verify_cert,
        ssl_context,
        *route,
    )


def _check_colon_host(host: str) -> None:
    """A host with a ``:`` is an IPv6 literal, or a mistake (``host:port``, brackets).

    The error is raised outside the ``except`` block: ipaddress's own message quotes
    the host, which may hold a password, and would stay behind as ``__context__``.
    """
    shown = redact_url(host)
    if host.startswith("[") and host.endswith("]"):
        raise ValueError(
            f"host must be an IPv6 address without brackets: got {shown!r}"
            f" (pass {redact_url(host[1:-1])!r})"
        )
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        pass
    else:
        return
    raise ValueError(
        f"host must be a host name or address without a port: got {shown!r}"
        " (pass the port separately)"
    )


def _check_route(
    host: object, port: object, tls: object, proxy: object, uds: object, forward: object
) -> tuple[Proxy | None, str | None, bool]:
    """Check the proxy, Unix-socket and forwarding arguments of :func:`make_key`."""
    if proxy is not None and not isinstance(proxy, Proxy):
        raise TypeError(
            f"proxy must be a trio_pool.Proxy or None, not {type(proxy).__name__}"
            " (parse a URL with trio_pool.Proxy(url))"
        )
    if uds is not None:
        if not isinstance(uds, str):
            raise TypeError(
                f"uds must be a str path or None, not {type(uds).__name__}"
                + (" (pass str(path))" if isinstance(uds, os.PathLike) else "")
            )
        if not uds or "\x00" in uds[1:]:
            raise ValueError(f"uds must be a non-empty path without NUL bytes, got {uds!r}")
        if proxy is not None:
            raise ValueError("proxy and uds exclude each other: a connection takes one route")
    if not isinstance(forward, bool):
        raise TypeError(f"forward must be a bool, not {type(forward).__name__}")
    if forward:
        if not isinstance(proxy, Proxy) or proxy.is_socks:
            raise ValueError("forward=True needs an http:// proxy (requests are sent to it)")
        if tls:
            raise ValueError("forward=True connects to the proxy in plain TCP: tls must be False")
        if (host, port) != (proxy.host, proxy.port):
            raise ValueError(
                f"forward=True connects to the proxy itself: host and port must be"
                f" {proxy.host!r} and {proxy.port}, got {host!r} and {port!r}"
            )
    return proxy, uds, forward


class ConnectionPool(metaclass=NoPublicConstructor):
    """Per-host pools of TCP and TLS connections, scoped to a nursery.

    Get one from :func:`open_pool`. Connections are keyed by host, port and TLS
    settings (:class:`~trio_pool.PoolKey`); each key holds at most ``max_size``
    connections, idle and in use together.
    """

    def __init__(self, config: PoolConfig, nursery: trio.Nursery) -> None:
        self._config = config
        self._nursery = nursery
        # trio.current_time() without its run-context lookups, for the hot path: this
        # run's clock (a MockClock in tests), read directly. A pool lives in one run.
        self._now: Callable[[], float] = trio.lowlevel.current_clock().current_time
        # The run the pool belongs to, and its thread: every acquire checks that it is
        # in it (see _check_run). _thread is None once open_pool's block has ended.
        self._token = trio.lowlevel.current_trio_token()
        self._thread: int | None = _get_ident()
        self._state = PoolState(
            self,
            config,
            self._close_stream,
            now=self._now,
            current_task=_current_task,
            wake=trio.lowlevel.reschedule,
            wake_by=self._wake_by,
            start_connect=self._start_connect,
        )
        self._aliases: dict[tuple[object, ...], KeyState] = {}
        self._contexts: dict[bool, ssl.SSLContext] = {}
        self._h2_contexts: dict[bool, ssl.SSLContext] = {}
        self._maintenance_scope: trio.CancelScope | None = None
        self._background: trio.Nursery | None = None
        self._warned: dict[tuple[PoolKey, str], float] = {}
        self._sleep_scope: trio.CancelScope | None = None
        self._next_refill = math.inf
        self._leaks_reported: set[tuple[int, int]] = set()
        self._fresh: PooledConnection | None = None
        self._fresh_task: trio.lowlevel.Task | None = None
        self._fresh_points = -1

    def __repr__(self) -> str:
        s = self._state
        return f"<ConnectionPool keys={len(s.keys)} total={s.total}{' closed' if s.closed else ''}>"

    @property
    def config(self) -> PoolConfig:
        """The pool's :class:`~trio_pool.PoolConfig`."""
        return self._config

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called (or :func:`open_pool` exited)."""
        return self._state.closed

    # -- the run the pool belongs to ---------------------------------------------

    def _foreign(self, token: trio.lowlevel.TrioToken | None) -> RuntimeError:
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

    def _check_run(self) -> None:
        """Raise :meth:`_foreign`'s error unless called from the pool's own run.

        :func:`trio.lowlevel.current_trio_token` costs ~0.15 µs, 2% of a pooled
        acquire and release (~8 µs), so the acquire paths only compare the thread
        (``if _get_ident() != pool._thread: pool._check_run()``, ~0.05 µs) and come
        here when it differs: another thread (another run, asyncio, no loop), or the
        pool's block has ended (then another run of this thread, or none). Another
        run in the same thread while the pool's block is open cannot exist: trio runs
        do not nest. Key lookups (new keys) and the slower entry points call it
        directly. ``release`` and ``discard`` do not check: a connection comes only
        from a checked acquire.
        """
        try:
            token: trio.lowlevel.TrioToken | None = _current_trio_token()
        except RuntimeError:
            token = None
        if token is not self._token:
            raise self._foreign(token)

    # -- keys ------------------------------------------------------------------

    def _lookup(
        self,
        host: str,
        port: int,
        tls: bool = False,
        sni: str | None = None,
        verify_cert: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        proxy: Proxy | None = None,
        uds: str | None = None,
        forward: bool = False,
    ) -> KeyState:
        # The cache compares by equality, and 80.0 == 80, 0 == False: values of a wrong
        # type must reach make_key's checks even when an equal valid key is cached.
        args: tuple[object, ...]
        if (
            tls is False
            and sni is None
            and verify_cert is True
            and ssl_context is None
            and proxy is None
            and uds is None
            and forward is False
        ):
            # Plain TCP with every default, the common case: a shorter tuple to build
            # and hash (it cannot equal one of the long ones, and _lookup(*it) works).
            args = (host, port)
            if type(port) is int:
                try:
                    return self._aliases[args]
                except (KeyError, TypeError):
                    pass
        else:
            args = (host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward)
            if (
                type(port) is int
                and type(tls) is bool
                and type(verify_cert) is bool
                and type(forward) is bool
                and (uds is None or type(uds) is str)
            ):
                try:
                    return self._aliases[args]
                except (KeyError, TypeError):
                    pass
        key = make_key(host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward)
        self._check_run()  # trio.current_time() would fail deep inside trio
        state = self._state.key_state(key, trio.current_time())
        if args not in self._aliases:  # (int and str subclasses come here every time)
            self._aliases[args] = state
            state.aliases.append(args)
        return state

    def _lookup_http(
        self,
        host: str,
        port: int,
        tls: bool = False,
        sni: str | None = None,
        verify_cert: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        proxy: Proxy | None = None,
        uds: str | None = None,
        forward: bool = False,
    ) -> KeyState:
        """The key of an HTTP/1.1 client's connections (``HTTPClient``,
        ``PoolTransport``): the key of the same arguments, in a namespace of its own
        (``PoolKey.http``), so that a connection a raw borrower gave back mid-answer
        never reaches an HTTP client, nor the other way round. The client has checked
        the arguments' types."""
        args = ("http", host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward)
        try:
            return self._aliases[args]
        except KeyError:
            pass
        key = make_key(host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward)
        self._check_run()
        state = self._state.key_state(key._replace(http=True), trio.current_time())
        self._aliases[args] = state
        state.aliases.append(args)
        return state

    # A release probes the connection it pools (one poll(2)); so does the hand-out that
    # takes it again. When the same task takes it back in the same step (no schedule
    # point since: nothing else in this process ran, typically a loop of requests) and
    # within a millisecond, the release's probe stands and the hand-out skips its own.

    def _vouch(self, conn: PooledConnection) -> None:
        """After a release: remember ``conn``, if it was pooled, and the task's step."""
        if conn._state is IDLE and _COUNTS_STEPS:
            try:
                task = _current_task()
            except RuntimeError:  # released from outside any task: nothing to vouch for
                return
            self._fresh = conn
            self._fresh_task = task
            self._fresh_points = task._schedule_points

    def _vouched(self) -> PooledConnection | None:
        """Before a take: the connection whose release probe still stands, if any (and
        forget it, and the releasing task, which must not be kept alive)."""
        fresh = self._fresh
        if fresh is not None:
            releaser, self._fresh, self._fresh_task = self._fresh_task, None, None
            task = _current_task()
            if task is not releaser or task._schedule_points != self._fresh_points:
                return None
        return fresh

    # -- acquire -------------------------------------------------------------------

    async def acquire(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        sni: str | None = None,
        verify_cert: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float | None = None,
        proxy: Proxy | None = None,
        uds: str | None = None,
        forward: bool = False,
        connect_timeout: float | None = None,
    ) -> PooledConnection:
        """Borrow a connection to ``host:port``.

        A healthy idle connection of the same key is reused (a hit, warmest first). On a
        miss with room in the key, a connect starts in the pool's nursery (at most
        ``max_connecting`` at a time per key) and the task is served by whichever comes
        first: a connection released for its key, or a connect; a connect that is not
        needed any more goes to the next waiter or to idle, and a connect failure
        reaches the task as :class:`~trio_pool.ConnectError`. When the key is at
        ``max_size`` (or the pool at ``max_total``), the task waits in FIFO order for a
        connection to be released or discarded (at most ``max_waiters`` wait). Give the
        connection back with :meth:`release` or :meth:`discard`, or use
        :meth:`connection`.

        Cancellation at any point leaks nothing: no slot, no socket, no place in line.

        Args:
            host: Host name or address, without a port (``ValueError``); an IPv6
                address without brackets (``"::1"``).
            port: TCP port, 1-65535.
            tls: Open a :class:`trio.SSLStream` instead of plain TCP. ``sni``,
                ``verify_cert=False`` or ``ssl_context`` without it raise ``ValueError``.
            sni: Server name for TLS (SNI and certificate check); defaults to ``host``.
            verify_cert: Check the certificate and host name. ``False`` uses a separate
                context without checks (its own key); it cannot be combined with
                ``ssl_context``, whose own settings apply (``ValueError``).
            ssl_context: The :class:`ssl.SSLContext` to use; connections made with it
                are never shared with other contexts.
            timeout: Longest wait in line, overriding ``acquire_timeout``; ``0`` fails
                fast (a miss then connects in the calling task, without hand-off). A
                task waiting for a connect started on its behalf is bounded by the
                connect timeout instead.
            proxy: Open the connection through this :class:`~trio_pool.Proxy`: a
                ``CONNECT`` tunnel (``http://``) or a SOCKS5 ``CONNECT`` to
                ``host:port``, with TLS to ``host`` inside it if ``tls``. The proxy is
                part of the key: connections through other proxies, or none, are never
                shared.
            uds: Connect to this Unix socket path (a ``str``; a leading NUL names a
                Linux abstract socket) instead of ``host:port``, which still name the
                peer (key, TLS server name). Pooled per path; cannot be combined with
                ``proxy``.
            forward: With an ``http://`` ``proxy``: connect to the proxy itself, for
                plain-http requests sent to it in absolute form, pooled per proxy.
                ``host`` and ``port`` must then be the proxy's, and ``tls`` False.
            connect_timeout: Limit for a connect this acquire starts (TCP connect plus
                TLS handshake), overriding ``connection_timeout``; a hand-off connect
                started on this task's behalf keeps it even if another task gets the
                connection. With ``0`` no connect can succeed: only an idle or released
                connection serves the call.

        Returns:
            The borrowed :class:`~trio_pool.PooledConnection`.

        Raises:
            PoolExhausted: No connection became free within the timeout, or
                ``max_waiters`` tasks wait already.
            ProxyError: The proxy refused or broke the tunnel (``status`` holds the
                HTTP status of a refused ``CONNECT``).
            ConnectError: Connecting failed (the cause is chained).
            ConnectTimeout: Connecting took longer than ``connection_timeout`` (or
                ``connect_timeout``).
            PoolClosed: The pool is closed, or closed while waiting.
            ValueError: A bad argument (before any I/O).
            TypeError: An argument of the wrong type (before any I/O).
        """
        if timeout is not None:
            check_timeout("timeout", timeout)
        if connect_timeout is not None:
            check_timeout("connect_timeout", connect_timeout)
        state = self._lookup(host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward)
        if _get_ident() != self._thread:
            self._check_run()
        # _acquire, with its hit path inlined: one coroutine frame less per hit (and per
        # resumption of its checkpoint). ConnectionContext.__aenter__ does the same.
        await _checkpoint_if_cancelled()
        now = self._now()
        taken = self._state.take(state, now, self._vouched())
        if type(taken) is PooledConnection:  # a hit
            await _cancel_shielded_checkpoint()
            conn = taken
        else:
            conn = await self._acquire_miss(state, taken, now, timeout, False, connect_timeout)
        if self._state.borrowed is not None:
            conn.acquired_by = caller_stack()
        return conn

    async def acquire_tls(
        self,
        host: str,
        port: int,
        *,
        sni: str | None = None,
        verify_cert: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float | None = None,
        proxy: Proxy | None = None,
        uds: str | None = None,
        forward: bool = False,
        connect_timeout: float | None = None,
    ) -> PooledConnection:
        """:meth:`acquire` with ``tls=True``."""
        return await self.acquire(
            host,
            port,
            tls=True,
            sni=sni,
            verify_cert=verify_cert,
            ssl_context=ssl_context,
            timeout=timeout,
            proxy=proxy,
            uds=uds,
            forward=forward,
            connect_timeout=connect_timeout,
        )

    async def acquire_new(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        sni: str | None = None,
        verify_cert: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float | None = None,
        proxy: Proxy | None = None,
        uds: str | None = None,
        forward: bool = False,
        connect_timeout: float | None = None,
    ) -> PooledConnection:
        """Like :meth:`acquire`, but always open a new connection (in the calling task,
        within ``connect_timeout`` if given, else ``connection_timeout``).

        It still counts toward ``max_size``: with the key full, its coldest idle
        connection is closed to make room; with none idle, the task waits in line.
        """
        if timeout is not None:
            check_timeout("timeout", timeout)
        if connect_timeout is not None:
            check_timeout("connect_timeout", connect_timeout)
        state = self._lookup(host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward)
        return await self._acquire(state, timeout, True, connect_timeout)

    async def _acquire(
        self,
        state: KeyState,
        timeout: float | None,
        new: bool,
        connect_timeout: float | None = None,
    ) -> PooledConnection:
        """Acquire on ``state``'s key: :meth:`acquire_new` (``new``), and the HTTP
        client's acquires (keys of :meth:`_lookup_http`)."""
        if _get_ident() != self._thread:
            self._check_run()
        await _checkpoint_if_cancelled()
        now = self._now()
        taken = self._state.take(state, now, self._vouched(), new=new)
        if type(taken) is PooledConnection:  # a hit
            await _cancel_shielded_checkpoint()
            conn = taken
        else:
            conn = await self._acquire_miss(state, taken, now, timeout, new, connect_timeout)
        if self._state.borrowed is not None:
            conn.acquired_by = caller_stack()
        return conn

    def _lookup_multiplexed(
        self,
        host: str,
        port: int,
        tls: bool,
        sni: str | None,
        verify_cert: bool,
        ssl_context: ssl.SSLContext | None,
        uds: str | None,
        mode: str,
        opener: OpenMultiplexer,
    ) -> KeyState:
        """The key of connections that may be multiplexed: ``mode`` ``"h2"`` (ALPN,
        TLS only) or ``"h2c"`` (prior knowledge); ``opener`` starts the protocol."""
        args = ("multiplexed", host, port, tls, sni, verify_cert, ssl_context, uds, mode)
        try:
            state = self._aliases[args]
        except KeyError:
            if not tls:  # h2c: the client's TLS settings are for its https requests
                sni, verify_cert, ssl_context = None, True, None
            key = make_key(host, port, tls, sni, verify_cert, ssl_context, None, uds)
            key = key._replace(http2=mode)
            self._check_run()
            state = self._state.key_state(key, trio.current_time())
            self._aliases[args] = state
            state.aliases.append(args)
        state.open_shared = opener
        return state

    async def _acquire_lease(
        self, state: KeyState, timeout: float | None, connect_timeout: float | None
    ) -> PooledConnection | StreamLease:
        """Acquire on a key that may be multiplexed: a stream of a shared connection
        (a :class:`StreamLease`, released by its stream's end or ``release()``), or a
        whole connection when the peer chose HTTP/1.1."""
        if timeout is not None:
            check_timeout("timeout", timeout)
        if connect_timeout is not None:
            check_timeout("connect_timeout", connect_timeout)
        self._check_run()
        await trio.lowlevel.checkpoint_if_cancelled()
        now = trio.current_time()
        taken = self._state.take(state, now)
        if taken is None or taken is HANDOFF or taken is CONNECT:
            grant: Grant = CONNECT
            if taken is not CONNECT:
                grant = await self._wait(
                    state, now, timeout, False, connect_timeout, taken is HANDOFF
                )
            if grant is not CONNECT:
                return cast("PooledConnection | StreamLease", grant)
            conn = await self._connect(state, timeout=connect_timeout)
            if type(conn) is SharedConnection:
                lease = conn.first
                if lease is None:  # it closed at once, or its peer allows no stream
                    raise ConnectError(
                        f"the new connection to {state.key.host}:{state.key.port} has no"
                        " stream to lend (it closed, or the peer allows none)"
                    )
                conn.first = None
                return lease
            return conn
        await trio.lowlevel.cancel_shielded_checkpoint()
        return cast("PooledConnection | StreamLease", taken)

    async def _acquire_miss(
        self,
        state: KeyState,
        taken: Taken | None,
        now: float,
        timeout: float | None,
        new: bool,
        connect_timeout: float | None,
    ) -> PooledConnection:
        """The rest of :meth:`_acquire` when ``take`` had no idle connection for it."""
        grant: Grant = CONNECT
        if taken is not CONNECT:
            grant = await self._wait(state, now, timeout, new, connect_timeout, taken is HANDOFF)
        if isinstance(grant, PooledConnection):
            return grant
        return await self._connect(state, timeout=connect_timeout)

    async def _wait(
        self,
        state: KeyState,
        now: float,
        timeout: float | None,
        new: bool,
        connect_timeout: float | None,
        handoff: bool,
    ) -> Grant:
        """Wait in line: for a free slot or connection (the key or pool is full), or as
        a hand-off waiter for whichever comes first, a released connection of the key
        or a connect started for it."""
        if timeout is None:
            timeout = self._config.acquire_timeout
        if handoff:
            if timeout is not None and timeout <= 0:
                # Fail-fast callers keep the plain miss: they connect themselves.
                self._state.connect_now(state)
                return CONNECT
        else:
            max_waiters = self._config.max_waiters
            if max_waiters is not None and state.line >= max_waiters:
                self._state.reject(state)
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise PoolExhausted(
                    f"the line for {state.key.host}:{state.key.port} is full:"
                    f" {state.line} tasks wait already (max_waiters={max_waiters})"
                )
            if timeout is not None and timeout <= 0:
                state.acquire_timeouts += 1
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise PoolExhausted(f"no connection to {state.key.host}:{state.key.port} is free")
        scope = trio.CancelScope(deadline=math.inf if timeout is None else now + timeout)
        waiter = Waiter(
            state, now, new, handoff=handoff, connect_timeout=connect_timeout, scope=scope
        )
        self._state.enqueue(waiter, now)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._state.cancel_wait(waiter, timed_out=False)
            return trio.lowlevel.Abort.SUCCEEDED

        with scope:
            grant: Grant = await trio.lowlevel.wait_task_rescheduled(abort)
            return grant
        state.acquire_timeouts += 1
        raise PoolExhausted(
            f"no connection to {state.key.host}:{state.key.port} became free within {timeout} s"
        )

    # -- connect --------------------------------------------------------------------

    def _start_connect(self, state: KeyState, pending: PendingConnect) -> None:
        """The state machine's hook: run a hand-off connect in the pool's nursery."""
        assert self._background is not None
        try:
            self._background.start_soon(self._handoff_connect, state, pending)
        except RuntimeError:
            # The maintenance task failed for good and took its nursery with it; the
            # pool's own nursery outlives it until open_pool closes the pool.
            self._nursery.start_soon(self._handoff_connect, state, pending)

    async def _handoff_connect(self, state: KeyState, pending: PendingConnect) -> None:
        """A hand-off connect: it outlives the task it was started for, and the state
        machine gives its connection (or its error) to whoever waits for it."""
        try:
            await self._connect(state, pending=pending, timeout=pending.timeout)
        except Exception as exc:
            if not isinstance(exc, ConnectError):  # handed to the waiters; log the unusual
                logger.warning(
                    "trio_pool: connecting to %s:%d failed unexpectedly",
                    state.key.host,
                    state.key.port,
                    exc_info=True,
                )

    async def _connect(
        self,
        state: KeyState,
        *,
        to_idle: bool = False,
        pending: PendingConnect | None = None,
        timeout: float | None = None,
    ) -> PooledConnection:
        """Open a connection in a slot already reserved for ``state``; whatever happens,
        the slot is either filled or given back before this returns or raises.

        Args:
            to_idle: Pool it (prewarm, refill) rather than return it in use.
            pending: A hand-off connect: the state machine decides who gets it.
            timeout: Limit for the connect, overriding ``connection_timeout``.
        """
        key = state.key
        if timeout is None:
            timeout = self._config.connection_timeout
        tcp: trio.SocketStream | None = None
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
        shared: Multiplexer | None = None
        phase = Phase()
        try:
            try:
                with trio.move_on_after(timeout) as scope:
                    trace = connect_trace.get()
                    if trace is None:
                        tcp = await open_transport(key, phase)
                    else:
                        tcp = await self._traced_transport(trace, key, phase, timeout)
                    stream = tcp
                    if key.tls:
                        tunnelled = key.proxy is not None
                        phase.name = (
                            "TLS handshake with the origin" if tunnelled else "TLS handshake"
                        )
                        if trace is None:
                            stream = await self._handshake(state, tcp)
                        else:
                            stream = await self._traced_handshake(trace, state, tcp, timeout)
                    opener = state.open_shared if key.http2 is not None else None
                    if opener is not None and (
                        key.http2 == "h2c"
                        or (
                            isinstance(stream, trio.SSLStream)
                            and stream.selected_alpn_protocol() == "h2"
                        )
                    ):
                        phase.name = "HTTP/2 SETTINGS exchange"
                        shared = await opener(stream, self._nursery)
                if scope.cancelled_caught:
                    raise ConnectTimeout(
                        f"connecting to {route_of(key)} took longer than {timeout} s"
                        f" (connect timeout, during the {phase.name})"
                    )
            except BaseException as exc:
                if tcp is not None:
                    tcp.socket.close()
                if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
                    raise ConnectError(
                        f"TLS handshake with {route_of(key)} failed: {exc.__cause__}"
                    ) from exc.__cause__
                if isinstance(exc, OSError) and not isinstance(exc, ConnectError):
                    raise ConnectError(
                        f"cannot connect to {key.host}:{key.port}: {_root_causes(exc)}"
                    ) from _single_attempt(exc)
                raise
        except BaseException as exc:
            # Synchronous from here to the raise: the slot is given back in the same step.
            cancelled = _is_cancellation(exc)
            self._state.connect_failed(
                state,
                failed=not cancelled,
                error=None if cancelled else exc,
                pending=pending,
            )
            raise
        return self._state.connected(
            state, stream, trio.current_time(), to_idle=to_idle, pending=pending, shared=shared
        )

    @staticmethod
    async def _traced_transport(
        trace: Trace, key: PoolKey, phase: Phase, timeout: float | None
    ) -> trio.SocketStream:
        """:func:`open_transport` reporting ``connection.connect_tcp.*`` (httpcore's
        names; a Unix socket reports ``connection.connect_unix_socket.*``)."""
        if key.uds is not None:
            info: dict[str, Any] = {"path": key.uds, "timeout": timeout}
            return await traced(
                trace, "connection.connect_unix_socket", info, lambda: open_transport(key, phase)
            )
        info = {
            "host": key.host,
            "port": key.port,
            "local_address": None,
            "timeout": timeout,
            "socket_options": None,
        }
        return await traced(
            trace, "connection.connect_tcp", info, lambda: open_transport(key, phase)
        )

    async def _traced_handshake(
        self, trace: Trace, state: KeyState, tcp: trio.SocketStream, timeout: float | None
    ) -> trio.SSLStream[trio.SocketStream]:
        """:meth:`_handshake` reporting ``connection.start_tls.*``."""
        key = state.key
        info = {
            "ssl_context": self._context(key),
            "server_hostname": key.server_hostname,
            "timeout": timeout,
        }
        return await traced(
            trace, "connection.start_tls", info, lambda: self._handshake(state, tcp)
        )

    def _context(self, key: PoolKey) -> ssl.SSLContext:
        if key.http2 == "h2":
            return self._h2_context(key)
        if key.ssl_context is not None:
            if key.ssl_context in _ALPN_SET:
                key.ssl_context.set_alpn_protocols(["http/1.1"])
            return key.ssl_context
        context = self._contexts.get(key.verify_cert)
        if context is None:
            context = self._contexts[key.verify_cert] = default_context(key.verify_cert)
        return context

    def _h2_context(self, key: PoolKey) -> ssl.SSLContext:
        """The context of a key offering HTTP/2: ALPN ``h2`` and ``http/1.1``.

        A caller's own context gets the ALPN list set on it (as httpcore does) right
        before the TLS object is made from it (which copies the list), and set back to
        ``http/1.1`` the same way for keys of ours that do not multiplex: the same
        context may serve both."""
        if key.ssl_context is not None:
            key.ssl_context.set_alpn_protocols(["h2", "http/1.1"])
            _ALPN_SET.add(key.ssl_context)
            return key.ssl_context
        context = self._h2_contexts.get(key.verify_cert)
        if context is None:
            context = default_context(key.verify_cert)
            context.set_alpn_protocols(["h2", "http/1.1"])
            self._h2_contexts[key.verify_cert] = context
        return context

    async def _handshake(
        self, state: KeyState, tcp: trio.SocketStream
    ) -> trio.SSLStream[trio.SocketStream]:
        key = state.key
        stream = trio.SSLStream(
            tcp, self._context(key), server_hostname=key.server_hostname, https_compatible=True
        )
        session = state.tls_session
        if session is not None:
            stream.session = session
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError:
            state.forget_session()  # never offer a session again after a TLS error
            raise
        state.tls_handshakes += 1
        if stream.session_reused:
            state.tls_resumptions += 1
        return stream

    # -- give back -------------------------------------------------------------------

    def release(self, conn: PooledConnection) -> None:
        """Give a borrowed connection back. Synchronous: never blocks, safe in ``finally``.

        The longest waiting acquirer of the same key gets it at once; otherwise it is
        pooled. It is closed instead (and its slot freed) if its stream was closed (say
        ``await conn.stream.aclose()``), it is broken, holds unread bytes, is past its
        lifetime, or the pool is closing. A connection closed with
        :meth:`PooledConnection.aclose <trio_pool.PooledConnection.aclose>` was discarded
        by that call: releasing it afterwards does nothing.

        Raises:
            TypeError: ``conn`` is not a :class:`~trio_pool.PooledConnection`.
            RuntimeError: It was already released or discarded, or is another pool's.
        """
        if type(conn) is not PooledConnection and not isinstance(conn, PooledConnection):
            raise TypeError(f"conn must be a PooledConnection, not {type(conn).__name__}")
        if conn._closed_by_user and conn._state is CLOSED:
            return
        self._state.release(conn, self._now())
        self._vouch(conn)

    def discard(self, conn: PooledConnection) -> None:
        """Close a borrowed connection for good and free its slot. Synchronous.

        ``conn.is_closed`` is True and ``connections_closed`` counts it at once; a TLS
        ``close_notify`` may still finish in the pool's nursery.

        Like :meth:`release`, it does nothing for a connection closed with
        :meth:`PooledConnection.aclose <trio_pool.PooledConnection.aclose>`.

        Raises:
            TypeError: ``conn`` is not a :class:`~trio_pool.PooledConnection`.
            RuntimeError: It was already released or discarded, or is another pool's.
        """
        if not isinstance(conn, PooledConnection):
            raise TypeError(f"conn must be a PooledConnection, not {type(conn).__name__}")
        if conn._closed_by_user and conn._state is CLOSED:
            return
        self._state.discard(conn, self._now())

    def connection(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        sni: str | None = None,
        verify_cert: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float | None = None,
        proxy: Proxy | None = None,
        uds: str | None = None,
        forward: bool = False,
        connect_timeout: float | None = None,
    ) -> ConnectionContext:
        """Borrow a connection for the body of an ``async with`` block.

        On a clean exit it is released; on any exception, ``Cancelled`` included, it is
        discarded. If the body released or discarded it already, exit does nothing.
        Arguments are those of :meth:`acquire`, and are checked right away.
        """
        if timeout is not None:
            check_timeout("timeout", timeout)
        if connect_timeout is not None:
            check_timeout("connect_timeout", connect_timeout)
        state = self._lookup(host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward)
        # ConnectionContext(...) without its __init__ frame: this runs on every request.
        context = _new_context(ConnectionContext)
        context._pool = self
        context._state = state
        context._timeout = timeout
        context._connect_timeout = connect_timeout
        context._conn = None
        context._lease = 0
        return context

    def _close_stream(self, conn: PooledConnection) -> None:
        stream = conn.stream
        if type(conn) is SharedConnection:
            try:  # the multiplexer owns the stream: GOAWAY, then close
                self._nursery.start_soon(conn.shared.aclose)
            except RuntimeError:  # the nursery is closed (and its reader task gone)
                _socket_of(stream).close()
            return
        if isinstance(stream, trio.SSLStream) and not conn._broken:
            try:
                self._nursery.start_soon(self._close_tls, stream)
            except RuntimeError:  # the nursery is closed: close abruptly
                pass
            else:
                return
        _socket_of(stream).close()

    @staticmethod
    async def _close_tls(stream: trio.SSLStream[trio.SocketStream]) -> None:
        """Send ``close_notify`` (so the peer may keep our session), briefly."""
        await close_tls(stream, _TLS_CLOSE_TIMEOUT)

    # -- prewarm --------------------------------------------------------------------

    async def prewarm(
        self,
        host: str,
        port: int,
        *,
        count: int | None = None,
        tls: bool = False,
        sni: str | None = None,
        verify_cert: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        proxy: Proxy | None = None,
        uds: str | None = None,
        forward: bool = False,
    ) -> int:
        """Open connections until the key has ``count`` idle ones (default ``min_size``).

        Connects run concurrently, never beyond ``max_size`` or ``max_total``.

        Returns:
            The number of idle connections of the key afterwards.

        Raises:
            ValueError: ``count`` is negative or above ``max_size``.
            ConnectError: A connect failed (the others still complete).
            PoolClosed: The pool is closed.
        """
        self._check_run()
        if self._state.closed:
            raise PoolClosed("the pool is closed")
        if count is None:
            count = self._config.min_size
        if not 0 <= check_int("count", count) <= self._config.max_size:
            raise ValueError(f"count must be between 0 and max_size, got {count!r}")
        state = self._lookup(host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward)
        state.last_active = trio.current_time()  # not forgotten before its connects start
        await trio.lowlevel.checkpoint_if_cancelled()
        errors: list[ConnectError] = []

        async def one() -> None:
            if not self._state.reserve(state):
                return
            try:
                await self._connect(state, to_idle=True)
            except ConnectError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(count - len(state.idle) - state.connecting):
                nursery.start_soon(one)
        if errors:
            raise errors[0]
        return len(state.idle)

    # -- statistics -------------------------------------------------------------------

    def statistics(self, host: str | None = None, port: int | None = None) -> PoolStatistics:
        """A snapshot of the pool's counters, or of one host (and port), all its keys
        together (plain and TLS, every SNI).

        Raises:
            TypeError: ``host`` is not a str or ``port`` not an int (or not ``None``).
        """
        if host is not None and not isinstance(host, str):
            raise TypeError(f"host must be a str or None, not {type(host).__name__}")
        if port is not None:
            check_int("port", port)
        if host is None and port is None:
            return self._state.statistics()
        states = [
            s
            for key, s in self._state.keys.items()
            if (host is None or key.host == host) and (port is None or key.port == port)
        ]
        return self._state.statistics(states)

    def host_statistics(self) -> dict[tuple[str, int], PoolStatistics]:
        """Statistics of every ``(host, port)`` the pool holds state for, in one pass."""
        by_host: dict[tuple[str, int], list[KeyState]] = {}
        for key, state in self._state.keys.items():
            by_host.setdefault((key.host, key.port), []).append(state)
        return {hp: self._state.statistics(states) for hp, states in by_host.items()}

    # -- close ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the pool (idempotent).

        Idle connections close now, borrowed ones when they are released or discarded,
        waiting tasks get :class:`~trio_pool.PoolClosed`, and so does every later acquire.
        Leaving :func:`open_pool`'s block then closes the borrowed ones too.
        """
        self._state.close()
        if self._maintenance_scope is not None:
            self._maintenance_scope.cancel()
        await trio.lowlevel.checkpoint()

    # -- maintenance ------------------------------------------------------------------

    async def _maintain(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The supervised background task: eviction, health, warm floor, monitoring.

        Started with ``nursery.start`` in the pool's nursery and cancelled by
        :meth:`aclose`. A full pass (health probes, monitoring, leak checks, dropping
        forgotten keys) runs every ``health_check_interval``; in between, the task also
        wakes exactly at the next idle deadline (``max_idle_time`` after last use, or a
        connection's lifetime) and at the next refill retry, and then only closes what is
        due and refills. So idle connections are closed on time, never up to an interval
        late, and dead ones within one interval.

        Supervision: an unexpected exception in a pass is logged with its traceback; after
        the k-th failure in a row a full pass is retried after ``min(interval, 0.1 * 2**k)``
        seconds. The 5th failure in a row propagates (inside an :class:`ExceptionGroup`)
        out of :func:`open_pool`, cancelling its body, so a broken pool is not hidden.
        """
        state = self._state
        interval = self._config.health_check_interval
        with trio.CancelScope() as self._maintenance_scope:
            async with trio.open_nursery() as self._background:
                task_status.started()
                failures = 0
                next_check = trio.current_time() + interval
                while True:
                    wake = min(next_check, state.next_idle_deadline(), self._next_refill)
                    with trio.CancelScope(deadline=wake) as self._sleep_scope:
                        state.wake_at = wake
                        await trio.sleep_forever()
                    state.wake_at = -math.inf
                    self._sleep_scope = None
                    now = trio.current_time()
                    check = now >= next_check
                    if check:
                        next_check = now + interval
                    try:
                        self._maintenance_pass(now, check=check)
                    except Exception:
                        failures += 1
                        logger.exception(
                            "trio_pool maintenance pass failed (%d in a row)", failures
                        )
                        if failures >= _MAX_PASS_FAILURES:
                            raise
                        await trio.sleep(min(interval, 0.1 * 2**failures))
                        next_check = trio.current_time()
                    else:
                        failures = 0

    def _wake_by(self, when: float) -> None:
        """Bring the sleeping maintenance task's next wake-up forward to ``when``."""
        self._state.wake_at = when
        if self._sleep_scope is not None:
            self._sleep_scope.deadline = when

    def _maintenance_pass(self, now: float, *, check: bool = True) -> None:
        """One synchronous maintenance pass.

        Args:
            now: The current trio time.
            check: A full pass (every ``health_check_interval``): probe every idle
                socket, log monitoring warnings and leaks, forget keys unused for
                ``max_idle_time`` when ``min_size`` is 0. Otherwise only connections due
                by the clock are closed, and the warm floor refilled.
        """
        state = self._state
        state.sweep(now, probe=check)
        if check:
            self._check_leaks(now)
        min_size = self._config.min_size
        next_refill = math.inf
        for key_state in list(state.keys.values()):
            if check:
                self._monitor(key_state, now)
            if min_size:
                if key_state.total < min_size:
                    if now >= key_state.refill_not_before:
                        self._fill(key_state)
                    else:
                        next_refill = min(next_refill, key_state.refill_not_before)
            elif (
                check
                and key_state.is_empty
                and now - key_state.last_active >= self._config.max_idle_time
            ):
                self._drop_key(key_state)
        self._next_refill = next_refill

    def _drop_key(self, key_state: KeyState) -> None:
        """Forget a key nobody used for ``max_idle_time`` (``min_size == 0`` only).

        Its counters stay in the whole-pool totals; ``statistics(host, port)`` starts
        from zero for it when it is used again.
        """
        for args in key_state.aliases:
            self._aliases.pop(args, None)
        for kind in _WARNING_KINDS:
            self._warned.pop((key_state.key, kind), None)
        self._state.drop_key(key_state)

    def _fill(self, key_state: KeyState) -> None:
        """Start connects (in the pool's nursery) up to the key's ``min_size``.

        ``min_size`` counts every open connection of the key, idle, in use or
        connecting. While the key's host is failing only one connect at a time probes
        it; the first success fills the rest at once. Refills never wait in line and
        never evict: at ``max_size`` or ``max_total`` they are skipped.
        """
        missing = self._config.min_size - key_state.total
        if key_state.refill_failures:
            missing = min(missing, 1 - key_state.connecting)
        assert self._background is not None
        for _ in range(missing):
            if not self._state.reserve(key_state):
                break
            self._background.start_soon(self._refill, key_state)

    async def _refill(self, key_state: KeyState) -> None:
        """One warm-floor connect, in a slot already reserved (it is freed on failure).

        A failure backs the key off for ``0.5 * 2**(n-1)`` seconds after the n-th
        failing round in a row, at most 30 s; connects that fail together count as one
        round (and one log line). Success resets the back-off.
        """
        try:
            await self._connect(key_state, to_idle=True)
        except Exception as exc:
            now = trio.current_time()
            if now < key_state.refill_not_before:
                return  # a sibling connect of the same round failed first
            key_state.refill_failures += 1
            backoff = min(_MAX_REFILL_BACKOFF, 0.5 * 2 ** (key_state.refill_failures - 1))
            key_state.refill_not_before = now + backoff
            self._next_refill = min(self._next_refill, key_state.refill_not_before)
            if key_state.refill_not_before < self._state.wake_at:
                self._wake_by(key_state.refill_not_before)
            logger.warning(
                "refilling %s failed (%s); retrying in %.1f s",
                describe_key(key_state.key),
                exc,
                backoff,
                exc_info=not isinstance(exc, ConnectError),
            )
        else:
            if key_state.refill_failures:
                key_state.refill_failures = 0
                self._fill(key_state)

    def _warn(self, key: PoolKey, kind: str, now: float, message: str, *args: object) -> None:
        """Log a monitoring warning, at most once a minute (or once an interval, if
        longer) per key and kind."""
        period = max(60.0, self._config.health_check_interval)
        last = self._warned.get((key, kind), -math.inf)
        if now - last >= period:
            self._warned[(key, kind)] = now
            logger.warning(message, *args)

    def _monitor(self, state: KeyState, now: float) -> None:
        """Warn about a key whose hit rate over the last interval fell below 0.8 (judged
        only on at least ``_MIN_HIT_RATE_SAMPLE`` acquires in that interval) or whose
        in-use connections exceed 90% of ``max_size``."""
        hits = state.hits - state.monitor_hits
        misses = state.misses - state.monitor_misses
        state.monitor_hits, state.monitor_misses = state.hits, state.misses
        key = describe_key(state.key)
        if hits + misses >= _MIN_HIT_RATE_SAMPLE and hits / (hits + misses) < 0.8:
            self._warn(
                state.key,
                "hit_rate",
                now,
                "hit rate for %s was %.0f%% over the last interval (%d acquires)",
                key,
                100 * hits / (hits + misses),
                hits + misses,
            )
        if state.in_use > 0.9 * self._config.max_size:
            self._warn(
                state.key,
                "busy",
                now,
                "%s has %d of max_size=%d connections in use",
                key,
                state.in_use,
                self._config.max_size,
            )

    def _check_leaks(self, now: float) -> None:
        threshold = self._config.leak_detection_threshold
        borrowed = self._state.borrowed
        if threshold is None or borrowed is None:
            return
        for conn in borrowed:
            token = (id(conn), conn._lease)
            if now - conn.acquired_at > threshold and token not in self._leaks_reported:
                self._leaks_reported.add(token)
                logger.warning(
                    "connection to %s held for %.1f s (leak_detection_threshold"
                    " %.1f s); acquired at:\n%s",
                    describe_key(cast(KeyState, conn._key).key),
                    now - conn.acquired_at,
                    threshold,
                    conn.acquired_by or "(unknown)",
                )
        live = {(id(c), c._lease) for c in borrowed}
        self._leaks_reported &= live


class ConnectionContext(AsyncWithOnly):
    """What :meth:`ConnectionPool.connection` returns: ``async with`` it.

    Awaiting it, ``with`` it, or calling a connection's method on it raise an error
    that says to write ``async with pool.connection(...) as conn``.
    """

    __slots__ = ("_conn", "_connect_timeout", "_lease", "_pool", "_state", "_timeout")
    _usage = "async with pool.connection(...) as conn"
    _yields = PooledConnection

    _pool: ConnectionPool
    _state: KeyState
    _timeout: float | None
    _connect_timeout: float | None
    _conn: PooledConnection | None
    _lease: int

    async def __aenter__(self) -> PooledConnection:
        if _get_ident() != self._pool._thread:
            self._pool._check_run()
        if self._conn is not None:
            raise RuntimeError("this connection() context was entered already")
        if self._state.dropped:  # unused for max_idle_time since connection() was called
            self._state = self._pool._lookup(*self._state.aliases[0])  # type: ignore[arg-type]
        # ConnectionPool._acquire, with its hit path inlined: one coroutine frame less
        # on every request (and on every resumption of the checkpoint).
        pool, state = self._pool, self._state
        await _checkpoint_if_cancelled()
        now = pool._now()
        # pool._vouched(), inline.
        fresh = pool._fresh
        if fresh is not None:
            releaser, pool._fresh, pool._fresh_task = pool._fresh_task, None, None
            task = _current_task()
            if task is not releaser or task._schedule_points != pool._fresh_points:
                fresh = None
        taken = pool._state.take(state, now, fresh)
        if type(taken) is PooledConnection:  # a hit
            await _cancel_shielded_checkpoint()
            conn = taken
        else:
            conn = await pool._acquire_miss(
                state, taken, now, self._timeout, False, self._connect_timeout
            )
        if pool._state.borrowed is not None:
            conn.acquired_by = caller_stack()
        self._conn = conn
        self._lease = conn._lease
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        assert conn is not None
        # Still ours (the body did not release, discard or aclose it): straight to the
        # state machine, past the argument checks of release() and discard().
        if conn._state is IN_USE and conn._lease == self._lease:
            pool = self._pool
            if exc_type is None:
                pool._state.release(conn, pool._now())
                # pool._vouch(conn), inline (release changed conn._state: mypy can't know).
                if conn._state is IDLE and _COUNTS_STEPS:  # type: ignore[comparison-overlap]
                    task = _current_task()
                    pool._fresh = conn
                    pool._fresh_task = task
                    pool._fresh_points = task._schedule_points
            else:
                pool._state.discard(conn, pool._now())


def open_pool(
    config: PoolConfig | None = None, **overrides: Any
) -> AbstractAsyncContextManager[ConnectionPool]:
    """Open a connection pool living in its own nursery: ``async with`` it.

    Args:
        config: The configuration; :class:`~trio_pool.PoolConfig` defaults if ``None``.
        **overrides: :class:`~trio_pool.PoolConfig` fields replacing those of ``config``.

    Returns:
        An async context manager yielding the :class:`ConnectionPool`. Leaving the
        block closes the pool (see :meth:`ConnectionPool.aclose`) and waits for its
        background tasks. Awaiting it, ``with`` it, or calling a pool's method on it
        raise an error that says to write ``async with trio_pool.open_pool(...) as pool``.

    An exception raised in the body propagates as itself, not wrapped in an
    :class:`ExceptionGroup`; failures of the pool's background work (see
    :meth:`ConnectionPool._maintain`) arrive in a group.

    Raises:
        TypeError: An override names no :class:`~trio_pool.PoolConfig` field.
        ValueError: A field is out of range.
    """
    if config is None:
        config = default_config()
    elif not isinstance(config, PoolConfig):
        raise TypeError(f"config must be a PoolConfig, not {type(config).__name__}")
    if overrides:
        config = config.replace(**overrides)
    return _PoolManager(_run_pool(config))


class _PoolManager(AsyncWithOnly):
    """What :func:`open_pool` returns."""

    __slots__ = ("_manager",)
    _usage = "async with trio_pool.open_pool(...) as pool"
    _yields = ConnectionPool

    def __init__(self, manager: AbstractAsyncContextManager[ConnectionPool]) -> None:
        self._manager = manager

    async def __aenter__(self) -> ConnectionPool:
        return await self._manager.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._manager.__aexit__(exc_type, exc, tb)


@asynccontextmanager
async def _run_pool(config: PoolConfig) -> AsyncIterator[ConnectionPool]:
    """The body of :func:`open_pool`: the pool's nursery, and its close on exit."""
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery(strict_exception_groups=True) as nursery:
            pool = ConnectionPool._create(config, nursery)
            await nursery.start(pool._maintain)
            try:
                yield pool
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                with trio.CancelScope(shield=True):
                    await pool.aclose()
                    pool._state.close_borrowed(trio.current_time())
                    pool._thread = None  # later acquires take the full check (closed)
    except BaseExceptionGroup as group:
        # The nursery is the pool's, not the caller's: an exception of the body alone
        # propagates as itself (``except ConnectError:`` around the block works). A
        # failure of the pool's own work keeps its group, next to the body's if any.
        if (
            body_error is None
            or len(group.exceptions) != 1
            or group.exceptions[0] is not body_error
        ):
            raise
    else:
        return
    # Re-raised outside the ``except`` clause so the group does not become its context.
    raise body_error
