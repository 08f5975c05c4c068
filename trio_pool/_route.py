"""Where a connection goes: the :class:`Route` value, its checks, and the key table.

A :class:`Route` is checked once, when it is made, and from then on travels as one value
(host, port, TLS settings, proxy, Unix socket, forwarding, and the HTTP namespace of the
key). :class:`KeyTable` maps routes, and the raw arguments of the public acquire
methods, to the pool's per-key state.

This module imports nothing above :mod:`trio_pool._state`.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Callable
from typing import NamedTuple

from ._proxy import Proxy
from ._redact import redact_url
from ._state import KeyState, PoolKey, PoolState
from ._util import check_int

__all__ = ["HTTP2_MODES", "KeyTable", "Route", "SocketOption", "check_socket", "make_key"]

#: One socket option, as httpcore takes it: ``(level, option, value)`` with an ``int``
#: or ``bytes`` value, or ``(level, option, None, length)``.
SocketOption = tuple[int, int, int | bytes] | tuple[int, int, None, int]

#: The HTTP/2 namespaces of a key: ``"h2"`` (TLS, ALPN decides), ``"h2c"`` (prior knowledge).
HTTP2_MODES = frozenset({"h2", "h2c"})


class _RouteFields(NamedTuple):
    host: str
    port: int
    tls: bool
    sni: str | None
    verify_cert: bool
    ssl_context: ssl.SSLContext | None
    proxy: Proxy | None
    uds: str | None
    forward: bool
    http2: str | None
    http: bool
    local_address: str | None
    socket_options: tuple[SocketOption, ...] | None


class Route(_RouteFields):
    """Where a connection goes, checked and normalized: frozen and hashable.

    Made with the keyword arguments of :meth:`ConnectionPool.acquire
    <trio_pool.ConnectionPool.acquire>` (same checks, same messages), plus the key's
    namespace for trio_pool's HTTP clients. For plain TCP the TLS fields are always
    ``None`` / ``True`` / ``None`` (they must not split the key); for TLS ``sni`` is the
    server name, ``host`` unless given. Its fields are those of its :class:`PoolKey`.

    Args:
        http2: ``"h2"`` (TLS offers ALPN ``h2``) or ``"h2c"`` (HTTP/2 by prior
            knowledge): a key whose connections may be multiplexed; ``None`` otherwise.
        http: Lent only to trio_pool's HTTP/1.1 clients (see :attr:`PoolKey.http`).
        local_address: The source IP address of TCP connects (as httpx's
            ``local_address``), to the origin or to the proxy; not with ``uds``.
        socket_options: ``(level, option, value)`` tuples (or ``(level, option, None,
            length)``) set on the socket right after it connected, as httpcore does.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range (the message names it).
    """

    __slots__ = ()

    def __new__(
        cls,
        host: object,
        port: object,
        tls: object = False,
        sni: object = None,
        verify_cert: object = True,
        ssl_context: object = None,
        proxy: object = None,
        uds: object = None,
        forward: object = False,
        http2: str | None = None,
        http: bool = False,
        local_address: object = None,
        socket_options: object = None,
    ) -> Route:
        _check_host(host)
        port = check_int("port", port)
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be between 1 and 65535, got {port!r}")
        _check_tls(tls, sni, verify_cert, ssl_context)
        _check_way(host, port, tls, proxy, uds, forward)
        if http2 is not None and http2 not in HTTP2_MODES:
            raise ValueError(f"http2 must be 'h2', 'h2c' or None, got {http2!r}")
        if not tls:
            # Plain TCP: the TLS arguments mean nothing, and must not split the key.
            sni, verify_cert, ssl_context = None, True, None
        elif sni is None:
            sni = host
        local_address, socket_options = check_socket(local_address, socket_options, uds)
        fields = (host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward, http2, http)
        return tuple.__new__(cls, (*fields, local_address, socket_options))

    @property
    def key(self) -> PoolKey:
        """The :class:`PoolKey` of connections on this route."""
        return PoolKey(*self)

    @classmethod
    def of_key(cls, key: PoolKey) -> Route:
        """The route of a key (made from a route, so checked already)."""
        return tuple.__new__(cls, key)


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
    """Validate acquire arguments and build their :class:`PoolKey` (see :class:`Route`)."""
    return Route(host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward).key


def check_socket(
    local_address: object, socket_options: object, uds: object = None
) -> tuple[str | None, tuple[SocketOption, ...] | None]:
    """Check and normalize ``local_address`` (an IP address) and ``socket_options``
    (an iterable of tuples; none at all is ``None``, so it does not split the key).

    Raises:
        TypeError: Either has the wrong type.
        ValueError: Not an IP address, a malformed option, or ``local_address`` with
            ``uds``.
    """
    if local_address is not None:
        if not isinstance(local_address, str):
            raise TypeError(
                f"local_address must be a str (an IP address) or None,"
                f" not {type(local_address).__name__}"
            )
        try:
            ipaddress.ip_address(local_address)
        except ValueError:
            raise ValueError(
                f"local_address must be an IP address, got {local_address!r}"
            ) from None
        if uds is not None:
            raise ValueError("local_address means nothing for a Unix socket (uds)")
    if socket_options is None:
        return local_address, None
    if isinstance(socket_options, (str, bytes)) or not hasattr(socket_options, "__iter__"):
        raise TypeError(
            "socket_options must be an iterable of (level, option, value) tuples,"
            f" not {type(socket_options).__name__}"
        )
    options: list[SocketOption] = []
    for option in socket_options:
        options.append(_check_option(option))
    return local_address, tuple(options) or None


def _check_option(option: object) -> SocketOption:
    if not isinstance(option, tuple) or len(option) not in (3, 4):
        raise TypeError(
            "each socket option must be a tuple (level, option, value) or"
            f" (level, option, None, length), got {option!r}"
        )
    level, name, value, *length = option
    for what, number in (("level", level), ("option", name), *(("length", n) for n in length)):
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"a socket option's {what} must be an int, got {option!r}")
    if length:
        if value is not None:
            raise ValueError(f"a socket option with a length has the value None, got {option!r}")
        return (level, name, None, length[0])
    if isinstance(value, bytearray):
        value = bytes(value)
    if not isinstance(value, (int, bytes)):
        raise TypeError(f"a socket option's value must be an int or bytes, got {option!r}")
    return (level, name, int(value) if isinstance(value, int) else value)


def _check_host(host: object) -> None:
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


def _check_tls(tls: object, sni: object, verify_cert: object, ssl_context: object) -> None:
    """Check the TLS arguments, together: TLS settings without ``tls=True`` are an error."""
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


def _check_way(
    host: object, port: object, tls: object, proxy: object, uds: object, forward: object
) -> None:
    """Check the proxy, Unix-socket and forwarding arguments."""
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


class KeyTable:
    """The pool's keys, found by :class:`Route` or by the raw arguments of an acquire.

    A route maps to its key's state; so does each tuple of raw acquire arguments seen
    before (an *alias*), so the public acquire methods find their key with one tuple
    and one dict lookup, and check their arguments only the first time. Routes and
    argument tuples share one dict: a route has 13 fields, an argument tuple 2 or 9.

    Args:
        state: The pool's state machine (it holds the key states).
        now: The pool's clock.
        check_run: Raises unless called from the pool's own trio run (a new key reads
            the clock).
    """

    __slots__ = ("_aliases", "_check_run", "_now", "_state")

    def __init__(
        self, state: PoolState, now: Callable[[], float], check_run: Callable[[], None]
    ) -> None:
        self._state = state
        self._now = now
        self._check_run = check_run
        self._aliases: dict[tuple[object, ...], KeyState] = {}

    def lookup(self, route: Route) -> KeyState:
        """The state of ``route``'s key (made on first use)."""
        try:
            return self._aliases[route]
        except KeyError:
            pass
        self._check_run()  # the clock would fail deep inside trio
        state = self._state.key_state(route.key, self._now())
        self._aliases[route] = state
        state.aliases.append(route)
        return state

    def of_arguments(
        self,
        host: str,
        port: int,
        tls: bool,
        sni: str | None,
        verify_cert: bool,
        ssl_context: ssl.SSLContext | None,
        proxy: Proxy | None,
        uds: str | None,
        forward: bool,
    ) -> KeyState:
        """The key state of an acquire's arguments, checked (as :class:`Route`) the
        first time they are seen."""
        # The cache compares by equality, and 80.0 == 80, 0 == False: values of a wrong
        # type must reach Route's checks even when an equal valid key is cached.
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
            # and hash (it cannot equal one of the long ones).
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
        state = self.lookup(
            Route(host, port, tls, sni, verify_cert, ssl_context, proxy, uds, forward)
        )
        if args not in self._aliases:  # (int and str subclasses come here every time)
            self._aliases[args] = state
            state.aliases.append(args)
        return state

    def again(self, state: KeyState) -> KeyState:
        """The live state of ``state``'s key, if the pool dropped ``state`` meanwhile."""
        return self.lookup(Route.of_key(state.key)) if state.dropped else state

    def forget(self, state: KeyState) -> None:
        """Forget every alias of a dropped key."""
        for args in state.aliases:
            self._aliases.pop(args, None)
