"""The pooled connection: a :class:`trio.abc.Stream` that knows its pool and its health."""

from __future__ import annotations

import enum
import select
import socket
from typing import TYPE_CHECKING, Final, Protocol

import trio

from ._probe import Health, _peek, probe_tls
from ._tls import is_tls_error

if TYPE_CHECKING:
    from ._records import PoolKey

__all__ = [
    "ConnectionKey",
    "ConnectionOwner",
    "ConnectionState",
    "Health",
    "PooledConnection",
    "Verdicts",
]

_POLLIN: Final = select.POLLIN | select.POLLPRI


class ConnectionState(enum.Enum):
    """Where a :class:`PooledConnection` is in its life."""

    IN_USE = "in_use"
    IDLE = "idle"
    CLOSED = "closed"


# Bound once: the hot path (every send_all, receive_some, hand-out and release) compares
# against these rather than looking the members and trio's class up each time.
_IN_USE: Final = ConnectionState.IN_USE
_CLOSED: Final = ConnectionState.CLOSED
_SocketStream: Final = trio.SocketStream


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):  # pragma: no cover - we only open these
        raise TypeError(f"trio_pool pools trio.SocketStream and trio.SSLStream, not {stream!r}")
    return stream.socket


class ConnectionOwner(Protocol):
    """What a connection needs of its pool (:class:`~trio_pool.ConnectionPool`):
    described here so this module imports no higher layer."""

    def discard(self, conn: PooledConnection, /) -> None: ...

    @property
    def closed(self) -> bool: ...


class Verdicts(Protocol):
    """What a connection tells the address it was opened to
    (``trio_pool._addresses.Address``): whether it got a response."""

    @property
    def ip(self) -> str: ...

    def succeeded(self, now: float, key: PoolKey, /) -> None: ...

    def failed(self, now: float, key: PoolKey, /) -> None: ...

    def ended(self) -> None: ...


class ConnectionKey(Protocol):
    """What a connection needs of its key's state (``trio_pool._state.KeyState``)."""

    @property
    def key(self) -> PoolKey: ...

    def save_session(self, stream: trio.SSLStream[trio.SocketStream], /) -> bool: ...

    def forget_session(self) -> bool: ...


class PooledConnection(trio.abc.Stream):
    """A connection borrowed from a :class:`~trio_pool.ConnectionPool`.

    It is a :class:`trio.abc.Stream`: ``send_all``, ``receive_some`` and
    ``wait_send_all_might_not_block`` go to the underlying :attr:`stream`, and
    :meth:`aclose` discards it (closes it for good). Give it back with
    :meth:`ConnectionPool.release` when the conversation on it is complete.

    A connection that raised from ``send_all`` or ``receive_some``, or that saw the peer
    close, is never pooled again: release closes it instead.

    Attributes:
        host: Host it was opened to.
        port: Port it was opened to.
        stream: The underlying :class:`trio.SocketStream` or :class:`trio.SSLStream`.
        created_at: :func:`trio.current_time` when it was opened.
        last_used_at: :func:`trio.current_time` when it was last handed out or returned.
        use_count: How many times it has been handed out.
        reused: Whether the current hand-out came from the pool (a hit) rather than a connect.
        session_reused: For TLS, whether its handshake resumed a saved session.
    """

    __slots__ = (
        "_address",
        "_broken",
        "_closed_by_user",
        "_expires_at",
        "_key",
        "_lease",
        "_poller",
        "_pool",
        "_protocol",
        "_session_fresh",
        "_state",
        "_unproven",
        "_unread",
        "acquired_at",
        "acquired_by",
        "created_at",
        "host",
        "last_used_at",
        "port",
        "reused",
        "session_reused",
        "stream",
        "use_count",
    )

    def __init__(
        self,
        pool: ConnectionOwner,
        key: ConnectionKey,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        now: float,
        expires_at: float,
    ) -> None:
        self._pool: ConnectionOwner = pool
        self._key: ConnectionKey = key
        self.stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = stream
        self.host: str = key.key.host
        self.port: int = key.key.port
        self.created_at: float = now
        self.last_used_at: float = now
        self.acquired_at: float = now
        self.acquired_by: str | None = None
        self.use_count: int = 0
        self.reused: bool = False
        self._lease = 0
        self._state = ConnectionState.IN_USE
        self._broken = False
        # By aclose(), or by the end of open_pool: a later release or discard is a no-op.
        self._closed_by_user = False
        self._expires_at = expires_at
        self.session_reused: bool = False
        # TLS 1.3 tickets arrive after the handshake: until a resumable session is saved
        # for the key, look again whenever data has come in.
        self._session_fresh = False
        # Application bytes the TLS probe had to decrypt to see them: read them first.
        self._unread = b""
        # The HTTP protocol object speaking on this socket (trio_pool.http._http11 owns
        # it): its state outlives each borrower, and the socket.
        self._protocol: object = None
        # The address it was dialed to when the pool chose it (a host name's address
        # book), and that address until the first byte read decides its verdict.
        self._address: Verdicts | None = None
        self._unproven: Verdicts | None = None
        if isinstance(stream, trio.SSLStream):
            self.session_reused = bool(stream.session_reused)
            self._session_fresh = not key.save_session(stream)
        self._poller = select.poll()
        self._poller.register(_socket_of(stream).fileno(), _POLLIN)

    def __repr__(self) -> str:
        return (
            f"<PooledConnection {self.host}:{self.port} {self._state.value}"
            f" uses={self.use_count}{' tls' if self.is_tls else ''}>"
        )

    # -- state ---------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """True once the connection is closed (discarded, evicted, or found dead)."""
        return self._state is ConnectionState.CLOSED

    @property
    def state(self) -> ConnectionState:
        """``IN_USE`` while borrowed, ``IDLE`` while in the pool, ``CLOSED`` at the end."""
        return self._state

    @property
    def lease(self) -> int:
        """A number that changes each time the connection is lent: a wrapper that noted
        it when the connection was handed to it can tell whether it still holds the
        same loan (``conn.state is IN_USE and conn.lease == noted``), or whether the
        connection went back to the pool, maybe to another borrower, meanwhile."""
        return self._lease

    @property
    def broken(self) -> bool:
        """Whether it may never be pooled again: a read or write on it failed, it saw
        the peer close, or :meth:`mark_broken` was called. Releasing it closes it."""
        return self._broken

    def mark_broken(self) -> None:
        """Never pool it again: a later :meth:`ConnectionPool.release
        <trio_pool.ConnectionPool.release>` closes it. For a connection left in a state
        the next borrower must not meet (half closed, say)."""
        self._broken = True

    @property
    def is_tls(self) -> bool:
        """Whether this is a TLS connection (:attr:`stream` is a :class:`trio.SSLStream`)."""
        return isinstance(self.stream, trio.SSLStream)

    @property
    def idle_time(self) -> float:
        """Seconds since it was last handed out or returned."""
        return trio.current_time() - self.last_used_at

    @property
    def age(self) -> float:
        """Seconds since it was opened."""
        return trio.current_time() - self.created_at

    def has_pending_data(self) -> bool:
        """Whether unread bytes wait on it (including bytes buffered inside TLS)."""
        return self._probe() is Health.PENDING

    def validate(self) -> bool:
        """Whether it could be reused now: open, not broken, no unread bytes, peer still there.

        Never blocks: one ``poll`` with a zero timeout.
        """
        return self._reusable()

    def _probe(self) -> Health:
        if self._state is ConnectionState.CLOSED:
            return Health.CLOSED
        stream = self.stream
        # Plain streams skip the ABC isinstance (~0.5 µs on every hand-out and release).
        if type(stream) is not trio.SocketStream and isinstance(stream, trio.SSLStream):
            if self._unread:
                return Health.PENDING
            health, self._unread = probe_tls(stream, self._poller)
            if health is not Health.CLOSED and self._session_fresh:
                self._session_fresh = not self._key.save_session(stream)
            return health
        if not self._poller.poll(0):
            return Health.OK
        fd = stream.socket.fileno()
        if fd < 0:
            return Health.CLOSED
        try:
            data = _peek(fd, 1, socket.MSG_PEEK)
        except OSError:
            return Health.CLOSED
        if data is None:
            return Health.OK
        return Health.PENDING if data else Health.CLOSED

    def _reusable(self) -> bool:
        if self._broken:
            return False
        # Fast path, twice per acquire/release cycle: a plain socket with nothing to read.
        if type(self.stream) is _SocketStream and not self._poller.poll(0):
            return self._state is not _CLOSED
        return self._probe() is Health.OK

    # -- trio.abc.Stream -------------------------------------------------------

    def _check_in_use(self) -> None:
        if self._state is not _IN_USE:
            if self._state is _CLOSED and self._pool.closed:
                raise trio.ClosedResourceError(
                    "connection is closed: the pool was closed (leaving open_pool's"
                    " block closes every connection, borrowed ones too)"
                )
            raise trio.ClosedResourceError(
                f"connection is {self._state.value}: it was released or discarded"
            )

    # The wrappers below run on every read and write: one identity check inline (the
    # method that raises is called only when it fails), then the underlying call in a
    # try block, which costs nothing unless it raises.

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of *data* (see :meth:`trio.abc.SendStream.send_all`)."""
        if self._state is not _IN_USE:
            self._check_in_use()
        try:
            await self.stream.send_all(data)
        except BaseException as exc:
            # Cancelled or failed part-way: an unknown amount was sent. Never reuse it.
            self._failed(exc)
            raise

    async def wait_send_all_might_not_block(self) -> None:
        """See :meth:`trio.abc.SendStream.wait_send_all_might_not_block`."""
        if self._state is not _IN_USE:
            self._check_in_use()
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Receive some bytes (see :meth:`trio.abc.ReceiveStream.receive_some`).

        Returns ``b""`` at end of file, after which the connection is never reused.
        """
        if self._state is not _IN_USE:
            self._check_in_use()
        if self._unread:
            if max_bytes is not None and max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
            await trio.lowlevel.checkpoint()
            size = len(self._unread) if max_bytes is None else max_bytes
            chunk, self._unread = self._unread[:size], self._unread[size:]
            return chunk
        try:
            data = await self.stream.receive_some(max_bytes)
        except BaseException as exc:
            self._failed(exc)
            raise
        if not data:
            self._broken = True
            if self._unproven is not None:
                self._verdict(False)
        else:
            if self._unproven is not None:
                self._verdict(True)
            if self._session_fresh:
                assert isinstance(self.stream, trio.SSLStream)
                self._session_fresh = not self._key.save_session(self.stream)
        return data

    @property
    def address(self) -> str | None:
        """The IP address the pool dialed for it, when it chose one among the addresses
        of a host name (see :doc:`upstreams`); ``None`` for IP literals, Unix sockets
        and proxies."""
        return None if self._address is None else self._address.ip

    def _verdict(self, success: bool) -> None:
        """The first read of a new connection decided: a byte arrived (its address
        works), or the peer closed or reset it first (a failure of its address)."""
        address = self._unproven
        assert address is not None
        self._unproven = None
        if success:
            address.succeeded(trio.current_time(), self._key.key)
        else:
            address.failed(trio.current_time(), self._key.key)

    def _failed(self, exc: BaseException) -> None:
        """A read or write raised: never reuse the connection, and after a TLS error never
        offer the key's saved session again."""
        self._broken = True
        if self._unproven is not None and isinstance(exc, (OSError, trio.BrokenResourceError)):
            self._verdict(False)  # reset before the first response byte
        if isinstance(self.stream, trio.SSLStream) and is_tls_error(exc):
            self._key.forget_session()  # never offer the session again after a TLS error

    async def aclose(self) -> None:
        """Discard the connection (close it for good); a no-op if already closed or returned.

        A later :meth:`ConnectionPool.release` or ``discard`` of it does nothing.
        """
        if self._state is ConnectionState.IN_USE:
            self._pool.discard(self)
            self._closed_by_user = True
        await trio.lowlevel.checkpoint()
