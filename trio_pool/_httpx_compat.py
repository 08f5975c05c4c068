"""httpx's transport arguments and response extensions, for :mod:`trio_pool.httpx`.

Kept apart from the transport itself: how ``verify``, ``cert``, ``trust_env``,
``http1``/``http2``, ``limits`` and ``retries`` translate into the pool's terms, and
the ``network_stream`` a response carries. Imports httpx (and its httpcore), so only
:mod:`trio_pool.httpx` imports this.
"""

from __future__ import annotations

import math
import os
import select
import ssl
from typing import Any, Final

import httpcore
import httpx
import trio

from ._config import PoolConfig
from ._connection import PooledConnection
from ._pool import ConnectionPool

__all__ = [
    "NetworkStream",
    "check_limits",
    "check_retries",
    "http2_mode",
    "limits_config",
    "tls_settings",
]

_CLOSE_TIMEOUT: Final = 1.0
#: httpx's default limits (its ``DEFAULT_LIMITS``); their ``max_keepalive_connections``
#: is accepted as "not chosen".
DEFAULT_LIMITS: Final = httpx.Limits(max_connections=100, max_keepalive_connections=20)
_DEFAULT_KEEPALIVE: Final = DEFAULT_LIMITS.max_keepalive_connections


def tls_settings(
    verify: object,
    cert: object,
    trust_env: bool,
    verify_cert: object,
    ssl_context: object,
) -> tuple[bool, ssl.SSLContext | None]:
    """httpx's ``verify``, ``cert`` and ``trust_env`` as the pool's ``verify_cert`` and
    ``ssl_context`` (``verify=None`` means not given: the older arguments apply).

    A context is made only when something differs from the pool's own default, so a
    transport with the defaults shares the pool's contexts (and TLS sessions).

    Raises:
        TypeError: ``verify`` or ``cert`` of the wrong type.
        ValueError: ``verify`` together with ``verify_cert``/``ssl_context``.
        OSError, ssl.SSLError: A CA or certificate file that cannot be loaded.
    """
    if verify is None:
        if not isinstance(verify_cert, bool):
            raise TypeError(f"verify_cert must be a bool, not {type(verify_cert).__name__}")
        if cert is None and (verify_cert is not True or ssl_context is not None):
            return verify_cert, ssl_context  # type: ignore[return-value]  # checked later
        verify = ssl_context if ssl_context is not None else verify_cert
    elif verify_cert is not True or ssl_context is not None:
        raise ValueError("verify excludes verify_cert and ssl_context (it is httpx's form of both)")
    if cert is not None:
        cert = _check_cert(cert)
    keylog = os.environ.get("SSLKEYLOGFILE") if trust_env else None
    context: ssl.SSLContext | None
    if verify is True:
        cafile = os.environ.get("SSL_CERT_FILE") if trust_env else None
        capath = os.environ.get("SSL_CERT_DIR") if trust_env and not cafile else None
        if not (cafile or capath or cert or keylog):
            return True, None
        context = ssl.create_default_context(cafile=cafile or None, capath=capath or None)
    elif verify is False:
        if not (cert or keylog):
            return False, None
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif isinstance(verify, (str, os.PathLike)):
        path = os.fspath(verify)
        if not isinstance(path, str) or not path:
            raise ValueError(f"verify must name a CA file or directory, got {verify!r}")
        if os.path.isdir(path):
            context = ssl.create_default_context(capath=path)
        else:
            context = ssl.create_default_context(cafile=path)
    elif isinstance(verify, ssl.SSLContext):
        context = verify  # the caller's own: loaded into, as httpx does, never keylogged
        keylog = None
    else:
        raise TypeError(
            "verify must be a bool, a CA file or directory path, or an ssl.SSLContext,"
            f" not {type(verify).__name__}"
        )
    if cert is not None:
        context.load_cert_chain(*cert)
    if keylog:
        context.keylog_filename = keylog
    return True, context


def _check_cert(cert: object) -> tuple[str, str | None, str | None]:
    """httpx's ``cert``: a path, ``(cert, key)`` or ``(cert, key, password)``."""
    if isinstance(cert, (str, os.PathLike)):
        cert = (cert,)
    if isinstance(cert, tuple) and len(cert) in (1, 2, 3):
        parts = [os.fspath(p) if isinstance(p, os.PathLike) else p for p in cert]
        parts += [None] * (3 - len(parts))
        if (
            isinstance(parts[0], str)
            and parts[0]
            and all(p is None or isinstance(p, str) for p in parts)
        ):
            return parts[0], parts[1], parts[2]
    # Never the value itself: it may hold the key's password.
    raise TypeError(
        "cert must be a certificate file path, (cert, key) or (cert, key, password),"
        f" not a {type(cert).__name__}"
        + (f" of {len(cert)} items" if isinstance(cert, tuple) else "")
    )


def http2_mode(http1: object, http2: object) -> bool | str:
    """httpx's ``http1``/``http2`` pair as :class:`~trio_pool.http.HTTPClient`'s ``http2``.

    ``http1=False, http2=True`` is httpcore's HTTP/2 only: with prior knowledge on
    ``http://`` too, hence ``"prior-knowledge"``.

    Raises:
        TypeError: ``http1`` is not a bool.
        ValueError: Both off.
    """
    if not isinstance(http1, bool):
        raise TypeError(f"http1 must be a bool, not {type(http1).__name__}")
    if http1:
        return http2  # type: ignore[return-value]  # HTTPClient checks it
    if http2 is False:
        raise ValueError("http1=False needs http2=True (or 'prior-knowledge'): no protocol left")
    if http2 is True:
        return "prior-knowledge"
    return http2  # type: ignore[return-value]


def check_retries(retries: object) -> int:
    """httpx's ``retries``: how many times a failed connect is tried again."""
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(
            f"retries must be an int (httpx's connect retries), not {type(retries).__name__}"
            " (retry= is the retry of idempotent requests on a dead reused connection)"
        )
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries!r}")
    return retries


def retry_delay(attempt: int) -> float:
    """httpcore's backoff before connect retry ``attempt`` (1-based): 0, 0.5, 1, 2..."""
    return 0.0 if attempt <= 1 else 0.5 * 2 ** (attempt - 2)


def limits_config(limits: object) -> dict[str, Any]:
    """``httpx.Limits`` as :func:`trio_pool.open_pool` overrides.

    - ``max_connections`` -> ``max_total`` (all hosts, as httpcore counts it) and
      ``max_size`` (so one host may use them all); ``None``: no ``max_total``, and
      ``max_size`` stays the pool's default.
    - ``keepalive_expiry`` -> ``max_idle_time`` (``None``: idle connections never
      expire by age).
    - ``max_keepalive_connections`` has no counterpart: the pool closes idle
      connections by age, not count. ``None`` and httpx's default (20) are accepted,
      any other value raises.

    Raises:
        TypeError: Not an ``httpx.Limits``.
        ValueError: A ``max_keepalive_connections`` the pool cannot honour, or a value
            the pool refuses.
    """
    if not isinstance(limits, httpx.Limits):
        raise TypeError(f"limits must be an httpx.Limits, not {type(limits).__name__}")
    keepalive = limits.max_keepalive_connections
    if keepalive is not None and keepalive != _DEFAULT_KEEPALIVE:
        raise ValueError(
            f"limits.max_keepalive_connections={keepalive!r} cannot be honoured: the pool"
            " closes idle connections by age (keepalive_expiry), not by count"
        )
    overrides: dict[str, Any] = {}
    if limits.max_connections is not None:
        overrides["max_total"] = limits.max_connections
        overrides["max_size"] = limits.max_connections
    expiry = limits.keepalive_expiry
    overrides["max_idle_time"] = math.inf if expiry is None else expiry
    PoolConfig().replace(**overrides)  # checked now: ValueError names the field
    return overrides


def check_limits(limits: object, pool: ConnectionPool) -> None:
    """``limits`` given to a transport on a pool opened elsewhere: they are the
    pool's, so they must be what the pool already has.

    Raises:
        ValueError: The pool's configuration differs (the message says how to open
            the pool instead).
    """
    overrides = limits_config(limits)
    config = pool.config
    differ = [
        f"{name}={value!r} (the pool has {getattr(config, name)!r})"
        for name, value in overrides.items()
        if getattr(config, name) != value
    ]
    if differ:
        raise ValueError(
            "limits are the pool's, not the transport's: this pool differs in "
            + ", ".join(differ)
            + "; open the pool with them (trio_pool.open_pool(...)) or use"
            " trio_pool.httpx.open_client(limits=...)"
        )


class NetworkStream:
    """The ``network_stream`` response extension: httpcore's ``AsyncNetworkStream``
    interface on a pooled connection.

    ``get_extra_info`` works on every response, over HTTP/1.1 and HTTP/2 (there the
    shared connection's socket, as httpcore's). ``read``/``write``/``aclose`` only on a
    stream handed over by ``101 Switching Protocols`` or a 2xx to ``CONNECT``: that
    connection is the caller's for good (never pooled again; ``aclose`` closes it and
    frees its pool slot). Errors are httpcore's (``ReadError``, ``WriteTimeout`` ...),
    as clients written for httpx's transport (httpx-ws) catch them.

    Args:
        stream: The connection's trio stream (what ``get_extra_info`` reads).
        conn: The pooled connection, when it is the request's alone (HTTP/1.1);
            ``None`` for a shared HTTP/2 connection.
        pool: Its pool.
        buffered: Bytes read after the head of a handed-over stream (then the
            caller's); ``None`` while the pool's.
    """

    __slots__ = ("_buffered", "_conn", "_owned", "_pool", "_stream")

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: PooledConnection | None,
        pool: ConnectionPool,
        buffered: bytes | None,
    ) -> None:
        self._stream = stream
        self._conn = conn
        self._pool = pool
        self._owned = buffered is not None and conn is not None
        self._buffered = buffered or b""

    def _check_owned(self) -> PooledConnection:
        if not self._owned or self._conn is None:
            if self._conn is None:
                raise RuntimeError(
                    "this network_stream is a shared HTTP/2 connection's: only its"
                    " get_extra_info works"
                )
            raise RuntimeError(
                "this network_stream belongs to the pool: it can be read and written"
                " only after 101 Switching Protocols or a 2xx to CONNECT"
            )
        return self._conn

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` at the end of the stream."""
        conn = self._check_owned()
        if self._buffered:
            data, self._buffered = self._buffered[:max_bytes], self._buffered[max_bytes:]
            await trio.lowlevel.checkpoint()
            return data
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            try:
                return bytes(await conn.receive_some(max_bytes))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc
        assert scope.cancelled_caught
        raise httpcore.ReadTimeout(f"no data within {timeout} s")

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Send all of ``buffer``."""
        conn = self._check_owned()
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            try:
                await conn.send_all(buffer)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc
            return
        assert scope.cancelled_caught
        raise httpcore.WriteTimeout(f"sending took longer than {timeout} s")

    async def aclose(self) -> None:
        """Close the connection for good (it leaves the pool)."""
        conn = self._check_owned()
        self._owned = False
        self._pool.discard(conn)
        await trio.lowlevel.checkpoint()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> NetworkStream:
        """Not supported: TLS inside a handed-over stream."""
        raise NotImplementedError("PoolTransport's network_stream does not support start_tls")

    def get_extra_info(self, info: str) -> Any:
        """httpcore's keys: ``client_addr``, ``server_addr``, ``ssl_object`` (the
        :class:`trio.SSLStream`, which answers ``selected_alpn_protocol()``,
        ``getpeercert()``, ``version()``, ``cipher()`` as an ``SSLObject`` does),
        ``socket``, ``is_readable``; ``None`` for any other."""
        stream = self._stream
        raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        if not isinstance(raw, trio.SocketStream):  # pragma: no cover - the pool opens these
            return None
        sock = raw.socket
        if info == "ssl_object":
            return stream if isinstance(stream, trio.SSLStream) else None
        if info == "socket":
            return sock
        try:
            if info == "client_addr":
                return sock.getsockname()
            if info == "server_addr":
                return sock.getpeername()
            if info == "is_readable":
                readable, _, _ = select.select([sock.fileno()], [], [], 0)
                return bool(readable)
        except (OSError, ValueError):  # closed: nothing to say
            return None
        return None
