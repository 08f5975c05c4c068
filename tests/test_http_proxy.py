"""trio_pool.http and PoolTransport through proxies and Unix sockets (issue 15).

Real tinyproxy (forwarding and CONNECT) and microsocks (SOCKS5) started on free
127.0.0.1 ports, origins that are h11 servers on 127.0.0.1 (plain or TLS, certificates
from trustme) or on a Unix socket in ``tmp_path``, and recording stand-ins for what
needs the exact bytes on the wire. No test needs DNS: TLS names ``localhost`` only as
the server name (the connection goes to 127.0.0.1), and ``socks5h`` sends the literal
address.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import h11
import httpx
import pytest
import trio
import trustme

import trio_pool
from trio_pool import ConnectionPool, ProxyError
from trio_pool.http import HTTPClient
from trio_pool.httpx import PoolTransport

from .checks import assert_settled
from .nginx import open_nginx
from .proxies import open_microsocks, open_tinyproxy, read_head
from .resolvers import LoopbackResolver
from .servers import HOST, open_fds, start_server, wait_unix_listening
from .test_http import H11Server, ok, send_response, start_h11
from .test_tls import server_context
from .test_uds import start_unix_server

pytestmark = pytest.mark.proxy


@pytest.fixture
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    return server_context(ca.issue_cert("127.0.0.1", "localhost"), "1.3")


async def start_h11_tls(nursery: trio.Nursery, context: ssl.SSLContext) -> H11Server:
    """An :class:`H11Server` answering ``ok`` over TLS."""
    server = H11Server(ok)

    async def handle(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            await stream.aclose()
            return
        await server.handle(tls)  # type: ignore[arg-type]

    server.port = await start_server(nursery, handle)
    return server


def echo_path_and_host() -> H11Server:
    async def respond(
        stream: trio.SocketStream, conn: h11.Connection, req: h11.Request, i: int
    ) -> bool:
        host = dict(req.headers)[b"host"]
        await send_response(stream, conn, req.target + b" " + host)
        return True

    return H11Server(respond)


# -- 1. HTTP proxies ---------------------------------------------------------------------


async def test_http_through_tinyproxy_is_forwarded_in_absolute_form(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    origin = echo_path_and_host()
    origin.port = await start_server(nursery, origin.handle)
    async with (
        open_tinyproxy(tmp_path, connect_ports=[origin.port]) as tinyproxy,
        trio_pool.open_pool() as pool,
    ):
        client = HTTPClient(pool, proxy=tinyproxy.url)
        for _ in range(2):
            r = await client.request("GET", origin.url("/a?b=1"))
            assert (r.status, r.content) == (200, b"/a?b=1 %b:%d" % (HOST.encode(), origin.port))
        # Forwarded (no tunnel): keyed by the proxy, not by the origin.
        assert pool.statistics(HOST, tinyproxy.port).connections_created >= 1
        assert pool.statistics(HOST, origin.port).connections_created == 0
        assert "CONNECT 127.0.0.1" not in tinyproxy.log()
        assert f"GET http://{HOST}:{origin.port}/a?b=1" in tinyproxy.log()
        assert_settled(pool)


async def recording_forward_proxy(nursery: trio.Nursery) -> tuple[list[bytes], int]:
    """A stand-in forward proxy: records each request head, answers 200 ``proxied``."""
    heads: list[bytes] = []

    async def handle(stream: trio.SocketStream) -> None:
        try:
            for _ in range(10):
                head = await read_head(stream)
                if not head:
                    return
                heads.append(head)
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nproxied")
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()

    return heads, await start_server(nursery, handle)


async def test_forwarded_request_line_and_proxy_authorization(nursery: trio.Nursery) -> None:
    heads, port = await recording_forward_proxy(nursery)
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, proxy=f"http://user:p%40ss@{HOST}:{port}")
        r = await client.request("GET", "http://origin.test:8080/x")
        assert r.content == b"proxied"
        r = await client.request("GET", "http://[::1]/y")
        assert r.content == b"proxied"
        # A request's own Proxy-Authorization replaces the proxy's.
        own = {"proxy-authorization": "Bearer token"}
        assert (await client.request("GET", "http://origin.test/o", headers=own)).status == 200
        # Through the transport too, with an httpx.Proxy's own auth and headers.
        proxy = httpx.Proxy(f"http://{HOST}:{port}", auth=("a", "b"), headers={"X-Via": "t"})
        async with httpx.AsyncClient(transport=PoolTransport(pool, proxy=proxy)) as hc:
            hr = await hc.get("http://origin.test/z")
            assert hr.content == b"proxied"
        # One connection to the proxy served every origin of the first client; the
        # transport's proxy has other credentials: another key, another connection.
        assert pool.statistics().connections_created == 2
        assert len(pool._state.keys) == 2
    first, second, own_auth, third = heads
    assert own_auth.lower().count(b"proxy-authorization") == 1
    assert b"proxy-authorization: Bearer token\r\n" in own_auth
    assert first.startswith(b"GET http://origin.test:8080/x HTTP/1.1\r\n")
    assert b"host: origin.test:8080\r\n" in first
    # user:p@ss
    assert b"Proxy-Authorization: Basic dXNlcjpwQHNz\r\n" in first
    assert second.startswith(b"GET http://[::1]/y HTTP/1.1\r\n")
    assert third.startswith(b"GET http://origin.test/z HTTP/1.1\r\n")
    assert b"proxy-authorization: basic ytpi\r\n" in third.lower()
    assert b"x-via: t\r\n" in third.lower()


async def test_https_through_tinyproxy_tunnel_is_pooled_and_resumes_tls(
    nursery: trio.Nursery,
    tmp_path: Path,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
) -> None:
    origin = await start_h11_tls(nursery, server_ctx)
    url = f"https://localhost:{origin.port}/"
    resolver = _LocalhostResolver()
    previous = trio.socket.set_custom_hostname_resolver(resolver)
    try:
        async with (
            open_tinyproxy(tmp_path, connect_ports=[origin.port]) as tinyproxy,
            trio_pool.open_pool() as pool,
        ):
            client = HTTPClient(pool, proxy=tinyproxy.proxy(), ssl_context=client_ctx)
            for _ in range(3):
                r = await client.request("GET", url)
                assert (r.status, r.content) == (200, b"hi")
            assert origin.connections == 1  # one tunnel, reused
            assert f"CONNECT localhost:{origin.port}" in tinyproxy.log()
            # A second tunnel (the first one is busy) resumes the TLS session.
            async with client.stream("GET", url) as first, client.stream("GET", url) as second:
                assert await first.aread() == await second.aread() == b"hi"
            assert origin.connections == 2
            stats = pool.statistics()
            assert stats.tls_resumptions >= 1
            assert_settled(pool)
    finally:
        trio.socket.set_custom_hostname_resolver(previous)
    assert resolver.names == []  # the proxy resolved "localhost", we did not


class _LocalhostResolver(LoopbackResolver):
    """Answers only the literal 127.0.0.1: proxied requests must not resolve."""

    def answer_for(self, name: str) -> list[str] | None:
        return [HOST] if name == HOST else None


async def test_refused_tunnel_is_proxy_error_with_status(
    nursery: trio.Nursery, tmp_path: Path, client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    origin = await start_h11_tls(nursery, server_ctx)
    async with (
        open_tinyproxy(tmp_path, connect_ports=[origin.port + 1]) as tinyproxy,
        open_tinyproxy(tmp_path, connect_ports=[origin.port], auth=("u", "pw")) as guarded,
        trio_pool.open_pool() as pool,
    ):
        url = f"https://127.0.0.1:{origin.port}/"
        client = HTTPClient(pool, proxy=tinyproxy.url, ssl_context=client_ctx)
        with pytest.raises(ProxyError) as refused:
            await client.request("GET", url)
        assert refused.value.status == 403
        # Without the credentials: 407; with them (from the URL): through.
        with pytest.raises(ProxyError) as unauthorised:
            await HTTPClient(
                pool, proxy=f"http://{HOST}:{guarded.port}", ssl_context=client_ctx
            ).request("GET", url)
        assert unauthorised.value.status == 407
        r = await HTTPClient(pool, proxy=guarded.url, ssl_context=client_ctx).request("GET", url)
        assert (r.status, r.content) == (200, b"hi")
        # The transport raises httpx.ProxyError.
        transport = PoolTransport(pool, proxy=httpx.URL(tinyproxy.url), ssl_context=client_ctx)
        async with httpx.AsyncClient(transport=transport) as hc:
            with pytest.raises(httpx.ProxyError, match="403"):
                await hc.get(url)
        # An http:// request the proxy refuses is its response, as with httpx.
        r = await HTTPClient(pool, proxy=f"http://{HOST}:{guarded.port}").request(
            "GET", f"http://127.0.0.1:{origin.port}/"
        )
        assert r.status == 407
        assert_settled(pool)


async def test_connections_through_different_proxies_or_none_are_never_shared(
    nursery: trio.Nursery,
    tmp_path: Path,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
) -> None:
    origin = await start_h11_tls(nursery, server_ctx)
    url = f"https://127.0.0.1:{origin.port}/"
    async with (
        open_tinyproxy(tmp_path, connect_ports=[origin.port]) as first,
        open_tinyproxy(tmp_path, connect_ports=[origin.port]) as second,
        open_microsocks(tmp_path) as socks,
        trio_pool.open_pool() as pool,
    ):
        clients = [
            HTTPClient(pool, ssl_context=client_ctx),
            HTTPClient(pool, ssl_context=client_ctx, proxy=first.url),
            HTTPClient(pool, ssl_context=client_ctx, proxy=second.url),
            HTTPClient(pool, ssl_context=client_ctx, proxy=socks.url),
        ]
        for _ in range(2):
            for client in clients:
                assert (await client.request("GET", url)).content == b"hi"
        assert origin.connections == 4  # one per route, each reused once
        stats = pool.statistics()
        assert (stats.connections_created, stats.pool_hits, stats.idle_connections) == (4, 4, 4)
        assert len(pool._state.keys) == 4
        assert_settled(pool)


# -- SOCKS5 --------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
async def test_http_and_https_through_microsocks(
    nursery: trio.Nursery,
    tmp_path: Path,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    scheme: str,
) -> None:
    plain = echo_path_and_host()
    plain.port = await start_server(nursery, plain.handle)
    tls = await start_h11_tls(nursery, server_ctx)
    async with (
        open_microsocks(tmp_path, auth=("me", "secret")) as socks,
        trio_pool.open_pool() as pool,
    ):
        proxy = socks.url.replace("socks5", scheme, 1)
        client = HTTPClient(pool, proxy=proxy, ssl_context=client_ctx)
        for _ in range(2):
            r = await client.request("GET", plain.url("/p"))
            assert r.content == b"/p %b:%d" % (HOST.encode(), plain.port)  # origin form
            r = await client.request("GET", f"https://127.0.0.1:{tls.port}/")
            assert r.content == b"hi"
        assert (plain.connections, tls.connections) == (1, 1)
        async with httpx.AsyncClient(
            transport=PoolTransport(pool, proxy=proxy, ssl_context=client_ctx)
        ) as hc:
            assert (await hc.get(plain.url("/q"))).content.startswith(b"/q ")
        assert plain.connections == 1  # the transport shares the client's tunnel
        assert_settled(pool)


# -- 2. trust_env --------------------------------------------------------------------------


async def test_trust_env_takes_the_proxy_from_the_environment(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    heads, port = await recording_forward_proxy(nursery)
    direct = await start_h11(nursery, ok)
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"{HOST}:{port}")  # no scheme: http://
    monkeypatch.setenv("NO_PROXY", f"localhost,{HOST}:{direct.port}")
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, trust_env=True)
        transport = PoolTransport(pool, trust_env=True)
        off = HTTPClient(pool)  # off by default
        default_transport = PoolTransport(pool)
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")  # read when made
        assert (await client.request("GET", "http://origin.test/a")).content == b"proxied"
        assert (await client.request("GET", direct.url("/b"))).content == b"hi"  # NO_PROXY
        async with httpx.AsyncClient(transport=transport) as hc:
            assert (await hc.get("http://origin.test/c")).content == b"proxied"
        assert (await off.request("GET", direct.url("/d"))).content == b"hi"
        async with httpx.AsyncClient(transport=default_transport, trust_env=True) as hc:
            assert (await hc.get(direct.url("/e"))).content == b"hi"
        # An explicit proxy wins over the environment.
        explicit = HTTPClient(pool, trust_env=True, proxy=f"http://{HOST}:{port}")
        assert (await explicit.request("GET", direct.url("/f"))).content == b"proxied"
    assert [h.split(b" ")[1] for h in heads] == [
        b"http://origin.test/a",
        b"http://origin.test/c",
        b"http://%b:%d/f" % (HOST.encode(), direct.port),
    ]
    assert [r.target for r in direct.requests] == [b"/b", b"/d", b"/e"]


async def test_trust_env_refuses_a_bad_proxy_variable(
    monkeypatch: pytest.MonkeyPatch, pool: ConnectionPool
) -> None:
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "ftp://127.0.0.1:21")
    _refuses_bad_env(pool)


def _refuses_bad_env(pool: trio_pool.ConnectionPool) -> None:
    with pytest.raises(ValueError, match="HTTPS_PROXY"):
        HTTPClient(pool, trust_env=True)
    with pytest.raises(ValueError, match="HTTPS_PROXY"):
        PoolTransport(pool, trust_env=True)
    HTTPClient(pool)  # not read unless asked


# -- 3. Unix sockets -------------------------------------------------------------------------


async def test_uds_is_pooled_per_path_with_host_from_the_url(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    first = echo_path_and_host()
    second = echo_path_and_host()
    a = await start_unix_server(nursery, tmp_path / "a.sock", first.handle)  # type: ignore[arg-type]
    b = await start_unix_server(nursery, tmp_path / "b.sock", second.handle)  # type: ignore[arg-type]
    fds = open_fds()
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, uds=a)
        for _ in range(3):
            r = await client.request("GET", "http://docker.test/v1/info")
            assert r.content == b"/v1/info docker.test"
        async with httpx.AsyncClient(transport=PoolTransport(pool, uds=b)) as hc:
            for _ in range(2):
                hr = await hc.get("http://api.test:8080/x")
                assert hr.content == b"/x api.test:8080"
        assert (first.connections, second.connections) == (1, 1)
        stats = pool.statistics()
        assert (stats.connections_created, stats.pool_hits) == (2, 3)
        assert_settled(pool)
    assert open_fds() == fds


# -- 5. bad input, before any I/O ----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"proxy": "ftp://127.0.0.1:21"}, ValueError, "proxy"),
        ({"proxy": "https://127.0.0.1:3128"}, ValueError, "https"),
        ({"proxy": "http://127.0.0.1"}, ValueError, "port"),
        ({"proxy": "not a url"}, ValueError, "proxy URL"),
        ({"proxy": "http://[::1"}, ValueError, "unparsable"),
        ({"proxy": 3128}, TypeError, "proxy"),
        ({"uds": Path("/tmp/x.sock")}, TypeError, "uds"),
        ({"uds": b"/tmp/x.sock"}, TypeError, "uds"),
        ({"uds": ""}, ValueError, "uds"),
        ({"uds": "/tmp/x.sock", "proxy": "http://127.0.0.1:3128"}, ValueError, "exclude"),
        ({"trust_env": 1}, TypeError, "trust_env"),
    ],
)
async def test_bad_route_arguments(
    options: dict[str, object], error: type[Exception], message: str, pool: ConnectionPool
) -> None:
    _refuses(pool, options, error, message)


def _refuses(
    pool: trio_pool.ConnectionPool, options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        HTTPClient(pool, **options)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        PoolTransport(pool, **options)  # type: ignore[arg-type]
    assert pool.statistics().connections_created == 0


async def test_httpx_proxy_with_an_ssl_context_is_refused(pool: ConnectionPool) -> None:
    _refuses_ssl_context(pool)


def _refuses_ssl_context(pool: trio_pool.ConnectionPool) -> None:
    proxy = httpx.Proxy("http://127.0.0.1:3128", ssl_context=ssl.create_default_context())
    with pytest.raises(ValueError, match="ssl_context"):
        HTTPClient(pool, proxy=proxy)
    with pytest.raises(ValueError, match="ssl_context"):
        PoolTransport(pool, proxy=proxy)


@pytest.mark.nginx
async def test_nginx_on_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "nginx.sock"
    server = (
        f"    server {{\n        listen unix:{path};\n"
        '        location / { return 200 "uds $host $request_uri"; }\n    }\n'
    )
    async with open_nginx(tmp_path, extra_servers=server), trio_pool.open_pool() as pool:
        await wait_unix_listening(str(path))
        client = HTTPClient(pool, uds=str(path))
        for _ in range(3):
            r = await client.request("GET", "http://engine.test/v1.43/info")
            assert (r.status, r.content) == (200, b"uds engine.test /v1.43/info")
        async with httpx.AsyncClient(transport=PoolTransport(pool, uds=str(path))) as hc:
            hr = await hc.get("http://engine.test/containers/json")
            assert hr.content == b"uds engine.test /containers/json"
        stats = pool.statistics()
        assert (stats.connections_created, stats.pool_hits) == (1, 3)
        assert_settled(pool)


async def test_trust_env_https_proxy_and_all_proxy(
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
) -> None:
    heads, port = await recording_forward_proxy(nursery)
    origin = await start_h11_tls(nursery, server_ctx)
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    async with (
        open_tinyproxy(tmp_path, connect_ports=[origin.port]) as tinyproxy,
        trio_pool.open_pool() as pool,
    ):
        monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url)
        monkeypatch.setenv("ALL_PROXY", f"http://{HOST}:{port}")  # for http: no HTTP_PROXY
        client = HTTPClient(pool, trust_env=True, ssl_context=client_ctx)
        transport = PoolTransport(pool, trust_env=True, ssl_context=client_ctx)
        r = await client.request("GET", f"https://127.0.0.1:{origin.port}/")
        assert r.content == b"hi"
        async with httpx.AsyncClient(transport=transport) as hc:
            assert (await hc.get(f"https://127.0.0.1:{origin.port}/")).content == b"hi"
            assert (await hc.get("http://origin.test/all")).content == b"proxied"
        assert f"CONNECT 127.0.0.1:{origin.port}" in tinyproxy.log()
        assert origin.connections == 1  # the client's tunnel, reused by the transport
        assert [h.split(b" ")[1] for h in heads] == [b"http://origin.test/all"]
        assert_settled(pool)
