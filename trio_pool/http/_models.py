"""Parsed request targets and :class:`Response`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import idna
import trio

from .._redact import redact_url, split_url
from ._exceptions import ResponseNotRead, StreamConsumed

if TYPE_CHECKING:
    import h11

    from .._proxy import Proxy
    from ._exceptions import StreamClosed


class Exchange(Protocol):
    """What a :class:`Response` reads its body from: a body reader
    (``trio_pool.http._interfaces.BodyReader``, of either protocol)."""

    target: Target
    done: bool
    complete: bool

    async def read_all(self) -> bytes: ...

    async def read_chunk(self) -> bytes: ...

    def abandon(self, because: str = ...) -> None: ...

    def closed_error(self) -> StreamClosed: ...


__all__ = [
    "Response",
    "Target",
    "authority",
    "check_method",
    "first_header",
    "h11_request",
    "parse_url",
]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# RFC 9110 token: what a method may be made of.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Spaces and control characters: urlsplit silently drops CR, LF and TAB anywhere and
# strips the others at the ends, so a different URL than the caller's would be used.
_CONTROL: Final = re.compile(r"[\x00-\x20\x7f]")


class Target:
    """Where a URL sends a request: the pool key's parts and the request line's.

    ``host`` is ASCII: an internationalised name is in its IDNA 2008 form (what trio
    connects to), so the connection, the TLS server name and the ``Host`` header all
    name the same domain.

    The route is the client's to set (see ``HTTPClient._route``): ``proxy`` and ``uds``
    go into the pool key; ``forward`` means the request goes to an ``http://`` proxy
    in absolute form (``target`` is then the whole URL), the others open a tunnel (or a
    Unix socket) and send the request as without one.
    """

    __slots__ = ("forward", "host", "host_header", "port", "proxy", "sni", "target", "tls", "uds")

    def __init__(
        self,
        host: str,
        port: int,
        tls: bool,
        target: bytes,
        host_header: bytes,
        *,
        proxy: Proxy | None = None,
        uds: str | None = None,
        forward: bool = False,
        sni: str | None = None,
    ) -> None:
        self.host: str = host
        self.port: int = port
        self.tls: bool = tls
        self.target: bytes = target
        self.host_header: bytes = host_header
        self.proxy: Proxy | None = proxy
        self.uds: str | None = uds
        self.forward: bool = forward
        #: The TLS server name when not ``host`` (httpx's ``sni_hostname`` extension).
        self.sni: str | None = sni


def authority(host: str, port: int, tls: bool) -> bytes:
    """``host[:port]`` as the ``Host`` header and an absolute URL have it: an IPv6
    literal in brackets, the port only when it is not the scheme's default."""
    host_bytes = host.encode("ascii")
    if ":" in host:  # IPv6 literal
        host_bytes = b"[" + host_bytes + b"]"
    if port != (443 if tls else 80):
        host_bytes += b":%d" % port
    return host_bytes


def parse_url(url: object) -> Target:
    """Check an ``http://`` or ``https://`` URL and split it for a request.

    Raises:
        TypeError: ``url`` is not a str.
        ValueError: Not an absolute http(s) URL with a host, a bad port, credentials in
            it, a host name that is not valid IDNA 2008, or spaces, control characters
            (CR, LF and TAB included) or non-ASCII characters outside the host.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    shown = redact_url(url)  # every message below: never the password
    if _CONTROL.search(url):
        raise ValueError(
            f"url must not contain spaces or control characters (CR, LF, TAB...): {shown!r}"
        )
    parts, port = split_url(url, "url")
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"url must start with http:// or https://, got {shown!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"url has no host: {shown!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"url must not contain credentials: {shown!r}")
    if port == 0:
        raise ValueError(f"url has port 0: {shown!r}")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    try:
        target = path.encode("ascii")
    except UnicodeError:
        raise ValueError(f"url must be ASCII (percent-encode the path): {shown!r}") from None
    if not host.isascii():
        # The encoding trio uses to connect (trio.socket's encode_hostname): IDNA 2008
        # with UTS 46 mapping, not Python's IDNA 2003 codec ("faß.de" is not "fass.de").
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise ValueError(
                f"url has a host name that is not valid IDNA: {shown!r} ({exc})"
            ) from None
    tls = scheme == "https"
    port = _DEFAULT_PORTS[scheme] if port is None else port
    return Target(host, port, tls, target, authority(host, port, tls))


def h11_request(method: bytes, target: bytes, fields: list[tuple[bytes, bytes]]) -> h11.Request:
    """The h11 request for these parts.

    Raises:
        ValueError: h11 refuses them. h11 quotes a bad header value in its message, and
            a value may be a credential (``Authorization``, ``Cookie``): this message
            names the header instead, and h11's error is not left behind as its
            ``__context__``.
    """
    import h11

    try:
        return h11.Request(method=method, target=target, headers=fields)
    except h11.LocalProtocolError as exc:
        message = str(exc)
    for name, value in fields:
        if repr(value) in message:
            message = (
                f"the value of the {name.decode('latin-1')!r} header has CR, LF, NUL or"
                " whitespace at its ends (the value is not shown: it may be a secret)"
            )
            break
    else:
        if "header value" in message:  # pragma: no cover - h11 always quotes the value
            message = "a header value has CR, LF, NUL or whitespace at its ends"
    raise ValueError(f"invalid request: {message}")


def check_method(method: object) -> bytes:
    """The method as upper-case bytes, after checking it is an HTTP token.

    Methods are case-sensitive on the wire (RFC 9110 §9.1) and every registered one is
    upper case: ``"get"`` is sent as ``GET``, as httpx sends it (so it is also treated
    as the idempotent method it is).

    Raises:
        TypeError: Not a str.
        ValueError: Empty, or not a valid token.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, not {type(method).__name__}")
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"method must be an HTTP token such as 'GET', got {method!r}")
    method = method.upper()
    if method == "CONNECT":
        raise ValueError("method CONNECT is not supported (tunnels are not pooled)")
    return method.encode("ascii")


def first_header(headers: Sequence[tuple[bytes, bytes]], name: str | bytes) -> bytes | None:
    """The value of the first of ``headers`` called ``name`` (any case), or ``None``."""
    key = (name.encode("latin-1") if isinstance(name, str) else name).lower()
    for header, value in headers:
        if header == key:
            return value
    return None


class Response:
    """An HTTP response.

    From :meth:`HTTPClient.request <trio_pool.http.HTTPClient.request>` it is complete
    and its connection is already back in the pool (or closed). From
    :meth:`HTTPClient.stream <trio_pool.http.HTTPClient.stream>` the body is still on
    the wire: read it with :meth:`aiter_bytes` or :meth:`aread`; a body not read to
    the end when the ``async with`` block exits costs its connection (it is discarded).

    How a streamed body ends, as httpx has it:

    - :meth:`aread` keeps the body: later :meth:`aread` calls and :meth:`aiter_bytes`
      iterators return it again, inside the block or after it.
    - An :meth:`aiter_bytes` iterator hands the body out once: after it started, another
      iterator or :meth:`aread` raises :class:`~trio_pool.http.StreamConsumed`.
    - A body abandoned before its end (a read that timed out, failed or was cancelled,
      :meth:`aclose`, or leaving the block) is gone with its connection: every later
      read raises :class:`~trio_pool.http.StreamClosed` saying which (also where an
      iterator had started on it: unlike httpx, which says ``StreamConsumed`` there,
      the more useful fact wins).
    - :attr:`is_complete` is True only once the whole body has arrived.

    Attributes:
        status: The status code, e.g. ``200``.
        reason: The reason phrase, e.g. ``b"OK"``.
        headers: The headers as ``(name, value)`` byte pairs, names lowercased, in the
            order received.
        http_version: ``"1.1"``, ``"1.0"``, or ``"2"`` for HTTP/2.
    """

    __slots__ = (
        "_consumed",
        "_content",
        "_exchange",
        "headers",
        "http_version",
        "reason",
        "status",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        http_version: str,
        content: bytes | None,
        exchange: Exchange | None,
    ) -> None:
        self.status: int = status
        self.reason: bytes = reason
        self.headers: Sequence[tuple[bytes, bytes]] = headers
        self.http_version: str = http_version
        self._content = content
        self._exchange = exchange
        self._consumed = False

    def __repr__(self) -> str:
        return f"<Response [{self.status} {self.reason.decode('latin-1')}]>"

    def header(self, name: str | bytes) -> bytes | None:
        """The value of the first header called ``name`` (any case), or ``None``."""
        return first_header(self.headers, name)

    @property
    def keep_alive(self) -> bool:
        """Whether the server let the connection be reused: HTTP/1.1 without
        ``Connection: close``. (HTTP/1.0 connections are never reused.)"""
        if self.http_version != "1.1":
            return False
        for header, value in self.headers:
            if header == b"connection" and b"close" in value.lower():
                return False
        return True

    @property
    def content(self) -> bytes:
        """The whole body.

        Raises:
            ResponseNotRead: A streamed body that was not read (use :meth:`aread`); a
                :class:`RuntimeError` too.
        """
        if self._content is None:
            raise ResponseNotRead("the body was not read: call await response.aread() first")
        return self._content

    @property
    def is_complete(self) -> bool:
        """Whether the whole body has arrived (always true for ``request``); false for a
        body abandoned before its end."""
        return self._exchange is None or self._exchange.complete

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """Iterate over the body in chunks as they arrive (the content, if read).

        The iterator raises :class:`~trio_pool.http.StreamConsumed` if another iterator
        already started on a body that was not kept, and
        :class:`~trio_pool.http.StreamClosed` if the body was abandoned.
        """
        return _BodyIterator(self)

    async def aread(self) -> bytes:
        """Read the rest of the body and return all of it (also kept as :attr:`content`).

        Raises:
            StreamConsumed: An :meth:`aiter_bytes` iterator already took (part of) the
                body.
            StreamClosed: The body was abandoned before its end (a failed read,
                :meth:`aclose`, or the ``stream()`` block exited).
        """
        if self._content is None:
            exchange = self._exchange
            assert exchange is not None
            if self._consumed and not (exchange.done and not exchange.complete):
                await trio.lowlevel.checkpoint()
                raise _consumed_error(exchange)
            self._content = await exchange.read_all()
        else:
            await trio.lowlevel.checkpoint()
        return self._content

    async def aclose(self) -> None:
        """Give up the rest of the body: an unfinished exchange discards its connection.

        Idempotent; a no-op on a complete response. Reads after it raise
        :class:`~trio_pool.http.StreamClosed` (unless the body was complete).
        """
        exchange = self._exchange
        if exchange is not None and not exchange.done:
            exchange.abandon("aclose() was called before the body's end")
        await trio.lowlevel.checkpoint()


def _consumed_error(exchange: Exchange) -> StreamConsumed:
    return StreamConsumed(
        f"the response body from {exchange.target.host}:{exchange.target.port} was"
        " already read by aiter_bytes() (use aread() to keep it)"
    )


class _BodyIterator:
    __slots__ = ("_response", "_sent", "_started")

    def __init__(self, response: Response) -> None:
        self._response = response
        self._sent = False
        self._started = False

    def __aiter__(self) -> _BodyIterator:
        return self

    async def __anext__(self) -> bytes:
        response = self._response
        if response._content is not None:
            await trio.lowlevel.checkpoint()
            if self._sent or not response._content:
                raise StopAsyncIteration
            self._sent = True
            return response._content
        exchange = response._exchange
        assert exchange is not None
        if not self._started:
            if response._consumed and not (exchange.done and not exchange.complete):
                await trio.lowlevel.checkpoint()
                raise _consumed_error(exchange)
            response._consumed = self._started = True
        chunk = await exchange.read_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk
