"""The connect step: a socket to the origin, direct, over a Unix socket, or through a proxy.

:func:`open_transport` is the one call the pool's connect makes before TLS. Whatever the
route, it returns a :class:`trio.SocketStream` positioned at the first byte the origin
sends, so TLS (server name = the origin), health probes and session resumption work the
same through a tunnel as without one. Each protocol is a thin loop around its sans-IO
state machine: h11 for the HTTP ``CONNECT`` exchange, socksio for SOCKS5.

Nothing here has its own timeout: the pool runs the whole connect (tunnel and TLS
included) under ``connection_timeout``, and :class:`Phase` tells it where a connect
that timed out was (:func:`route_of` names the proxy or socket). On any failure or
cancellation the socket is closed before the exception leaves.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Final

import idna
import trio

from ._exceptions import ConnectError, ProxyError
from ._proxy import Proxy

if TYPE_CHECKING:
    import h11

    from ._state import PoolKey

__all__ = ["Phase", "open_transport", "route_of"]

_PEEK_SIZE: Final = 16384  # h11's own limit on a response head (max_incomplete_event_size)
_SOCKS_VERSION: Final = 5
# Bytes of a SOCKS5 reply after its first 5 (VER REP RSV ATYP and the address's first
# byte), by address type: IPv4 and IPv6 addresses, then the port; a domain name's first
# byte is its length.
_SOCKS_REST: Final = {1: 4 - 1 + 2, 4: 16 - 1 + 2}
_SOCKS_DOMAIN: Final = 3


class Phase:
    """Where a connect is, in words for the message of one that times out: ``"TCP
    connect"``, ``"CONNECT exchange with the proxy"``, ``"SOCKS5 handshake with the
    proxy"``, ``"TLS handshake with the origin"``, ... Set by :func:`open_transport` and
    by the pool as the connect goes on."""

    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = "TCP connect"


def route_of(key: PoolKey) -> str:
    """How a connection of ``key`` reaches ``key.host:key.port``, for messages:
    ``"127.0.0.1:8080"``, ``"origin.test:443 through the proxy http://127.0.0.1:3128"``,
    ``"localhost:80 over the Unix socket '/run/x.sock'"``, or for a forwarding
    connection ``"the proxy http://127.0.0.1:3128 (to forward requests)"``. A proxy is
    named by its :attr:`~trio_pool.Proxy.url`, which has no credentials."""
    if key.proxy is not None and key.forward:
        return f"the proxy {key.proxy.url} (to forward requests)"
    where = f"{key.host}:{key.port}"
    if key.proxy is not None:
        return f"{where} through the proxy {key.proxy.url}"
    if key.uds is not None:
        return f"{where} over the Unix socket {key.uds!r}"
    return where


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _wire_host(host: str) -> str:
    """The origin's name as a proxy gets it: ASCII, international names IDNA-encoded
    (UTS #46, as trio encodes names it resolves), at most 255 bytes (SOCKS5's limit)."""
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise ConnectError(f"cannot send the host name {host!r} to a proxy: {exc}") from exc
    if len(host) > 255:
        raise ConnectError(f"cannot send a host name of {len(host)} bytes to a proxy")
    return host


async def open_transport(key: PoolKey, phase: Phase) -> trio.SocketStream:
    """Open the socket a connection of ``key`` runs on, keeping ``phase`` up to date.

    - ``key.uds``: a Unix-socket connect to that path.
    - any TCP connect binds to ``key.local_address`` first when it is set.
    - no proxy: a TCP connect to ``key.host:key.port``.
    - ``key.forward``: a TCP connect to the HTTP proxy itself (``key.host:key.port`` are
      its address); the HTTP layer sends absolute-form requests on it.
    - an HTTP proxy: a TCP connect to the proxy, then ``CONNECT host:port`` (with the
      proxy's ``Proxy-Authorization`` and headers); the stream is returned after the
      2xx response head, with any byte the origin sent after it still unread.
    - a SOCKS5 proxy: a TCP connect to the proxy and the SOCKS5 handshake (login if the
      proxy has credentials); ``socks5://`` resolves ``host`` here first, ``socks5h://``
      sends the name.

    Raises:
        ProxyError: The proxy refused or broke the tunnel.
        ConnectError: The proxy, the Unix socket or (for ``socks5://``) the origin's
            name could not be reached or resolved.
        OSError: A direct TCP connect failed (the pool wraps it, naming the origin).
    """
    if key.uds is not None:
        phase.name = "connect to the Unix socket"
        try:
            return await trio.open_unix_socket(key.uds)
        except OSError as exc:
            raise ConnectError(f"cannot connect to the Unix socket {key.uds!r}: {exc}") from exc
    proxy = key.proxy
    if proxy is None:
        return await trio.open_tcp_stream(key.host, key.port, local_address=key.local_address)
    # A name that cannot be sent to a proxy fails here, before any I/O.
    target = key.host if key.forward else _wire_host(key.host)
    phase.name = "TCP connect to the proxy"
    try:
        stream = await trio.open_tcp_stream(proxy.host, proxy.port, local_address=key.local_address)
    except OSError as exc:
        raise ConnectError(f"cannot connect to the proxy {proxy.url}: {exc}") from exc
    if key.forward:
        return stream
    try:
        if proxy.is_socks:
            await _socks5(stream, proxy, key.host, target, key.port, phase)
        else:
            phase.name = "CONNECT exchange with the proxy"
            await _http_connect(stream, proxy, target, key.port)
    except BaseException as exc:
        stream.socket.close()
        if isinstance(exc, (OSError, trio.BrokenResourceError)) and not isinstance(
            exc, ConnectError
        ):
            raise ProxyError(
                f"the proxy {proxy.url} broke the tunnel to {_authority(key.host, key.port)}:"
                f" {exc or type(exc).__name__}",
                proxy=proxy.url,
            ) from exc
        raise
    return stream


# -- HTTP CONNECT -----------------------------------------------------------------------


async def _consume(sock: trio.socket.SocketType, count: int, proxy: Proxy) -> None:
    """Read and drop ``count`` bytes that a peek showed are waiting."""
    while count > 0:
        data = await sock.recv(count)
        if not data:  # pragma: no cover - peeked bytes vanished
            raise ProxyError(f"the proxy {proxy.url} closed the connection", proxy=proxy.url)
        count -= len(data)


async def _http_connect(stream: trio.SocketStream, proxy: Proxy, host: str, port: int) -> None:
    """``CONNECT host:port`` and its response, read so that no byte after it is lost.

    The response is read with ``MSG_PEEK`` and h11 parses it; then exactly the bytes of
    the head are consumed. Bytes the origin sent right behind the 2xx head (a
    server-speaks-first protocol) stay in the socket for the stream's reader.
    """
    import h11  # only tunnels need it: ``import trio_pool`` stays light

    authority = _authority(host, port)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method=b"CONNECT",
        target=authority.encode("ascii"),
        headers=[(b"Host", authority.encode("ascii")), *proxy.request_headers],
    )
    head = conn.send(request)
    end = conn.send(h11.EndOfMessage())
    assert head is not None  # (None only for ConnectionClosed)
    assert end is not None
    await stream.send_all(head + end)
    sock = stream.socket
    while True:
        peeked = await sock.recv(_PEEK_SIZE, socket.MSG_PEEK)
        if not peeked:
            raise ProxyError(
                f"the proxy {proxy.url} closed the connection before answering CONNECT {authority}",
                proxy=proxy.url,
            )
        conn.receive_data(peeked)
        try:
            response = _next_response(conn)
        except h11.RemoteProtocolError as exc:
            raise ProxyError(
                f"the proxy {proxy.url} answered CONNECT {authority} with something that is"
                f" not HTTP: {exc}",
                proxy=proxy.url,
            ) from exc
        if response is None:
            await _consume(sock, len(peeked), proxy)  # all of it is head: read on
            continue
        status = response.status_code
        if not 200 <= status < 300:
            raise ProxyError(_refusal(proxy, authority, response), status=status, proxy=proxy.url)
        await _consume(sock, len(peeked) - len(conn.trailing_data[0]), proxy)
        return


def _next_response(conn: h11.Connection) -> h11.Response | None:
    """The final response in what h11 has, skipping 1xx; ``None`` if it needs more."""
    import h11

    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            return None
        if isinstance(event, h11.Response):
            return event
        # an InformationalResponse (1xx): the final response follows


def _refusal(proxy: Proxy, authority: str, response: h11.Response) -> str:
    reason = response.reason.decode("latin-1")
    message = f"the proxy {proxy.url} refused CONNECT {authority}: {response.status_code} {reason}"
    if response.status_code in (401, 407):  # (tinyproxy answers bad credentials with 401)
        challenge = ", ".join(
            value.decode("latin-1")
            for name, value in response.headers
            if name in (b"proxy-authenticate", b"www-authenticate")
        )
        message += f" (challenge: {challenge or 'none'};"
        message += (
            " the credentials were rejected)"
            if proxy.auth is not None
            else " give credentials in the proxy URL)"
        )
    return message


# -- SOCKS5 ----------------------------------------------------------------------------


async def _receive_exactly(stream: trio.SocketStream, count: int, proxy: Proxy) -> bytes:
    """``count`` bytes, never more (what follows belongs to the origin)."""
    data = b""
    while len(data) < count:
        chunk = await stream.receive_some(count - len(data))
        if not chunk:
            raise ProxyError(
                f"the SOCKS5 proxy {proxy.url} closed the connection during the handshake",
                proxy=proxy.url,
            )
        data += chunk
    return data


async def _resolve(host: str, port: int) -> str:
    """``socks5://``: the origin's address, resolved here (as trio would resolve it)."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConnectError(
            f"cannot resolve {host!r} for a socks5:// proxy (socks5h:// lets the proxy"
            f" resolve it): {exc}"
        ) from exc
    if not infos:  # pragma: no cover - getaddrinfo raises rather than return nothing
        raise ConnectError(f"cannot resolve {host!r}: no address")
    return str(infos[0][4][0]).partition("%")[0]  # (an IPv6 scope id is no SOCKS address)


async def _socks5(
    stream: trio.SocketStream, proxy: Proxy, host: str, wire_host: str, port: int, phase: Phase
) -> None:
    """The SOCKS5 greeting, login (RFC 1929) and ``CONNECT``, through socksio.

    ``socks5://`` sends the address ``host`` resolves to here; ``socks5h://`` sends
    ``wire_host`` (the name, IDNA-encoded) for the proxy to resolve.
    """
    try:
        from socksio import ProtocolError, socks5
    except ImportError as exc:  # pragma: no cover - Proxy() checked it already
        raise ImportError(
            "SOCKS proxies need the socksio package: pip install 'trio-pool[socks]'"
        ) from exc
    address = wire_host
    if proxy.scheme == "socks5":
        phase.name = "name lookup of the origin (for the socks5:// proxy)"
        address = await _resolve(host, port)
    phase.name = "SOCKS5 handshake with the proxy"
    target = _authority(host, port)

    def fail(what: str) -> ProxyError:
        return ProxyError(f"the SOCKS5 proxy {proxy.url} {what} ({target})", proxy=proxy.url)

    conn = socks5.SOCKS5Connection()
    method = (
        socks5.SOCKS5AuthMethod.NO_AUTH_REQUIRED
        if proxy.auth is None
        else socks5.SOCKS5AuthMethod.USERNAME_PASSWORD
    )
    try:
        conn.send(socks5.SOCKS5AuthMethodsRequest([method]))
        await stream.send_all(conn.data_to_send())
        data = await _receive_exactly(stream, 2, proxy)
        if data[0] != _SOCKS_VERSION:
            raise fail(f"answered with something that is not SOCKS5: {data!r}")
        auth_reply = conn.receive_data(data)
        if not isinstance(auth_reply, socks5.SOCKS5AuthReply) or auth_reply.method != method:
            raise fail(
                "accepts none of our login methods"
                + (" (it wants a user name and password)" if proxy.auth is None else "")
            )
        if proxy.auth is not None:
            username, password = proxy.auth
            conn.send(socks5.SOCKS5UsernamePasswordRequest(username.encode(), password.encode()))
            await stream.send_all(conn.data_to_send())
            login = conn.receive_data(await _receive_exactly(stream, 2, proxy))
            if not isinstance(login, socks5.SOCKS5UsernamePasswordReply) or not login.success:
                raise fail("rejected the user name and password")
        phase.name = "SOCKS5 CONNECT request to the proxy"
        conn.send(
            socks5.SOCKS5CommandRequest.from_address(socks5.SOCKS5Command.CONNECT, (address, port))
        )
        await stream.send_all(conn.data_to_send())
        head = await _receive_exactly(stream, 5, proxy)
        if head[0] != _SOCKS_VERSION:
            raise fail(f"answered CONNECT with something that is not SOCKS5: {head!r}")
        rest = head[4] + 2 if head[3] == _SOCKS_DOMAIN else _SOCKS_REST.get(head[3], 0)
        reply = conn.receive_data(head + await _receive_exactly(stream, rest, proxy))
    except ProtocolError as exc:
        raise fail(f"sent a malformed reply: {exc}") from exc
    if not isinstance(reply, socks5.SOCKS5Reply):  # pragma: no cover - socksio's contract
        raise fail("sent an unexpected reply")
    if reply.reply_code != socks5.SOCKS5ReplyCode.SUCCEEDED:
        raise fail(f"refused CONNECT: {reply.reply_code.name.lower().replace('_', ' ')}")
