"""The proxy model: what a proxy URL means, checked before any I/O.

A :class:`Proxy` is an immutable value (equal proxies hash alike), so it can be part of a
:class:`~trio_pool.PoolKey`: connections through different proxies, or through the same
proxy with other credentials or headers, are never shared. The I/O that opens a tunnel
through one lives in :mod:`trio_pool._tunnel`.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import SplitResult, quote, unquote

from ._redact import MASK, redact_url, shape_of, split_url

__all__ = ["PROXY_SCHEMES", "Proxy", "as_proxy"]

PROXY_SCHEMES: Final = ("http", "socks5", "socks5h")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN: Final = re.compile(r"[\x00-\x20\x7f]")  # controls, CR/LF, NUL and spaces
_BAD_VALUE: Final = re.compile(r"[\x00\r\n]")
_SOCKS_MAX: Final = 255  # RFC 1929: user name and password are 1-255 bytes each
_RESERVED_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding"})


def _socks_extra() -> None:
    """Import socksio, or say how to install it."""
    try:
        import socksio  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "SOCKS proxies need the socksio package: pip install 'trio-pool[socks]'"
        ) from exc


def _percent_decoded(text: str) -> str | None:
    """``text`` percent-decoded as UTF-8, or ``None`` if it is not UTF-8 (no exception
    is left behind to quote the bytes of a password)."""
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        return None


def _host_of(parts: SplitResult, shown: str) -> str:
    netloc = parts.netloc.rpartition("@")[2]
    host = parts.hostname
    if not host:
        raise ValueError(f"proxy URL has no host: {shown!r}")
    if netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"proxy URL has an invalid IPv6 address: {shown!r}") from None
    elif ":" in host:
        raise ValueError(f"proxy URL has an invalid host: {shown!r}")
    return host


def _check_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
) -> tuple[tuple[str, str], ...]:
    if headers is None:
        return ()
    if isinstance(headers, (str, bytes)):
        raise TypeError("headers must be a mapping or pairs of str, not a string")
    items = headers.items() if isinstance(headers, Mapping) else headers
    checked: list[tuple[str, str]] = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"headers must hold (name, value) pairs of str, not {shape_of(item)}")
        name, value = item
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"headers must hold str names and values, not {shape_of(item)}")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"headers: invalid header name {name!r}")
        if _BAD_VALUE.search(value):
            raise ValueError(f"headers: the value of {name!r} contains CR, LF or NUL")
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"headers: {name!r} is set by trio_pool, not by the proxy's headers")
        checked.append((name, value))
    return tuple(checked)


def _check_auth(auth: object) -> tuple[str, str] | None:
    if auth is None:
        return None
    if (
        not isinstance(auth, tuple)
        or len(auth) != 2
        or not all(isinstance(part, str) for part in auth)
    ):
        raise TypeError(f"auth must be a (username, password) tuple of str, not {shape_of(auth)}")
    username, password = auth
    if _BAD_VALUE.search(username + password):
        raise ValueError("auth must not contain CR, LF or NUL")
    if not _encodable(username + password):
        raise ValueError("auth must be text that UTF-8 can encode (no lone surrogates)")
    return (username, password)


def _encodable(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (without an exception left behind: it would
    hold the text, a password)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, init=False, repr=False, slots=True)
class Proxy:
    """A proxy that connections can be opened through, parsed from its URL.

    ``http://[user:password@]host:port`` is an HTTP proxy: ``CONNECT`` tunnels (and, for
    the HTTP layer, plain-http requests forwarded in absolute form).
    ``socks5://[user:password@]host:port`` is a SOCKS5 proxy to which trio_pool sends the
    origin's resolved address; with ``socks5h://`` the proxy resolves the name. SOCKS
    needs the ``socks`` extra (``pip install 'trio-pool[socks]'``, for socksio).

    Everything is checked here, before any I/O. Credentials in the URL are
    percent-decoded; for an HTTP proxy they become a ``Proxy-Authorization: Basic``
    header (UTF-8), for SOCKS5 a user name/password login (RFC 1929).

    A proxy is an immutable value: two proxies with the same URL, credentials and
    headers are equal and pool their connections together. Its ``repr`` hides the
    password (``Proxy('http://user:***@127.0.0.1:3128')``), and so does every error
    message about it.

    Args:
        url: The proxy URL. It must name a port; a path (other than ``/``), query or
            fragment is an error.
        auth: ``(username, password)``, instead of credentials in the URL (giving both
            is an error).
        headers: Extra headers for an HTTP proxy, sent with every ``CONNECT`` (and
            forwarded request), e.g. a ``Proxy-Authorization`` of another scheme.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: The URL is unparsable or unsupported (``https://`` proxies,
            unknown schemes, no port, CR/LF or spaces, ...), or the arguments contradict
            each other; the message names the argument.
        ImportError: A SOCKS proxy, and socksio is not installed.

    Attributes:
        scheme: ``"http"``, ``"socks5"`` or ``"socks5h"``.
        host: Host name (lower case) or IP address (IPv6 without brackets).
        port: TCP port.
        auth: ``(username, password)``, or ``None``.
        headers: The extra headers, as ``(name, value)`` pairs.
    """

    scheme: str
    host: str
    port: int
    auth: tuple[str, str] | None
    headers: tuple[tuple[str, str], ...]
    _request_headers: tuple[tuple[bytes, bytes], ...] = field(compare=False)

    def __init__(
        self,
        url: str,
        *,
        auth: tuple[str, str] | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"proxy URL must be a str, not {type(url).__name__}")
        shown = redact_url(url)  # every message below: never the password
        if _FORBIDDEN.search(url):
            raise ValueError(f"proxy URL must not contain spaces or control characters: {shown!r}")
        if "://" not in url:
            raise ValueError(
                f"proxy URL needs a scheme (http://, socks5://, socks5h://): {shown!r}"
            )
        parts, port = split_url(url, "proxy URL")
        scheme = parts.scheme.lower()
        if scheme == "https":
            raise ValueError(
                f"proxy URL {shown!r}: https:// proxies (TLS to the proxy) are not supported;"
                " an http:// proxy still carries https traffic, end to end encrypted, in a"
                " CONNECT tunnel"
            )
        if scheme not in PROXY_SCHEMES:
            raise ValueError(
                f"proxy URL scheme must be one of {', '.join(PROXY_SCHEMES)}, not {scheme!r}"
            )
        host = _host_of(parts, shown)
        if port is None or port == 0:
            raise ValueError(f"proxy URL must name a port (1-65535): {shown!r}")
        if parts.path not in ("", "/") or "?" in url or "#" in url:
            raise ValueError(f"proxy URL must not have a path, query or fragment: {shown!r}")
        checked_auth = _check_auth(auth)
        if parts.username is not None:
            if checked_auth is not None:
                raise ValueError("give the proxy's credentials in the URL or in auth, not both")
            url_user = _percent_decoded(parts.username)
            url_password = _percent_decoded(parts.password or "")
            if url_user is None or url_password is None:
                raise ValueError(f"proxy URL credentials are not UTF-8: {shown!r}")
            checked_auth = _check_auth((url_user, url_password))
        checked_headers = _check_headers(headers)
        request_headers: list[tuple[bytes, bytes]] = []
        if scheme == "http":
            if checked_auth is not None:
                if ":" in checked_auth[0]:
                    raise ValueError("auth: a Basic user name cannot contain ':'")
                if any(name.lower() == "proxy-authorization" for name, _ in checked_headers):
                    raise ValueError("auth and a Proxy-Authorization header contradict each other")
                token = base64.b64encode(":".join(checked_auth).encode()).decode("ascii")
                request_headers.append((b"Proxy-Authorization", f"Basic {token}".encode()))
            request_headers.extend((n.encode(), v.encode()) for n, v in checked_headers)
        else:
            if checked_headers:
                raise ValueError("headers apply to http:// proxies only, not to SOCKS")
            if checked_auth is not None:
                username, password = (part.encode() for part in checked_auth)
                if not 1 <= len(username) <= _SOCKS_MAX or len(password) > _SOCKS_MAX:
                    raise ValueError(
                        "SOCKS5 credentials must be a 1-255 byte user name and a password"
                        " of at most 255 bytes"
                    )
            _socks_extra()
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "auth", checked_auth)
        object.__setattr__(self, "headers", checked_headers)
        object.__setattr__(self, "_request_headers", tuple(request_headers))

    @property
    def url(self) -> str:
        """The URL without credentials, e.g. ``http://127.0.0.1:3128``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def is_socks(self) -> bool:
        """Whether this is a SOCKS5 proxy (``socks5://`` or ``socks5h://``)."""
        return self.scheme != "http"

    @property
    def request_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """What an HTTP proxy gets with every request: ``Proxy-Authorization: Basic``
        from the credentials (if any), then :attr:`headers`. Empty for SOCKS."""
        return self._request_headers

    def __repr__(self) -> str:
        """``Proxy('http://user:***@127.0.0.1:3128', headers=['X-Trace'])``: the URL
        with the user name but not the password, the header names but not their
        values."""
        url = self.url
        if self.auth is not None:
            scheme, _, address = url.partition("://")
            url = f"{scheme}://{quote(self.auth[0], safe='')}:{MASK}@{address}"
        extra = f", headers={[name for name, _ in self.headers]!r}" if self.headers else ""
        return f"Proxy({url!r}{extra})"


def as_proxy(value: object, name: str = "proxy") -> Proxy | None:
    """What the HTTP layer's ``proxy=`` arguments accept, as a :class:`Proxy`.

    Accepts ``None``, a :class:`Proxy`, a URL ``str``, and (without importing httpx) an
    ``httpx.URL`` or ``httpx.Proxy``. An ``httpx.Proxy`` keeps its ``auth`` and
    ``headers``; one with an ``ssl_context`` is an error (that only applies to https://
    proxies, which trio_pool does not support).

    Raises:
        TypeError: Anything else (the message names ``name``).
        ValueError: As for :class:`Proxy`.
    """
    if value is None or isinstance(value, Proxy):
        return value
    if isinstance(value, str):
        return Proxy(value)
    httpx = sys.modules.get("httpx")
    if httpx is not None:
        if isinstance(value, httpx.URL):
            return Proxy(str(value))
        if isinstance(value, httpx.Proxy):
            if value.ssl_context is not None:
                raise ValueError(
                    f"{name}: an httpx.Proxy ssl_context applies to https:// proxies only,"
                    " which trio_pool does not support"
                )
            return Proxy(str(value.url), auth=value.auth, headers=list(value.headers.items()))
    raise TypeError(
        f"{name} must be a proxy URL str or a trio_pool.Proxy, not {type(value).__name__}"
    )
