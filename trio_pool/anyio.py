"""Use trio_pool from code written against anyio (running on anyio's trio backend).

Libraries written for anyio (httpcore among them) talk to
:class:`anyio.abc.ByteStream` objects and catch anyio's exceptions. This module wraps
a :class:`~trio_pool.PooledConnection` in such a stream:

.. code-block:: python

    import anyio
    import trio_pool
    from trio_pool.anyio import connection

    async def main() -> None:
        async with trio_pool.open_pool(max_size=10) as pool:
            with anyio.fail_after(5):
                async with connection(pool, "127.0.0.1", 8080) as stream:
                    await stream.send(b"ping")
                    reply = await stream.receive()

    anyio.run(main, backend="trio")

The pool itself needs no adapter: on anyio's trio backend, anyio's cancel scopes
(:func:`anyio.move_on_after`, :func:`anyio.fail_after`, :class:`anyio.CancelScope`) are
trio cancel scopes, so cancelling an ``acquire`` or a ``connection()`` block leaks
nothing, exactly as under trio. The pool does not run on anyio's asyncio backend.

Importing this module imports anyio (the ``trio-pool[anyio]`` extra);
``import trio_pool`` never does.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, Final

import trio

try:
    import anyio
    from anyio.abc import ByteStream, SocketAttribute
    from anyio.streams.tls import TLSAttribute
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError("trio_pool.anyio needs anyio: pip install 'trio-pool[anyio]'") from _exc

from ._connection import ConnectionState, PooledConnection, _socket_of
from ._pool import ConnectionContext, ConnectionPool
from ._util import AsyncWithOnly

__all__ = ["AnyioConnectionContext", "AnyioStream", "connection"]

IN_USE: Final = ConnectionState.IN_USE
DEFAULT_MAX_BYTES: Final = 65536  # anyio's own default for ByteReceiveStream.receive


@contextlib.contextmanager
def _anyio_errors(action: str) -> Iterator[None]:
    """Re-raise trio's stream errors as anyio's, with the trio error as the cause."""
    try:
        yield
    except trio.BrokenResourceError as exc:
        raise anyio.BrokenResourceError(str(exc)) from exc
    except trio.ClosedResourceError as exc:
        raise anyio.ClosedResourceError(str(exc)) from exc
    except trio.BusyResourceError as exc:
        raise anyio.BusyResourceError(action) from exc


def _sockaddr(address: Any) -> Any:
    """An address as anyio reports it: IPv6 as ``(host, port)``, scope id in the host."""
    if isinstance(address, tuple) and len(address) == 4:
        host, port, _flowinfo, scope_id = address
        return (f"{host}%{scope_id}" if scope_id else host, port)
    return address


class AnyioStream(ByteStream):
    """A borrowed :class:`~trio_pool.PooledConnection` as an :class:`anyio.abc.ByteStream`.

    The stream speaks for one loan of the connection: once the connection is released or
    discarded, every call raises :class:`anyio.ClosedResourceError`, even if the pool
    has since lent the same connection to another task.

    trio's :class:`~trio.BrokenResourceError`, :class:`~trio.ClosedResourceError` and
    :class:`~trio.BusyResourceError` become anyio's exceptions of the same names, with
    trio's as ``__cause__``.

    :meth:`aclose` discards the connection (it is never pooled again). To pool it, call
    ``pool.release(stream.connection)`` or use :func:`connection`.

    Extra attributes: every :class:`anyio.abc.SocketAttribute`, and for TLS connections
    the :class:`anyio.streams.tls.TLSAttribute` ones (``standard_compatible`` is False:
    the pool's TLS streams accept a peer's close without ``close_notify``, as HTTPS
    clients must).

    Args:
        conn: A connection currently borrowed from a pool (``IN_USE``).

    Raises:
        TypeError: ``conn`` is not a :class:`~trio_pool.PooledConnection`.
        anyio.ClosedResourceError: ``conn`` is not borrowed (released, discarded, idle).
    """

    __slots__ = ("_conn", "_lease")

    def __init__(self, conn: PooledConnection) -> None:
        if not isinstance(conn, PooledConnection):
            raise TypeError(f"conn must be a trio_pool.PooledConnection, not {type(conn).__name__}")
        if conn.state is not IN_USE:
            raise anyio.ClosedResourceError(
                f"connection is {conn.state.value}: only a borrowed connection can be wrapped"
            )
        self._conn = conn
        self._lease = conn.lease

    def __repr__(self) -> str:
        return f"<AnyioStream {self._conn!r}>"

    @property
    def connection(self) -> PooledConnection:
        """The wrapped :class:`~trio_pool.PooledConnection`."""
        return self._conn

    def _owns(self) -> bool:
        conn = self._conn
        return conn.state is IN_USE and conn.lease == self._lease

    def _check(self) -> PooledConnection:
        if not self._owns():
            raise anyio.ClosedResourceError(
                "the connection was released or discarded: this stream is closed"
            )
        return self._conn

    async def receive(self, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
        """Receive at most ``max_bytes`` bytes.

        Raises:
            anyio.EndOfStream: The peer closed its side.
            anyio.BrokenResourceError: The connection failed.
            anyio.ClosedResourceError: The stream was closed, released or discarded.
            anyio.BusyResourceError: Another task is receiving on it.
        """
        conn = self._check()
        with _anyio_errors("reading from"):
            data = await conn.receive_some(max_bytes)
        if not data:
            raise anyio.EndOfStream
        return bytes(data)

    async def send(self, item: bytes) -> None:
        """Send all of ``item``.

        Raises:
            anyio.BrokenResourceError: The connection failed.
            anyio.ClosedResourceError: The stream was closed, released or discarded.
            anyio.BusyResourceError: Another task is sending on it.
        """
        conn = self._check()
        with _anyio_errors("writing to"):
            await conn.send_all(item)

    async def send_eof(self) -> None:
        """Shut down the sending side (TCP ``SHUT_WR``); receiving still works.

        A connection half-closed this way cannot carry another request: it is marked
        broken, so releasing it closes it instead of pooling it.

        Raises:
            NotImplementedError: The connection is TLS (like anyio's own ``TLSStream``).
            anyio.BrokenResourceError: The connection failed.
            anyio.ClosedResourceError: The stream was closed, released or discarded.
            anyio.BusyResourceError: Another task is sending on it.
        """
        conn = self._check()
        stream = conn.stream
        if not isinstance(stream, trio.SocketStream):
            raise NotImplementedError("send_eof() is not supported on TLS connections")
        conn.mark_broken()  # before the await: even a cancelled shutdown may have happened
        with _anyio_errors("writing to"):
            await stream.send_eof()

    async def aclose(self) -> None:
        """Discard the connection (close it for good); a no-op once it is not ours."""
        if self._owns():
            await self._conn.aclose()
        else:
            await trio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The :class:`~anyio.abc.SocketAttribute` and (TLS) ``TLSAttribute`` providers."""
        conn = self._conn
        sock = _socket_of(conn.stream)
        attributes: dict[Any, Callable[[], Any]] = {
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: lambda: _sockaddr(sock.getsockname()),
        }
        # trio has no public accessor for the stdlib socket under a trio socket; anyio's
        # own trio backend reads this attribute too. Without it the attribute is absent.
        raw = getattr(sock, "_sock", None)
        if isinstance(raw, socket.socket):
            attributes[SocketAttribute.raw_socket] = lambda: raw
        try:
            peer = _sockaddr(sock.getpeername())
        except OSError:
            peer = None
        if peer is not None:
            attributes[SocketAttribute.remote_address] = lambda: peer
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            attributes[SocketAttribute.local_port] = lambda: sock.getsockname()[1]
            if peer is not None:
                remote_port: int = peer[1]
                attributes[SocketAttribute.remote_port] = lambda: remote_port
        stream = conn.stream
        if isinstance(stream, trio.SSLStream):
            attributes.update(_tls_attributes(stream))
        return attributes


def _tls_attributes(
    stream: trio.SSLStream[trio.SocketStream],
) -> dict[Any, Callable[[], Any]]:
    """TLS attributes from the :class:`trio.SSLStream`'s forwarded ``SSLObject`` methods."""
    attributes: dict[Any, Callable[[], Any]] = {
        TLSAttribute.alpn_protocol: stream.selected_alpn_protocol,
        TLSAttribute.cipher: stream.cipher,
        TLSAttribute.peer_certificate: lambda: stream.getpeercert(False),
        TLSAttribute.peer_certificate_binary: lambda: stream.getpeercert(True),
        TLSAttribute.server_side: lambda: stream.server_side,
        TLSAttribute.shared_ciphers: lambda: (
            stream.shared_ciphers() if stream.server_side else None
        ),
        # The pool opens its TLS streams https_compatible=True (see ConnectionPool._handshake).
        TLSAttribute.standard_compatible: lambda: False,
        TLSAttribute.tls_version: stream.version,
    }
    if hasattr(TLSAttribute, "channel_binding_tls_unique"):
        attributes[TLSAttribute.channel_binding_tls_unique] = stream.get_channel_binding
    # trio forwards the SSLObject's methods but does not expose the object itself.
    ssl_object = getattr(stream, "_ssl_object", None)
    if isinstance(ssl_object, ssl.SSLObject):
        attributes[TLSAttribute.ssl_object] = lambda: ssl_object
    return attributes


class AnyioConnectionContext(AsyncWithOnly):
    """What :func:`connection` returns: ``async with`` it to get an :class:`AnyioStream`.

    The connection is released on a clean exit and discarded on any exception
    (cancellation included); if the body already released, discarded or closed it,
    exit does nothing more. Same rule as :meth:`trio_pool.ConnectionPool.connection`.
    """

    __slots__ = ("_context",)
    _usage = "async with trio_pool.anyio.connection(pool, ...) as stream"
    _yields = AnyioStream

    def __init__(self, context: ConnectionContext) -> None:
        self._context = context

    async def __aenter__(self) -> AnyioStream:
        conn = await self._context.__aenter__()
        return AnyioStream(conn)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._context.__aexit__(exc_type, exc, tb)


def connection(
    pool: ConnectionPool,
    host: str,
    port: int,
    *,
    tls: bool = False,
    sni: str | None = None,
    verify_cert: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float | None = None,
) -> AnyioConnectionContext:
    """Borrow a connection as an :class:`AnyioStream` for the body of an ``async with``.

    Arguments are those of :meth:`trio_pool.ConnectionPool.acquire`, checked right away
    (before any I/O).

    Args:
        pool: The pool to borrow from.
        host: Host name or address.
        port: TCP port, 1-65535.
        tls: Open TLS instead of plain TCP.
        sni: Server name for TLS; defaults to ``host``.
        verify_cert: Check the certificate and host name.
        ssl_context: The :class:`ssl.SSLContext` to use.
        timeout: Longest wait in line, overriding ``acquire_timeout``.

    Returns:
        An async context manager yielding the :class:`AnyioStream`.

    Raises:
        TypeError: ``pool`` is not a :class:`~trio_pool.ConnectionPool`, or an argument
            has the wrong type.
        ValueError: An argument is out of range.
    """
    if not isinstance(pool, ConnectionPool):
        raise TypeError(f"pool must be a trio_pool.ConnectionPool, not {type(pool).__name__}")
    return AnyioConnectionContext(
        pool.connection(
            host,
            port,
            tls=tls,
            sni=sni,
            verify_cert=verify_cert,
            ssl_context=ssl_context,
            timeout=timeout,
        )
    )
