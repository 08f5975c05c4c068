"""Credentials out of text: the one helper every message, log line and ``repr`` that
shows a URL goes through."""

from __future__ import annotations

from typing import Final
from urllib.parse import SplitResult, urlsplit

__all__ = ["MASK", "redact_url", "shape_of", "split_url"]

MASK: Final = "***"


def redact_url(url: str) -> str:
    """``url`` with the password in its user info replaced by ``***``.

    ``http://user:s3cr3t@host:3128`` becomes ``http://user:***@host:3128``; the user name
    stays (as Go's ``URL.Redacted`` keeps it), a URL without a password is returned as
    it is.

    It works on text that is no valid URL too (that is where it is needed most: in the
    message refusing it): the user info is everything between ``://`` (or the start, if
    there is none) and the *last* ``@``, and its password everything after its first
    ``:``. So a password with an unquoted ``/``, ``@``, space or control character is
    hidden whole; the price is that an ``@`` in the path of a URL whose authority has a
    ``:`` (``http://host:8080/a@b``) hides a bit too much: never too little.
    """
    scheme_end = url.find("://")
    start = 0 if scheme_end < 0 else scheme_end + 3
    at = url.rfind("@", start)
    if at < 0:
        return url
    user, colon, _ = url[start:at].partition(":")
    if not colon:
        return url
    return f"{url[:start]}{user}:{MASK}{url[at:]}"


def shape_of(value: object) -> str:
    """What ``value`` is, without its content (which may be a secret): ``str``, or for
    a tuple or list its items' types, ``tuple of (str, bytes)``."""
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of ({', '.join(type(v).__name__ for v in value)})"
    return type(value).__name__


def split_url(url: str, what: str) -> tuple[SplitResult, int | None]:
    """``urlsplit(url)`` and its port.

    Raises:
        ValueError: urlsplit refuses it, or the port is invalid. The message names
            ``what`` and shows the URL redacted, never urlsplit's own text (it can quote
            the authority, credentials and all; a bad port's text can be a piece of a
            password holding a ``/``), and urlsplit's error is not left behind as its
            ``__context__``.
    """
    problem = "an invalid port"
    try:
        parts = urlsplit(url)
    except ValueError:
        problem = (
            "an unparsable host (a broken [IPv6] literal, or a character that NFKC"
            " normalization turns into a delimiter)"
        )
    else:
        try:
            return parts, parts.port
        except ValueError:
            pass
    raise ValueError(f"{what} has {problem}: {redact_url(url)!r}")
