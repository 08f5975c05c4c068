"""The header block of an HTTP/2 request, built complete and valid before any I/O:
pseudo-headers first, names lowercased, HTTP/1.1 connection-specific headers dropped,
credentials never indexed; and the ``content-length`` the body is held to."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from hpack import NeverIndexedHeaderTuple

from .._redact import shape_of

__all__ = ["LastBlock", "check_bytes", "content_length", "request_headers"]

_HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)
# Kept out of HPACK's dynamic table (never indexed), as h2's own normalization does.
_SECRET: Final = frozenset({b"authorization", b"proxy-authorization"})
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_BAD_VALUE: Final = re.compile(rb"[\r\n\x00]")


def check_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("ascii")
        except UnicodeError:
            pass  # raised below: the codec's error would quote the value (a secret?)
        raise ValueError(f"{what} must be ASCII (the value is not shown)")
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def request_headers(
    method: object,
    target: object,
    authority: object,
    scheme: object,
    headers: object,
) -> list[tuple[bytes, bytes]]:
    """The header block of a request: pseudo-headers first, then ``headers`` lowercased
    without the HTTP/1.1 connection-specific ones (``Host`` becomes ``:authority``).

    The block is complete and valid as it leaves here (values stripped, credentials
    never indexed), so h2's own outbound normalization and validation, which would
    redo all of it per request, is off (the configuration of
    :class:`~trio_pool.http._http2.H2Connection`)."""
    method_b = check_bytes(method, "method")
    target_b = check_bytes(target, "target")
    authority_b = check_bytes(authority, "authority")
    scheme_b = check_bytes(scheme, "scheme")
    if not method_b or not target_b or not authority_b:
        raise ValueError("method, target and authority must not be empty")
    if _BAD_VALUE.search(target_b + authority_b) or b" " in target_b:
        raise ValueError("target and authority must not contain spaces, CR, LF or NUL")
    if not _TOKEN.fullmatch(method_b):
        raise ValueError(f"method must be an HTTP token, got {method!r}")
    if scheme_b not in (b"http", b"https"):
        raise ValueError(f"scheme must be 'http' or 'https', got {scheme!r}")
    block = [
        (b":method", method_b),
        (b":scheme", scheme_b),
        (b":authority", authority_b),
        (b":path", target_b),
    ]
    if not isinstance(headers, Sequence) or isinstance(headers, str | bytes):
        raise TypeError(f"headers must be a sequence of pairs, not {type(headers).__name__}")
    for pair in headers:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"headers must hold (name, value) pairs, not {shape_of(pair)}")
        name = check_bytes(pair[0], "header name").lower()
        value = check_bytes(pair[1], "header value").strip()
        if not name or name.startswith(b":"):
            raise ValueError(f"header name {pair[0]!r} is empty or a pseudo-header")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"header name {pair[0]!r} is not an HTTP token")
        if _BAD_VALUE.search(value):
            raise ValueError(f"the value of header {pair[0]!r} contains CR, LF or NUL")
        if name in _HOP_BY_HOP or (name == b"te" and value.lower() != b"trailers"):
            continue
        if name in _SECRET or (name == b"cookie" and len(value) < 20):
            block.append(NeverIndexedHeaderTuple(name, value))
        else:
            block.append((name, value))
    return block


def content_length(block: list[tuple[bytes, bytes]]) -> int | None:
    """The ``content-length`` of a request's header block, or ``None``.

    Raises:
        ValueError: Not a number, or two different values.
    """
    length: int | None = None
    for name, value in block:
        if name == b"content-length":
            if not value.isdigit():
                raise ValueError(f"Content-Length must be a number, got {value!r}")
            if length is not None and int(value) != length:
                raise ValueError("headers must not have two different Content-Length values")
            length = int(value)
    return length


class LastBlock:
    """The header block of the last request on a connection and its Content-Length,
    given again without re-checking when the next request's arguments are the same
    (a client's requests often are: one method, authority and path, the same headers).

    :func:`request_headers` is a function of its arguments, so equal arguments give an
    equal block; the arguments are kept as a copy, so a caller changing its list later
    changes nothing here.
    """

    __slots__ = ("_arguments", "_block", "_length")

    def __init__(self) -> None:
        self._arguments: tuple[object, ...] | None = None
        self._block: list[tuple[bytes, bytes]] = []
        self._length: int | None = None

    def build(
        self, method: object, target: object, authority: object, scheme: object, headers: object
    ) -> tuple[list[tuple[bytes, bytes]], int | None]:
        """:func:`request_headers` and :func:`content_length` of the arguments.

        Raises:
            TypeError, ValueError: As :func:`request_headers` and :func:`content_length`.
        """
        arguments = None
        if type(headers) is list or type(headers) is tuple:
            arguments = (method, target, authority, scheme, tuple(headers))
            if arguments == self._arguments:
                return self._block, self._length
        block = request_headers(method, target, authority, scheme, headers)
        length = content_length(block)
        if arguments is not None:
            self._arguments, self._block, self._length = arguments, block, length
        return block, length
