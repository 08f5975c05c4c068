"""httpx on a trio_pool: :class:`PoolTransport`.

.. code-block:: python

    import httpx
    import trio_pool
    from trio_pool.httpx import PoolTransport

    async with trio_pool.open_pool() as pool:
        async with httpx.AsyncClient(transport=PoolTransport(pool)) as client:
            response = await client.get("http://127.0.0.1:8080/")

Or, in one line, a client on a pool of its own: ``async with
trio_pool.httpx.open_client() as client:`` (:func:`open_client`).

Needs the ``httpx`` extra (``pip install 'trio-pool[httpx]'``); ``import trio_pool``
alone never imports httpx. Requests go through :mod:`trio_pool.http` (h11), with its
keep-alive decisions and its safe retry of idempotent requests; response bodies are
streamed; errors become httpx's exception types.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

try:
    import httpx
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError("trio_pool.httpx needs httpx: pip install 'trio-pool[httpx]'") from _exc

import h11
import trio

from ._config import PoolConfig
from ._exceptions import (
    ConnectError,
    ConnectTimeout,
    PoolClosed,
    PoolError,
    PoolExhausted,
    ProxyError,
)
from ._httpx_compat import (
    DEFAULT_LIMITS,
    NetworkStream,
    check_limits,
    check_retries,
    http2_mode,
    limits_config,
    retry_delay,
    tls_settings,
)
from ._pool import ConnectionPool, open_pool
from ._proxy import Proxy
from ._trace import Trace, connect_trace
from .http._body import Body
from .http._client import (
    IDEMPOTENT_METHODS,
    HTTPClient,
    body_bytes,
    body_stream,
    check_framing,
    open_exchange,
    route_target,
    routed_target,
)
from .http._exceptions import (
    LocalProtocolError,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    StreamClosed,
    StreamConsumed,
    WriteError,
    WriteTimeout,
)
from .http._h2_exceptions import RequestNotProcessed
from .http._interfaces import BodyReader
from .http._models import Target, authority, h11_request
from .http._timeouts import NO_LIMIT, Timeout, phase_timeout

__all__ = ["PoolTransport", "open_client"]

_DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}
_CACHE_SIZE: Final = 256

# Most specific first: ConnectTimeout is a ConnectError, PoolTimeout a RequestTimeout.
_ERRORS: Final[tuple[tuple[type[BaseException], type[httpx.TransportError]], ...]] = (
    (PoolTimeout, httpx.PoolTimeout),
    (PoolExhausted, httpx.PoolTimeout),
    (ConnectTimeout, httpx.ConnectTimeout),
    (ProxyError, httpx.ProxyError),
    (ConnectError, httpx.ConnectError),
    (LocalProtocolError, httpx.LocalProtocolError),
    (WriteTimeout, httpx.WriteTimeout),
    (ReadTimeout, httpx.ReadTimeout),
    (WriteError, httpx.WriteError),
    (ReadError, httpx.ReadError),
    (RemoteProtocolError, httpx.RemoteProtocolError),
    # Refused (REFUSED_STREAM, GOAWAY) on every try: httpcore's type for it.
    (RequestNotProcessed, httpx.RemoteProtocolError),
    (PoolClosed, httpx.TransportError),
    (PoolError, httpx.TransportError),
)


def _to_httpx(exc: Exception, request: httpx.Request) -> Exception:
    """The httpx exception for one of ours (``exc`` itself if none fits)."""
    if isinstance(exc, StreamClosed):
        return httpx.StreamClosed()
    if isinstance(exc, StreamConsumed):  # pragma: no cover - httpx's Response reads once
        return httpx.StreamConsumed()
    for ours, theirs in _ERRORS:
        if isinstance(exc, ours):
            return theirs(str(exc), request=request)
    return exc


class PoolTransport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` that sends requests over a trio_pool.

    Args:
        pool: The pool to borrow connections from; the transport never closes it.
        verify_cert: For https: check the server's certificate and host name.
        ssl_context: For https: the :class:`ssl.SSLContext` to use.
        retry: Retry idempotent requests once when a reused connection was dead
            (never a request whose body is streamed).
        proxy: Send requests through this proxy, as httpx's ``proxy=`` has it: a URL
            ``str``, an ``httpx.URL``, an ``httpx.Proxy`` (its ``auth`` and
            ``headers`` are used) or a :class:`trio_pool.Proxy`; ``http://``,
            ``socks5://`` or ``socks5h://``. See :class:`trio_pool.http.HTTPClient`.
            Give it here, not to ``httpx.AsyncClient(proxy=...)``: httpx would send
            the proxied requests through a transport of its own.
        uds: Connect to this Unix socket path instead of the URL's host and port, as
            httpx's ``uds=`` (pooled per path; the URL still gives ``Host`` and TLS).
        trust_env: Take the proxy from ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``
            and ``NO_PROXY`` (read when the transport is made). Off by default:
            ``httpx.AsyncClient(transport=...)`` never applies the environment's
            proxies to a transport it was given, whatever its own ``trust_env``, so
            a transport that read them unasked would change what such clients do.
            Ignored when ``proxy`` or ``uds`` is given.
        http2: httpx's flag, same meaning: ``True`` offers ALPN ``h2`` on https and
            multiplexes requests over shared HTTP/2 connections when the server
            agrees (responses say ``http_version`` ``b"HTTP/2"``);
            ``"prior-knowledge"`` also speaks h2c to ``http://`` URLs. See
            :class:`trio_pool.http.HTTPClient`. Needs the ``http2`` extra (h2):
            without it the constructor raises :exc:`ImportError`.
        verify: httpx's form of ``verify_cert`` and ``ssl_context`` (excludes them):
            ``True``, ``False``, a CA file or directory path, or an
            :class:`ssl.SSLContext`.
        cert: httpx's client certificate: a file path, ``(cert, key)`` or
            ``(cert, key, password)`` (loaded into ``verify``'s context when that is
            one, as httpx does). With ``trust_env``, ``SSL_CERT_FILE``,
            ``SSL_CERT_DIR`` and ``SSLKEYLOGFILE`` apply as in httpx.
        http1: httpx's flag: ``False`` with ``http2=True`` is HTTP/2 only (prior
            knowledge on ``http://`` too, as httpcore).
        limits: ``httpx.Limits``; limits are the pool's, so they must match its
            configuration (``max_connections`` = ``max_total`` = ``max_size``,
            ``keepalive_expiry`` = ``max_idle_time``; see :func:`open_client`, which
            opens a pool with them).
        retries: httpx's connect retries (an ``int``).
        local_address: httpx's: the source IP address of the connections this
            transport opens (its connections are pooled apart from others').
        socket_options: httpx's: ``(level, option, value)`` tuples set on each new
            socket right after it connected, as httpcore does.

    Request extensions read: ``timeout``, ``trace`` (httpcore's event names),
    ``sni_hostname``, ``target``. Responses carry ``http_version``,
    ``reason_phrase`` and ``network_stream`` (over HTTP/2, the shared connection's:
    ``get_extra_info`` only); after ``101`` or a 2xx to ``CONNECT`` that stream is
    the caller's and never returns to the pool.

    Raises:
        TypeError: An argument of the wrong type (named), before any I/O.
        ValueError: A bad value (named), before any I/O.

    A refused tunnel raises ``httpx.ProxyError``; a request to an ``http://`` proxy
    that the proxy refuses (407, say) is its response, as with httpx. Request bodies
    that httpx streams (``content=`` an async iterator) are streamed, not buffered,
    over HTTP/1.1 and HTTP/2 alike: chunked (HTTP/1.1) unless ``Content-Length`` is
    set, and then held to it (``httpx.LocalProtocolError``). A request the server
    refused (``REFUSED_STREAM``, GOAWAY) on every try is an
    ``httpx.RemoteProtocolError``, as with httpcore.

    httpx's four timeouts apply separately, as in httpx's own transport: ``pool`` to
    the wait for a connection from the pool (``httpx.PoolTimeout``), ``connect`` to
    TCP connect plus TLS handshake (``httpx.ConnectTimeout``), ``write`` to each wait
    while sending the request, over HTTP/2 for flow-control window too
    (``httpx.WriteTimeout``), ``read`` to each read of the response head (counted
    from when the request is sent) and body (``httpx.ReadTimeout``); each error names
    the limit that fired. A ``None`` pool or connect limit leaves the pool's
    ``acquire_timeout`` or ``connection_timeout`` in force (httpx: no limit). See
    :class:`trio_pool.http.Timeout`.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        verify_cert: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        retry: bool = True,
        proxy: str | httpx.URL | httpx.Proxy | Proxy | None = None,
        uds: str | None = None,
        trust_env: bool = False,
        http2: bool | str = False,
        verify: ssl.SSLContext | str | os.PathLike[str] | bool | None = None,
        cert: str | tuple[str, str | None] | tuple[str, str | None, str | None] | None = None,
        http1: bool = True,
        limits: httpx.Limits | None = None,
        retries: int = 0,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> None:
        self._retries = check_retries(retries)
        if not isinstance(trust_env, bool):
            raise TypeError(f"trust_env must be a bool, not {type(trust_env).__name__}")
        http2 = http2_mode(http1, http2)
        if limits is not None:
            if not isinstance(pool, ConnectionPool):
                raise TypeError(
                    f"pool must be a trio_pool.ConnectionPool, not {type(pool).__name__}"
                )
            check_limits(limits, pool)
        verify_cert, ssl_context = tls_settings(verify, cert, trust_env, verify_cert, ssl_context)
        self._client = HTTPClient(
            pool,
            verify_cert=verify_cert,
            ssl_context=ssl_context,
            retry=retry,
            proxy=proxy,
            uds=uds,
            trust_env=trust_env,
            http2=http2,
            local_address=local_address,
            socket_options=socket_options,
        )
        self._targets: dict[tuple[bytes, str, int | None], Target] = {}
        self._requests: dict[
            tuple[bytes, bytes, tuple[tuple[bytes, bytes], ...], int | None], h11.Request
        ] = {}

    @property
    def pool(self) -> ConnectionPool:
        """The pool requests borrow from."""
        return self._client.pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return the response with its body still streaming."""
        url = request.url
        scheme = url.raw_scheme
        # The ASCII (IDNA 2008) form, as httpx puts in the Host header: url.host is the
        # Unicode form, which ssl would encode for SNI with IDNA 2003.
        host = url.raw_host.decode("ascii")
        key = (scheme, host, url.port)
        route = self._targets.get(key)
        if route is None:
            if scheme not in _DEFAULT_PORTS:
                raise httpx.UnsupportedProtocol(
                    f"PoolTransport supports http and https URLs, not {url.scheme!r}",
                    request=request,
                )
            if not host:
                raise httpx.UnsupportedProtocol("the URL has no host", request=request)
            port = url.port or _DEFAULT_PORTS[scheme]
            tls = scheme == b"https"
            route = route_target(
                self._client, Target(host, port, tls, b"", authority(host, port, tls))
            )
            if len(self._targets) >= 1024:
                self._targets.clear()
            self._targets[key] = route
        method = request.method.encode("ascii")
        extensions = request.extensions
        request_target = extensions.get("target", url.raw_path)
        target = Target(
            route.host,
            route.port,
            route.tls,
            request_target,
            b"",
            proxy=route.proxy,
            uds=route.uds,
            forward=route.forward,
            sni=_sni(extensions.get("sni_hostname")),
        )
        fields = request.headers.raw
        if route.forward:
            # To an http:// proxy: the whole URL, and the proxy's own headers.
            names = {name.lower() for name, _ in fields}
            request_target = routed_target(route, request_target, fields, names)
        body: Body
        try:
            body = body_bytes(request.content)
            length: int | None = len(body)
        except httpx.RequestNotRead:
            # A streamed body: sent as httpx's stream produces it, never buffered.
            stream = body_stream(request.stream)
            if stream is None:
                raise TypeError(
                    "PoolTransport needs an async request stream (httpx.AsyncByteStream),"
                    f" not {type(request.stream).__name__}"
                ) from None
            body = stream
            length = None
        # The same head for the same body length is built and checked once: h11's
        # validation costs more than the rest of the glue together.
        head_key = (method, request_target, tuple(fields), length)
        event = self._requests.get(head_key)
        if event is None:
            event = _h11_request(method, request_target, fields, body, length, request)
            if len(self._requests) >= _CACHE_SIZE:
                self._requests.clear()
            self._requests[head_key] = event
        limits = _limits(request)
        idempotent = method in IDEMPOTENT_METHODS
        trace = _trace(extensions.get("trace"), request)
        try:
            exchange = await self._open(target, event, body, idempotent, limits, trace)
        except ValueError as exc:  # pragma: no cover - checked before any I/O
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        except PoolError as exc:
            raise _to_httpx(exc, request) from exc
        head = exchange.response
        return httpx.Response(
            status_code=head.status_code,
            headers=head.headers.raw_items(),
            stream=_ResponseStream(exchange, request)
            if trace is None
            else _TracedResponseStream(exchange, request, trace),
            extensions=_extensions(
                exchange,
                self._client.pool,
                head.status_code == 101 or (method == b"CONNECT" and 200 <= head.status_code < 300),
            ),
        )

    async def _open(
        self,
        target: Target,
        event: h11.Request,
        body: Body,
        idempotent: bool,
        limits: Timeout,
        trace: Trace | None,
    ) -> BodyReader:
        """Send the request, with httpx's ``retries`` of a failed connect (as
        httpcore: after 0, 0.5, 1, 2 ... s; a refused proxy is an answer, not retried)
        and the ``trace`` extension reporting the connect this request starts."""
        attempt = 0
        while True:
            token = connect_trace.set(trace) if trace is not None else None
            try:
                return await open_exchange(
                    self._client, target, event, body, idempotent, limits, trace
                )
            except ConnectError as exc:
                if isinstance(exc, ProxyError) or attempt >= self._retries:
                    raise
            finally:
                if token is not None:
                    connect_trace.reset(token)
            attempt += 1
            await trio.sleep(retry_delay(attempt))

    async def aclose(self) -> None:
        """Nothing to close: the pool belongs to whoever opened it."""
        await trio.lowlevel.checkpoint()


def _h11_request(
    method: bytes,
    target: bytes,
    fields: list[tuple[bytes, bytes]],
    body: Body,
    length: int | None,
    request: httpx.Request,
) -> h11.Request:
    """The h11 request for these parts, checked as :class:`~trio_pool.http.HTTPClient`
    checks its own (header syntax, then the framing of a body of ``length`` bytes, or
    of a streamed one: ``None``).

    Raises:
        httpx.LocalProtocolError: h11 refuses the head (its message quotes no header
            value), or its framing headers cannot describe the body.
    """
    try:
        event = h11_request(method, target, fields)
        check_framing(event, body if length is not None else None)  # type: ignore[arg-type]
    except ValueError as exc:
        raise httpx.LocalProtocolError(str(exc), request=request) from exc
    return event


def _sni(value: object) -> str | None:
    """The ``sni_hostname`` extension, checked."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TypeError(f"the sni_hostname extension must be a non-empty str, got {value!r}")
    return value


def _trace(value: object, request: httpx.Request) -> Trace | None:
    """The ``trace`` extension, its info dicts completed as httpcore's are: ``request``
    in the HTTP events' ``.started`` (not ``response_closed``'s), ``return_value``
    (``None``) in every ``.complete``."""
    if value is None:
        return None
    if not callable(value):
        raise TypeError(f"the trace extension must be an async callable, got {value!r}")
    user: Trace = value

    async def trace(name: str, info: dict[str, Any]) -> None:
        if not name.startswith("http"):
            pass
        elif name.endswith(".started"):
            if not name.endswith("response_closed.started"):
                info = {"request": request, **info}
        elif name.endswith(".complete") and not info:
            info = {"return_value": None}
        await user(name, info)

    return trace


class UseDefault:
    """The type of :data:`USE_DEFAULT`."""

    def __repr__(self) -> str:
        return "USE_DEFAULT"


#: ``open_client``'s ``limits`` not given: httpx's defaults for a pool it opens, the
#: pool's own configuration for one given.
USE_DEFAULT: Final = UseDefault()


def _extensions(exchange: BodyReader, pool: ConnectionPool, switched: bool) -> dict[str, Any]:
    """A response's extensions: ``http_version``, ``reason_phrase`` and
    ``network_stream``. After ``101`` or a 2xx to ``CONNECT`` (``switched``)
    the connection leaves HTTP: it is the caller's, never pooled again."""
    head = exchange.response
    extensions: dict[str, Any] = {
        "http_version": b"HTTP/" + head.http_version,
        "reason_phrase": head.reason,
    }
    connection = exchange.connection
    if connection is not None:  # the socket is the request's alone (HTTP/1.1)
        if switched:
            connection, buffered = exchange.detach()
            extensions["network_stream"] = NetworkStream(
                connection.stream, connection, pool, buffered
            )
        else:
            extensions["network_stream"] = NetworkStream(connection.stream, connection, pool, None)
    else:  # a stream of a shared HTTP/2 connection: its socket's details only
        stream = exchange.shared_stream
        if stream is not None:
            extensions["network_stream"] = NetworkStream(stream, None, pool, None)
    return extensions


def _limits(request: httpx.Request) -> Timeout:
    """httpx's timeout extension (``connect``, ``read``, ``write``, ``pool``) as our
    :class:`~trio_pool.http.Timeout`: each limit applies to its own phase."""
    timeouts = request.extensions.get("timeout")
    if not timeouts:
        return NO_LIMIT
    try:
        return phase_timeout(
            timeouts.get("connect"),
            timeouts.get("read"),
            timeouts.get("write"),
            timeouts.get("pool"),
        )
    except (TypeError, ValueError) as exc:
        raise httpx.LocalProtocolError(f"bad timeout extension: {exc}", request=request) from exc


class _ResponseStream(httpx.AsyncByteStream):
    """The response body, read from the connection as httpx asks for it.

    A body that arrived whole with its head (HTTP/2) is handed over in one piece
    without another wait, as :meth:`HTTPClient.request <trio_pool.http.HTTPClient.request>`
    takes it: the wait for the head was the checkpoint (``aclose`` is one too).
    """

    def __init__(self, exchange: BodyReader, request: httpx.Request) -> None:
        self._exchange = exchange
        self._request = request
        self._whole = True  # not yet asked for its first piece
        self._ended = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._whole:
            self._whole = False
            body = self._exchange.read_complete_nowait()  # None: not all here (HTTP/1.1)
            if body is not None:
                self._ended = True
                if body:
                    return body
        if self._ended:
            raise StopAsyncIteration
        try:
            chunk = await self._exchange.read_chunk()
        except PoolError as exc:
            raise _to_httpx(exc, self._request) from exc
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """A body not read to its end costs the connection (it is discarded)."""
        self._exchange.abandon("the response was closed before the body's end")
        await trio.lowlevel.checkpoint()


class _TracedResponseStream(_ResponseStream):
    """The body of a request with the ``trace`` extension: reports
    ``http11.receive_response_body.*`` (or ``http2.``) and ``.response_closed.*``."""

    def __init__(self, exchange: BodyReader, request: httpx.Request, trace: Trace) -> None:
        super().__init__(exchange, request)
        self._trace = trace
        self._prefix = exchange.trace_prefix
        self._started = self._ended = False

    async def __anext__(self) -> bytes:
        name = self._prefix + "receive_response_body"
        if not self._started:
            self._started = True
            await self._trace(name + ".started", self._exchange.trace_info)
        try:
            return await super().__anext__()
        except StopAsyncIteration:
            if not self._ended:
                self._ended = True
                await self._trace(name + ".complete", {})
            raise
        except Exception as exc:
            self._ended = True
            await self._trace(name + ".failed", {"exception": exc})
            raise

    async def aclose(self) -> None:
        name = self._prefix + "response_closed"
        await self._trace(name + ".started", self._exchange.trace_info)
        await super().aclose()
        await self._trace(name + ".complete", {})


@asynccontextmanager
async def open_client(
    *,
    verify: ssl.SSLContext | str | os.PathLike[str] | bool = True,
    cert: str | tuple[str, str | None] | tuple[str, str | None, str | None] | None = None,
    http1: bool = True,
    http2: bool = False,
    proxy: str | httpx.URL | httpx.Proxy | Proxy | None = None,
    limits: httpx.Limits | UseDefault | None = USE_DEFAULT,
    trust_env: bool = True,
    uds: str | None = None,
    retries: int = 0,
    retry: bool = True,
    pool: ConnectionPool | None = None,
    pool_config: PoolConfig | None = None,
    **client_args: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """An :class:`httpx.AsyncClient` on a trio_pool, in one line.

    .. code-block:: python

        async with trio_pool.httpx.open_client(timeout=10) as client:
            response = await client.get("https://example.org/")

    Takes ``httpx.AsyncClient``'s arguments with their meaning and defaults
    (``trust_env=True`` included: ``SSL_CERT_FILE``, ``SSL_CERT_DIR``,
    ``SSLKEYLOGFILE`` and the proxy variables are read, as httpx does); the
    transport's go to a :class:`PoolTransport`, the others (``headers``,
    ``timeout``, ``base_url``, ``follow_redirects``, ``mounts``, ...) to the client.

    Args:
        verify: As httpx's (a bool, a CA file or directory, or an SSLContext).
        cert: As httpx's: a client certificate path, ``(cert, key)`` or
            ``(cert, key, password)``.
        http1: As httpx's.
        http2: As httpx's (needs the ``http2`` extra).
        proxy: As :class:`PoolTransport`'s.
        limits: httpx's limits, applied to the pool this opens: ``max_connections``
            is the pool's ``max_total``
            and ``max_size``, ``keepalive_expiry`` its ``max_idle_time``. httpx's
            default (100 connections, 5 s keep-alive) unless given; ``None`` leaves
            the pool's configuration as it is.
        trust_env: As httpx's (both the client's and the transport's side).
        uds: As httpx's.
        retries: As httpx's: connect retries.
        retry: :class:`PoolTransport`'s retry of idempotent requests on a dead reused
            connection.
        pool: Use this pool (opened elsewhere) instead of opening one; ``limits``, if
            given, must then match its configuration (see :class:`PoolTransport`).
        pool_config: The configuration of the pool this opens (``limits`` overrides
            its three fields).
        **client_args: The other arguments of :class:`httpx.AsyncClient`.

    Yields:
        The client; the pool (unless given) lives as long as the block.

    Raises:
        TypeError: ``transport`` among the client's arguments (this makes it), or an
            argument of the wrong type.
        ValueError: A bad argument (see :class:`PoolTransport`).
    """
    if "transport" in client_args:
        raise TypeError("open_client makes its own transport: pass no transport=")
    async with AsyncExitStack() as stack:
        if pool is None:
            config = PoolConfig() if pool_config is None else pool_config
            if not isinstance(config, PoolConfig):
                raise TypeError(f"pool_config must be a PoolConfig, not {type(config).__name__}")
            if isinstance(limits, UseDefault):
                limits = DEFAULT_LIMITS
            if limits is not None:
                config = config.replace(**limits_config(limits))
                limits = None  # they are the pool's now
            pool = await stack.enter_async_context(open_pool(config))
        elif isinstance(limits, UseDefault):
            limits = None  # the pool's own
        transport = PoolTransport(
            pool,
            verify=verify,
            cert=cert,
            http1=http1,
            http2=http2,
            proxy=proxy,
            limits=limits,
            trust_env=trust_env,
            uds=uds,
            retries=retries,
            retry=retry,
        )
        client = httpx.AsyncClient(transport=transport, trust_env=trust_env, **client_args)
        yield await stack.enter_async_context(client)
