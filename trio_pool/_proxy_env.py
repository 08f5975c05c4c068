"""Proxies from the environment: ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``.

What httpx's ``trust_env=True`` reads, with its precedence, in one synchronous function
for the HTTP layer to call per request: :func:`environment_proxy`.

- Each variable is read lower case first (``https_proxy``), then upper case; a set but
  empty lower-case variable hides the upper-case one (as :func:`urllib.request.getproxies`
  does). Under CGI (``REQUEST_METHOD`` set) the upper-case ``HTTP_PROXY`` is ignored
  (CVE-2016-1000110, "httpoxy").
- ``{scheme}_proxy`` wins over ``all_proxy``; a value without ``://`` means ``http://``.
- ``NO_PROXY`` is a comma-separated list: ``*`` (no proxy at all), an IP address or
  ``localhost`` (that host exactly), ``example.com`` (it and its subdomains),
  ``.example.com`` (subdomains only), each optionally with ``:port``, or a
  ``scheme://host[:port]`` entry for one scheme only.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Final

from ._proxy import Proxy

__all__ = ["environment_proxy"]

_HOST_PORT: Final = re.compile(r"^(?P<host>\[[^\]]*\]|[^:]*)(?::(?P<port>\d+))?$")


def _variable(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """``(variable name, value)`` of ``{name}_proxy``, lower case first; ``None`` if unset
    or empty."""
    lower = f"{name}_proxy"
    if lower in environ:
        value = environ[lower].strip()
        return (lower, value) if value else None
    upper = lower.upper()
    if name == "http" and "REQUEST_METHOD" in environ:
        return None  # CGI: HTTP_PROXY may come from a request's Proxy: header
    value = environ.get(upper, "").strip()
    return (upper, value) if value else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _excluded(entry: str, scheme: str, host: str, port: int | None) -> bool:
    """Whether one ``NO_PROXY`` entry covers ``scheme://host:port``."""
    if "://" in entry:
        entry_scheme, _, entry = entry.partition("://")
        if entry_scheme.lower() != scheme:
            return False
    entry = entry.rstrip("/")
    if _is_ip(entry):  # a bare IPv6 address: its colons are no port
        pattern = entry.lower()
    else:
        match = _HOST_PORT.match(entry)
        if match is None:
            return False
        pattern = match["host"].strip("[]").lower()
        if match["port"] is not None and port != int(match["port"]):
            return False
    if not pattern:
        return False
    if _is_ip(pattern) or pattern == "localhost":
        return host == pattern
    pattern = pattern.removeprefix("*")  # "*.example.com" is ".example.com"
    if pattern.startswith("."):
        return host.endswith(pattern)
    return host == pattern or host.endswith("." + pattern)


def environment_proxy(
    scheme: str, host: str, port: int | None = None, environ: Mapping[str, str] | None = None
) -> Proxy | None:
    """The proxy the environment names for a request to ``scheme://host:port``.

    Args:
        scheme: ``"http"`` or ``"https"`` (of the request, not of the proxy).
        host: The request's host (IPv6 without brackets).
        port: The request's port, for ``NO_PROXY`` entries with one.
        environ: The environment; :data:`os.environ` if ``None``.

    Returns:
        The :class:`~trio_pool.Proxy`, or ``None`` for a direct connection.

    Raises:
        ValueError: A proxy variable holds an unusable URL (the message names it).
    """
    if environ is None:
        environ = os.environ
    scheme = scheme.lower()
    host = host.lower().rstrip(".")
    no_proxy = _variable(environ, "no")
    if no_proxy is not None:
        for raw in no_proxy[1].split(","):
            entry = raw.strip()
            if entry == "*":
                return None
            if entry and _excluded(entry, scheme, host, port):
                return None
    found = _variable(environ, scheme) or _variable(environ, "all")
    if found is None:
        return None
    name, url = found
    if "://" not in url:
        url = "http://" + url
    try:
        return Proxy(url)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
