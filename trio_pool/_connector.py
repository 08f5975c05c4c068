"""Connecting and closing: transport, TLS (contexts, ALPN, session resumption), the
HTTP/2 start, traced variants, and the close of streams.

The state machine (:class:`~trio_pool._state.PoolState`) reserves a slot before a
connect and is told how it ended (:meth:`~trio_pool._state.PoolState.connected` or
:meth:`~trio_pool._state.PoolState.connect_failed`), synchronously, in the same step.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
import weakref
from typing import Any, Final

import trio

from ._addresses import Upstream, answer_of
from ._config import PoolConfig
from ._connection import PooledConnection, _socket_of
from ._dial import Dial, dial
from ._events import ConnectDone, ConnectFailed, ConnectStarted, Listeners, TLSResumed
from ._exceptions import ConnectError, ConnectTimeout
from ._route import SocketOption
from ._shared import Multiplexer, MultiplexOptions, SharedConnection, StreamLease
from ._state import KeyState, PendingConnect, PoolKey, PoolState
from ._tls import close_tls, default_context
from ._trace import Trace, connect_trace, traced
from ._tunnel import Phase, open_transport, route_of

__all__ = ["Connector"]

logger: Final = logging.getLogger("trio_pool")

_TLS_CLOSE_TIMEOUT: Final = 0.5
# Callers' contexts that offered h2 for a key of any pool: set back to http/1.1 before
# each handshake of a key that does not multiplex.
_ALPN_SET: Final[weakref.WeakSet[ssl.SSLContext]] = weakref.WeakSet()


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


def _set_options(stream: trio.SocketStream, options: tuple[SocketOption, ...]) -> None:
    """Set ``options`` on a socket that just connected (httpcore sets them then too).

    Raises:
        ConnectError: The system refused one (the socket is closed).
    """
    for option in options:
        try:
            stream.socket.setsockopt(*option)
        except OSError as exc:
            stream.socket.close()
            raise ConnectError(f"cannot set the socket option {option!r}: {exc}") from exc


class Connector:
    """Opens connections in slots the state machine reserved, and closes them.

    Args:
        config: The pool's configuration.
        nursery: The pool's nursery: hand-off connects (when the maintenance nursery
            is gone), HTTP/2 reader tasks and TLS ``close_notify`` run in it.
        listeners: The pool's event listeners, handed to HTTP/2 connections (their
            PING events).
    """

    def __init__(self, config: PoolConfig, nursery: trio.Nursery, listeners: Listeners) -> None:
        self._config = config
        self._nursery = nursery
        self._listeners = listeners
        #: The state machine; set by the pool right after making both.
        self.state: PoolState
        #: The maintenance task's nursery, where hand-off connects run while it lives.
        self.background: trio.Nursery | None = None
        self._contexts: dict[bool, ssl.SSLContext] = {}
        self._h2_contexts: dict[bool, ssl.SSLContext] = {}
        # Lookups in flight, one per upstream: later connects wait for it.
        self._resolving: dict[Upstream, trio.Event] = {}
        # Whether a key's connections dial addresses the pool resolved itself.
        self._booked: dict[PoolKey, bool] = {}

    def start_connect(self, state: KeyState, pending: PendingConnect) -> None:
        """The state machine's hook: run a hand-off connect in the pool's nursery."""
        assert self.background is not None
        try:
            self.background.start_soon(self._handoff_connect, state, pending)
        except RuntimeError:
            # The maintenance task failed for good and took its nursery with it; the
            # pool's own nursery outlives it until open_pool closes the pool.
            self._nursery.start_soon(self._handoff_connect, state, pending)

    async def connect_to_lend(
        self, state: KeyState, timeout: float | None
    ) -> PooledConnection | StreamLease:
        """Connect for the calling acquire: the connection, or on a multiplexed one
        its first stream."""
        conn = await self.connect(state, timeout=timeout)
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

    async def fill(self, state: KeyState, count: int) -> None:
        """Open up to ``count`` idle connections of ``state``'s key concurrently, as room
        allows (``prewarm``).

        Raises:
            ConnectError: The first connect that failed (the others still complete).
        """
        errors: list[ConnectError] = []

        async def one() -> None:
            if not self.state.reserve(state):
                return
            try:
                await self.connect(state, to_idle=True)
            except ConnectError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
        if errors:
            raise errors[0]

    async def _handoff_connect(self, state: KeyState, pending: PendingConnect) -> None:
        """A hand-off connect: it outlives the task it was started for, and the state
        machine gives its connection (or its error) to whoever waits for it."""
        try:
            await self.connect(state, pending=pending, timeout=pending.timeout)
        except Exception as exc:
            if not isinstance(exc, ConnectError):  # handed to the waiters; log the unusual
                logger.warning(
                    "trio_pool: connecting to %s:%d failed unexpectedly",
                    state.key.host,
                    state.key.port,
                    exc_info=True,
                )

    async def connect(
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
        started = trio.current_time()
        if self.state.on_event is not None:
            self.state.on_event(ConnectStarted(key, started, pending is not None))
        tcp: trio.SocketStream | None = None
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
        shared: Multiplexer | None = None
        phase = Phase()
        attempts = Dial(key, state.address_counts) if self._is_booked(key) else None
        try:
            try:
                with trio.move_on_after(timeout) as scope:
                    trace = connect_trace.get()
                    if trace is None:
                        tcp = await self._transport(state, phase, attempts)
                    else:
                        tcp = await self._traced_transport(trace, state, phase, timeout, attempts)
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
                        shared = await opener(stream, self._nursery, self._multiplex_options(key))
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
            if attempts is not None:
                # A timeout, a refusal or a failed handshake counts against the
                # addresses dialed; a cancellation or another error (the peer spoke)
                # does not.
                attempts.settle(
                    self.state.addresses,
                    isinstance(exc, ConnectTimeout)
                    or (
                        isinstance(exc, ConnectError)
                        and isinstance(exc.__cause__, (OSError, ssl.SSLError))
                    ),
                    trio.current_time(),
                )
            on_event = self.state.on_event
            if on_event is not None and not cancelled:
                now = trio.current_time()
                timed_out = isinstance(exc, ConnectTimeout)
                on_event(ConnectFailed(key, now, now - started, exc, timed_out))
            self.state.connect_failed(
                state,
                failed=not cancelled,
                error=None if cancelled else exc,
                pending=pending,
            )
            raise
        now = trio.current_time()
        address = None
        if attempts is not None:
            address = attempts.won()
            if shared is not None and address is not None:
                # The peer's SETTINGS arrived: a response, so the address works.
                self.state.addresses.succeeded(address, now, key)
        if self.state.on_event is not None:
            self.state.on_event(ConnectDone(key, now, now - started, shared is not None))
        return self.state.connected(
            state,
            stream,
            now,
            to_idle=to_idle,
            pending=pending,
            shared=shared,
            address=address,
        )

    def _multiplex_options(self, key: PoolKey) -> MultiplexOptions:
        config = self._config
        return MultiplexOptions(
            key, self._listeners, config.h2_ping_interval, config.h2_ping_timeout
        )

    def _is_booked(self, key: PoolKey) -> bool:
        """Whether ``key``'s connections go to addresses the pool resolves itself:
        direct TCP to a host name (an IP literal needs no lookup; a Unix socket
        none; a proxy is dialed by its own address, and resolves the origin's)."""
        booked = self._booked.get(key)
        if booked is None:
            booked = key.proxy is None and key.uds is None
            if booked:
                try:
                    ipaddress.ip_address(key.host)
                except ValueError:
                    pass
                else:
                    booked = False
            if len(self._booked) >= 4096:
                self._booked.clear()
            self._booked[key] = booked
        return booked

    async def _transport(
        self, state: KeyState, phase: Phase, attempts: Dial | None
    ) -> trio.SocketStream:
        """:func:`open_transport`, or for a host name (``attempts``) a dial to its
        addresses, resolved when their TTL ran out."""
        key = state.key
        if attempts is None:
            stream = await open_transport(key, phase)
        else:
            book = self.state.addresses
            upstream = state.upstream
            if upstream is None:
                upstream = state.upstream = book.attach(key.host, key.port)
            await self._resolve(upstream, phase, key)
            plan = book.plan(upstream, state.address_counts, trio.current_time())
            phase.name = "TCP connect"
            stream = await dial(book, plan, key.port, attempts, key.local_address)
        if key.socket_options is not None:
            _set_options(stream, key.socket_options)
        return stream

    async def _resolve(self, upstream: Upstream, phase: Phase, key: PoolKey) -> None:
        """Resolve ``upstream`` if its answer is stale (one lookup at a time per
        upstream: others wait for it). A failed lookup keeps the known addresses.

        Raises:
            ConnectError: The lookup failed and no address is known.
        """
        book = self.state.addresses
        while book.stale(upstream, trio.current_time()):
            running = self._resolving.get(upstream)
            if running is not None:
                await running.wait()
                if upstream.addresses:
                    return  # (fresh: with dns_ttl=0 it is stale again at once)
                continue
            phase.name = "name lookup"
            done = self._resolving[upstream] = trio.Event()
            try:
                infos = await trio.socket.getaddrinfo(
                    upstream.host, upstream.port, type=socket.SOCK_STREAM
                )
                answer = answer_of(infos)
                if not answer:
                    raise OSError(f"no IPv4 or IPv6 address for {upstream.host!r}")
            except OSError as exc:
                if not book.resolve_failed(upstream, trio.current_time()):
                    raise ConnectError(f"cannot resolve {upstream.host!r}: {exc}") from exc
                logger.warning(
                    "trio_pool: resolving %r failed (%s): keeping its %d known address(es)",
                    upstream.host,
                    exc,
                    len(upstream.addresses),
                )
            else:
                now = trio.current_time()
                self.state.drain(book.resolved(upstream, answer, now, key), now)
            finally:
                del self._resolving[upstream]
                done.set()
            return

    async def _traced_transport(
        self,
        trace: Trace,
        state: KeyState,
        phase: Phase,
        timeout: float | None,
        attempts: Dial | None,
    ) -> trio.SocketStream:
        """:meth:`_transport` reporting ``connection.connect_tcp.*`` (httpcore's
        names; a Unix socket reports ``connection.connect_unix_socket.*``)."""
        key = state.key
        if key.uds is not None:
            info: dict[str, Any] = {"path": key.uds, "timeout": timeout}
            return await traced(
                trace, "connection.connect_unix_socket", info, lambda: open_transport(key, phase)
            )
        info = {
            "host": key.host,
            "port": key.port,
            "local_address": key.local_address,
            "timeout": timeout,
            "socket_options": key.socket_options,
        }
        return await traced(
            trace, "connection.connect_tcp", info, lambda: self._transport(state, phase, attempts)
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
            if self.state.on_event is not None:
                self.state.on_event(TLSResumed(key, trio.current_time()))
        return stream

    def close_stream(self, conn: PooledConnection) -> None:
        """The state machine's hook: close a connection's stream (TLS ``close_notify``
        briefly, in the pool's nursery)."""
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
