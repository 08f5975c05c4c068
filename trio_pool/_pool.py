"""The pool's facade: acquire, release, discard, the connection context, prewarm,
statistics, close, and :func:`open_pool`.

Every decision is taken by :class:`~trio_pool._state.PoolState` in synchronous code;
this module waits around those decisions, and hands the rest to its parts: the key
table (:mod:`trio_pool._route`), connecting and closing (:mod:`trio_pool._connector`)
and the maintenance task (:mod:`trio_pool._maintenance`).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Final, cast

import trio

from ._config import PoolConfig, default_config
from ._connection import ConnectionState, PooledConnection
from ._connector import Connector
from ._describe import caller_stack
from ._events import EventHook, Listeners
from ._exceptions import PoolClosed
from ._maintenance import Maintenance
from ._proxy import Proxy
from ._route import KeyTable, Route, make_key
from ._run import check_run
from ._shared import OpenMultiplexer, StreamLease
from ._state import CONNECT, HANDOFF, Grant, KeyState, PoolState, Taken
from ._stats import PoolStatistics
from ._util import AsyncWithOnly, NoPublicConstructor, check_int, check_timeout
from ._waiting import wait_in_line

__all__ = ["ConnectionContext", "ConnectionPool", "Route", "make_key", "open_pool"]

IN_USE: Final = ConnectionState.IN_USE
IDLE: Final = ConnectionState.IDLE
CLOSED: Final = ConnectionState.CLOSED
# The two halves of a checkpoint, bound once for the hot path (see ConnectionPool.acquire_on).
_checkpoint_if_cancelled: Final = trio.lowlevel.checkpoint_if_cancelled
_cancel_shielded_checkpoint: Final = trio.lowlevel.cancel_shielded_checkpoint
_current_task: Final = trio.lowlevel.current_task
_get_ident: Final = threading.get_ident
_new_context: Final = object.__new__


def _vouch(conn: PooledConnection, task: trio.lowlevel.Task) -> None:
    """After ``task`` released ``conn``: if that pooled it, let its probe stand for a
    hand-out to the same task before the task yields to the scheduler (see
    ``ConnectionPool.acquire_on``).

    The mark is the task's :attr:`trio.lowlevel.Task.custom_sleep_data`, which trio
    documents as set to ``None`` whenever it reschedules a task: so it survives exactly
    until the task's next schedule point, and no other task can match it. Nothing else
    uses it while the task runs; whoever puts the task to sleep next may overwrite it.
    """
    if conn._state is IDLE:
        task.custom_sleep_data = conn


class ConnectionPool(metaclass=NoPublicConstructor):
    """Per-host pools of TCP and TLS connections, scoped to a nursery.

    Get one from :func:`open_pool`. Connections are keyed by host, port and TLS
    settings (:class:`~trio_pool.PoolKey`); each key holds at most ``max_size``
    connections, idle and in use together.
    """

    def __init__(self, config: PoolConfig, nursery: trio.Nursery) -> None:
        self._config = config
        # trio.current_time() without its run-context lookups, for the hot path: this
        # run's clock (a MockClock in tests), read directly. A pool lives in one run.
        self._now: Callable[[], float] = trio.lowlevel.current_clock().current_time
        # The run the pool belongs to, and its thread: every acquire checks that it is
        # in it (see _check_run). _thread is None once open_pool's block has ended.
        self._token = trio.lowlevel.current_trio_token()
        self._thread: int | None = _get_ident()
        self._listeners = Listeners(config.on_event)
        self._connector = connector = Connector(config, nursery, self._listeners)
        self._state = PoolState(
            self,
            config,
            connector.close_stream,
            now=self._now,
            current_task=_current_task,
            wake=trio.lowlevel.reschedule,
            wake_by=self._wake_by,
            start_connect=connector.start_connect,
            on_event=self._listeners.emit,
        )
        self._keys = KeyTable(self._state, self._now, self._check_run)
        self._maintenance = Maintenance(config, connector, self._keys)
        connector.state = self._maintenance.state = self._state

    def _wake_by(self, when: float) -> None:
        """The state machine's hook: wake the maintenance task by ``when``."""
        self._maintenance.wake_by(when)

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

    def _check_run(self) -> None:
        """Raise unless called from the pool's own trio run (see :func:`check_run`)."""
        check_run(self._token)

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
        key = self._keys.of_arguments(
            host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward
        )
        # A key of acquire's arguments never multiplexes: acquire_on lends a connection.
        return await self.acquire_on(key, timeout, connect_timeout)  # type: ignore[return-value]

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
        key = self._keys.of_arguments(
            host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward
        )
        return cast(
            PooledConnection, await self.acquire_on(key, timeout, connect_timeout, new=True)
        )

    # -- the internal interface of trio_pool's adapters (HTTP, httpx, anyio) ---------

    def listen(self, listener: EventHook) -> None:
        """Hear the pool's lifecycle events from now on, beside ``on_event`` (internal:
        for trio_pool's Prometheus collector). Like the hook, ``listener`` is called
        synchronously and what it raises is logged and swallowed."""
        self._listeners.add(listener)
        self._state.on_event = self._state.addresses.on_event = self._listeners.emit

    def lookup(self, route: Route, opener: OpenMultiplexer | None = None) -> KeyState:
        """The state of ``route``'s key, for :meth:`acquire_on` (internal: for
        trio_pool's HTTP clients, which keep their connections under keys of their
        own, see ``Route.http`` and ``Route.http2``).

        Args:
            route: Where the connections go, checked.
            opener: For a key that may multiplex (``route.http2``): starts the protocol
                on a connection whose TLS chose ``h2`` (or on any, for ``"h2c"``).
        """
        state = self._keys.lookup(route)
        if opener is not None:
            state.open_shared = opener
        return state

    async def acquire_on(
        self,
        key: KeyState,
        timeout: float | None,
        connect_timeout: float | None,
        *,
        new: bool = False,
        into: ConnectionContext | None = None,
    ) -> PooledConnection | StreamLease:
        """The acquire every other one is made of (internal: the public methods and
        trio_pool's HTTP clients call it, with checked timeouts).

        The shape of :meth:`trio.CapacityLimiter.acquire_on_behalf_of`: a checkpoint's
        first half, the synchronous ``take``, then its second half on a hit, or a wait
        in line or a connect on a miss.

        Args:
            key: From :meth:`lookup`, or the key table.
            timeout: Longest wait in line (``None``: ``acquire_timeout``).
            connect_timeout: Limit of a connect this acquire starts.
            new: Always a new connection (:meth:`acquire_new`).
            into: The ``connection()`` context being entered: it records the
                connection and its lease, for its exit.

        Returns:
            A connection in use; on a key that multiplexes, a stream of a shared
            connection (a :class:`StreamLease`, released by its stream's end) unless the
            peer chose HTTP/1.1.
        """
        if _get_ident() != self._thread:
            self._check_run()
        await _checkpoint_if_cancelled()
        now = self._now()
        # The connection this task released and pooled, with no schedule point since
        # (see _vouch): its release's probe stands, within FRESH_FOR.
        task = _current_task()
        taken = self._state.take(key, now, task.custom_sleep_data, new=new)
        conn: PooledConnection | StreamLease
        if taken is None or taken is HANDOFF or taken is CONNECT:
            conn = await self._acquire_miss(key, taken, now, timeout, new, connect_timeout)
        else:  # a hit
            await _cancel_shielded_checkpoint()
            conn = taken  # type: ignore[assignment]  # neither None, CONNECT nor HANDOFF
        if self._state.borrowed is not None and isinstance(conn, PooledConnection):
            conn.acquired_by = caller_stack()
        if into is not None:
            into._conn = conn  # type: ignore[assignment]  # a key that never multiplexes
            into._lease = conn._lease  # type: ignore[union-attr]
            into._task = task  # its exit runs in this task: async with is one frame
        return conn

    async def _acquire_miss(
        self,
        key: KeyState,
        taken: Taken | None,
        now: float,
        timeout: float | None,
        new: bool,
        connect_timeout: float | None,
    ) -> PooledConnection | StreamLease:
        """The rest of :meth:`acquire_on` when ``take`` had no idle connection for it:
        wait in line (see :func:`~trio_pool._waiting.wait_in_line`), connect, or both."""
        grant: Grant = CONNECT
        if taken is not CONNECT:
            if timeout is None:
                timeout = self._config.acquire_timeout
            grant = await wait_in_line(
                self._state, key, now, timeout, new, connect_timeout, handoff=taken is HANDOFF
            )
        if grant is not CONNECT:
            return cast("PooledConnection | StreamLease", grant)
        return await self._connector.connect_to_lend(key, connect_timeout)

    # -- give back -------------------------------------------------------------------

    @trio.lowlevel.enable_ki_protection
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
        try:
            task = _current_task()
        except RuntimeError:  # released outside any task: nothing to vouch for
            return
        _vouch(conn, task)

    @trio.lowlevel.enable_ki_protection
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
        key = self._keys.of_arguments(
            host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward
        )
        # ConnectionContext(...) without its __init__ frame: this runs on every request.
        context = _new_context(ConnectionContext)
        context._pool = self
        context._key = key
        context._timeout = timeout
        context._connect_timeout = connect_timeout
        context._conn = None
        context._lease = 0
        return context

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
        state = self._keys.of_arguments(
            host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward
        )
        state.last_active = trio.current_time()  # not forgotten before its connects start
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._connector.fill(state, count - len(state.idle) - state.connecting)
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
        self._maintenance.cancel()
        await trio.lowlevel.checkpoint()


class ConnectionContext(AsyncWithOnly):
    """What :meth:`ConnectionPool.connection` returns: ``async with`` it.

    Awaiting it, ``with`` it, or calling a connection's method on it raise an error
    that says to write ``async with pool.connection(...) as conn``.
    """

    __slots__ = ("_conn", "_connect_timeout", "_key", "_lease", "_pool", "_task", "_timeout")
    _usage = "async with pool.connection(...) as conn"
    _yields = PooledConnection

    _pool: ConnectionPool
    _key: KeyState
    _timeout: float | None
    _connect_timeout: float | None
    _conn: PooledConnection | None
    _lease: int
    _task: trio.lowlevel.Task

    def __aenter__(self) -> Coroutine[Any, Any, PooledConnection]:
        # Not a coroutine of its own: it hands back acquire_on's, which records the
        # connection here (one coroutine frame less on every request).
        if self._conn is not None:
            raise RuntimeError("this connection() context was entered already")
        if self._key.dropped:  # unused for max_idle_time since connection() was called
            self._key = self._pool._keys.again(self._key)
        return self._pool.acquire_on(  # type: ignore[return-value]  # never multiplexed
            self._key, self._timeout, self._connect_timeout, into=self
        )

    @trio.lowlevel.enable_ki_protection
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
                _vouch(conn, self._task)
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
    ``Maintenance.run`` in ``_maintenance.py``) arrive in a group.

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
            await nursery.start(pool._maintenance.run)
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
